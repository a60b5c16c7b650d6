#!/usr/bin/env bash
# Builds the guest kernel from Debian's linux-source-$KERNEL_SERIES (common.sh) with kernel/guest.config and
# the patches in kernel/patches/ (applied in name order), once per (source version, configuration,
# patches, build recipe): the result is cached in $KERNEL_CACHE/<key>/ (outside the clone, so a
# fresh clone on the same machine reuses it).
#
#   scripts/build-kernel.sh            build if not cached; print the cache entry's directory
#   scripts/build-kernel.sh --path     print the entry's directory if built, else fail
#
# The entry holds:
#   vmlinux    the kernel as an uncompressed, stripped ELF that QEMU boots through its PVH entry
#              point (no decompression stage; README, "Guest kernel" has the measurement)
#   config     the full .config it was built with
#   version    the kernel release (`uname -r` in the guest)
# Needs the Debian packages linux-source-$KERNEL_SERIES, bc, bison, flex, libelf-dev and patch
# (scripts/setup.sh installs them). About 8 minutes on 2 cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

FRAGMENT="$REPO_ROOT/kernel/guest.config"
PATCHES=("$REPO_ROOT"/kernel/patches/*.patch)
[ -e "${PATCHES[0]}" ] || PATCHES=()
# Bumped when the way the kernel is built changes (not the configuration: that is hashed).
RECIPE=1

mode=build
case "${1:-}" in
  "") ;;
  --path) mode=path ;;
  *) die "usage: $0 [--path]" ;;
esac

tarball=$(ls /usr/src/linux-source-$KERNEL_SERIES.tar.* 2>/dev/null | head -n1 || true)
[ -n "$tarball" ] || die "no /usr/src/linux-source-$KERNEL_SERIES.tar.*: install the Debian package linux-source-$KERNEL_SERIES (scripts/setup.sh)"
source_version=$(dpkg-query -W -f='${Version}' linux-source-$KERNEL_SERIES 2>/dev/null) \
  || die "the Debian package linux-source-$KERNEL_SERIES is not installed (scripts/setup.sh)"
[ -r "$FRAGMENT" ] || die "$FRAGMENT missing"

key=$( {
  echo "recipe=$RECIPE"; echo "source=$source_version"; cat "$FRAGMENT"
  for p in "${PATCHES[@]}"; do echo "patch=${p##*/}"; cat "$p"; done
} | sha256sum | cut -c1-16)
entry="$KERNEL_CACHE/$key"

built() { [ -r "$entry/vmlinux" ] && [ -r "$entry/version" ]; }
if built; then
  echo "$entry"
  exit 0
fi
[ "$mode" = build ] || die "guest kernel $key (linux-source-$KERNEL_SERIES $source_version) not built: run scripts/setup.sh"

# One build at a time per cache (clones on one machine share it): a second caller waits, then
# finds the entry the first one made.
mkdir -p "$KERNEL_CACHE"
exec 9>"$KERNEL_CACHE/.lock"
flock 9 || die "cannot lock $KERNEL_CACHE/.lock"
if built; then
  echo "$entry"
  exit 0
fi

for tool in make gcc bc bison flex strip tar flock patch; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done

work=$(mktemp -d "$KERNEL_CACHE/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "setup: building the guest kernel (linux-source-$KERNEL_SERIES $source_version, config $key; about 8 minutes, once)"
tar -xf "$tarball" -C "$work" || die "cannot extract $tarball"
src=$(ls -d "$work"/linux-source-$KERNEL_SERIES 2>/dev/null) || die "$tarball holds no linux-source-$KERNEL_SERIES/"
for p in "${PATCHES[@]}"; do
  patch -d "$src" -p1 --quiet --forward <"$p" >/dev/null || die "kernel/patches/${p##*/} does not apply to linux-source-$KERNEL_SERIES $source_version"
done
out="$work/out"
log="$work/build.log"
kmake() { make -C "$src" O="$out" ARCH=x86_64 "$@"; }

# Everything off, then exactly the fragment's options on.
kmake KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig >"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; die "kernel configuration failed (log above)"; }
# An option whose dependencies are not met is silently dropped by Kconfig: refuse that.
missing=()
while IFS= read -r line; do
  grep -qxF -- "$line" "$out/.config" || missing+=("$line")
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=' "$FRAGMENT")
[ ${#missing[@]} -eq 0 ] || die "kernel/guest.config options Kconfig did not keep (unmet dependencies): ${missing[*]}"

if ! kmake -j"$(nproc)" vmlinux >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "kernel build failed (log above)"
fi
mkdir -p "$work/entry"
strip -o "$work/entry/vmlinux" "$out/vmlinux" || die "cannot strip vmlinux"
cp "$out/.config" "$work/entry/config"
kmake -s kernelrelease >"$work/entry/version" 2>>"$log" || die "cannot read the kernel release"
rm -rf "$entry"
mv "$work/entry" "$entry"
echo "$entry"
