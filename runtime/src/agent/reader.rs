//! The guest's side of the connection, read by one task: responses go to their waiters,
//! notifications become [`AgentEvent`]s on one bounded channel (when its reader falls behind,
//! the socket is not read, and the guest stops reading process output: backpressure end to end).
//!
//! Everything is checked against what the guest promised: an output chunk is at most
//! [`MAX_OUTPUT_CHUNK`] bytes of stdout or stderr of a process the guest reported started and not
//! yet exited, an exit is that of such a process with a plausible status, a response answers a
//! request that was sent. Anything else is a bad frame: counted, summarised once when the
//! connection ends, and past [`MAX_BAD_FRAMES`] the connection is treated as broken.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use agent_protocol::{
    notification, response, DecodeError, Error as WireError, Frame, FrameDecoder, Kind,
    MAX_OUTPUT_CHUNK,
};
use tokio::io::{AsyncReadExt, ReadHalf};
use tokio::sync::{mpsc, oneshot, Notify};

use super::listener::Conn;
use super::quote_guest;

/// Bad frames tolerated before the connection is treated as broken.
pub const MAX_BAD_FRAMES: u32 = 64;

/// What the agent reports, in the order it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A chunk of a process's stdout (1) or stderr (2).
    Output {
        /// The process.
        pid: u64,
        /// 1 or 2.
        fd: u32,
        /// At most [`MAX_OUTPUT_CHUNK`] bytes.
        data: Vec<u8>,
    },
    /// A process ended: its exit code, or 128 + the signal that ended it.
    Exited {
        /// The process.
        pid: u64,
        /// The exit status as a shell reports it.
        code: i32,
    },
    /// The connection is gone (the last event): why, and the processes that never got their
    /// exit reported.
    Closed {
        /// Why, on one line.
        reason: String,
        /// Started and not exited, in pid order.
        open: Vec<u64>,
    },
}

/// Waiters by request id; `None` once the connection is gone (waiters then fail at once).
type Waiters = Option<HashMap<u64, oneshot::Sender<response::Body>>>;

/// What the client and its tasks share.
#[derive(Default)]
pub(super) struct Shared {
    waiters: Mutex<Waiters>,
    /// Why the connection is no longer used, once it is not.
    broken: Mutex<Option<String>>,
    /// Wakes the reader to stop when the client gives up on the connection.
    stop: Notify,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            waiters: Mutex::new(Some(HashMap::new())),
            ..Default::default()
        }
    }

    /// Registers the waiter for request `id`; the reason when the connection is gone.
    pub(super) fn wait_for(
        &self,
        id: u64,
        waiter: oneshot::Sender<response::Body>,
    ) -> Result<(), String> {
        match self.waiters.lock().ok().as_mut().and_then(|w| w.as_mut()) {
            Some(w) => {
                w.insert(id, waiter);
                Ok(())
            }
            None => Err(self.reason()),
        }
    }

    fn take_waiter(&self, id: u64) -> Option<oneshot::Sender<response::Body>> {
        self.waiters
            .lock()
            .ok()
            .and_then(|mut w| w.as_mut().and_then(|w| w.remove(&id)))
    }

    /// Why the connection is gone (or a generic reason while it is not known yet).
    pub(super) fn reason(&self) -> String {
        self.broken
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .unwrap_or_else(|| "the connection is closed".into())
    }

    /// Marks the connection as no longer usable: the first reason sticks, every waiter fails
    /// now, and the reader stops.
    pub(super) fn break_off(&self, reason: String) {
        if let Ok(mut b) = self.broken.lock() {
            b.get_or_insert(reason);
        }
        if let Ok(mut w) = self.waiters.lock() {
            *w = None;
        }
        self.stop.notify_one();
    }
}

/// Bad frames seen so far.
#[derive(Default)]
struct BadFrames {
    count: u32,
    first: Option<String>,
}

impl BadFrames {
    /// Counts one; the reason to give up once there are too many.
    fn note(&mut self, what: impl FnOnce() -> String) -> Result<(), String> {
        self.count = self.count.saturating_add(1);
        if self.first.is_none() {
            let what = what();
            tracing::warn!("bad frame from the guest agent: {what} (further ones are counted)");
            self.first = Some(what);
        }
        if self.count > MAX_BAD_FRAMES {
            return Err(format!(
                "the guest agent sent more than {MAX_BAD_FRAMES} bad frames (the first: {})",
                self.first.as_deref().unwrap_or("?")
            ));
        }
        Ok(())
    }
}

/// The exit status a shell reports for the guest's `code`/`signal`, when they are plausible.
pub fn exit_status(code: Option<i32>, signal: Option<i32>) -> Option<i32> {
    match (code, signal) {
        (Some(c), None) if (0..=255).contains(&c) => Some(c),
        (None, Some(s)) if (1..=64).contains(&s) => Some(128 + s),
        _ => None,
    }
}

/// The reading side's state.
struct Reader {
    decoder: FrameDecoder,
    /// Processes the guest reported started and not exited.
    open: BTreeSet<u64>,
    bad: BadFrames,
}

impl Reader {
    /// Handles every complete frame in the decoder. `Err` ends the connection with a reason.
    async fn handle_frames(
        &mut self,
        shared: &Shared,
        tx: &mpsc::Sender<AgentEvent>,
    ) -> Result<(), String> {
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) if e.is_recoverable() => {
                    // An answer that cannot be read still answers its request: fail that one.
                    if let DecodeError::Payload {
                        kind: Kind::Response,
                        id,
                        ..
                    }
                    | DecodeError::Empty {
                        kind: Kind::Response,
                        id,
                    } = &e
                    {
                        if let Some(w) = shared.take_waiter(*id) {
                            let _ = w.send(response::Body::Error(WireError {
                                errno: 0,
                                message: format!("the guest agent's answer is unreadable: {e}"),
                            }));
                        }
                    }
                    self.bad.note(|| e.to_string())?;
                    continue;
                }
                Err(e) => return Err(format!("the guest agent broke the protocol: {e}")),
            };
            let event = match frame {
                Frame::Response(id, r) => {
                    let Some(body) = r.body else {
                        self.bad.note(|| format!("an empty response (id {id})"))?;
                        continue;
                    };
                    if let response::Body::Started(s) = &body {
                        self.open.insert(s.pid);
                    }
                    match shared.take_waiter(id) {
                        // A waiter that gave up (its caller was dropped) no longer listens.
                        Some(w) => drop(w.send(body)),
                        None => self
                            .bad
                            .note(|| format!("a response to no request (id {id})"))?,
                    }
                    continue;
                }
                Frame::Request(..) => {
                    self.bad.note(|| "a request frame".into())?;
                    continue;
                }
                Frame::Notification(n) => match n.body {
                    Some(notification::Body::Output(o)) => {
                        if !matches!(o.fd, 1 | 2) || o.data.len() > MAX_OUTPUT_CHUNK {
                            self.bad.note(|| {
                                format!("an output chunk of {} bytes for fd {}", o.data.len(), o.fd)
                            })?;
                            continue;
                        }
                        if !self.open.contains(&o.pid) {
                            self.bad.note(|| {
                                format!("output of pid {}, which is not running", o.pid)
                            })?;
                            continue;
                        }
                        AgentEvent::Output {
                            pid: o.pid,
                            fd: o.fd,
                            data: o.data,
                        }
                    }
                    Some(notification::Body::Exited(e)) => {
                        let Some(code) = exit_status(e.code, e.signal) else {
                            self.bad.note(|| {
                                format!("exit of pid {} with {:?}/{:?}", e.pid, e.code, e.signal)
                            })?;
                            continue;
                        };
                        if !self.open.remove(&e.pid) {
                            self.bad
                                .note(|| format!("exit of pid {}, which is not running", e.pid))?;
                            continue;
                        }
                        AgentEvent::Exited { pid: e.pid, code }
                    }
                    None => {
                        self.bad.note(|| "an empty notification".into())?;
                        continue;
                    }
                },
            };
            tokio::select! {
                sent = tx.send(event) => if sent.is_err() {
                    return Err("nobody reads the agent's events".into());
                },
                () = shared.stop.notified() => return Err(shared.reason()),
            }
        }
    }
}

/// Reads frames until the connection ends or the client gives up on it; then fails every
/// waiter and sends [`AgentEvent::Closed`] as the last event.
pub(super) async fn read_loop(
    mut rd: ReadHalf<Box<dyn Conn>>,
    shared: &Shared,
    tx: mpsc::Sender<AgentEvent>,
) {
    let mut reader = Reader {
        decoder: FrameDecoder::new(),
        open: BTreeSet::new(),
        bad: BadFrames::default(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        if let Err(reason) = reader.handle_frames(shared, &tx).await {
            break reason;
        }
        let want = buf.len().min(reader.decoder.room());
        tokio::select! {
            read = rd.read(&mut buf[..want]) => match read {
                Ok(0) => break "the guest agent closed the connection".to_string(),
                Ok(n) => { reader.decoder.feed(&buf[..n]); }
                Err(e) => break format!("reading from the guest agent: {e}"),
            },
            () = shared.stop.notified() => break shared.reason(),
        }
    };
    if reader.bad.count > 0 {
        tracing::warn!(
            "the guest agent sent {} bad frame(s); the first: {}",
            reader.bad.count,
            reader.bad.first.as_deref().unwrap_or("?")
        );
    }
    shared.break_off(reason);
    let reason = quote_guest(&shared.reason());
    let _ = tx
        .send(AgentEvent::Closed {
            reason,
            open: reader.open.into_iter().collect(),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_checked() {
        assert_eq!(exit_status(Some(0), None), Some(0));
        assert_eq!(exit_status(Some(255), None), Some(255));
        assert_eq!(exit_status(None, Some(9)), Some(137));
        for (code, signal) in [
            (Some(-1), None),
            (Some(256), None),
            (None, Some(0)),
            (None, Some(i32::MAX)),
            (None, Some(i32::MIN)),
            (Some(0), Some(9)),
            (None, None),
        ] {
            assert_eq!(exit_status(code, signal), None, "{code:?} {signal:?}");
        }
    }

    #[test]
    fn bad_frames_are_counted_up_to_the_limit() {
        let mut bad = BadFrames::default();
        for i in 0..MAX_BAD_FRAMES {
            bad.note(|| format!("frame {i}")).unwrap();
        }
        let e = bad.note(|| "last".into()).unwrap_err();
        assert!(e.contains("the first: frame 0"), "{e}");
    }
}
