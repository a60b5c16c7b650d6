//! The guest's serial console, read by the runtime into a bounded summary. QEMU writes the
//! console to one end of a socket pair the runtime made (no file, no path); a task reads it as
//! fast as it comes and keeps only what an error line needs: the last [`TAIL_LINES`] lines and
//! the first kernel panic line, each cut to [`MAX_LINE`] bytes. A guest that writes to its
//! console for hours leaves the host's disk and the runtime's memory as they were.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

/// Console lines kept for error messages.
pub const TAIL_LINES: usize = 15;
/// Bytes kept of one console line.
pub const MAX_LINE: usize = 240;
/// What marks the kernel's panic line.
const PANIC: &str = "Kernel panic - not syncing";

/// What is kept of the console.
#[derive(Debug, Default)]
pub struct ConsoleState {
    lines: VecDeque<String>,
    /// The line being received (at most [`MAX_LINE`] bytes of it).
    partial: Vec<u8>,
    panic: Option<String>,
    /// Every byte received, counted.
    bytes: u64,
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

impl ConsoleState {
    /// Takes in what the console sent.
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
        tracing::trace!("guest console: {line}");
        if self.panic.is_none() && line.contains(PANIC) {
            // The message without the kernel's timestamp.
            let msg = line.split_once("] ").map_or(line.as_str(), |(_, m)| m);
            self.panic = Some(msg.trim().to_string());
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// What the console says about the VM's end, on one line: the kernel's panic line when it
    /// panicked (what follows it is a backtrace, no help to a requestor), else its last lines.
    pub fn summary(&self) -> String {
        if let Some(p) = &self.panic {
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
            lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The runtime's end of the console and the task that reads it.
pub struct Console {
    state: Arc<Mutex<ConsoleState>>,
    /// QEMU's end, until QEMU has inherited it.
    qemu_end: Option<OwnedFd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Console {
    /// A socket pair: this side is read from now on, the other is for QEMU ([`Console::qemu_fd`]).
    pub fn new() -> std::io::Result<Self> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut stream = tokio::net::UnixStream::from_std(ours)?;
        let state = Arc::new(Mutex::new(ConsoleState::default()));
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
        });
        Ok(Self {
            state,
            qemu_end: Some(theirs.into()),
            task,
        })
    }

    /// The descriptor QEMU inherits (close-on-exec here).
    pub fn qemu_fd(&self) -> Option<RawFd> {
        self.qemu_end.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes this process's copy of QEMU's end once QEMU holds it, so that the reader sees the
    /// end of the console when QEMU exits.
    pub fn handed_over(&mut self) {
        self.qemu_end = None;
    }

    /// The console so far, on one line (see [`ConsoleState::summary`]).
    pub fn summary(&self) -> String {
        self.state
            .lock()
            .map_or_else(|_| "(console unavailable)".into(), |s| s.summary())
    }

    /// Bytes the guest wrote to its console.
    pub fn bytes(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn keeps_the_last_lines_or_the_panic_line() {
        let mut c = ConsoleState::default();
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
        let mut c = ConsoleState::default();
        let mut sent = 0;
        let mut feed = |c: &mut ConsoleState, data: &[u8]| {
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
        assert!(c.lines.len() <= TAIL_LINES);
        assert!(c.lines.iter().all(|l| l.len() <= MAX_LINE));
        assert!(c.summary().len() <= TAIL_LINES * (MAX_LINE + 3));
        assert_eq!(c.bytes(), sent);
    }

    #[tokio::test]
    async fn reads_what_the_other_end_writes() {
        use std::io::Write;
        let mut console = Console::new().unwrap();
        let fd = console.qemu_fd().unwrap();
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
}
