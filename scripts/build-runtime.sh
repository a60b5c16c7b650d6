#!/usr/bin/env bash
# Builds the guest "runtime directory" that ya-runtime-vm boots: kernel + initramfs.
#
#   scripts/build-runtime.sh [debug|release]      (default: debug)
#
# Builds init-container statically (x86_64-unknown-linux-gnu, +crt-static) and assembles
# target/<profile>/runtime/ (next to the ya-runtime-vm binary; honours CARGO_TARGET_DIR):
#   vmlinux                the guest kernel built by scripts/build-kernel.sh (every driver built in)
#   initramfs.cpio         /init (init-container) and the empty mount points /dev /proc /sys /mnt /tmp
#   initramfs-floor.cpio   /init = floor-init only (the boot-benchmark floor)
#   VERSION                kernel=<release>, kernel_config=<cache key>, initramfs=<file>
#   self-test.gvmi         the image `ya-runtime-vm test` boots (busybox, one volume)
# Idempotent and reproducible (fixed mtimes); quiet on success but for the directory's path.
#
# Why an uncompressed cpio: the kernel then needs no decompressor and unpacks it fastest (measured
# with Debian's kernel: ~0.05 s against ~0.14 s for gzip, lz4 or zstd, guest timestamps; README,
# "Guest kernel").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TARGET=x86_64-unknown-linux-gnu
# Uncompressed: the faster-booting format of the measurement above.
SUFFIX=.cpio

profile=${1:-debug}
case "$profile" in
  debug) cargo_profile=() ;;
  release) cargo_profile=(--release) ;;
  *) die "usage: $0 [debug|release] (got '$profile')" ;;
esac
[ $# -le 1 ] || die "usage: $0 [debug|release]"

for tool in cargo cpio strip; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
kernel_dir=$(bash "$REPO_ROOT/scripts/build-kernel.sh" --path)

target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
bin_dir="$target_dir/$TARGET/$profile"
runtime_dir="$target_dir/$profile/runtime"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

build_init() {
  local log="$tmp/cargo.log"
  if ! (cd "$REPO_ROOT" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo build --quiet -p init-container --target "$TARGET" "${cargo_profile[@]}") >"$log" 2>&1; then
    cat "$log" >&2
    die "building init-container ($profile, static) failed"
  fi
  local b
  for b in init-container floor-init vsock-send hostile shared-mmap; do
    [ -x "$bin_dir/$b" ] || die "cargo did not produce $bin_dir/$b"
  done
}

# make_initramfs ROOT INIT OUT: ROOT gets /init (debug info stripped) and the empty mount
# points, then becomes an uncompressed newc archive owned by root.
make_initramfs() {
  local root=$1 init=$2 out=$3
  mkdir -p "$root"/{dev,proc,sys,mnt,tmp}
  strip --strip-debug -o "$root/init" "$init" || die "cannot strip $init"
  chmod 755 "$root/init"
  # Fixed mtimes: the same inputs give the same archive.
  find "$root" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} + || die "cannot set mtimes in $root"
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    >"$out" || die "cannot pack $root into $out"
}

# make_self_test_image OUT: the image `ya-runtime-vm test` boots as an activity boots: a busybox
# root with one volume, so the check covers the vsock agent, exec and virtio-fs.
make_self_test_image() {
  local out=$1 root="$tmp/self-test"
  (cd "$REPO_ROOT" && cargo build --quiet -p gvmi-build) \
    || die "building gvmi-build failed"
  busybox_rootfs "$root"
  mkdir -p "$root/golem/output"
  printf '%s' '{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/","Volumes":{"/golem/output":{}}}' \
    >"$tmp/self-test.json"
  "$target_dir/debug/gvmi-build" "$root" -o "$out" --config "$tmp/self-test.json" --compression lz4 \
    >/dev/null 2>&1 \
    || die "building the self-test image failed"
}

main() {
  build_init
  mkdir -p "$tmp/out"
  make_initramfs "$tmp/main" "$bin_dir/init-container" "$tmp/out/initramfs$SUFFIX"
  make_initramfs "$tmp/floor" "$bin_dir/floor-init" "$tmp/out/initramfs-floor$SUFFIX"
  cp "$kernel_dir/vmlinux" "$tmp/out/vmlinux"
  make_self_test_image "$tmp/out/self-test.gvmi"
  {
    echo "kernel=$(cat "$kernel_dir/version")"
    echo "kernel_config=${kernel_dir##*/}"
    echo "initramfs=initramfs$SUFFIX"
  } >"$tmp/out/VERSION"

  mkdir -p "$runtime_dir"
  local f
  for f in "$tmp"/out/*; do
    cp "$f" "$runtime_dir/.${f##*/}.new"
    mv -f "$runtime_dir/.${f##*/}.new" "$runtime_dir/${f##*/}"
  done
  # Outputs of an earlier format choice would only mislead the runtime.
  rm -f "$runtime_dir/vmlinuz"
  for f in "$runtime_dir"/initramfs*.cpio*; do
    if [ -e "$f" ] && [ ! -e "$tmp/out/${f##*/}" ]; then rm -f "$f"; fi
  done
  echo "$runtime_dir"
}

main
