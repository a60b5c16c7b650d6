//! The runtime API's two byte streams, the process's stdin and stdout. The exe-unit starts the
//! runtime with pipes there: those are read and written through tokio's reactor, on the thread
//! of the task that uses them. tokio's own `Stdin` and `Stdout` hand every read and every write
//! to a blocking-pool thread instead, two thread switches more for each request and each event
//! (measured by `scripts/bench-runtime.sh`: 32 thread switches and ~0.5 ms of the runtime's CPU
//! per `/bin/true` round trip with them, 4 and ~0.15 ms with these and the single-threaded
//! runtime). Anything else (a terminal, a file) keeps tokio's `Stdin` and `Stdout`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

/// The runtime API's input.
pub enum Input {
    /// A pipe, read through the reactor.
    Pipe(pipe::Receiver),
    /// Anything else, read on tokio's blocking pool.
    Other(tokio::io::Stdin),
}

/// The runtime API's output.
pub enum Output {
    /// A pipe, written through the reactor.
    Pipe(pipe::Sender),
    /// Anything else, written on tokio's blocking pool.
    Other(tokio::io::Stdout),
}

/// The identity (device, inode) of the pipe behind `fd`, if it is one.
fn pipe_id(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    let is_fifo = st.st_mode & libc::S_IFMT == libc::S_IFIFO;
    is_fifo.then_some((st.st_dev, st.st_ino))
}

/// The process's stdin as the runtime API's input. Call it once and keep the result for every
/// later read: a pipe is set non-blocking, which tokio's blocking `Stdin` would not expect.
pub fn input() -> Input {
    let stdin = io::stdin();
    if pipe_id(stdin.as_fd()).is_some() {
        let own = stdin.as_fd().try_clone_to_owned();
        match own.and_then(pipe::Receiver::from_owned_fd) {
            Ok(rx) => return Input::Pipe(rx),
            Err(e) => tracing::debug!("stdin stays on the blocking pool: {e}"),
        }
    }
    Input::Other(tokio::io::stdin())
}

/// The process's stdout as the runtime API's output. Call it once: a pipe is set non-blocking,
/// unless stderr is the same pipe (the logs' writes expect a blocking descriptor).
pub fn output() -> Output {
    let (stdout, stderr) = (io::stdout(), io::stderr());
    if let Some(id) = pipe_id(stdout.as_fd()) {
        if pipe_id(stderr.as_fd()) != Some(id) {
            let own = stdout.as_fd().try_clone_to_owned();
            match own.and_then(pipe::Sender::from_owned_fd) {
                Ok(tx) => return Output::Pipe(tx),
                Err(e) => tracing::debug!("stdout stays on the blocking pool: {e}"),
            }
        }
    }
    Output::Other(tokio::io::stdout())
}

/// Waits until the client has read everything written to stdout (its pipe holds nothing), at
/// most `limit`, then `grace` more for it to handle what it read. yagna's client drops its
/// reading task as soon as the runtime's process has ended, with whatever it had not read yet:
/// a runtime that ends on an error must not exit before its last events are taken. Returns at
/// once when stdout is not a pipe.
pub async fn read_by_client(limit: Duration, grace: Duration) {
    let stdout = io::stdout();
    if pipe_id(stdout.as_fd()).is_none() {
        return;
    }
    let unread = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; stdout stays open for the process's life.
        let rc = unsafe { libc::ioctl(stdout.as_fd().as_raw_fd(), libc::FIONREAD, &mut n) };
        rc == 0 && n > 0
    };
    let deadline = tokio::time::Instant::now() + limit;
    while unread() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(grace).await;
}

impl AsyncRead for Input {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Input::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            Input::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(p).poll_write(cx, buf),
            Output::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(p).poll_flush(cx),
            Output::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            Output::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
