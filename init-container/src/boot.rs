//! Boot, in order: the kernel's file systems, the console, the drivers, the image disk, the
//! overlay root (squashfs read-only under a writable upper layer: the ext4 disk the host made for
//! it, or a tmpfs), and what processes need inside that root. Also the volume mounts the agent
//! is asked for later (virtio-fs, tmpfs, ext4 disks).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{chown, unlinkat, Gid, Uid, UnlinkatFlags};

use agent_protocol::boot::{BootParams, Ext4Errors, RootLayer, IMAGE_SERIAL, ROOT_SERIAL};

use crate::error::{Context, InitError, Result};
use crate::in_root::{self, WriteMode};
use crate::log;

/// The image's squashfs, read-only.
const IMAGE_MNT: &str = "/mnt/image";
/// The file system holding the overlay's upper and work dirs.
const RW_MNT: &str = "/mnt/rw";
/// The merged root processes run in.
pub const ROOT: &str = "/mnt/root";
/// How long to wait for a disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    fs::create_dir_all(target).ctx(|| format!("mkdir {target}"))?;
    mount(Some(src), target, Some(fstype), flags, data)
        .ctx(|| format!("mount {fstype} on {target}"))
}

/// Mounts /proc, /sys, /dev, /dev/pts and /dev/shm of the initramfs, and points stdio at the
/// console.
pub fn kernel_filesystems() -> Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    console_stdio();
    Ok(())
}

/// Opens /dev/console as stdin, stdout and stderr (the kernel may have started us without them).
fn console_stdio() {
    use std::os::fd::AsRawFd;
    if let Ok(c) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `c` stays open for the call.
            unsafe { libc::dup2(c.as_raw_fd(), fd) };
        }
    }
}

/// Finds the block device whose virtio serial is `serial`, waiting for it to appear.
pub fn find_disk(serial: &str) -> Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim() == serial {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if start.elapsed() > DISK_WAIT {
            return Err(InitError::invalid(format!(
                "no disk with serial {serial:?} appeared within {}s",
                DISK_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The mount options of an ext4 file system the host formatted for this VM: `errors=` as asked
/// (the kernel's default, `remount-ro`, when not). No `discard`: the host keeps the disk's
/// space reserved and ignores discards.
fn ext4_options(errors: Option<Ext4Errors>) -> String {
    errors.map_or_else(String::new, |e| format!("errors={}", e.as_str()))
}

/// The `errors=` behaviour a `MountDisk` request names (empty: the default).
fn ext4_errors(errors: &str) -> Result<Option<Ext4Errors>> {
    if errors.is_empty() {
        return Ok(None);
    }
    Ext4Errors::parse(errors).map(Some).ok_or_else(|| {
        InitError::invalid(format!(
            "errors={errors:?} is not continue, remount-ro or panic"
        ))
    })
}

/// Mounts the image read-only with a writable upper layer at [`ROOT`]. The upper layer's root
/// takes the mode and owner of the image's root, so the merged root looks like the image's.
///
/// `upper_layer`: the root's writable layer as the host set it (`None`: a tmpfs of the kernel's
/// default size, for guests booted without the runtime).
pub fn overlay_root(disk: &Path, upper_layer: Option<RootLayer>) -> Result<()> {
    let disk_s = disk.to_string_lossy();
    mount_fs(&disk_s, IMAGE_MNT, "squashfs", MsFlags::MS_RDONLY, None)?;
    match upper_layer {
        Some(RootLayer::Disk(errors)) => {
            let dev = find_disk(ROOT_SERIAL)?;
            let opts = ext4_options(errors);
            mount_fs(
                &dev.to_string_lossy(),
                RW_MNT,
                "ext4",
                MsFlags::empty(),
                Some(&opts),
            )?;
        }
        Some(RootLayer::Ram(size)) => {
            let opts = format!("mode=0755,size={size}");
            mount_fs("tmpfs", RW_MNT, "tmpfs", MsFlags::empty(), Some(&opts))?;
        }
        None => mount_fs(
            "tmpfs",
            RW_MNT,
            "tmpfs",
            MsFlags::empty(),
            Some("mode=0755"),
        )?,
    }
    let upper = format!("{RW_MNT}/upper");
    let work = format!("{RW_MNT}/work");
    fs::create_dir_all(&upper).ctx(|| format!("mkdir {upper}"))?;
    fs::create_dir_all(&work).ctx(|| format!("mkdir {work}"))?;
    let image_root = fs::metadata(IMAGE_MNT).ctx(|| format!("stat {IMAGE_MNT}"))?;
    fs::set_permissions(
        &upper,
        fs::Permissions::from_mode(image_root.mode() & 0o7777),
    )
    .ctx(|| format!("chmod {upper}"))?;
    chown(
        upper.as_str(),
        Some(Uid::from_raw(image_root.uid())),
        Some(Gid::from_raw(image_root.gid())),
    )
    .ctx(|| format!("chown {upper}"))?;
    let opts = format!("lowerdir={IMAGE_MNT},upperdir={upper},workdir={work}");
    mount_fs("overlay", ROOT, "overlay", MsFlags::empty(), Some(&opts))
}

/// Creates `dir` inside the root with `mode` when it is missing.
fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx(|| format!("mkdir {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", dir.display()))
}

/// Mounts /proc, /sys and /dev inside the root and makes sure /tmp exists.
pub fn prepare_root() -> Result<()> {
    let root = Path::new(ROOT);
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
    ] {
        ensure_dir(&root.join(dir), mode)?;
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        nodev,
        None::<&str>,
    )
    .ctx(|| format!("mount proc in {ROOT}"))?;
    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        nodev,
        None::<&str>,
    )
    .ctx(|| format!("mount sysfs in {ROOT}"))?;
    mount(
        Some("/dev"),
        &root.join("dev"),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind /dev into {ROOT}"))?;
    Ok(())
}

/// Creates `path` (absolute, inside the root) and mounts the virtio-fs `tag` there.
pub fn mount_volume(tag: &str, path: &str) -> Result<()> {
    let rel = checked_relative(path)?;
    let target = mount_point(rel)?;
    mount(
        Some(tag),
        &in_root::fd_path(&target),
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .ctx(|| format!("mount virtio-fs {tag} on {path}"))
}

/// The directory inside the root for a guest-side volume (`kind`) at `path`, created when
/// missing; the root itself is refused (its writable layer is chosen at boot).
fn volume_dir(path: &str, kind: &str) -> Result<OwnedFd> {
    let rel = checked_relative(path)?;
    if rel.trim_matches('/').is_empty() {
        return Err(InitError::invalid(format!(
            "a {kind} volume cannot be mounted on / after boot"
        )));
    }
    mount_point(rel)
}

/// The directory `rel` inside the root (made when missing), resolved inside the root: an image
/// whose volume path crosses a symlink gets its volume where the link points in the image,
/// never in the init's own file system.
fn mount_point(rel: &str) -> Result<OwnedFd> {
    let root = in_root::open_root(Path::new(ROOT))?;
    in_root::dir_in(&root, rel, true)
}

/// Creates `path` (absolute, inside the root, not the root itself) and mounts a tmpfs of
/// `size` bytes there (a `ram` volume; mode 1777 like /tmp).
pub fn mount_ram(path: &str, size: u64) -> Result<()> {
    if size == 0 {
        return Err(InitError::invalid("a ram volume needs a size"));
    }
    let target = volume_dir(path, "ram")?;
    mount(
        Some("tmpfs"),
        &in_root::fd_path(&target),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={size},mode=1777").as_str()),
    )
    .ctx(|| format!("mount a {size}-byte tmpfs on {path}"))
}

/// Mounts the ext4 file system of the disk with virtio serial `serial` at `path` (absolute,
/// inside the root, not the root itself) with ext4's `errors=` behaviour (a `storage` volume).
/// Like a `ram` volume its top directory is mode 1777 and empty: the `lost+found` the host's
/// mkfs made is removed.
pub fn mount_disk(serial: &str, path: &str, errors: &str) -> Result<()> {
    let opts = ext4_options(ext4_errors(errors)?);
    if serial == IMAGE_SERIAL || serial == ROOT_SERIAL {
        return Err(InitError::invalid(format!(
            "disk {serial:?} is not a storage volume"
        )));
    }
    let dev = find_disk(serial)?;
    let target = volume_dir(path, "storage")?;
    mount(
        Some(dev.as_path()),
        &in_root::fd_path(&target),
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .ctx(|| format!("mount ext4 disk {serial} on {path}"))?;
    // The new file system's top: the mount point's descriptor still names what it covers.
    let root = in_root::open_root(Path::new(ROOT))?;
    let top = in_root::open_in(
        &root,
        checked_relative(path)?,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    )
    .ctx(|| format!("open {path}"))?;
    let _ = unlinkat(&top, "lost+found", UnlinkatFlags::RemoveDir);
    fchmod(&top, Mode::from_bits_truncate(0o1777)).ctx(|| format!("chmod {path}"))
}

/// `path` without its leading `/`, refused when not absolute or when it has `..`.
pub fn checked_relative(path: &str) -> Result<&str> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') {
        return Err(InitError::invalid(format!(
            "path {path:?} must be absolute and free of '..'"
        )));
    }
    Ok(path.trim_start_matches('/'))
}

fn kernel_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// The hostname a VM gets when the host names none.
const DEFAULT_HOSTNAME: &str = "golem";

/// `/etc/hosts` for a VM named `host`, as a container runtime writes it.
fn hosts_file(host: &str) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n")
}

/// Writes `/etc/hostname` and `/etc/hosts` in the root, replacing the image's, as Docker does.
/// Resolved inside the image root ([`in_root::write_file`]): an image's symlink never points
/// the init at its own files. An image whose `/etc` is not a directory (in the image) gets
/// neither.
fn write_identity_files(root: &Path, host: &str) -> Result<()> {
    let root = in_root::open_root(root)?;
    for (name, content) in [
        ("hostname", format!("{host}\n")),
        ("hosts", hosts_file(host)),
    ] {
        match in_root::write_file(&root, "etc", name, content.as_bytes(), WriteMode::Replace) {
            // A file, or a symlink to nowhere in the image.
            Err(e) if e.errno == libc::ENOTDIR || e.errno == libc::ENOENT => {
                log!("/etc in the image is not a directory: /etc/{name} not written");
            }
            other => other?,
        }
    }
    Ok(())
}

/// Runs the whole boot sequence; returns the host's vsock port for the agent.
pub fn boot() -> Result<u32> {
    kernel_filesystems()?;
    crate::network::loopback_up()?;
    let params = BootParams::parse(&kernel_cmdline())
        .map_err(|e| InitError::invalid(format!("kernel command line: {e}")))?;
    let disk = find_disk(IMAGE_SERIAL)?;
    overlay_root(&disk, params.root)?;
    prepare_root()?;
    let host = params.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    nix::unistd::sethostname(host).ctx(|| format!("sethostname {host}"))?;
    write_identity_files(Path::new(ROOT), host)?;
    Ok(params.port.unwrap_or(agent_protocol::AGENT_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_options_take_only_known_error_behaviours() {
        assert_eq!(ext4_options(None), "");
        assert_eq!(
            ext4_options(ext4_errors("remount-ro").unwrap()),
            "errors=remount-ro"
        );
        assert_eq!(ext4_errors("").unwrap(), None);
        assert!(ext4_errors("continue,dax").is_err());
        assert!(ext4_errors("ro").is_err());
    }

    #[test]
    fn hosts_names_localhost_and_the_vm() {
        let h = hosts_file("node-1");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("127.0.1.1\tnode-1\n"));
    }

    #[test]
    fn identity_files_replace_the_images_and_never_follow_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        fs::create_dir(&etc).unwrap();
        let outside = root.path().join("outside");
        fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, etc.join("hosts")).unwrap();
        fs::write(etc.join("hostname"), "image\n").unwrap();
        write_identity_files(root.path(), "vm").unwrap();
        assert_eq!(fs::read_to_string(etc.join("hostname")).unwrap(), "vm\n");
        assert_eq!(
            fs::read_to_string(etc.join("hosts")).unwrap(),
            hosts_file("vm")
        );
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        // /etc itself an absolute symlink out of the image: it resolves inside the image root,
        // and nothing is written through it.
        let root2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(root.path(), root2.path().join("etc")).unwrap();
        fs::remove_file(etc.join("hostname")).unwrap();
        write_identity_files(root2.path(), "other").unwrap();
        assert!(!etc.join("hostname").exists());
        // /etc a file: skipped, with a line on the console.
        let root3 = tempfile::tempdir().unwrap();
        fs::write(root3.path().join("etc"), "").unwrap();
        write_identity_files(root3.path(), "other").unwrap();
    }
}
