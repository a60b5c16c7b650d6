//! # qemu-config
//!
//! Sits between `deploy`'s `deployment.json` and the QEMU process that `start` spawns: a typed
//! description of one VM ([`VmConfig`]: accelerator, machine, CPUs, memory, kernel and initramfs,
//! disks, vsock, virtio-fs and network devices, console) rendered to QEMU's argv by [`VmConfig::to_args`].
//! Pure code: no process is started here. [`accel`] chooses the accelerator from what the host
//! offers.

pub mod accel;
mod render;
pub mod tsc;

use std::path::PathBuf;

pub use accel::{choose_accel, Accel, AccelChoice, AccelRequest, HostProbe};

/// The machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// PC with PCIe (`-M q35`): virtio devices on PCI, ACPI power-off.
    Q35,
    /// Firecracker-like minimal machine (`-M microvm`): virtio-mmio devices found through ACPI,
    /// no PCI, no firmware but qboot; boots faster and holds less memory. Under TCG its guest
    /// needs the host's TSC frequency ([`VmConfig::tsc_khz`]); a panic restarts the guest with a
    /// triple fault (`reboot=t`, rendered with the machine), which `-no-reboot` turns into QEMU's
    /// exit.
    Microvm,
}

impl Machine {
    /// The machine for `accel`, with the TSC frequency to give its guest
    /// ([`VmConfig::tsc_khz`]): microvm, told the host's TSC frequency under TCG; q35 under TCG
    /// when that frequency is not known (`host_tsc_khz`), where only q35's timers let the guest
    /// calibrate its clock. Under KVM the guest reads its clock's rate from the hypervisor.
    pub fn for_host(accel: Accel, host_tsc_khz: Option<u64>) -> (Machine, Option<u64>) {
        match (accel, host_tsc_khz) {
            (Accel::Kvm, _) => (Machine::Microvm, None),
            (Accel::Tcg, Some(khz)) => (Machine::Microvm, Some(khz)),
            (Accel::Tcg, None) => (Machine::Q35, None),
        }
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Discarded.
    None,
    /// Appended to a file (unbounded: for tests and benchmarks, not for activities).
    File(PathBuf),
    /// Written to a connected stream socket QEMU inherits under this number (its reader
    /// decides what to keep).
    Socket(std::os::fd::RawFd),
}

/// A raw disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The file (`/dev/fd/N` for a descriptor QEMU inherits).
    pub path: PathBuf,
    /// The virtio serial the guest finds it by.
    pub serial: String,
    /// How the guest may use it.
    pub access: DiskAccess,
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskAccess {
    /// Read-only (the image).
    ReadOnly,
    /// Read-write, for the life of the VM only: a scratch disk deleted when the VM ends. Guest
    /// flushes are not passed to the host disk (nothing on it must survive a host crash); the
    /// guest's discards are not passed either (the file's space stays reserved for the VM); a
    /// host write error reaches the guest as an I/O error instead of pausing the VM.
    Scratch,
}

/// How the guest gets its vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vsock {
    /// The host kernel's vhost-vsock (`/dev/vhost-vsock`) with a unique guest CID.
    Kernel {
        /// The guest's context id (≥ 3, unique among running VMs).
        cid: u32,
        /// An open `/dev/vhost-vsock` QEMU inherits (the caller has already claimed `cid` on
        /// it, so no other VM can take it between the check and QEMU's start); `None`: QEMU
        /// opens the device itself.
        vhostfd: Option<i32>,
    },
    /// A vhost-user daemon (vhost-device-vsock) listening on this socket.
    VhostUser {
        /// The daemon's vhost-user socket.
        socket: PathBuf,
    },
}

/// A virtio-fs share served by virtiofsd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// The tag the guest mounts.
    pub tag: String,
}

/// A virtio-net card on a host datagram socket QEMU inherits: one datagram is one raw Ethernet
/// frame (no virtio-net header), both ways (`-netdev dgram`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The guest-visible MAC address.
    pub mac: [u8; 6],
    /// The connected datagram socket (a UDP socket, or one end of a socket pair), under this
    /// number in QEMU.
    pub socket: std::os::fd::RawFd,
}

/// One VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// The accelerator.
    pub accel: Accel,
    /// The machine type.
    pub machine: Machine,
    /// Virtual CPUs (≥ 1).
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line (the machine's own parameters are added when rendering).
    pub cmdline: String,
    /// The guest TSC's frequency in kHz, given to the guest kernel (`tsc_early_khz=`) instead of
    /// its own calibration: set it for microvm under TCG ([`tsc::host_tsc_khz`]).
    pub tsc_khz: Option<u64>,
    /// Disks, in order.
    pub disks: Vec<Disk>,
    /// The vsock device, if any.
    pub vsock: Option<Vsock>,
    /// virtio-fs shares.
    pub shares: Vec<FsShare>,
    /// Network cards, in order.
    pub nics: Vec<Nic>,
    /// Where the serial console goes.
    pub console: Console,
    /// A virtio-balloon device with free page reporting: the guest hands the memory it frees
    /// (in 2 MiB blocks) back to the host, so QEMU's RSS follows what the guest uses instead of
    /// the most it ever touched. The guest needs the `virtio_balloon` driver.
    pub free_page_reporting: bool,
    /// TCG's translation cache in MiB (at least 1; unused under KVM). See
    /// [`DEFAULT_TCG_CACHE_MIB`].
    pub tcg_cache_mib: u64,
}

/// Why a configuration cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No CPUs.
    #[error("a VM needs at least one CPU")]
    NoCpus,
    /// Too little memory for the kernel.
    #[error("{0} MiB of memory is too little for the guest (at least {MIN_MEMORY_MIB} MiB)")]
    TooLittleMemory(u64),
    /// A string that would break QEMU's option syntax.
    #[error("{what} {value:?} contains a character QEMU options cannot carry (',' or a control character)")]
    BadValue {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Two shares with one tag.
    #[error("virtio-fs tag {0:?} is used twice")]
    DuplicateTag(String),
    /// No translation cache: QEMU would take its own default, up to 1 GiB.
    #[error("TCG's translation cache cannot be 0 MiB")]
    NoTcgCache,
    /// A guest CID that is reserved.
    #[error("guest CID {0} is reserved (use 3 or more)")]
    ReservedCid(u32),
}

/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 64;

/// TCG's translation cache by default, in MiB. QEMU's own default is an eighth of the host's RAM, up to 1 GiB,
/// and a guest that keeps making new code (a JIT, or a hostile guest) fills it: QEMU then holds
/// that much more host memory than the VM was given. Booting and running the sample image
/// translate about 34 MiB; the `/bin/true` loop slows down only once the cache is under ~8 MiB.
pub const DEFAULT_TCG_CACHE_MIB: u64 = 64;

/// The guest's CPU under TCG: everything TCG emulates, but for ERMS ("enhanced `rep movsb`").
/// With ERMS the guest kernel and glibc copy every large buffer with `rep movsb`, which TCG runs
/// one byte per loop turn; without it they use `rep movsq` or vector loops. Under TCG this
/// multiplies every copy's speed (a pipe between two guest processes: 88–105 → 388 MiB/s,
/// stdout through the runtime API 23–36 → 75 MiB/s, one run each on the build machine). A
/// program that asks CPUID for ERMS takes its other path; none needs it.
pub const TCG_CPU_MODEL: &str = "max,-erms";

/// The guest's CPU under KVM: the host's own, as far as KVM passes it through.
pub const KVM_CPU_MODEL: &str = "max";

/// Kernel parameters for microvm's guest, whose virtio-mmio transport QEMU gives a 1024-entry
/// ring on every queue, whatever the device (on PCI: 128 for vsock, 256 for a disk). Without
/// them virtio-vsock keeps a 4 KiB receive buffer posted in each entry (4.2 MiB of guest memory
/// from boot; `rx_buffers` is the guest kernel's own patch, `kernel/patches/`) and virtio-blk
/// preallocates 1024 requests per disk. With them, as many as on PCI. virtio-fs keeps its
/// ring: it sizes its largest request (1 MiB) by it.
pub const MICROVM_QUEUE_PARAMS: &str =
    "vmw_vsock_virtio_transport.rx_buffers=128 virtio_blk.queue_depth=256";
