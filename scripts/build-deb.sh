#!/usr/bin/env bash
# Builds the Debian package: the release binary, the release runtime dir (kernel, initramfs,
# self-test image) with the pinned helper daemons copied in, and the plugin descriptor, laid out
# as yagna expects under /usr/lib/yagna/plugins. Prints the .deb's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
bash scripts/setup.sh
target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
runtime_dir=$(bash scripts/build-runtime.sh release)
cargo build --quiet --release -p ya-runtime-vm
for helper in virtiofsd vhost-device-vsock; do
  cp "$TOOLS_DIR/bin/$helper" "$runtime_dir/.$helper.new"
  mv -f "$runtime_dir/.$helper.new" "$runtime_dir/$helper"
done
cargo deb --quiet -p ya-runtime-vm --no-build -o "$target_dir/debian/" >/dev/null \
  || die "cargo deb failed"
ls -t "$target_dir"/debian/ya-runtime-vm_*.deb | head -n1
