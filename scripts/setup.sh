#!/usr/bin/env bash
# Installs what building, running and testing ya-runtime-vm needs on a Debian machine with Rust.
# Idempotent and quiet when everything is already there. Run as root or with sudo available.
#   - Debian packages (QEMU, e2fsprogs, squashfs-tools, cpio, kmod, busybox-static, passt (the
#     tests' stand-in for the exe-unit's INET stack), build libraries, protoc)
#   - virtiofsd and vhost-device-vsock, built with `cargo install` into $TOOLS_DIR/bin (pinned),
#     and cargo-deb for the .deb package
#   - the Debian cloud kernel, extracted into $TOOLS_DIR/kernel with its modules indexed by depmod
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
  qemu-system-x86 e2fsprogs squashfs-tools cpio kmod busybox-static
  passt
  libseccomp-dev libcap-ng-dev protobuf-compiler pkg-config
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

# The kernel package to use: the pinned one, or the current one if Debian no longer has it.
kernel_package() {
  if apt-cache show "$KERNEL_PACKAGE" >/dev/null 2>&1; then
    echo "$KERNEL_PACKAGE"; return
  fi
  apt_update_once
  if apt-cache show "$KERNEL_PACKAGE" >/dev/null 2>&1; then
    echo "$KERNEL_PACKAGE"; return
  fi
  local dep
  dep=$(apt-cache show linux-image-cloud-amd64 2>/dev/null | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -n1)
  [ -n "$dep" ] || die "neither $KERNEL_PACKAGE nor linux-image-cloud-amd64 is in the apt sources"
  say "setup: $KERNEL_PACKAGE is no longer in Debian's archive; using $dep-unsigned"
  echo "$dep-unsigned"
}

fetch_kernel() {
  if [ -f "$KERNEL_DIR/stamp" ] && [ "$(cat "$KERNEL_DIR/stamp")" = "$KERNEL_PACKAGE" ] \
     && [ -e "$KERNEL_DIR/vmlinuz" ]; then
    return 0
  fi
  local pkg
  pkg=$(kernel_package)
  if [ -f "$KERNEL_DIR/stamp" ] && [ "$(cat "$KERNEL_DIR/stamp")" = "$pkg" ] && [ -e "$KERNEL_DIR/vmlinuz" ]; then
    return 0
  fi
  say "setup: fetching the guest kernel ($pkg)"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) \
    || { apt_update_once; (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null); } \
    || die "apt-get download $pkg failed"
  dpkg -x "$tmp"/*.deb "$tmp/root" || die "cannot extract $pkg"
  local vmlinuz version
  vmlinuz=$(ls "$tmp"/root/boot/vmlinuz-* 2>/dev/null | head -n1)
  [ -n "$vmlinuz" ] || die "$pkg holds no /boot/vmlinuz-*"
  version=${vmlinuz##*/vmlinuz-}
  depmod -b "$tmp/root" "$version" || die "depmod failed for $version"
  rm -rf "$KERNEL_DIR.new"
  mkdir -p "$KERNEL_DIR.new"
  cp "$vmlinuz" "$KERNEL_DIR.new/vmlinuz"
  mkdir -p "$KERNEL_DIR.new/lib/modules"
  mv "$tmp/root/lib/modules/$version" "$KERNEL_DIR.new/lib/modules/$version"
  echo "$version" >"$KERNEL_DIR.new/version"
  echo "$pkg" >"$KERNEL_DIR.new/stamp"
  rm -rf "$KERNEL_DIR"
  mv "$KERNEL_DIR.new" "$KERNEL_DIR"
  rm -rf "$tmp"
}

tmp=
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

main() {
  [ -r /etc/debian_version ] || die "this script supports Debian (and derivatives with apt) only"
  install_packages
  mkdir -p "$TOOLS_DIR"
  cargo_tool virtiofsd "$VIRTIOFSD_VERSION"
  cargo_tool vhost-device-vsock "$VHOST_DEVICE_VSOCK_VERSION"
  cargo_tool cargo-deb "$CARGO_DEB_VERSION"
  fetch_kernel
}

main "$@"
