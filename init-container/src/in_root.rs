//! Paths inside the image root, resolved the way a process chrooted there would see them and
//! never further: an image (or a guest process) may turn any of its paths into a symlink to `/`,
//! `/proc/1/…` or `..`, and the init must not follow it out into its own file system. Every
//! lookup goes through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a descriptor of
//! the root, and files the init reads must be regular files, opened without blocking (a FIFO
//! in place of `/etc/passwd` would otherwise stop the init on `open`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Context, InitError, Result};

/// Attempts when `openat2` answers EAGAIN (a rename raced with the lookup of `..`).
const RETRIES: usize = 8;

/// A descriptor of the root directory itself (the init's own path, trusted).
pub fn open_root(root: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", root.display()))
}

/// Opens `rel` (relative to the root, `..` and symlinks confined to it) with `flags`.
pub fn open_in(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    // openat2 refuses flags that mean nothing with O_PATH (O_NOCTTY among them).
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY
    };
    let how = OpenHow::new()
        .flags(flags | extra)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = if rel.is_empty() { "." } else { rel };
    let mut tries = 0;
    loop {
        match openat2(root, rel, how) {
            Err(Errno::EAGAIN) if tries < RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// The directory `rel` inside the root, as an `O_PATH` descriptor; with `create`, the missing
/// components are made (mode 755) one at a time, each inside its resolved parent.
pub fn dir_in(root: &OwnedFd, rel: &str, create: bool) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match open_in(root, rel, flags) {
        Err(Errno::ENOENT) if create => {}
        other => return other.ctx(|| format!("/{rel}")),
    }
    let mut parent = open_in(root, "", flags).ctx(|| "/".into())?;
    let mut walked = String::new();
    for name in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(name);
        match mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(InitError::sys(format!("mkdir /{walked}"), e)),
        }
        parent = open_in(root, &walked, flags).ctx(|| format!("/{walked}"))?;
    }
    Ok(parent)
}

/// A path that names what `fd` refers to, for calls that take a path (`mount`).
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The text of the regular file `rel` inside the root, at most `max` bytes of it; `None` when
/// it does not exist, an error when it is anything but a regular file.
pub fn read_regular(root: &OwnedFd, rel: &str, max: u64) -> Result<Option<String>> {
    let fd = match open_in(root, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
        Err(Errno::ENOENT) => return Ok(None),
        other => other.ctx(|| format!("open /{rel}"))?,
    };
    let st = fstat(&fd).ctx(|| format!("stat /{rel}"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(InitError::invalid(format!(
            "the image's /{rel} is not a regular file"
        )));
    }
    // One read of the size fstat gave and a byte more usually takes the whole file: this runs
    // for every command (the image's passwd and group), and each system call is dear under TCG.
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let size = usize::try_from(st.st_size).unwrap_or(0).min(limit);
    let mut bytes = vec![0u8; size.saturating_add(1).min(limit)];
    let mut len = 0;
    loop {
        let want = bytes.len() - len;
        let n = match nix::unistd::read(&fd, &mut bytes[len..]) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(InitError::sys(format!("read /{rel}"), e)),
        };
        len += n;
        // A regular file's short read is its end (no signal handler runs in the init).
        if n < want || len >= limit {
            break;
        }
        // The file grew since fstat: read on, up to `max`.
        bytes.resize(len.saturating_mul(2).min(limit), 0);
    }
    bytes.truncate(len);
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| InitError::invalid(format!("the image's /{rel} is not UTF-8")))
}

/// How [`write_file`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The file's content becomes `content`.
    Replace,
    /// `content` goes after what the file holds.
    Append,
}

/// Writes `content` to the file `name` in the directory `dir` inside the root (the directory is
/// created when missing). Whatever is at `name` and is not a regular file (a symlink, a FIFO, a
/// directory left empty) is removed first, so the write never leaves the file and never blocks;
/// a file made here gets mode 644.
pub fn write_file(
    root: &OwnedFd,
    dir: &str,
    name: &str,
    content: &[u8],
    mode: WriteMode,
) -> Result<()> {
    use std::io::Write;
    let shown = format!("/{dir}/{name}");
    let dirfd = dir_in(root, dir, true)?;
    if let Ok(st) = fstatat(&dirfd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            let how = if kind == SFlag::S_IFDIR {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            unlinkat(&dirfd, name, how).ctx(|| format!("remove {shown}"))?;
        }
    }
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC
        | match mode {
            WriteMode::Replace => OFlag::O_TRUNC,
            WriteMode::Append => OFlag::O_APPEND,
        };
    let fd = nix::fcntl::openat(&dirfd, name, flags, Mode::from_bits_truncate(0o644))
        .ctx(|| format!("open {shown}"))?;
    let st = fstat(&fd).ctx(|| format!("stat {shown}"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(InitError::invalid(format!("{shown} is not a regular file")));
    }
    std::fs::File::from(fd)
        .write_all(content)
        .map_err(|e| InitError::io(format!("write {shown}"), &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root_path = outer.path().join("root");
        fs::create_dir_all(root_path.join("etc")).unwrap();
        fs::write(outer.path().join("secret"), "host\n").unwrap();
        fs::write(root_path.join("secret"), "image\n").unwrap();
        // Absolute, relative and `..`-laden links all stay in the root.
        symlink("/secret", root_path.join("etc/abs")).unwrap();
        symlink("../../../secret", root_path.join("etc/rel")).unwrap();
        symlink("/proc/self/root/secret", root_path.join("etc/magic")).unwrap();
        let root = open_root(&root_path).unwrap();
        assert_eq!(
            read_regular(&root, "etc/abs", 100).unwrap().unwrap(),
            "image\n"
        );
        assert_eq!(
            read_regular(&root, "etc/rel", 100).unwrap().unwrap(),
            "image\n"
        );
        assert!(read_regular(&root, "etc/magic", 100).unwrap().is_none());
        assert!(read_regular(&root, "../secret", 100).unwrap().unwrap() == "image\n");
        assert!(read_regular(&root, "etc/none", 100).unwrap().is_none());
    }

    #[test]
    fn read_regular_takes_the_whole_file_up_to_its_limit_and_refuses_what_is_not_text() {
        let outer = tempfile::tempdir().unwrap();
        let root = open_root(outer.path()).unwrap();
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        fs::write(outer.path().join("big"), &text).unwrap();
        assert_eq!(read_regular(&root, "big", 1 << 20).unwrap().unwrap(), text);
        assert_eq!(
            read_regular(&root, "big", 1000).unwrap().unwrap(),
            text[..1000]
        );
        let exact = text.len() as u64;
        assert_eq!(read_regular(&root, "big", exact).unwrap().unwrap(), text);
        fs::write(outer.path().join("empty"), "").unwrap();
        assert_eq!(read_regular(&root, "empty", 100).unwrap().unwrap(), "");
        fs::write(outer.path().join("binary"), [0xff, 0xfe, 0]).unwrap();
        let e = read_regular(&root, "binary", 100).unwrap_err();
        assert!(e.to_string().contains("/binary is not UTF-8"), "{e}");
    }

    #[test]
    fn write_file_appends_or_replaces_and_never_leaves_the_root_or_blocks() {
        let outer = tempfile::tempdir().unwrap();
        let root_dir = outer.path().join("root");
        fs::create_dir_all(root_dir.join("etc")).unwrap();
        let root = open_root(&root_dir).unwrap();
        let etc = root_dir.join("etc");
        // A FIFO in place of the file, and a symlink out of the root.
        nix::unistd::mkfifo(&etc.join("hosts"), Mode::from_bits_truncate(0o644)).unwrap();
        fs::write(outer.path().join("outside"), "keep").unwrap();
        symlink(outer.path().join("outside"), etc.join("resolv.conf")).unwrap();
        write_file(&root, "etc", "hosts", b"a\n", WriteMode::Append).unwrap();
        write_file(&root, "etc", "hosts", b"b\n", WriteMode::Append).unwrap();
        write_file(&root, "etc", "resolv.conf", b"x\n", WriteMode::Replace).unwrap();
        write_file(&root, "etc", "resolv.conf", b"y\n", WriteMode::Replace).unwrap();
        assert_eq!(fs::read_to_string(etc.join("hosts")).unwrap(), "a\nb\n");
        assert_eq!(fs::read_to_string(etc.join("resolv.conf")).unwrap(), "y\n");
        assert_eq!(
            fs::read_to_string(outer.path().join("outside")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("etc/passwd"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let root = open_root(dir.path()).unwrap();
        let e = read_regular(&root, "etc/passwd", 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_regular(&root, "etc", 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn directories_are_made_through_links_inside_the_root_only() {
        let outer = tempfile::tempdir().unwrap();
        let root_path = outer.path().join("root");
        fs::create_dir_all(root_path.join("data")).unwrap();
        // The image points /golem at / (of the host, as far as it knows) and /vol at ../../.
        symlink("/", root_path.join("golem")).unwrap();
        symlink("../..", root_path.join("vol")).unwrap();
        let root = open_root(&root_path).unwrap();
        dir_in(&root, "golem/input/x", true).unwrap();
        assert!(root_path.join("input/x").is_dir());
        dir_in(&root, "vol/out", true).unwrap();
        assert!(root_path.join("out").is_dir());
        assert!(!outer.path().join("out").exists() && !outer.path().join("input").exists());
        let e = dir_in(&root, "data/missing", false).unwrap_err();
        assert_eq!(e.errno, libc::ENOENT);
        fs::write(root_path.join("file"), "").unwrap();
        let e = dir_in(&root, "file/sub", true).unwrap_err();
        assert_eq!(e.errno, libc::ENOTDIR, "{e}");
    }
}
