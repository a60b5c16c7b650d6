#!/usr/bin/env bash
# Installs what building, running and testing ya-runtime-vm needs on a Debian machine with Rust.
# Idempotent and quiet when everything is already there. Run as root or with sudo available.
#   - Debian packages (QEMU, e2fsprogs, squashfs-tools, cpio, busybox-static, passt (the tests'
#     stand-in for the exe-unit's INET stack), build libraries, protoc, and linux-source-6.12 with
#     what building and patching a kernel needs)
#   - virtiofsd and vhost-device-vsock, built with `cargo install` into $TOOLS_DIR/bin (pinned),
#     and cargo-deb for the .deb package
#   - the guest kernel, built from linux-source-6.12 by scripts/build-kernel.sh (cached per
#     configuration outside the clone)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
  qemu-system-x86 e2fsprogs squashfs-tools cpio busybox-static
  passt
  libseccomp-dev libcap-ng-dev protobuf-compiler pkg-config
  linux-source-6.12 make bc bison flex libelf-dev patch
)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

apt_updated=
apt_update_once() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
}

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "setup: installing Debian packages: ${missing[*]}"
  apt_update_once
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# cargo_tool CRATE VERSION: installs the crate's binary into $TOOLS_DIR/bin unless that version is there.
cargo_tool() {
  local crate=$1 version=$2 stamp="$TOOLS_DIR/stamps/$1"
  if [ -x "$TOOLS_DIR/bin/$crate" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  say "setup: building $crate $version (a few minutes, once)"
  mkdir -p "$TOOLS_DIR/stamps"
  local log="$TOOLS_DIR/stamps/$crate.log"
  if ! cargo install --quiet --locked --root "$TOOLS_DIR" "$crate@$version" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "cargo install $crate@$version failed (full log: $log)"
  fi
  echo "$version" >"$stamp"
}

main() {
  [ -r /etc/debian_version ] || die "this script supports Debian (and derivatives with apt) only"
  install_packages
  mkdir -p "$TOOLS_DIR"
  cargo_tool virtiofsd "$VIRTIOFSD_VERSION"
  cargo_tool vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION"
  cargo_tool cargo-deb "$CARGO_DEB_VERSION"
  bash "$REPO_ROOT/scripts/build-kernel.sh" >/dev/null
  # Earlier versions kept Debian's kernel and its modules here.
  rm -rf "$TOOLS_DIR/kernel"
}

main "$@"
