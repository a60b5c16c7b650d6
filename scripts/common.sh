# Shared settings of the project's scripts: where tools and the guest kernel live, pinned versions.
# Source it; it defines variables and small helpers only.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Helper daemons and the guest kernel, built or fetched by setup.sh (project-local, ignored by git).
TOOLS_DIR="${YA_RUNTIME_VM_TOOLS_DIR:-$REPO_ROOT/.tools}"

VIRTIOFSD_VERSION=1.14.0
VHOST_DEVICE_VSOCK_VERSION=0.3.0
# The Debian cloud kernel (virtio, vsock, virtiofs, squashfs and overlay as plain .ko modules).
# If Debian has dropped this ABI from its archive, setup.sh falls back to what the
# linux-image-cloud-amd64 meta-package points at, and says so.
KERNEL_PACKAGE="${YA_RUNTIME_VM_KERNEL_PACKAGE:-linux-image-6.1.0-56-cloud-amd64-unsigned}"
KERNEL_DIR="$TOOLS_DIR/kernel"

export PATH="$TOOLS_DIR/bin:$PATH"

say() { printf '%s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
