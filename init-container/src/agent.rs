//! The agent: one event loop (poll) over the connection to the host (made by the guest), the
//! SIGCHLD signalfd, and every process's pipes.
//!
//! Backpressure: process output is read only while the queue towards the host holds less than
//! [`OUT_LIMIT`] bytes, so a slow host stalls the writers instead of growing memory. The exit
//! rule: when a process is reaped, what its pipes hold at that moment is sent before its
//! [`Exited`] notification, and the pipes are then closed (later writers, such as background
//! children that kept the pipe, get EPIPE).
//!
//! Coalescing: a program that writes small pieces would otherwise cost one frame (and one
//! runtime-API event on the host) per piece. A read that empties a pipe keeps what it got and
//! leaves the pipe out of the poll set for [`HOLD`], so the writer fills it meanwhile; then all of
//! it goes out in full chunks. A quiet process's last line waits at most [`HOLD`], and nothing
//! waits once the process has exited: its held bytes go out first, then what the pipe holds,
//! then the exit.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_protocol::{
    encode, encode_output_into, notification, request, response, DecodeError, Empty,
    Error as WireError, Exited, Frame, FrameDecoder, Hello, Notification, Request, Response,
    Started, MAX_OUTPUT_CHUNK, MAX_VSOCK_WRITE,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
use nix::unistd::Pid;

use crate::error::{Context, InitError, Result};
use crate::limits::Limits;
use crate::log;
use crate::process::{self, pending_bytes, Proc, MAX_STDIN_BUFFER};

/// Most bytes queued towards the host before process output stops being read.
pub const OUT_LIMIT: usize = 1024 * 1024;
/// Delay between attempts to reach the host.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// How long processes get between SIGTERM and SIGKILL at shutdown.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long output read from a pipe that went empty waits for more before it is sent.
pub const HOLD: Duration = Duration::from_millis(2);

struct Conn {
    fd: OwnedFd,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// What a poll slot belongs to.
#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Conn,
    Pipe(i32, usize),
    Stdin(i32),
}

/// The agent's state.
pub struct Agent {
    sigfd: SignalFd,
    conn: Option<Conn>,
    /// When the next connection attempt may be made.
    next_connect: Instant,
    /// A failed attempt was logged (later ones are not).
    warned: bool,
    procs: BTreeMap<i32, Proc>,
    root: PathBuf,
    /// The host's vsock port to connect to.
    port: u32,
    /// The cgroup requestor processes join.
    limits: Limits,
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn error_response(e: &InitError) -> response::Body {
    response::Body::Error(WireError {
        errno: e.errno,
        message: e.to_string(),
    })
}

impl Agent {
    /// An agent that will connect to the host's vsock `port` (normally [`agent_protocol::AGENT_PORT`]).
    pub fn new(sigfd: SignalFd, root: PathBuf, port: u32, limits: Limits) -> Self {
        Self {
            port,
            limits,
            sigfd,
            conn: None,
            next_connect: Instant::now(),
            warned: false,
            procs: BTreeMap::new(),
            root,
        }
    }

    /// Connects to the host when there is no connection and the retry delay has passed. The
    /// guest calls the host, not the other way round: the host listens before the VM starts, so
    /// there is no race with the guest's boot and no polling on the host side.
    fn connect(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_connect {
            return;
        }
        self.next_connect = Instant::now() + CONNECT_RETRY;
        let port = self.port;
        let attempt = (|| {
            let fd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .ctx(|| "vsock socket".into())?;
            connect(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_HOST, port))
                .ctx(|| format!("connect to the host's vsock port {port}"))?;
            process::set_nonblocking(fd.as_raw_fd())?;
            Ok::<_, InitError>(fd)
        })();
        match attempt {
            Ok(fd) => {
                log!("connected to the host on vsock port {}", self.port);
                self.conn = Some(Conn {
                    fd,
                    decoder: FrameDecoder::new(),
                    out: Vec::new(),
                    out_pos: 0,
                });
            }
            Err(e) if !self.warned => {
                log!("{e}; retrying every {CONNECT_RETRY:?}");
                self.warned = true;
            }
            Err(_) => {}
        }
    }

    /// Serves until a shutdown request; returns after answering it.
    pub fn run(&mut self) -> Result<()> {
        let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
        loop {
            self.connect();
            let room = self.conn.as_ref().is_some_and(|c| c.queued() < OUT_LIMIT);
            let mut slots = vec![Slot::Signal];
            let mut pfds = vec![pollfd(self.sigfd.as_raw_fd(), libc::POLLIN)];
            if let Some(c) = &self.conn {
                let mut ev = 0;
                if c.decoder.room() > 0 && c.queued() < OUT_LIMIT {
                    ev |= libc::POLLIN;
                }
                if c.queued() > 0 {
                    ev |= libc::POLLOUT;
                }
                slots.push(Slot::Conn);
                pfds.push(pollfd(c.fd.as_raw_fd(), ev));
            }
            let mut draining = false;
            let now = Instant::now();
            let mut next_release: Option<Instant> = None;
            for (pid, p) in &self.procs {
                if p.status.is_some() {
                    draining = true;
                    continue;
                }
                if room {
                    for (i, pipe) in p.pipes.iter().enumerate() {
                        if let Some(t) = pipe.hold_until {
                            next_release = Some(next_release.map_or(t, |n| n.min(t)));
                            if t > now {
                                continue;
                            }
                        }
                        slots.push(Slot::Pipe(*pid, i));
                        pfds.push(pollfd(pipe.fd.as_raw_fd(), libc::POLLIN));
                    }
                }
                if let (Some(s), false) = (&p.stdin, p.stdin_buf.is_empty()) {
                    slots.push(Slot::Stdin(*pid));
                    pfds.push(pollfd(s.as_raw_fd(), libc::POLLOUT));
                }
            }
            let held = next_release.map(|t| {
                // Rounded up: poll counts whole milliseconds.
                let left = t.saturating_duration_since(now);
                left.as_micros().div_ceil(1000) as i32
            });
            let timeout = if draining && room {
                0
            } else if self.conn.is_none() {
                CONNECT_RETRY.as_millis() as i32
            } else {
                held.unwrap_or(-1)
            };
            // SAFETY: pfds is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(InitError::io("poll", &e));
            }
            for (slot, pfd) in slots.iter().zip(&pfds) {
                if pfd.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::Signal => self.reap(),
                    Slot::Conn => {
                        if pfd.revents & libc::POLLOUT != 0 {
                            self.flush();
                        }
                        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                            && self.read_conn()?
                        {
                            return Ok(());
                        }
                    }
                    Slot::Pipe(pid, i) => self.read_pipe(pid, i, &mut buf),
                    Slot::Stdin(pid) => self.write_stdin(pid),
                }
            }
            self.release_held(&mut buf);
            self.drain_exited(&mut buf);
            self.flush();
        }
    }

    /// Sends what pipes whose hold has ended gathered, with what they hold now.
    fn release_held(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        let due: Vec<(i32, usize)> = self
            .procs
            .iter()
            .filter(|(_, p)| p.status.is_none())
            .flat_map(|(pid, p)| {
                p.pipes
                    .iter()
                    .enumerate()
                    .filter(|(_, pipe)| pipe.hold_until.is_some_and(|t| t <= now))
                    .map(move |(i, _)| (*pid, i))
            })
            .collect();
        // Highest index first: a pipe that ends is removed without moving the others' indexes.
        for &(pid, i) in due.iter().rev() {
            if let Some(pipe) = self.procs.get_mut(&pid).and_then(|p| p.pipes.get_mut(i)) {
                pipe.hold_until = None;
            }
            self.read_pipe(pid, i, buf);
            self.send_pending(pid, i);
        }
    }

    /// Sends everything pipe `i` of `pid` has gathered, in chunks, and ends its hold.
    fn send_pending(&mut self, pid: i32, i: usize) {
        let Some(pipe) = self.procs.get_mut(&pid).and_then(|p| p.pipes.get_mut(i)) else {
            return;
        };
        pipe.hold_until = None;
        let (stream, pending) = (pipe.stream, std::mem::take(&mut pipe.pending));
        for chunk in pending.chunks(MAX_OUTPUT_CHUNK) {
            self.send_output(pid, stream, chunk);
        }
    }

    fn send(&mut self, frame: &Frame) {
        let Some(c) = &mut self.conn else { return };
        match encode(frame) {
            Ok(bytes) => c.out.extend_from_slice(&bytes),
            Err(e) => log!("dropping an unencodable frame: {e}"),
        }
    }

    /// Writes queued bytes until the socket would block. Drops the connection on error.
    fn flush(&mut self) {
        let Some(c) = &mut self.conn else { return };
        while c.queued() > 0 {
            let end = c.out.len().min(c.out_pos + MAX_VSOCK_WRITE);
            match write_fd(c.fd.as_raw_fd(), &c.out[c.out_pos..end]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log!("host connection lost on write: {e}");
                    self.conn = None;
                    return;
                }
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos > OUT_LIMIT {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
    }

    /// Reads and handles requests. `Ok(true)` after a shutdown request was answered.
    fn read_conn(&mut self) -> Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(c) = &mut self.conn else {
                return Ok(false);
            };
            let want = buf.len().min(c.decoder.room());
            if want == 0 {
                break;
            }
            match read_fd(c.fd.as_raw_fd(), &mut buf[..want]) {
                Ok(0) => {
                    log!("host closed the connection");
                    self.conn = None;
                    return Ok(false);
                }
                Ok(n) => {
                    c.decoder.feed(&buf[..n]);
                    if self.handle_frames()? {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log!("host connection lost on read: {e}");
                    self.conn = None;
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    fn handle_frames(&mut self) -> Result<bool> {
        loop {
            let Some(c) = &mut self.conn else {
                return Ok(false);
            };
            let frame = match c.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(false),
                Err(e) => {
                    match e.request_id() {
                        // A request this side cannot read: answer it, and go on.
                        Some(id) => self.send(&Frame::Response(
                            id,
                            Response {
                                body: Some(error_response(&InitError::invalid(format!(
                                    "bad request: {e}"
                                )))),
                            },
                        )),
                        None if e.is_recoverable() => log!("skipping a bad frame: {e}"),
                        None => {
                            self.protocol_error(&e);
                            return Ok(false);
                        }
                    }
                    continue;
                }
            };
            let Frame::Request(id, Request { body: Some(body) }) = frame else {
                log!("skipping a frame that is not a request");
                continue;
            };
            let shutdown = matches!(body, request::Body::Shutdown(_));
            let answer = self.handle(body);
            self.send(&Frame::Response(id, Response { body: Some(answer) }));
            if shutdown {
                return Ok(true);
            }
        }
    }

    /// The host's stream is out of step: say so on the console and drop it.
    fn protocol_error(&mut self, e: &DecodeError) {
        log!("closing the host connection: {e}");
        self.conn = None;
    }

    fn handle(&mut self, body: request::Body) -> response::Body {
        let ok = response::Body::Ok(Empty {});
        match body {
            request::Body::Hello(_) => response::Body::Hello(Hello {
                version: agent_protocol::VERSION as u32,
            }),
            request::Body::Run(req) => {
                match process::spawn(&self.root, &req, self.limits.cgroup_fd()) {
                    Ok(p) => {
                        let pid = p.pid;
                        self.procs.insert(pid, p);
                        response::Body::Started(Started { pid: pid as u64 })
                    }
                    Err(e) => error_response(&e),
                }
            }
            request::Body::Kill(k) => {
                let running = i32::try_from(k.pid)
                    .ok()
                    .filter(|pid| self.procs.get(pid).is_some_and(|p| p.status.is_none()));
                let Some(pid) = running else {
                    return error_response(&InitError::sys(
                        format!("kill {}", k.pid),
                        nix::errno::Errno::ESRCH,
                    ));
                };
                let sig = match Signal::try_from(k.signal) {
                    Ok(s) => s,
                    Err(e) => {
                        return error_response(&InitError::sys(format!("signal {}", k.signal), e))
                    }
                };
                match kill(Pid::from_raw(pid), sig) {
                    Ok(()) => ok,
                    Err(e) => error_response(&InitError::sys(format!("kill {pid}"), e)),
                }
            }
            request::Body::Mount(m) => match crate::boot::mount_volume(&m.tag, &m.path) {
                Ok(()) => ok,
                Err(e) => error_response(&e),
            },
            request::Body::MountRam(m) => match crate::boot::mount_ram(&m.path, m.size) {
                Ok(()) => ok,
                Err(e) => error_response(&e),
            },
            request::Body::ConfigureNetwork(n) => match crate::network::configure(&self.root, &n) {
                Ok(()) => ok,
                Err(e) => error_response(&e),
            },
            request::Body::MountDisk(m) => {
                match crate::boot::mount_disk(&m.serial, &m.path, &m.errors) {
                    Ok(()) => ok,
                    Err(e) => error_response(&e),
                }
            }
            request::Body::Sync(_) | request::Body::Shutdown(_) => {
                nix::unistd::sync();
                ok
            }
            request::Body::Stdin(w) => {
                let Some(p) = i32::try_from(w.pid)
                    .ok()
                    .and_then(|pid| self.procs.get_mut(&pid))
                else {
                    return error_response(&InitError::sys(
                        format!("stdin of {}", w.pid),
                        nix::errno::Errno::ESRCH,
                    ));
                };
                if p.stdin.is_none() {
                    return error_response(&InitError::sys(
                        format!("stdin of {}", w.pid),
                        nix::errno::Errno::EBADF,
                    ));
                }
                if p.stdin_buf.len() + w.data.len() > MAX_STDIN_BUFFER {
                    return error_response(&InitError::sys(
                        format!("stdin of {}", w.pid),
                        nix::errno::Errno::ENOBUFS,
                    ));
                }
                p.stdin_buf.extend(w.data);
                p.stdin_close |= w.close;
                let pid = p.pid;
                self.write_stdin(pid);
                ok
            }
        }
    }

    fn write_stdin(&mut self, pid: i32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let Some(fd) = &p.stdin else { return };
        while !p.stdin_buf.is_empty() {
            let (a, _) = p.stdin_buf.as_slices();
            match write_fd(fd.as_raw_fd(), a) {
                Ok(n) => {
                    p.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The reader is gone: what is left can never be delivered.
                    p.stdin_buf.clear();
                    p.stdin = None;
                    return;
                }
            }
        }
        if p.stdin_close {
            p.stdin = None;
        }
    }

    fn read_pipe(&mut self, pid: i32, i: usize, buf: &mut [u8]) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let Some(pipe) = p.pipes.get(i) else { return };
        let (stream, fd) = (pipe.stream, pipe.fd.as_raw_fd());
        // Take what the pipe holds, chunk by chunk, while the queue has room: one poll round per
        // pipe-full rather than per chunk (each round costs context switches, dear under TCG).
        loop {
            match read_fd(fd, buf) {
                Ok(0) => {
                    // The end: what was gathered goes out before the pipe is dropped.
                    self.send_pending(pid, i);
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.pipes.remove(i);
                    }
                    return;
                }
                Ok(n) => {
                    let Some(pipe) = self.procs.get_mut(&pid).and_then(|p| p.pipes.get_mut(i))
                    else {
                        return;
                    };
                    if pipe.pending.is_empty() && n == buf.len() {
                        // A full chunk: straight out, no copy.
                        self.send_output(pid, stream, &buf[..n]);
                    } else {
                        pipe.pending.extend_from_slice(&buf[..n]);
                        if pipe.pending.len() >= MAX_OUTPUT_CHUNK {
                            let rest = pipe.pending.split_off(MAX_OUTPUT_CHUNK);
                            let full = std::mem::replace(&mut pipe.pending, rest);
                            self.send_output(pid, stream, &full);
                        }
                    }
                    let room = self.conn.as_ref().is_some_and(|c| c.queued() < OUT_LIMIT);
                    if n < buf.len() {
                        self.hold(pid, i);
                        return;
                    }
                    if !room {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.hold(pid, i);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
                Err(e) => {
                    log!("read from pid {pid}: {e}");
                    self.send_pending(pid, i);
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.pipes.remove(i);
                    }
                    return;
                }
            }
        }
    }

    /// The pipe went empty: what it gathered waits up to [`HOLD`] for more.
    fn hold(&mut self, pid: i32, i: usize) {
        if let Some(pipe) = self.procs.get_mut(&pid).and_then(|p| p.pipes.get_mut(i)) {
            if !pipe.pending.is_empty() && pipe.hold_until.is_none() {
                pipe.hold_until = Some(Instant::now() + HOLD);
            }
        }
    }

    /// Queues one output chunk, encoded straight into the connection's buffer (one copy).
    fn send_output(&mut self, pid: i32, fd: u32, data: &[u8]) {
        let Some(c) = &mut self.conn else { return };
        if let Err(e) = encode_output_into(&mut c.out, pid as u64, fd, data) {
            log!("dropping an unencodable output chunk: {e}");
        }
    }

    /// Reaps every child that has ended; ours get their drain budget set.
    fn reap(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        while let Wait::Reaped(pid, status) = wait_any() {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.status = Some(status);
                p.stdin = None;
                for pipe in &mut p.pipes {
                    pipe.drain_left = Some(pending_bytes(pipe.fd.as_raw_fd()));
                }
            }
        }
    }

    /// For reaped processes: sends what their pipes held at exit, then the exit notification.
    fn drain_exited(&mut self, buf: &mut [u8]) {
        if self.conn.is_none() {
            return;
        }
        let exited: Vec<i32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.status.is_some())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in exited {
            // What was gathered is older than what the pipes still hold: it goes first.
            let pipes = self.procs.get(&pid).map_or(0, |p| p.pipes.len());
            for i in 0..pipes {
                self.send_pending(pid, i);
            }
            loop {
                if self.conn.as_ref().is_none_or(|c| c.queued() >= OUT_LIMIT) {
                    return;
                }
                let Some(p) = self.procs.get_mut(&pid) else {
                    break;
                };
                let Some(pipe) = p.pipes.iter_mut().find(|pp| pp.drain_left != Some(0)) else {
                    break;
                };
                let left = pipe.drain_left.unwrap_or(0);
                let want = left.min(buf.len());
                let stream = pipe.stream;
                let got = if want == 0 {
                    Ok(0)
                } else {
                    read_fd(pipe.fd.as_raw_fd(), &mut buf[..want])
                };
                match got {
                    Ok(n) if n > 0 => {
                        pipe.drain_left = Some(left - n);
                        self.send_output(pid, stream, &buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    _ => pipe.drain_left = Some(0),
                }
            }
            let Some(p) = self.procs.remove(&pid) else {
                continue;
            };
            let status = p.status.unwrap_or(0);
            let (code, signal) = if libc::WIFSIGNALED(status) {
                (None, Some(libc::WTERMSIG(status)))
            } else {
                (Some(libc::WEXITSTATUS(status)), None)
            };
            let body = notification::Body::Exited(Exited {
                pid: pid as u64,
                code,
                signal,
            });
            self.send(&Frame::Notification(Notification { body: Some(body) }));
        }
    }

    /// Sends what is queued, waiting up to `limit` for the host to take it.
    pub fn flush_blocking(&mut self, limit: Duration) {
        let start = Instant::now();
        while self.conn.as_ref().is_some_and(|c| c.queued() > 0) && start.elapsed() < limit {
            self.flush();
            if let Some(c) = &self.conn {
                let mut p = [pollfd(c.fd.as_raw_fd(), libc::POLLOUT)];
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(p.as_mut_ptr(), 1, 100) };
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// The outcome of one non-blocking `waitpid(-1)`.
enum Wait {
    /// A child ended: its pid and raw status.
    Reaped(i32, i32),
    /// Children remain, none has ended.
    Running,
    /// No children at all.
    NoChildren,
}

fn wait_any() -> Wait {
    let mut status = 0;
    // SAFETY: waitpid writes the status int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        p if p > 0 => Wait::Reaped(p, status),
        0 => Wait::Running,
        _ => Wait::NoChildren,
    }
}

/// Ends every process: SIGTERM, a grace period, then SIGKILL; reaps them all.
pub fn terminate_all() {
    // Reaps what has ended; true while children remain.
    let reap_all = || loop {
        match wait_any() {
            Wait::Reaped(..) => {}
            Wait::Running => return true,
            Wait::NoChildren => return false,
        }
    };
    // kill(-1) reaches every process but init itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let start = Instant::now();
    while reap_all() && start.elapsed() < TERM_GRACE {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let start = Instant::now();
    while reap_all() && start.elapsed() < TERM_GRACE {
        std::thread::sleep(Duration::from_millis(20));
    }
}
