//! Scratch disks: the files behind the root's writable layer and `storage` volumes. Each is a
//! nameless file in the workdir (`O_TMPFILE`, or created and unlinked at once where the file
//! system lacks it), formatted ext4 on the host by `mke2fs` and then reserved in full on the
//! host disk (`fallocate`) before QEMU gets it as an inherited descriptor (`/dev/fd/N`).
//!
//! Reserved, not sparse: a guest that fills a sparse disk while the host's file system is full
//! gets I/O errors on writeback, its ext4 aborts the journal, and a writer with dirty pages then
//! waits in the kernel's dirty-page throttling for as long as the VM lives. With the space
//! reserved, a full disk is the guest's own ENOSPC, which every program handles; a host without
//! the space refuses the activity at start, in one line. The guest's discards are not passed to
//! the host, so the reservation holds for the VM's life.
//!
//! Having no name, a disk cannot outlive the VM: its space returns to the host when the last
//! descriptor closes, which happens whatever ends the runtime, SIGKILL included.
//!
//! [`create_disks`] makes a deployment's set (the root's writable layer when it is on disk, then
//! one per `storage` volume, each with the virtio serial the guest finds it by), and
//! [`root_param`] tells the guest where its root's layer is.
//!
//! Formatting happens on the host because `mke2fs` there is native code that takes a few
//! milliseconds, where the guest would need its own `mke2fs` in the initramfs and would run it
//! under TCG. The host never mounts the file system; only the guest kernel parses it.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use agent_protocol::boot;

use crate::deployment::{Deployment, DiskSpec, RootLayer};

/// The smallest disk accepted: below 8 MiB `mke2fs` leaves the journal out, and without a
/// journal ext4's `errors=remount-ro` stops nothing.
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// Disks are sized in whole 4 KiB file-system blocks.
const BLOCK: u64 = 4096;
/// The ext4 features, spelled out so that the host's `mke2fs.conf` cannot add one the guest
/// kernel lacks. A journal although nothing on a scratch disk outlives the VM: the guest kernel
/// (6.1) honours `errors=remount-ro` by aborting the journal, so without one a file system that
/// reported an error stays writable. No `metadata_csum`: its checksums cost guest CPU (much of
/// it under TCG).
const FEATURES: &str = "has_journal,ext_attr,dir_index,filetype,extent,flex_bg,sparse_super,\
                        large_file,huge_file,dir_nlink,extra_isize,64bit,^resize_inode";
/// Where `mke2fs` lives when `PATH` (a user's, which often lacks the sbin dirs) does not have it.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Why a scratch disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `mke2fs` is missing.
    #[error("mke2fs not found on PATH, in /usr/sbin or in /sbin (install e2fsprogs)")]
    NoMkfs,
    /// Smaller than [`MIN_DISK_BYTES`].
    #[error("a disk of {0} bytes is too small (at least {MIN_DISK_BYTES})")]
    TooSmall(u64),
    /// The file could not be created or sized.
    #[error("cannot create a {size}-byte disk in {dir}: {source}")]
    Create {
        /// The directory.
        dir: PathBuf,
        /// Requested size.
        size: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The host's file system does not have the space to reserve.
    #[error(
        "the workdir's file system ({dir}) has {free} bytes free; the activity's scratch disks \
         need {needed} (--storage-gib)"
    )]
    NoSpace {
        /// The directory.
        dir: PathBuf,
        /// Bytes free there.
        free: u64,
        /// Bytes the disks need.
        needed: u64,
    },
    /// Reserving the space failed otherwise.
    #[error("cannot reserve {bytes} bytes in {dir}: {source}")]
    Reserve {
        /// The directory.
        dir: PathBuf,
        /// Bytes asked for.
        bytes: u64,
        /// The error.
        source: nix::Error,
    },
    /// `mke2fs` could not be run or failed.
    #[error("mke2fs failed: {0}")]
    Mkfs(String),
}

/// An ext4-formatted scratch disk, open read-write. Dropping it closes the last descriptor this
/// process holds.
#[derive(Debug)]
pub struct ScratchDisk {
    file: File,
}

/// The `mke2fs` to format with.
pub fn find_mkfs() -> Result<PathBuf, DiskError> {
    crate::host::process::on_path("mke2fs")
        .or_else(|| {
            SBIN_DIRS
                .iter()
                .map(|d| Path::new(d).join("mke2fs"))
                .find(|p| p.is_file())
        })
        .ok_or(DiskError::NoMkfs)
}

/// `size` rounded up to whole blocks.
fn block_aligned(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

impl ScratchDisk {
    /// Creates a disk of `size` bytes in `dir`, formatted ext4 by `mkfs` (from [`find_mkfs`])
    /// with an empty root directory owned by root, and reserved in full on the host disk.
    pub fn create(dir: &Path, size: u64, mkfs: &Path) -> Result<Self, DiskError> {
        if size < MIN_DISK_BYTES {
            return Err(DiskError::TooSmall(size));
        }
        let size = block_aligned(size);
        let create = |source| DiskError::Create {
            dir: dir.to_path_buf(),
            size,
            source,
        };
        let file = tempfile::tempfile_in(dir).map_err(create)?;
        file.set_len(size).map_err(create)?;
        format(&file, mkfs)?;
        // After mkfs, whose discard pass would punch the allocation out again; mode 0 only
        // allocates what is not allocated yet and keeps the data.
        let len = libc::off_t::try_from(size).map_err(|_| DiskError::Reserve {
            dir: dir.to_path_buf(),
            bytes: size,
            source: nix::errno::Errno::EFBIG,
        })?;
        match nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, len) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOSPC) => {
                return Err(DiskError::NoSpace {
                    dir: dir.to_path_buf(),
                    free: free_bytes(dir),
                    needed: size,
                })
            }
            Err(e @ (nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS)) => {
                tracing::warn!(
                    "{} cannot reserve space ({e}): the guest gets I/O errors if the host's \
                     file system fills up before its disk does",
                    dir.display()
                );
            }
            Err(source) => {
                return Err(DiskError::Reserve {
                    dir: dir.to_path_buf(),
                    bytes: size,
                    source,
                })
            }
        }
        Ok(Self { file })
    }

    /// The descriptor QEMU must inherit.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The path QEMU opens the inherited descriptor by.
    pub fn qemu_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/fd/{}", self.fd()))
    }
}

/// Bytes free for this user in the file system of `dir` (0 when unknown).
fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|st| st.blocks_available().saturating_mul(st.fragment_size()))
        .unwrap_or(0)
}

/// Runs `mkfs` on `file`, which it inherits as `/dev/fd/N`.
fn format(file: &File, mkfs: &Path) -> Result<(), DiskError> {
    let fd = file.as_raw_fd();
    let mut cmd = Command::new(mkfs);
    cmd.args([
        "-q", "-F", "-O", FEATURES, "-b", "4096", "-I", "256", "-m", "0",
    ])
    // Inode tables are zeroed by discarding (punching holes), so the file stays sparse and
    // the guest has nothing left to initialise; the journal needs no zeroing in a new file,
    // whose unwritten blocks read as zeros.
    .args([
        "-E",
        "lazy_itable_init=0,lazy_journal_init=1,root_owner=0:0",
    ])
    .args(["-L", "scratch"])
    .arg(format!("/dev/fd/{fd}"))
    .env("MKE2FS_CONFIG", "/dev/null")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    crate::host::process::inherit_fd(&mut cmd, fd);
    let out = cmd
        .output()
        .map_err(|e| DiskError::Mkfs(format!("cannot run {}: {e}", mkfs.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let last = crate::host::process::last_lines(&String::from_utf8_lossy(&out.stderr), 1);
    Err(DiskError::Mkfs(format!("{last} ({})", out.status)))
}

/// Creates the deployment's scratch disks in `workdir`: the root's writable layer (when it is
/// on disk) first, then one per storage volume, with their serials.
pub async fn create_disks(
    d: &Deployment,
    workdir: &Path,
) -> anyhow::Result<Vec<(String, ScratchDisk)>> {
    let mut specs: Vec<(String, DiskSpec)> = Vec::new();
    if let RootLayer::Disk(spec) = d.root {
        specs.push((boot::ROOT_SERIAL.into(), spec));
    }
    specs.extend(
        d.storage_volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (boot::storage_serial(i), v.disk)),
    );
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let dir = workdir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mkfs = find_mkfs()?;
        let needed = specs.iter().fold(0u64, |sum, (_, s)| {
            sum.saturating_add(block_aligned(s.size))
        });
        let mut disks = Vec::with_capacity(specs.len());
        for (serial, s) in specs {
            match ScratchDisk::create(&dir, s.size, &mkfs) {
                Ok(disk) => disks.push((serial, disk)),
                // Name the whole need, not the one disk that did not fit after the others.
                Err(DiskError::NoSpace { dir, .. }) => {
                    drop(disks);
                    return Err(DiskError::NoSpace {
                        free: free_bytes(&dir),
                        dir,
                        needed,
                    }
                    .into());
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("scratch disk {serial}")))
                }
            }
        }
        Ok(disks)
    })
    .await
    .context("the disk-creating task failed")?
}

/// The root's writable layer as the boot contract names it.
pub fn root_layer(root: &RootLayer) -> boot::RootLayer {
    match *root {
        RootLayer::Ram { size } => boot::RootLayer::Ram(size),
        RootLayer::Disk(DiskSpec { errors, .. }) => boot::RootLayer::Disk(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes the disk's file takes on the host disk.
    fn allocated(disk: &ScratchDisk) -> u64 {
        use std::os::unix::fs::MetadataExt;
        disk.file.metadata().unwrap().blocks() * 512
    }

    fn mkfs() -> Option<PathBuf> {
        find_mkfs().ok()
    }

    #[test]
    fn the_guest_learns_where_its_root_layer_is() {
        use crate::deploy::volume_override::Ext4Errors;
        let disk = |errors| {
            RootLayer::Disk(DiskSpec {
                size: 1 << 30,
                preallocate: 0,
                errors,
            })
        };
        assert_eq!(root_layer(&disk(None)), boot::RootLayer::Disk(None));
        assert_eq!(
            root_layer(&disk(Some(Ext4Errors::Panic))),
            boot::RootLayer::Disk(Some(Ext4Errors::Panic))
        );
        assert_eq!(
            root_layer(&RootLayer::Ram { size: 4096 }),
            boot::RootLayer::Ram(4096)
        );
    }

    #[test]
    fn sizes_are_whole_blocks() {
        assert_eq!(block_aligned(1), 4096);
        assert_eq!(block_aligned(4096), 4096);
        assert_eq!(block_aligned((1 << 20) + 1), (1 << 20) + 4096);
    }

    #[test]
    fn refuses_tiny_disks() {
        let dir = tempfile::tempdir().unwrap();
        let err = ScratchDisk::create(dir.path(), 8 << 20, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, DiskError::TooSmall(_)), "{err}");
    }

    #[test]
    fn a_disk_is_reserved_nameless_and_ext4() {
        let Some(mkfs) = mkfs() else {
            panic!("mke2fs is needed for this test (scripts/setup.sh installs e2fsprogs)");
        };
        let dir = tempfile::tempdir().unwrap();
        let disk = ScratchDisk::create(dir.path(), 512 << 20, &mkfs).unwrap();
        assert_eq!(disk.file.metadata().unwrap().len(), 512 << 20);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let used = allocated(&disk);
        assert!(
            used >= 512 << 20,
            "a 512 MiB disk reserves only {used} bytes"
        );
        // The ext4 superblock: magic at 1024 + 0x38, s_feature_compat (bit 2: a journal) at
        // 1024 + 0x5c.
        let mut sb = [0u8; 0x60];
        std::os::unix::fs::FileExt::read_exact_at(&disk.file, &mut sb, 1024).unwrap();
        assert_eq!(sb[0x38..0x3a], [0x53, 0xef]);
        assert_ne!(sb[0x5c] & 0x4, 0, "no journal");
    }

    #[test]
    fn a_failing_mkfs_is_reported_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = ScratchDisk::create(dir.path(), 16 << 20, Path::new("/bin/false")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("mke2fs failed:"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
