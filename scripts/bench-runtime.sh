#!/usr/bin/env bash
# Runtime benchmark: the release ya-runtime-vm driven through ya-runtime-api's client, all in one
# run — cold start vs the bare kernel-boot floor, warm /bin/true p50/p95 (and the host's CPU
# time and thread switches per round trip), stdout throughput vs the raw vsock transport
# (vsock-send in the same VM), a volume dd vs the host disk, and host RSS of QEMU plus helpers
# for an idle 256 MiB VM. Prints a markdown table.
# Arguments: [cold starts (3)] [round trips (200)] [MiB (256)]. YA_RUNTIME_VM_ACCEL defaults to tcg.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
prepare_release_vm
cargo build --quiet --release -p e2e --bin bench-runtime
"$TARGET_DIR/release/bench-runtime" \
  "$TARGET_DIR/release/ya-runtime-vm" "$TARGET_DIR/x86_64-unknown-linux-gnu/release/vsock-send" "$@"
