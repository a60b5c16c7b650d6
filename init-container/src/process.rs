//! Starting processes inside the image root, and the per-process state the event loop keeps:
//! output pipes, a bounded stdin buffer, and the exit status with what is left to drain.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;

use agent_protocol::RunProcess;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::boot::checked_relative;
use crate::error::{Context, InitError, Result};
use crate::in_root;
use crate::spawn::{self, Plan, Step};
use crate::users;

/// Most bytes of stdin held for a process that is not reading it.
pub const MAX_STDIN_BUFFER: usize = 1024 * 1024;
/// The search path for a program named without a '/' when the environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
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
    /// Output read but not sent yet: short reads are gathered into fuller chunks (at most
    /// [`agent_protocol::MAX_OUTPUT_CHUNK`] bytes wait here).
    pub pending: Vec<u8>,
    /// Until when the pipe is left to fill before `pending` goes out.
    pub hold_until: Option<std::time::Instant>,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: u32) -> Self {
        // A deeper pipe lets a writer of small pieces run on while the agent gathers them.
        let _ = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Self {
            fd,
            stream,
            drain_left: None,
            pending: Vec::new(),
            hold_until: None,
        }
    }
}

/// Capacity asked for each output pipe (the kernel's `pipe-max-size` default).
const PIPE_SIZE: libc::c_int = 1024 * 1024;

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
/// `cgroup` is the directory of the cgroup it is born in (see [`crate::limits`]).
pub fn spawn(root: &Path, req: &RunProcess, cgroup: Option<RawFd>) -> Result<Proc> {
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
    // Checked as the chrooted process will see it, without following a link out of the root.
    let root_fd = in_root::open_root(root)?;
    in_root::dir_in(&root_fd, rel, false).map_err(|e| {
        InitError::sys(
            format!("working directory {cwd}"),
            nix::errno::Errno::from_raw(e.errno),
        )
    })?;
    let id = users::resolve(&root_fd, &req.user, &req.group)?;
    for kv in &req.env {
        if !matches!(kv.split_once('='), Some((k, _)) if !k.is_empty()) {
            return Err(InitError::invalid(format!(
                "environment entry {kv:?} is not KEY=VALUE"
            )));
        }
    }
    let cstr = |what: &str, s: &str| {
        CString::new(s).map_err(|_| InitError::invalid(format!("{what} {s:?} holds a NUL byte")))
    };
    let cstrs =
        |what: &str, v: &[String]| v.iter().map(|s| cstr(what, s)).collect::<Result<Vec<_>>>();
    let mut argv = cstrs("argument", &req.argv)?;
    if argv.is_empty() {
        argv.push(cstr("path", &req.path)?);
    }
    let env = cstrs("environment entry", &req.env)?;
    let candidates = exec_candidates(&req.path, &req.env)
        .iter()
        .map(|p| cstr("path", p))
        .collect::<Result<Vec<_>>>()?;

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_w, stdin_r) = if req.stdin {
        let (r, w) = pipe()?;
        (Some(w), Some(r))
    } else {
        (None, None)
    };
    let stdin_fd = match &stdin_r {
        Some(r) => r.as_raw_fd(),
        None => dev_null()?,
    };
    let plan = Plan {
        candidates,
        argv,
        env,
        root: cstr("root", &root.to_string_lossy())?,
        cwd: cstr("working directory", cwd)?,
        stdio: [stdin_fd, out_w.as_raw_fd(), err_w.as_raw_fd()],
        groups: id.groups.clone(),
        gid: id.gid,
        uid: id.uid,
        cgroup: cgroup.unwrap_or(-1),
    };
    let pid = match spawn::spawn(&plan) {
        Ok(pid) => pid,
        Err((Step::Exec, errno)) => {
            return Err(InitError::sys(format!("exec {}", req.path), errno))
        }
        Err((Step::Start, errno)) => {
            return Err(InitError::sys(format!("start {}", req.path), errno))
        }
        Err((step, errno)) => {
            return Err(InitError::sys(
                format!("exec {}: {step:?}", req.path),
                errno,
            ))
        }
    };
    // The child's ends close here; ours stay.
    drop((stdin_r, out_w, err_w));
    let pipes = vec![Pipe::new(out_r, 1), Pipe::new(err_r, 2)];
    for p in &pipes {
        fresh_nonblocking(&p.fd)?;
    }
    if let Some(s) = &stdin_w {
        fresh_nonblocking(s)?;
    }
    let stdin = stdin_w;
    Ok(Proc {
        pid,
        pipes,
        stdin,
        stdin_buf: VecDeque::new(),
        stdin_close: false,
        status: None,
    })
}

/// The paths `execve` is tried with: `path` itself when it holds a '/', else `path` in each
/// directory of the process's `PATH` (the image's default when it has none), like `execvp`.
fn exec_candidates(path: &str, env: &[String]) -> Vec<String> {
    if path.contains('/') {
        return vec![path.to_string()];
    }
    let search = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    search
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{path}", dir.trim_end_matches('/'))
        })
        .collect()
}

/// Sets `O_NONBLOCK` on our end of a pipe made by [`pipe`]: its other status flags are known
/// to be clear, so one `fcntl` does (each system call counts under TCG: this runs per command).
fn fresh_nonblocking(fd: &OwnedFd) -> Result<()> {
    fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).ctx(|| "fcntl F_SETFL".into())?;
    Ok(())
}

/// `/dev/null` for the stdin of commands that get none: opened once, kept open (close-on-exec),
/// and installed as each such child's fd 0 (`dup2` clears close-on-exec on the copy only).
fn dev_null() -> Result<RawFd> {
    static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let null = std::fs::File::open("/dev/null").ctx(|| "open /dev/null".into())?;
    let fd = above_stdio(OwnedFd::from(null))?;
    Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
}

/// A close-on-exec pipe, both ends above the standard descriptors: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ctx(|| "pipe".into())?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// `fd`, moved to a number ≥ 3 if it is 0, 1 or 2 (the child installs its stdio on those, and a
/// descriptor already there would be overwritten or keep close-on-exec).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3)).ctx(|| "fcntl F_DUPFD_CLOEXEC".into())?;
    // SAFETY: fcntl returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_candidates_follow_execvp() {
        assert_eq!(exec_candidates("/bin/sh", &[]), ["/bin/sh"]);
        assert_eq!(exec_candidates("./run", &[]), ["./run"]);
        let env = ["A=1".to_string(), "PATH=/opt/bin::/usr/bin/".to_string()];
        assert_eq!(
            exec_candidates("tool", &env),
            ["/opt/bin/tool", "./tool", "/usr/bin/tool"]
        );
        assert_eq!(exec_candidates("sh", &[]).last().unwrap(), "/bin/sh");
    }
}
