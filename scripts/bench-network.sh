#!/usr/bin/env bash
# Network benchmark: two release ya-runtime-vm VMs started as the exe-unit starts them
# (--vpn-endpoint, CreateNetwork) on ya-exescript's local VPN switch — VM↔VM ping p50 and TCP
# throughput through the switch, and the switch's own loopback ceiling in the same run (ratio).
# Prints a markdown table. Arguments: [MiB (64)]. YA_RUNTIME_VM_ACCEL defaults to tcg.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
prepare_release_vm
cargo build --quiet --release -p e2e --bin bench-network
"$TARGET_DIR/release/bench-network" "$TARGET_DIR/release/ya-runtime-vm" "$@"
