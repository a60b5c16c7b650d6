//! The virtio-fs daemon for one host volume, started so that nothing a hostile guest does through
//! the volume lands on the provider's disk as a privilege:
//!
//! - **Owners**: every file the guest creates or chowns is owned by the runtime's own user and
//!   group on the host (`--translate-uid/gid squash-guest`), whatever uid the guest used.
//! - **Device nodes**: refused (`--modcaps=-mknod`, and the seccomp filter below for the case
//!   where the capability is not what stops it); FIFOs and sockets are still allowed.
//! - **setuid / setgid bits**: a seccomp filter, installed before virtiofsd starts and kept
//!   across its exec, answers `EPERM` to `chmod`-family calls and to file creation (`open`,
//!   `openat`, `creat`, `mknod(at)`) whose mode carries either bit. `openat2`, whose mode sits in
//!   a struct seccomp cannot read, answers `ENOSYS`, so virtiofsd falls back to `openat` (it
//!   probes `openat2` at start). Extended attributes (file capabilities among them) stay off,
//!   as virtiofsd has them by default.
//!
//! Sandbox: virtiofsd's own namespaces (mount, pid, net; plus a user namespace when not root),
//! else `chroot` (root only), else none. The choice is made once, by probing what the host
//! allows ([`Sandbox::probe`]), never by retrying after a failed start.

use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// How virtiofsd isolates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Mount, pid and net namespaces (and a user namespace when not root), `pivot_root` into
    /// the shared directory.
    Namespace,
    /// `chroot` into the shared directory (needs root).
    Chroot,
    /// None: virtiofsd sees the host file system as the runtime's user does.
    None,
}

impl Sandbox {
    /// virtiofsd's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
            Sandbox::None => "none",
        }
    }

    /// The strongest sandbox this host allows virtiofsd (`bin`), probed once per process: the
    /// namespaces virtiofsd would create are created in a child that then runs
    /// `virtiofsd --version`; `chroot` needs root.
    pub fn probe(bin: &Path) -> (Sandbox, &'static str) {
        static CHOICE: OnceLock<(Sandbox, &'static str)> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            let root = nix::unistd::geteuid().is_root();
            if namespaces_work(bin, root) {
                (
                    Sandbox::Namespace,
                    "the host allows the namespaces virtiofsd needs",
                )
            } else if root {
                (
                    Sandbox::Chroot,
                    "this host refuses new namespaces (a container without CAP_SYS_ADMIN?): \
                     virtiofsd is confined by chroot",
                )
            } else {
                (
                    Sandbox::None,
                    "this host has no user namespaces for an unprivileged runtime and chroot \
                     needs root: virtiofsd runs without a sandbox",
                )
            }
        })
    }
}

/// Whether a child can create the namespaces virtiofsd's `namespace` sandbox creates.
fn namespaces_work(bin: &Path, root: bool) -> bool {
    use std::os::unix::process::CommandExt;
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWNET;
    if !root {
        flags |= libc::CLONE_NEWUSER;
    }
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: unshare is async-signal-safe and changes only the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            tracing::debug!("virtiofsd's namespaces are not available here: {e}");
            false
        }
    }
}

/// The seccomp filters virtiofsd runs under, built once: (openat2 → ENOSYS, privileged modes →
/// EPERM). Everything else is allowed here; virtiofsd adds its own allow-list.
fn filters() -> &'static Result<[BpfProgram; 2], String> {
    static FILTERS: OnceLock<Result<[BpfProgram; 2], String>> = OnceLock::new();
    FILTERS.get_or_init(|| build_filters().map_err(|e| e.to_string()))
}

fn build_filters() -> Result<[BpfProgram; 2], seccompiler::Error> {
    let bit = |arg: u8, mask: u64| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            mask,
        )
    };
    let ty = |arg: u8, kind: u32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
            u64::from(kind),
        )
    };
    let (suid, sgid) = (u64::from(libc::S_ISUID), u64::from(libc::S_ISGID));
    let creat = libc::O_CREAT as u64;
    // A mode argument with setuid or setgid.
    let mode_rules = |arg: u8| -> Result<Vec<SeccompRule>, seccompiler::Error> {
        Ok(vec![
            SeccompRule::new(vec![bit(arg, suid)?])?,
            SeccompRule::new(vec![bit(arg, sgid)?])?,
        ])
    };
    // File creation (`flags` has O_CREAT) with such a mode.
    let create_rules = |flags: u8, mode: u8| -> Result<Vec<SeccompRule>, seccompiler::Error> {
        Ok(vec![
            SeccompRule::new(vec![bit(flags, creat)?, bit(mode, suid)?])?,
            SeccompRule::new(vec![bit(flags, creat)?, bit(mode, sgid)?])?,
        ])
    };
    let mut mknod = mode_rules(2)?;
    mknod.push(SeccompRule::new(vec![ty(2, libc::S_IFCHR)?])?);
    mknod.push(SeccompRule::new(vec![ty(2, libc::S_IFBLK)?])?);
    let mut mknod_old = mode_rules(1)?;
    mknod_old.push(SeccompRule::new(vec![ty(1, libc::S_IFCHR)?])?);
    mknod_old.push(SeccompRule::new(vec![ty(1, libc::S_IFBLK)?])?);
    /// fchmodat2(2), Linux 6.6; not in every libc crate yet.
    const SYS_FCHMODAT2: i64 = 452;
    let privileged = SeccompFilter::new(
        [
            (libc::SYS_chmod, mode_rules(1)?),
            (libc::SYS_fchmod, mode_rules(1)?),
            (libc::SYS_fchmodat, mode_rules(2)?),
            (SYS_FCHMODAT2, mode_rules(2)?),
            (libc::SYS_creat, mode_rules(1)?),
            (libc::SYS_open, create_rules(1, 2)?),
            (libc::SYS_openat, create_rules(2, 3)?),
            (libc::SYS_mknod, mknod_old),
            (libc::SYS_mknodat, mknod),
        ]
        .into_iter()
        .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )?;
    let no_openat2 = SeccompFilter::new(
        [(libc::SYS_openat2, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?;
    Ok([no_openat2.try_into()?, privileged.try_into()?])
}

/// virtiofsd serving `dir` on `socket` in `sandbox`, under the filters above: the command to
/// spawn (stdio is the caller's to set).
pub fn command(
    bin: &Path,
    socket: &Path,
    dir: &Path,
    sandbox: Sandbox,
) -> anyhow::Result<tokio::process::Command> {
    let filters = filters()
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot build virtiofsd's seccomp filter: {e}"))?;
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", dir.display()))
        .args(["--sandbox", sandbox.name()])
        // Direct I/O: a write goes from the writer's own pages to virtiofsd and a read lands in
        // the reader's, with no copy through the guest's page cache (the dearest part of a
        // volume's I/O under TCG), and what the host's side writes between commands is seen at
        // once. `--allow-mmap` keeps shared mappings of the volume's files working (the guest
        // kernel, 6.6 or later, then caches the mapped pages and keeps them coherent).
        .args(["--cache", "never", "--allow-mmap"])
        .arg(format!("--translate-uid=squash-guest:0:{uid}:4294967295"))
        .arg(format!("--translate-gid=squash-guest:0:{gid}:4294967295"))
        .arg("--modcaps=-mknod");
    // SAFETY: installing a prepared filter is two system calls on memory built before the
    // fork; nothing is allocated in the child.
    unsafe {
        cmd.pre_exec(move || {
            for f in filters {
                seccompiler::apply_filter(f)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_build() {
        let [a, b] = filters().as_ref().unwrap();
        assert!(!a.is_empty() && !b.is_empty());
    }

    /// Runs `f` in a forked child under the filters; its exit status is `f`'s errno (0: allowed).
    fn errno_under_filters(f: impl FnOnce() -> i32) -> i32 {
        let [a, b] = filters().as_ref().unwrap();
        // SAFETY: the child only makes system calls and exits.
        match unsafe { libc::fork() } {
            0 => {
                let code = if seccompiler::apply_filter(a).is_err()
                    || seccompiler::apply_filter(b).is_err()
                {
                    255
                } else {
                    f()
                };
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
        }
    }

    #[test]
    fn setuid_modes_and_device_nodes_are_refused_the_rest_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            |name: &str| std::ffi::CString::new(dir.path().join(name).to_str().unwrap()).unwrap();
        let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let (plain, suid, fifo, dev) = (path("plain"), path("suid"), path("fifo"), path("dev"));
        let created = errno_under_filters(|| unsafe {
            if libc::open(plain.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o755) < 0 {
                return errno();
            }
            if libc::chmod(plain.as_ptr(), 0o700) < 0 {
                return errno();
            }
            if libc::mkfifo(fifo.as_ptr(), 0o644) < 0 {
                return errno();
            }
            0
        });
        assert_eq!(created, 0);
        for (what, call) in [
            (
                "open O_CREAT 4755",
                Box::new(|| unsafe {
                    libc::open(suid.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o4755)
                }) as Box<dyn Fn() -> i32>,
            ),
            (
                "chmod 2755",
                Box::new(|| unsafe { libc::chmod(plain.as_ptr(), 0o2755) }),
            ),
            (
                "fchmodat 4700",
                Box::new(|| unsafe { libc::fchmodat(libc::AT_FDCWD, plain.as_ptr(), 0o4700, 0) }),
            ),
            (
                "mknod c 1:3",
                Box::new(|| unsafe {
                    libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3))
                }),
            ),
            (
                "mknodat b 7:0",
                Box::new(|| unsafe {
                    libc::mknodat(
                        libc::AT_FDCWD,
                        dev.as_ptr(),
                        libc::S_IFBLK | 0o600,
                        libc::makedev(7, 0),
                    )
                }),
            ),
        ] {
            let got = errno_under_filters(|| if call() < 0 { errno() } else { 0 });
            assert_eq!(got, libc::EPERM, "{what}");
        }
        let got = errno_under_filters(|| unsafe {
            let how: libc::open_how = std::mem::zeroed();
            let dot = c".";
            if libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                dot.as_ptr(),
                &how,
                std::mem::size_of::<libc::open_how>(),
            ) < 0
            {
                errno()
            } else {
                0
            }
        });
        assert_eq!(got, libc::ENOSYS);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("plain")).unwrap().mode() & 0o7777,
            0o700
        );
        assert!(!dir.path().join("suid").exists() && !dir.path().join("dev").exists());
    }
}
