//! A network peer on loopback UDP (one datagram, one Ethernet frame) or TCP (each frame after
//! its length), standing where the exe-unit's end of a VM's card is. It answers ARP requests
//! and ICMP echo requests for its own address as the requestor's stack would
//! ([`requestor_answer`]), and counts what it sees, so a test can tell what the guest sent.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use local_runner::vpn_frames::requestor_answer;

const ETH_ARP: [u8; 2] = [0x08, 0x06];

/// What the peer has seen.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Frames received.
    pub frames: AtomicUsize,
    /// The largest frame received, in bytes.
    pub largest: AtomicUsize,
    /// ARP requests answered.
    pub arp_answered: AtomicUsize,
    /// ICMP echo requests answered.
    pub echo_answered: AtomicUsize,
    /// Where the last frame came from.
    pub sender: std::sync::Mutex<Option<SocketAddr>>,
}

/// The peer, answering on its own thread until dropped.
pub struct NetPeer {
    /// Its UDP address (what the runtime's `--vpn-endpoint udp://…` names).
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<PeerStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The UDP socket, for [`NetPeer::send_raw`] (a UDP peer only).
    udp: Option<UdpSocket>,
    /// `udp` or `tcp-connect`.
    scheme: &'static str,
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts `frame` (from `from`) and returns the peer's answer to it, if any.
fn serve(st: &PeerStats, frame: &[u8], from: Option<SocketAddr>, ip: Ipv4Addr) -> Option<Vec<u8>> {
    st.frames.fetch_add(1, Ordering::Relaxed);
    st.largest.fetch_max(frame.len(), Ordering::Relaxed);
    if let (Some(from), Ok(mut s)) = (from, st.sender.lock()) {
        *s = Some(from);
    }
    let reply = requestor_answer(frame, ip)?;
    let counter = if reply[12..14] == ETH_ARP {
        &st.arp_answered
    } else {
        &st.echo_answered
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Some(reply)
}

impl NetPeer {
    /// A peer at `ip` on a fresh loopback UDP socket. It answers whoever sent the frame.
    pub fn start(ip: Ipv4Addr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the peer");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = Arc::new(PeerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        let sender = socket.try_clone().expect("clone the peer's socket");
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !sp.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = serve(&st, &buf[..n], Some(from), ip) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self {
            addr,
            stats,
            stop,
            thread: Some(thread),
            udp: Some(sender),
            scheme: "udp",
        }
    }

    /// A peer at `ip` that listens on loopback TCP for one connection at a time and takes each
    /// frame after its length (4 bytes, big-endian), for `tcp-connect://`.
    pub fn start_stream(ip: Ipv4Addr) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the peer");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(PeerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                let Ok((mut conn, from)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                let mut pending = Vec::new();
                let mut chunk = vec![0u8; 70_000];
                while !sp.load(Ordering::Relaxed) {
                    match conn.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue
                        }
                        Err(_) => break,
                    }
                    while pending.len() >= 4 {
                        let len =
                            u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]])
                                as usize;
                        if pending.len() < 4 + len {
                            break;
                        }
                        let frame: Vec<u8> = pending.drain(..4 + len).skip(4).collect();
                        if let Some(reply) = serve(&st, &frame, Some(from), ip) {
                            let mut out = (reply.len() as u32).to_be_bytes().to_vec();
                            out.extend_from_slice(&reply);
                            let _ = conn.write_all(&out);
                        }
                    }
                }
            }
        });
        Self {
            addr,
            stats,
            stop,
            thread: Some(thread),
            udp: None,
            scheme: "tcp-connect",
        }
    }

    /// Sends raw bytes from the peer's UDP socket to `to`.
    pub fn send_raw(&self, bytes: &[u8], to: SocketAddr) {
        if let Some(s) = &self.udp {
            let _ = s.send_to(bytes, to);
        }
    }

    /// The endpoint URL for `--vpn-endpoint` or `--inet-endpoint`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}
