//! Output the runtime keeps only the end of: the guest's serial console, and the stderr of QEMU
//! and of each helper daemon. The writer gets one end of a socket pair the runtime made (no file,
//! no path); a task reads the other as fast as it comes and keeps only what an error line needs:
//! the last lines and, for the console, the first kernel panic line, each cut to [`MAX_LINE`]
//! bytes. A guest that writes to its console for hours, or makes a helper log a line per request,
//! leaves the host's disk and the runtime's memory as they were. Every line is also passed to
//! `tracing` (at trace level) under the writer's name, for debugging.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

/// Console lines kept for error messages.
pub const CONSOLE_LINES: usize = 15;
/// Lines kept of a helper's or QEMU's stderr.
pub const HELPER_LINES: usize = 5;
/// Bytes kept of one line.
pub const MAX_LINE: usize = 240;
/// What marks the kernel's panic line.
const PANIC: &str = "Kernel panic - not syncing";

/// What is kept of one writer's output.
#[derive(Debug)]
pub struct TailState {
    /// Who writes (for the trace log).
    writer: &'static str,
    /// How many lines are kept.
    keep: usize,
    /// A line worth more than the last ones: the first line holding it is kept for good.
    marker: Option<&'static str>,
    lines: VecDeque<String>,
    /// The line being received (at most [`MAX_LINE`] bytes of it).
    partial: Vec<u8>,
    marked: Option<String>,
    /// Every byte received, counted.
    bytes: u64,
    /// The writer's end is closed (every copy of it): nothing more will come.
    ended: bool,
}

/// A console line as kept: lossy UTF-8, control characters dropped, trimmed.
fn clean(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

impl TailState {
    /// Keeps the last `keep` lines of `writer`'s output, and the first line holding `marker`.
    pub fn new(writer: &'static str, keep: usize, marker: Option<&'static str>) -> Self {
        Self {
            writer,
            keep: keep.max(1),
            marker,
            lines: VecDeque::new(),
            partial: Vec::new(),
            marked: None,
            bytes: 0,
            ended: false,
        }
    }

    /// Takes in what the writer sent.
    pub fn feed(&mut self, data: &[u8]) {
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            let room = MAX_LINE.saturating_sub(self.partial.len());
            self.partial
                .extend_from_slice(&body[..body.len().min(room)]);
            if ends {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let line = clean(&self.partial);
        self.partial.clear();
        if line.is_empty() {
            return;
        }
        tracing::trace!("{}: {line}", self.writer);
        if let Some(marker) = self.marker {
            if self.marked.is_none() && line.contains(marker) {
                // The message without the kernel's timestamp.
                let msg = line.split_once("] ").map_or(line.as_str(), |(_, m)| m);
                self.marked = Some(msg.trim().to_string());
            }
        }
        if self.lines.len() >= self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// What the output says about the writer's end, on one line: the marked line when there
    /// is one (for the console, the kernel's panic line: what follows it is a backtrace, no
    /// help to a requestor), else the last lines.
    pub fn summary(&self) -> String {
        if let Some(p) = &self.marked {
            return p.clone();
        }
        let partial = clean(&self.partial);
        let lines: Vec<&str> = self
            .lines
            .iter()
            .map(String::as_str)
            .chain((!partial.is_empty()).then_some(partial.as_str()))
            .collect();
        if lines.is_empty() {
            "(no output)".into()
        } else {
            lines[lines.len().saturating_sub(self.keep)..].join(" | ")
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The runtime's end of one writer's output and the task that reads it.
pub struct OutputTail {
    state: Arc<Mutex<TailState>>,
    /// The writer's end, until the writer has inherited it.
    write_end: Option<OwnedFd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OutputTail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OutputTail {
    /// The guest console's tail: its last [`CONSOLE_LINES`] lines and its kernel panic line.
    pub fn console() -> std::io::Result<Self> {
        Self::new(TailState::new("guest console", CONSOLE_LINES, Some(PANIC)))
    }

    /// The tail of a host process's stderr: its last [`HELPER_LINES`] lines.
    pub fn stderr_of(writer: &'static str) -> std::io::Result<Self> {
        Self::new(TailState::new(writer, HELPER_LINES, None))
    }

    /// A socket pair: this side is read from now on, the other is for the writer
    /// ([`OutputTail::write_fd`], [`OutputTail::stdio`]).
    fn new(state: TailState) -> std::io::Result<Self> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut stream = tokio::net::UnixStream::from_std(ours)?;
        let state = Arc::new(Mutex::new(state));
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut st) = s.lock() {
                    st.feed(&buf[..n]);
                }
            }
            if let Ok(mut st) = s.lock() {
                st.ended = true;
            }
        });
        Ok(Self {
            state,
            write_end: Some(theirs.into()),
            task,
        })
    }

    /// The writer's end, for a child to inherit under this number (close-on-exec here).
    pub fn write_fd(&self) -> Option<RawFd> {
        self.write_end.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The writer's end as a child's stdout or stderr; this process keeps no copy of it, so
    /// the reader sees the end when the child exits.
    pub fn stdio(&mut self) -> std::io::Result<std::process::Stdio> {
        self.write_end
            .take()
            .map(std::process::Stdio::from)
            .ok_or_else(|| std::io::Error::other("the output's writer end was handed over"))
    }

    /// Closes this process's copy of the writer's end once the writer holds it, so that the
    /// reader sees the end when the writer exits.
    pub fn handed_over(&mut self) {
        self.write_end = None;
    }

    /// The output so far, on one line (see [`TailState::summary`]).
    pub fn summary(&self) -> String {
        self.view().summary()
    }

    /// Bytes the writer wrote.
    pub fn bytes(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.bytes())
    }

    /// A handle on what is kept, for a task that reads it after the writer has exited.
    pub fn view(&self) -> TailView {
        TailView(self.state.clone())
    }
}

/// What an [`OutputTail`] keeps, shared.
#[derive(Clone)]
pub struct TailView(Arc<Mutex<TailState>>);

impl TailView {
    /// The output so far, on one line (see [`TailState::summary`]).
    pub fn summary(&self) -> String {
        self.0
            .lock()
            .map_or_else(|_| "(output unavailable)".into(), |s| s.summary())
    }

    /// The output on one line once everything the writer wrote has been read (the writer has
    /// exited), or after `limit` as far as it was read.
    pub async fn final_summary(&self, limit: std::time::Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.0.lock().map_or(true, |s| s.ended) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.summary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::time::Duration;

    #[test]
    fn keeps_the_last_lines_or_the_panic_line() {
        let mut c = TailState::new("guest console", CONSOLE_LINES, Some(PANIC));
        assert_eq!(c.summary(), "(no output)");
        c.feed(b"boot\r\n\n  init up  \nagent ");
        c.feed(b"ready\n");
        assert_eq!(c.summary(), "boot | init up | agent ready");
        c.feed(
            b"[    4.81] EXT4-fs error (device vdc): boom\n\
              [    4.82] Kernel panic - not syncing: EXT4-fs (device vdc): panic forced after error\n\
              [    4.83] CPU: 0 PID: 61 Comm: sh\n[    4.84]  </TASK>\n",
        );
        assert_eq!(
            c.summary(),
            "Kernel panic - not syncing: EXT4-fs (device vdc): panic forced after error"
        );
    }

    #[test]
    fn memory_stays_bounded_whatever_the_guest_writes() {
        let mut c = TailState::new("guest console", CONSOLE_LINES, Some(PANIC));
        let mut sent = 0;
        let mut feed = |c: &mut TailState, data: &[u8]| {
            sent += data.len() as u64;
            c.feed(data);
        };
        feed(&mut c, &vec![b'x'; 1 << 20]);
        feed(&mut c, b"\n");
        for i in 0..10_000 {
            feed(
                &mut c,
                format!("line {i} {}\n", "y".repeat(1000)).as_bytes(),
            );
        }
        feed(&mut c, &[0xff, 0x1b, b'[', b'3', b'1', b'm', b'\n']);
        assert!(c.lines.len() <= CONSOLE_LINES);
        assert!(c.lines.iter().all(|l| l.len() <= MAX_LINE));
        assert!(c.summary().len() <= CONSOLE_LINES * (MAX_LINE + 3));
        assert_eq!(c.bytes(), sent);
    }

    #[tokio::test]
    async fn reads_what_the_other_end_writes() {
        use std::io::Write;
        let mut console = OutputTail::console().unwrap();
        let fd = console.write_fd().unwrap();
        // SAFETY: a duplicate of a descriptor this test owns, wrapped once.
        let mut theirs = unsafe { std::os::unix::net::UnixStream::from_raw_fd(libc::dup(fd)) };
        console.handed_over();
        theirs.write_all(b"hello\nconsole\n").unwrap();
        drop(theirs);
        for _ in 0..100 {
            if console.bytes() == 14 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(console.summary(), "hello | console");
    }

    #[tokio::test]
    async fn keeps_the_last_lines_of_a_childs_stderr() {
        let mut tail = OutputTail::stderr_of("sh").unwrap();
        let status = tokio::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo line $i >&2; done",
            ])
            .stderr(tail.stdio().unwrap())
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let summary = tail.view().final_summary(Duration::from_secs(5)).await;
        assert_eq!(
            summary,
            "line 1996 | line 1997 | line 1998 | line 1999 | line 2000"
        );
        assert!(tail.stdio().is_err(), "the writer's end is given once");
    }
}
