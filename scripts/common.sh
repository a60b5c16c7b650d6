# Shared settings of the project's scripts: where tools and the guest kernel live, pinned versions.
# Source it; it defines variables and small helpers only.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Helper daemons and the guest kernel, built or fetched by setup.sh (project-local, ignored by git).
TOOLS_DIR="${YA_RUNTIME_VM_TOOLS_DIR:-$REPO_ROOT/.tools}"

VIRTIOFSD_VERSION=1.14.0
VHOST_DEVICE_VSOCK_VERSION=0.3.0
CARGO_DEB_VERSION=3.8.0
# Built guest kernels (scripts/build-kernel.sh), one directory per source version and
# configuration: outside the clone, so that every clone on this machine shares them.
# The Debian kernel source the guest kernel is built from (the package linux-source-$KERNEL_SERIES).
KERNEL_SERIES=6.12
KERNEL_CACHE="${YA_RUNTIME_VM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ya-runtime-vm}/kernel"

export PATH="$TOOLS_DIR/bin:$PATH"

say() { printf '%s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# busybox_rootfs ROOT: a minimal image root — static busybox with every applet linked, /etc/passwd
# and /etc/group with root and nobody, /tmp 1777, / 755, the usual empty mount points.
busybox_rootfs() {
  local root=$1 applet
  [ -x /bin/busybox ] || die "busybox-static is missing: run scripts/setup.sh"
  mkdir -p "$root"/{bin,sbin,etc,tmp,root,proc,sys,dev}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  chmod 1777 "$root/tmp"
  chmod 755 "$root"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# prepare_release_vm: what every VM benchmark needs, installed and built once (idempotent): the
# tools (setup.sh), the release runtime directory and ya-runtime-vm binary, the sample image.
# Sets TARGET_DIR and SAMPLE_IMAGE; exports YA_RUNTIME_VM_RUNTIME_DIR (the release runtime
# directory) and YA_RUNTIME_VM_ACCEL (tcg unless already set).
prepare_release_vm() {
  bash "$REPO_ROOT/scripts/setup.sh"
  bash "$REPO_ROOT/scripts/build-runtime.sh" release >/dev/null
  SAMPLE_IMAGE=$(bash "$REPO_ROOT/scripts/build-sample-image.sh")
  (cd "$REPO_ROOT" && cargo build --quiet --release -p ya-runtime-vm)
  TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
  export YA_RUNTIME_VM_RUNTIME_DIR="$TARGET_DIR/release/runtime"
  export YA_RUNTIME_VM_ACCEL=${YA_RUNTIME_VM_ACCEL:-tcg}
}
