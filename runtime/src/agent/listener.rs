//! Where the guest agent connects: vhost-device-vsock delivers the guest's connections to the
//! agent port to a unix socket beside its own (`<uds>_<port>`), the kernel's vhost-vsock to an
//! AF_VSOCK listener. The host listens before the VM exists; the guest calls in once it is up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_protocol::AGENT_PORT;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

use super::AgentError;

/// A byte stream to the guest agent.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
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

/// Where vhost-device-vsock delivers the guest's connections to the agent port: the daemon's
/// `--uds-path` with `_<port>` appended (the hybrid-vsock convention).
pub fn guest_socket(uds: &Path) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{AGENT_PORT}"));
    PathBuf::from(p)
}

impl AgentListener {
    /// The next connection; `None` when one from a foreign CID was refused.
    async fn accept_one(&self) -> std::io::Result<Option<Box<dyn Conn>>> {
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

    /// Waits for the guest to connect, up to `limit`; `alive` is asked every 100 ms and ends
    /// the wait early (with its error) when the VM died.
    pub async fn accept(
        &self,
        limit: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Box<dyn Conn>, AgentError> {
        let start = Instant::now();
        loop {
            alive().map_err(AgentError::Disconnected)?;
            if let Ok(accepted) =
                tokio::time::timeout(Duration::from_millis(100), self.accept_one()).await
            {
                if let Some(stream) =
                    accepted.map_err(|e| AgentError::Disconnected(e.to_string()))?
                {
                    return Ok(stream);
                }
            }
            if start.elapsed() >= limit {
                return Err(AgentError::BootTimeout(limit));
            }
        }
    }
}
