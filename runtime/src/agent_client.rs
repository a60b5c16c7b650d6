//! The host side of the agent protocol: accepts the guest's connection (which vhost-device-vsock
//! delivers to a unix socket beside its own, `<uds>_<port>`, and the kernel's vhost-vsock to an
//! AF_VSOCK listener), sends requests, matches responses by id,
//! and hands notifications to one bounded channel — when its reader falls behind, the socket is
//! not read, and the guest stops reading process output (backpressure end to end).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::{
    encode, request, response, DecodeError, Frame, FrameDecoder, Notification, Request, AGENT_PORT,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Notifications held before the reader stops reading the socket.
const NOTIFICATION_QUEUE: usize = 64;

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent did not accept a connection in time.
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke.
    #[error("connection to the guest agent lost: {0}")]
    Disconnected(String),
    /// The guest sent bytes that are not the protocol.
    #[error("the guest agent broke the protocol: {0}")]
    Protocol(#[from] DecodeError),
    /// A request that cannot be framed.
    #[error("request too large: {0}")]
    Encode(#[from] agent_protocol::EncodeError),
}

/// Waiters by request id; `None` once the connection is gone (waiters then fail at once).
/// The agent's notification stream (process output and exits).
pub type Notes = mpsc::Receiver<Notification>;

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<response::Body>>>>>;

/// A byte stream to the guest agent.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// Where the guest's agent connects.
pub enum AgentListener {
    /// vhost-device-vsock's socket for the agent port (see [`guest_socket`]).
    Unix(UnixListener),
    /// The kernel's vsock: only a connection from the guest's own CID is taken.
    Vsock {
        /// Bound to the port on the guest's command line.
        listener: tokio_vsock::VsockListener,
        /// The guest's CID.
        cid: u32,
    },
}

impl AgentListener {
    /// The next connection; `None` when one from a foreign CID was refused.
    async fn accept(&self) -> std::io::Result<Option<Box<dyn Conn>>> {
        match self {
            Self::Unix(l) => Ok(Some(Box::new(l.accept().await?.0))),
            Self::Vsock { listener, cid } => {
                let (stream, peer) = listener.accept().await?;
                if peer.cid() == *cid {
                    Ok(Some(Box::new(stream)))
                } else {
                    tracing::warn!(
                        "refused a vsock connection from CID {} (this VM is CID {cid})",
                        peer.cid()
                    );
                    Ok(None)
                }
            }
        }
    }
}

/// A connected agent.
pub struct AgentClient {
    writer: tokio::sync::Mutex<WriteHalf<Box<dyn Conn>>>,
    pending: Pending,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Where vhost-device-vsock delivers the guest's connections to the agent port: the daemon's
/// `--uds-path` with `_<port>` appended (the hybrid-vsock convention).
pub fn guest_socket(uds: &Path) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{AGENT_PORT}"));
    PathBuf::from(p)
}

impl AgentClient {
    /// Waits for the guest to connect to `listener` (bound at [`guest_socket`] before the VM
    /// started), up to `limit`; `alive` is asked every 100 ms and ends the wait early (with its
    /// error) when the VM died.
    pub async fn accept(
        listener: &AgentListener,
        limit: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<(Self, Notes), AgentError> {
        let start = Instant::now();
        let stream = loop {
            alive().map_err(AgentError::Disconnected)?;
            if let Ok(accepted) =
                tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
            {
                if let Some(stream) =
                    accepted.map_err(|e| AgentError::Disconnected(e.to_string()))?
                {
                    break stream;
                }
            }
            if start.elapsed() >= limit {
                return Err(AgentError::Timeout(limit));
            }
        };
        let (mut rd, wr) = tokio::io::split(stream);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, rx) = mpsc::channel(NOTIFICATION_QUEUE);
        let p = pending.clone();
        let reader = tokio::spawn(async move {
            read_loop(&mut rd, &p, tx).await;
            // Fail every waiter: nothing will answer them now.
            if let Ok(mut m) = p.lock() {
                *m = None;
            }
        });
        Ok((
            Self {
                writer: tokio::sync::Mutex::new(wr),
                pending,
                next_id: AtomicU64::new(1),
                reader,
            },
            rx,
        ))
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, body: request::Body) -> Result<response::Body, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = encode(&Frame::Request(id, Request { body: Some(body) }))?;
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().ok().as_mut().and_then(|m| m.as_mut()) {
            Some(m) => {
                m.insert(id, tx);
            }
            None => return Err(AgentError::Disconnected("the connection is closed".into())),
        }
        self.writer
            .lock()
            .await
            .write_all(&bytes)
            .await
            .map_err(|e| AgentError::Disconnected(e.to_string()))?;
        rx.await
            .map_err(|_| AgentError::Disconnected("the connection closed before the answer".into()))
    }
}

/// Reads frames until the connection ends: responses to their waiters, notifications to `tx`.
async fn read_loop(
    rd: &mut ReadHalf<Box<dyn Conn>>,
    pending: &Pending,
    tx: mpsc::Sender<Notification>,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(Frame::Response(id, r))) => {
                    let waiter = pending
                        .lock()
                        .ok()
                        .and_then(|mut m| m.as_mut().and_then(|m| m.remove(&id)));
                    if let (Some(w), Some(body)) = (waiter, r.body) {
                        let _ = w.send(body);
                    }
                }
                Ok(Some(Frame::Notification(n))) => {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Frame::Request(..))) => {
                    tracing::warn!("the guest sent a request frame; ignored");
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    tracing::warn!("skipping a bad frame from the guest: {e}")
                }
                Err(e) => {
                    tracing::error!("the guest agent broke the protocol: {e}");
                    return;
                }
            }
        }
        let want = buf.len().min(decoder.room());
        match rd.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                decoder.feed(&buf[..n]);
            }
        }
    }
}
