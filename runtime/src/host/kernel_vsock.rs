//! The host kernel's vhost-vsock, used instead of vhost-device-vsock where `/dev/vhost-vsock`
//! can be opened: no helper daemon, and the kernel moves the bytes.
//!
//! Every VM on the host shares the kernel's vsock namespace, so each needs a guest CID of its
//! own and a host port of its own. The CID is claimed on our own open of the device
//! (`VHOST_VSOCK_SET_GUEST_CID`, which fails with `EADDRINUSE` when another VM holds it) and
//! that open fd is handed to QEMU (`vhostfd=`), so no other VM can take the CID between the
//! claim and QEMU's start. The port is the kernel's pick for our listener; the guest learns it
//! from `yarv.port=` on its command line, and a connection from any CID but our guest's is
//! refused (another VM on the host could otherwise reach this activity's agent port).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// The device.
pub const DEVICE: &str = "/dev/vhost-vsock";
/// `VHOST_VSOCK_SET_GUEST_CID`: `_IOW(VHOST_VIRTIO = 0xAF, 0x60, __u64)`.
const VHOST_VSOCK_SET_GUEST_CID: libc::c_ulong = (1 << 30) | (8 << 16) | (0xAF << 8) | 0x60;
/// `VMADDR_PORT_ANY`: let the kernel choose the listener's port.
const PORT_ANY: u32 = u32::MAX;
/// CIDs tried before giving up (each try is one ioctl).
const CID_ATTEMPTS: u32 = 4096;
/// CIDs are picked from `[FIRST_CID, FIRST_CID + CID_SPAN)`.
const FIRST_CID: u32 = 3;
const CID_SPAN: u32 = 1 << 30;

/// What can go wrong setting up the kernel's vsock.
#[derive(Debug, thiserror::Error)]
pub enum KernelVsockError {
    /// Opening the device failed for a reason other than its absence or permissions.
    #[error("cannot open {DEVICE}: {0}")]
    Open(std::io::Error),
    /// No free CID was found.
    #[error("no free guest CID after {CID_ATTEMPTS} attempts")]
    NoFreeCid,
    /// The CID ioctl failed otherwise.
    #[error("{DEVICE}: setting the guest CID failed: {0}")]
    SetCid(std::io::Error),
    /// The host listener could not be set up.
    #[error("cannot listen on a host vsock port: {0}")]
    Listen(std::io::Error),
}

/// A claimed guest CID, the device fd that holds it, and the host listener for its agent.
pub struct KernelVsock {
    /// The open device, to be inherited by QEMU.
    pub device: OwnedFd,
    /// The guest's CID.
    pub cid: u32,
    /// The host's listener for the guest's agent.
    pub listener: VsockListener,
    /// Its port (goes on the guest's command line as `yarv.port=`).
    pub port: u32,
}

/// The CID to try first: spread by pid so that concurrent runtimes rarely collide.
fn first_candidate(pid: u32) -> u32 {
    FIRST_CID + pid.wrapping_mul(2_654_435_761) % CID_SPAN
}

/// The `n`-th CID to try after `first`, wrapping inside the span.
fn candidate(first: u32, n: u32) -> u32 {
    let offset = (u64::from(first - FIRST_CID) + u64::from(n)) % u64::from(CID_SPAN);
    // The offset is below CID_SPAN (2^30), so it fits.
    FIRST_CID + offset as u32
}

impl KernelVsock {
    /// Claims a CID and listens for its agent; `Ok(None)` when `device` is absent or not
    /// accessible to this user (vhost-device-vsock is used then).
    pub fn open(device: &Path) -> Result<Option<Self>, KernelVsockError> {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(device)
        {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(KernelVsockError::Open(e)),
        };
        let device = OwnedFd::from(file);
        let cid = claim_cid(&device)?;
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, PORT_ANY))
            .map_err(KernelVsockError::Listen)?;
        let port = listener
            .local_addr()
            .map_err(KernelVsockError::Listen)?
            .port();
        Ok(Some(Self {
            device,
            cid,
            listener,
            port,
        }))
    }
}

fn claim_cid(device: &OwnedFd) -> Result<u32, KernelVsockError> {
    let first = first_candidate(std::process::id());
    for n in 0..CID_ATTEMPTS {
        let cid = candidate(first, n);
        let value = u64::from(cid);
        // SAFETY: the ioctl reads one u64 from the pointer, which is valid for the call.
        let r = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                VHOST_VSOCK_SET_GUEST_CID as _,
                &value as *const u64,
            )
        };
        if r == 0 {
            return Ok(cid);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EADDRINUSE) {
            return Err(KernelVsockError::SetCid(e));
        }
    }
    Err(KernelVsockError::NoFreeCid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        // linux/vhost.h: #define VHOST_VSOCK_SET_GUEST_CID _IOW(VHOST_VIRTIO, 0x60, __u64)
        assert_eq!(VHOST_VSOCK_SET_GUEST_CID, 0x4008_AF60);
    }

    #[test]
    fn candidates_stay_in_the_usable_range() {
        for pid in [0, 1, 4242, u32::MAX] {
            let first = first_candidate(pid);
            for n in [0, 1, CID_ATTEMPTS, CID_SPAN - 1, u32::MAX] {
                let c = candidate(first, n);
                assert!(
                    (FIRST_CID..FIRST_CID + CID_SPAN).contains(&c),
                    "{pid} {n} {c}"
                );
            }
            assert_ne!(candidate(first, 0), candidate(first, 1));
        }
    }

    #[test]
    fn a_missing_device_means_the_user_space_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(KernelVsock::open(&dir.path().join("vhost-vsock"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_device_that_is_not_vhost_vsock_is_an_error() {
        // /dev/null opens, but the CID ioctl fails (ENOTTY): a clear error, not a silent fallback.
        let e = KernelVsock::open(Path::new("/dev/null")).err().unwrap();
        assert!(matches!(e, KernelVsockError::SetCid(_)), "{e}");
    }
}
