#!/usr/bin/env bash
# Guest benchmark: boot-to-agent-ready against the bare floor (same kernel, an initramfs whose
# init only powers off), in the same run, and the /bin/true round trip through the agent
# (p50/p95), with the release build of the init, as shipped. Arguments: [boots (5)] [round trips (200)].
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
bash scripts/setup.sh
bash scripts/build-runtime.sh release >/dev/null
bash scripts/build-sample-image.sh >/dev/null
cargo build --quiet --release -p e2e --bin bench-guest
YA_RUNTIME_VM_RUNTIME_DIR="$REPO_ROOT/target/release/runtime" "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/bench-guest" "$@"
