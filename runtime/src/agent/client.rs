//! Typed requests to the guest agent. Each request has a deadline; one that passes means the
//! agent is stopped or hijacked, and the client gives up on the connection (the reader then
//! reports [`AgentEvent::Closed`](super::AgentEvent::Closed)). Frames go out through one writer
//! task, whole, so a request whose caller is dropped never leaves half a frame on the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::{
    encode, request, response, Empty, Frame, Hello, KillProcess, MountDisk, MountRam, MountVolume,
    Request, RunProcess,
};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::listener::Conn;
use super::quote_guest;
use super::reader::{read_loop, AgentEvent, Shared};

/// How long the agent has to answer a request (the shutdown request has its own).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// Events held before the reader stops reading the socket.
const EVENT_QUEUE: usize = 64;
/// Frames waiting for the writer.
const FRAME_QUEUE: usize = 16;

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The guest did not connect while booting.
    #[error("the guest agent did not connect within {0:?}")]
    BootTimeout(Duration),
    /// A request went unanswered: the agent is stopped or no longer ours.
    #[error("the guest agent did not answer a {what} request within {after:?}")]
    Timeout {
        /// The request.
        what: &'static str,
        /// Its deadline.
        after: Duration,
    },
    /// The connection is gone.
    #[error("connection to the guest agent lost: {0}")]
    Disconnected(String),
    /// A request that cannot be framed.
    #[error("request too large: {0}")]
    Encode(#[from] agent_protocol::EncodeError),
    /// The guest answered with an error (its message, cut to a line).
    #[error("{0}")]
    Refused(String),
    /// The guest answered with something that is not an answer to the request.
    #[error("the guest agent answered a {what} request with {got}")]
    Unexpected {
        /// The request.
        what: &'static str,
        /// What came back.
        got: &'static str,
    },
}

/// The agent's events (process output, exits, and at last the connection's end).
pub type Events = mpsc::Receiver<AgentEvent>;

/// A guest-side mount.
#[derive(Debug, Clone)]
pub enum Mount {
    /// A virtio-fs tag.
    Volume(MountVolume),
    /// A tmpfs of a size.
    Ram(MountRam),
    /// An ext4 scratch disk by serial.
    Disk(MountDisk),
}

/// A connected agent.
pub struct AgentClient {
    frames: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn body_name(b: &response::Body) -> &'static str {
    match b {
        response::Body::Ok(_) => "ok",
        response::Body::Error(_) => "an error",
        response::Body::Hello(_) => "hello",
        response::Body::Started(_) => "started",
    }
}

impl AgentClient {
    /// Starts the reader and writer tasks on an accepted connection.
    pub fn new(conn: Box<dyn Conn>) -> (Self, Events) {
        let (rd, wr) = tokio::io::split(conn);
        let shared = Arc::new(Shared::new());
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let (frames, queue) = mpsc::channel(FRAME_QUEUE);
        let s = shared.clone();
        let reader = tokio::spawn(async move { read_loop(rd, &s, tx).await });
        let writer = tokio::spawn(write_loop(wr, queue, shared.clone()));
        let client = Self {
            frames,
            shared,
            next_id: AtomicU64::new(1),
            tasks: [reader, writer],
        };
        (client, events)
    }

    /// Gives up on the connection: every waiter fails, and the reader ends the events with
    /// [`AgentEvent::Closed`] carrying `reason` (unless the connection already ended).
    pub fn break_off(&self, reason: String) {
        self.shared.break_off(reason);
    }

    /// Sends `body` and waits up to `deadline` for its answer; a missed deadline breaks the
    /// connection off.
    async fn request(
        &self,
        body: request::Body,
        what: &'static str,
        deadline: Duration,
    ) -> Result<response::Body, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = encode(&Frame::Request(id, Request { body: Some(body) }))?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .wait_for(id, tx)
            .map_err(AgentError::Disconnected)?;
        let exchange = async {
            self.frames
                .send(bytes)
                .await
                .map_err(|_| AgentError::Disconnected(self.shared.reason()))?;
            rx.await
                .map_err(|_| AgentError::Disconnected(self.shared.reason()))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(answer) => answer,
            Err(_) => {
                let e = AgentError::Timeout {
                    what,
                    after: deadline,
                };
                self.break_off(e.to_string());
                Err(e)
            }
        }
    }

    /// Sends `body`, expecting `Ok`.
    async fn expect_ok(
        &self,
        body: request::Body,
        what: &'static str,
        deadline: Duration,
    ) -> Result<(), AgentError> {
        match self.request(body, what, deadline).await? {
            response::Body::Ok(_) => Ok(()),
            other => Err(self.refused_or_unexpected(what, &other)),
        }
    }

    /// The error for an answer other than the expected one: the guest's own error as
    /// [`AgentError::Refused`]; anything else breaks the connection off.
    fn refused_or_unexpected(&self, what: &'static str, got: &response::Body) -> AgentError {
        if let response::Body::Error(e) = got {
            return AgentError::Refused(quote_guest(&e.message));
        }
        let e = AgentError::Unexpected {
            what,
            got: body_name(got),
        };
        self.break_off(e.to_string());
        e
    }

    /// Checks that the agent speaks this protocol version.
    pub async fn hello(&self) -> Result<(), AgentError> {
        let body = request::Body::Hello(Hello {
            version: u32::from(agent_protocol::VERSION),
        });
        match self.request(body, "hello", REQUEST_DEADLINE).await? {
            response::Body::Hello(h) if h.version == u32::from(agent_protocol::VERSION) => Ok(()),
            response::Body::Hello(h) => Err(AgentError::Refused(format!(
                "the guest agent speaks protocol {} (this runtime speaks {})",
                h.version,
                agent_protocol::VERSION
            ))),
            other => Err(self.refused_or_unexpected("hello", &other)),
        }
    }

    /// Starts a process; returns its pid.
    pub async fn run(&self, process: RunProcess) -> Result<u64, AgentError> {
        match self
            .request(request::Body::Run(process), "run", REQUEST_DEADLINE)
            .await?
        {
            response::Body::Started(s) => Ok(s.pid),
            other => Err(self.refused_or_unexpected("run", &other)),
        }
    }

    /// Sends `signal` to process `pid`.
    pub async fn kill(&self, pid: u64, signal: i32) -> Result<(), AgentError> {
        let body = request::Body::Kill(KillProcess { pid, signal });
        self.expect_ok(body, "kill", REQUEST_DEADLINE).await
    }

    /// Mounts a volume in the guest.
    pub async fn mount(&self, mount: Mount) -> Result<(), AgentError> {
        let body = match mount {
            Mount::Volume(m) => request::Body::Mount(m),
            Mount::Ram(m) => request::Body::MountRam(m),
            Mount::Disk(m) => request::Body::MountDisk(m),
        };
        self.expect_ok(body, "mount", REQUEST_DEADLINE).await
    }

    /// Configures one network card and the name files (answered once the card is up).
    pub async fn configure_network(
        &self,
        config: agent_protocol::ConfigureNetwork,
    ) -> Result<(), AgentError> {
        let body = request::Body::ConfigureNetwork(config);
        self.expect_ok(body, "network configuration", REQUEST_DEADLINE)
            .await
    }

    /// Asks the guest to end its processes, sync and power off, waiting up to `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), AgentError> {
        let body = request::Body::Shutdown(Empty {});
        self.expect_ok(body, "shutdown", deadline).await
    }
}

/// Writes queued frames, whole, in order; a write error breaks the connection off.
async fn write_loop(
    mut wr: WriteHalf<Box<dyn Conn>>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = queue.recv().await {
        if let Err(e) = wr.write_all(&frame).await {
            shared.break_off(format!("writing to the guest agent: {e}"));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{
        encode_output_into, notification, Exited, FrameDecoder, Notification, Response, Started,
    };
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A client on one end of an in-memory stream; the test plays the guest on the other.
    fn connected() -> (AgentClient, Events, DuplexStream) {
        let (ours, guest) = tokio::io::duplex(1 << 20);
        let (client, events) = AgentClient::new(Box::new(ours));
        (client, events, guest)
    }

    /// The next request the guest receives: its id.
    async fn next_request_id(guest: &mut DuplexStream, decoder: &mut FrameDecoder) -> u64 {
        loop {
            if let Some(Frame::Request(id, _)) = decoder.next_frame().unwrap() {
                return id;
            }
            let mut buf = [0u8; 4096];
            let n = guest.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed the stream");
            decoder.feed(&buf[..n]);
        }
    }

    fn response(id: u64, body: response::Body) -> Vec<u8> {
        encode(&Frame::Response(id, Response { body: Some(body) })).unwrap()
    }

    fn exited(pid: u64, code: i32) -> Vec<u8> {
        let body = notification::Body::Exited(Exited {
            pid,
            code: Some(code),
            signal: None,
        });
        encode(&Frame::Notification(Notification { body: Some(body) })).unwrap()
    }

    #[tokio::test]
    async fn events_of_started_processes_pass_and_the_open_ones_are_named_at_the_end() {
        let (client, mut events, mut guest) = connected();
        let mut decoder = FrameDecoder::new();
        let (pid, _) = tokio::join!(client.run(RunProcess::default()), async {
            let id = next_request_id(&mut guest, &mut decoder).await;
            guest
                .write_all(&response(id, response::Body::Started(Started { pid: 5 })))
                .await
                .unwrap();
        });
        assert_eq!(pid.unwrap(), 5);
        let mut bytes = Vec::new();
        encode_output_into(&mut bytes, 5, 1, b"out").unwrap();
        // Output of a process never started, and an exit of one: counted, not passed on.
        encode_output_into(&mut bytes, 99, 1, b"forged").unwrap();
        bytes.extend(exited(98, 0));
        guest.write_all(&bytes).await.unwrap();
        drop(guest);
        assert_eq!(
            events.recv().await,
            Some(AgentEvent::Output {
                pid: 5,
                fd: 1,
                data: b"out".to_vec()
            })
        );
        assert_eq!(
            events.recv().await,
            Some(AgentEvent::Closed {
                reason: "the guest agent closed the connection".into(),
                open: vec![5]
            })
        );
        // Every later request fails at once with the reason.
        let e = client.kill(5, 9).await.unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_misses_the_deadline_and_the_connection_is_given_up() {
        let (client, mut events, _guest) = connected();
        let e = client.run(RunProcess::default()).await.unwrap_err();
        assert!(
            matches!(e, AgentError::Timeout { what: "run", after } if after == REQUEST_DEADLINE),
            "{e}"
        );
        match events.recv().await {
            Some(AgentEvent::Closed { reason, open }) => {
                assert_eq!(reason, e.to_string());
                assert!(open.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn too_many_bad_frames_break_the_connection() {
        let (_client, mut events, mut guest) = connected();
        let mut bytes = Vec::new();
        for _ in 0..=super::super::reader::MAX_BAD_FRAMES {
            // A good header (notification, 4 bytes) around a payload that does not decode.
            bytes.extend([agent_protocol::VERSION, 3, 0, 0, 4, 0, 0, 0]);
            bytes.extend([0u8; 8]);
            bytes.extend([0xff; 4]);
        }
        guest.write_all(&bytes).await.unwrap();
        match events.recv().await {
            Some(AgentEvent::Closed { reason, .. }) => {
                assert!(reason.contains("more than 64 bad frames"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreadable_answer_fails_its_own_request_and_the_connection_goes_on() {
        let (client, _events, mut guest) = connected();
        let mut decoder = FrameDecoder::new();
        let (r, _) = tokio::join!(client.kill(5, 9), async {
            let id = next_request_id(&mut guest, &mut decoder).await;
            // A response header for that id around a payload that is not a Response.
            let mut bytes = vec![agent_protocol::VERSION, 2, 0, 0, 4, 0, 0, 0];
            bytes.extend(id.to_le_bytes());
            bytes.extend([0xff; 4]);
            guest.write_all(&bytes).await.unwrap();
        });
        match r {
            Err(AgentError::Refused(msg)) => assert!(msg.contains("unreadable"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let (r, _) = tokio::join!(client.kill(5, 9), async {
            let id = next_request_id(&mut guest, &mut decoder).await;
            guest
                .write_all(&response(id, response::Body::Ok(agent_protocol::Empty {})))
                .await
                .unwrap();
        });
        r.unwrap();
    }

    #[tokio::test]
    async fn an_answer_of_the_wrong_kind_breaks_the_connection() {
        let (client, mut events, mut guest) = connected();
        let mut decoder = FrameDecoder::new();
        let (r, _) = tokio::join!(client.run(RunProcess::default()), async {
            let id = next_request_id(&mut guest, &mut decoder).await;
            let body = response::Body::Hello(Hello { version: 1 });
            guest.write_all(&response(id, body)).await.unwrap();
        });
        assert!(
            matches!(
                r,
                Err(AgentError::Unexpected {
                    what: "run",
                    got: "hello"
                })
            ),
            "{r:?}"
        );
        assert!(matches!(
            events.recv().await,
            Some(AgentEvent::Closed { .. })
        ));
    }
}
