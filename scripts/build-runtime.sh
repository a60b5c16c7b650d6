#!/usr/bin/env bash
# Builds the guest "runtime directory" that ya-runtime-vm boots: kernel + initramfs.
#
#   scripts/build-runtime.sh [debug|release]      (default: debug)
#
# Builds init-container statically (x86_64-unknown-linux-gnu, +crt-static) and assembles
# target/<profile>/runtime/ (next to the ya-runtime-vm binary; honours CARGO_TARGET_DIR):
#   vmlinuz                the guest kernel from scripts/setup.sh (.tools/kernel)
#   initramfs.cpio         /init (init-container), /modules/*.ko, /modules/order, /dev /proc /sys /mnt /tmp
#   initramfs-floor.cpio   /init = floor-init only (the boot-benchmark floor)
#   VERSION                kernel=<version>, initramfs=<file>, modules=<load order>
#   self-test.gvmi         the image `ya-runtime-vm test` boots (busybox, one volume)
# /modules/order lists the modules' file names, each after the modules it depends on (from
# modules.dep); modules built into the kernel (modules.builtin) are left out, compressed ones
# are stored as plain .ko. Both virtio_pci (q35) and virtio_mmio (microvm) are included.
# Idempotent and reproducible (fixed mtimes); quiet on success but for the directory's path.
#
# Why an uncompressed cpio: measured on the 2-core build machine (shared, so noisy), TCG,
# Debian 6.1.0-56-cloud-amd64, -m 256; wall time from QEMU start to QEMU exit, median of 12
# runs interleaved (floor = floor-init powering off; full = this initramfs, init exiting ->
# panic -> -no-reboot exit):
#                          none            gzip -9         lz4 -l -9
#   microvm  floor         3.02 s          3.14 s          3.14 s
#   microvm  full          2.97 s          3.16 s          3.19 s
#   q35      floor         3.32 s          3.39 s          3.69 s
#   q35      full          3.48 s          3.74 s          3.73 s
# Sizes (full): 2.9 MB / 0.99 MB / 1.2 MB. The kernel unpacks the full one in ~0.05 s
# uncompressed vs ~0.14 s for gzip, lz4 or zstd (guest timestamps); the kernel accepts all four.
# Guest uptime at floor-init: ~1.8 s (microvm), ~2.6 s (q35). Command lines:
#   qemu-system-x86_64 -accel tcg -M microvm,x-option-roms=off,isa-serial=on \
#     -nodefaults -no-user-config -display none -serial stdio -no-reboot -m 256 \
#     -kernel vmlinuz -initrd initramfs-floor.cpio \
#     -append "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz=<host TSC kHz>"
#   qemu-system-x86_64 -accel tcg -M q35 <same options> -append "console=ttyS0 quiet panic=-1"
# microvm under TCG has no HPET/PM timer: when the PIT calibration of the TSC fails (often on a
# loaded host) the guest hangs at boot unless tsc_early_khz= is given; with rtc=off it always
# fails. Without reboot=t a panic sometimes reboots the guest instead of ending QEMU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The modules init-container needs; their dependencies are added from modules.dep.
NEEDED_MODULES=(
  virtio_pci virtio_mmio virtio_blk vmw_vsock_virtio_transport virtiofs squashfs overlay virtio_balloon
  virtio_net
)
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
[ -r "$KERNEL_DIR/version" ] && [ -r "$KERNEL_DIR/vmlinuz" ] \
  || die "no guest kernel in $KERNEL_DIR (run scripts/setup.sh)"
kver=$(cat "$KERNEL_DIR/version")
moddir="$KERNEL_DIR/lib/modules/$kver"
[ -r "$moddir/modules.dep" ] || die "$moddir/modules.dep missing (run scripts/setup.sh)"

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
  for b in init-container floor-init vsock-send hostile; do
    [ -x "$bin_dir/$b" ] || die "cargo did not produce $bin_dir/$b"
  done
}

# Sets REPLY to the module name as the kernel sees it: the file's basename without
# .ko[.xz|.zst|.gz], '-' as '_' (no subshell: modules.dep has thousands of lines).
modname() { REPLY=${1##*/}; REPLY=${REPLY%%.ko*}; REPLY=${REPLY//-/_}; }

declare -A mod_path=() mod_deps=() builtin=() state=()
order=()

read_module_index() {
  local line target deps
  while IFS= read -r line; do
    target=${line%%:*}
    deps=${line#*:}
    modname "$target"
    mod_path[$REPLY]=$target
    mod_deps[$REPLY]=$deps
  done <"$moddir/modules.dep"
  if [ -r "$moddir/modules.builtin" ]; then
    while IFS= read -r line; do modname "$line"; builtin[$REPLY]=1; done <"$moddir/modules.builtin"
  fi
}

# Depth-first post-order over modules.dep: every module after the modules it depends on.
visit() {
  local m=$1 d
  case "${state[$m]:-}" in
    done) return ;;
    active) die "dependency cycle through module $m in modules.dep" ;;
  esac
  if [ -z "${mod_path[$m]:-}" ]; then
    if [ -n "${builtin[$m]:-}" ]; then state[$m]=done; return; fi
    die "module $m is neither in $moddir/modules.dep nor built into kernel $kver"
  fi
  state[$m]=active
  for d in ${mod_deps[$m]}; do modname "$d"; visit "$REPLY"; done
  state[$m]=done
  order+=("$m")
}

# Copies the modules into $1/modules as plain .ko (decompressed if the kernel ships them
# compressed), and writes $1/modules/order.
install_modules() {
  local dest=$1/modules m src name
  mkdir -p "$dest"
  : >"$dest/order"
  for m in "${order[@]}"; do
    src="$moddir/${mod_path[$m]}"
    [ -r "$src" ] || die "module file $src missing"
    name=${src##*/}
    case "$name" in
      *.ko) cp "$src" "$dest/$name" ;;
      *.ko.xz) name=${name%.xz}; xz -dc "$src" >"$dest/$name" || die "cannot decompress $src" ;;
      *.ko.zst) name=${name%.zst}; zstd -qdc "$src" >"$dest/$name" || die "cannot decompress $src" ;;
      *.ko.gz) name=${name%.gz}; gzip -dc "$src" >"$dest/$name" || die "cannot decompress $src" ;;
      *) die "unexpected module file name $src" ;;
    esac
    echo "$name" >>"$dest/order"
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
  (cd "$REPO_ROOT" && cargo build --quiet -p test-fixtures --bin gvmi-build) \
    || die "building gvmi-build failed"
  busybox_rootfs "$root"
  mkdir -p "$root/golem/output"
  printf '%s' '{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/","Volumes":{"/golem/output":{}}}' \
    >"$tmp/self-test.json"
  "$target_dir/debug/gvmi-build" "$root" "$tmp/self-test.json" "$out" >/dev/null \
    || die "building the self-test image failed"
}

main() {
  build_init
  read_module_index
  local m
  for m in "${NEEDED_MODULES[@]}"; do visit "$m"; done

  mkdir -p "$tmp/out"
  install_modules "$tmp/main"
  make_initramfs "$tmp/main" "$bin_dir/init-container" "$tmp/out/initramfs$SUFFIX"
  make_initramfs "$tmp/floor" "$bin_dir/floor-init" "$tmp/out/initramfs-floor$SUFFIX"
  cp "$KERNEL_DIR/vmlinuz" "$tmp/out/vmlinuz"
  make_self_test_image "$tmp/out/self-test.gvmi"
  {
    echo "kernel=$kver"
    echo "initramfs=initramfs$SUFFIX"
    echo "modules=$(tr '\n' ' ' <"$tmp/main/modules/order" | sed 's/ $//')"
  } >"$tmp/out/VERSION"

  mkdir -p "$runtime_dir"
  local f
  for f in "$tmp"/out/*; do
    cp "$f" "$runtime_dir/.${f##*/}.new"
    mv -f "$runtime_dir/.${f##*/}.new" "$runtime_dir/${f##*/}"
  done
  # Outputs of an earlier format choice would only mislead the runtime.
  for f in "$runtime_dir"/initramfs*.cpio*; do
    if [ -e "$f" ] && [ ! -e "$tmp/out/${f##*/}" ]; then rm -f "$f"; fi
  done
  echo "$runtime_dir"
}

main
