#!/usr/bin/env bash
# Network benchmark: two release ya-runtime-vm VMs started as the exe-unit starts them
# (--vpn-endpoint, CreateNetwork) on ya-exescript's local VPN switch — VM↔VM ping p50 and TCP
# throughput through the switch, and the switch's own loopback ceiling in the same run (ratio).
# Prints a markdown table. Arguments: [MiB (64)]. YA_RUNTIME_VM_ACCEL defaults to tcg.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
bash scripts/setup.sh
bash scripts/build-runtime.sh release >/dev/null
bash scripts/build-sample-image.sh >/dev/null
cargo build --quiet --release -p ya-runtime-vm
cargo build --quiet --release -p e2e --bin bench-network
target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
export YA_RUNTIME_VM_ACCEL=${YA_RUNTIME_VM_ACCEL:-tcg}
YA_RUNTIME_VM_RUNTIME_DIR="$target_dir/release/runtime" "$target_dir/release/bench-network" \
  "$target_dir/release/ya-runtime-vm" "$@"
