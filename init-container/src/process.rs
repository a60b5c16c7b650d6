//! Starting processes inside the image root, and the per-process state the event loop keeps:
//! output pipes, a bounded stdin buffer, and the exit status with what is left to drain.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use agent_protocol::RunProcess;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{chdir, chroot, setgid, setgroups, setsid, setuid, Gid, Uid};

use crate::boot::checked_relative;
use crate::error::{Context, InitError, Result};
use crate::users;

/// Most bytes of stdin held for a process that is not reading it.
pub const MAX_STDIN_BUFFER: usize = 1024 * 1024;
/// Largest argv or env list accepted.
const MAX_LIST: usize = 64 * 1024;

/// One output pipe.
#[derive(Debug)]
pub struct Pipe {
    /// The read end (non-blocking).
    pub fd: OwnedFd,
    /// 1 or 2.
    pub stream: u32,
    /// Bytes still to send after the process exited (what the pipe held at that moment).
    pub drain_left: Option<usize>,
}

/// A process started by the agent.
#[derive(Debug)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Output pipes still open.
    pub pipes: Vec<Pipe>,
    /// Stdin pipe, when asked for.
    pub stdin: Option<OwnedFd>,
    /// Bytes waiting to go to stdin.
    pub stdin_buf: VecDeque<u8>,
    /// Close stdin once `stdin_buf` is written.
    pub stdin_close: bool,
    /// The raw wait status, once reaped.
    pub status: Option<i32>,
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: fd is open for the duration of the call.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(bfd, FcntlArg::F_GETFL).ctx(|| "fcntl F_GETFL".into())?;
    fcntl(
        bfd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .ctx(|| "fcntl F_SETFL".into())?;
    Ok(())
}

/// Starts `req` chrooted into `root`, as the requested user, with exactly the given environment.
pub fn spawn(root: &Path, req: &RunProcess) -> Result<Proc> {
    if req.path.is_empty() {
        return Err(InitError::invalid("the program path is empty"));
    }
    if req.argv.len() > MAX_LIST || req.env.len() > MAX_LIST {
        return Err(InitError::invalid(
            "too many arguments or environment entries",
        ));
    }
    let cwd = if req.cwd.is_empty() {
        "/"
    } else {
        req.cwd.as_str()
    };
    let rel = checked_relative(cwd)?;
    if !root.join(rel).is_dir() {
        let errno = if root.join(rel).exists() {
            nix::errno::Errno::ENOTDIR
        } else {
            nix::errno::Errno::ENOENT
        };
        return Err(InitError::sys(format!("working directory {cwd}"), errno));
    }
    let id = users::resolve(root, &req.user, &req.group)?;
    let mut cmd = Command::new(&req.path);
    if let Some((first, rest)) = req.argv.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in &req.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                cmd.env(k, v);
            }
            _ => {
                return Err(InitError::invalid(format!(
                    "environment entry {kv:?} is not KEY=VALUE"
                )))
            }
        }
    }
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let root = root.to_path_buf();
    let cwd = cwd.to_string();
    let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(id.uid), Gid::from_raw(id.gid));
    // SAFETY: the init is single-threaded, so the child may allocate; it only makes system calls.
    unsafe {
        cmd.pre_exec(move || {
            let io = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
            setsid().map_err(io)?;
            chroot(&root).map_err(io)?;
            chdir(cwd.as_str()).map_err(io)?;
            setgroups(&groups).map_err(io)?;
            setgid(gid).map_err(io)?;
            setuid(uid).map_err(io)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().ctx(|| format!("exec {}", req.path))?;
    let pid = child.id() as i32;
    let mut pipes = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        pipes.push(Pipe {
            fd: OwnedFd::from(out),
            stream: 1,
            drain_left: None,
        });
    }
    if let Some(err) = child.stderr.take() {
        pipes.push(Pipe {
            fd: OwnedFd::from(err),
            stream: 2,
            drain_left: None,
        });
    }
    let stdin = child.stdin.take().map(OwnedFd::from);
    for p in &pipes {
        set_nonblocking(p.fd.as_raw_fd())?;
    }
    if let Some(s) = &stdin {
        set_nonblocking(s.as_raw_fd())?;
    }
    // The Child handle is dropped without waiting: the event loop reaps every child itself.
    drop(child);
    Ok(Proc {
        pid,
        pipes,
        stdin,
        stdin_buf: VecDeque::new(),
        stdin_close: false,
        status: None,
    })
}

/// Bytes waiting in a pipe.
pub fn pending_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc < 0 {
        0
    } else {
        n.max(0) as usize
    }
}
