//! A network peer on loopback UDP (one datagram, one Ethernet frame) or TCP (each frame after
//! its length), standing where the exe-unit's end of a VM's card is. It answers ARP requests and ICMP echo requests for its own
//! address as the requestor's stack would (MAC `a0:13:<its IPv4 address>`), and counts what it
//! sees, so a test can tell what the guest sent.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ETH_ARP: [u8; 2] = [0x08, 0x06];
const ETH_IPV4: [u8; 2] = [0x08, 0x00];

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

/// The requestor stack's MAC for `ip`.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0xa0, 0x13, o[0], o[1], o[2], o[3]]
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The answer to `frame` from the peer at `ip`, if it asks the peer anything.
pub fn answer(frame: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let mac = mac_of(ip);
    if frame.len() < 14 {
        return None;
    }
    let (src_mac, ethertype, payload) = (&frame[6..12], &frame[12..14], &frame[14..]);
    if ethertype == ETH_ARP && payload.len() >= 28 {
        // Ethernet/IPv4 request (op 1) for our address.
        if payload[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] || payload[24..28] != ip.octets() {
            return None;
        }
        let mut out = Vec::with_capacity(42);
        out.extend_from_slice(src_mac);
        out.extend_from_slice(&mac);
        out.extend_from_slice(&ETH_ARP);
        out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        out.extend_from_slice(&mac);
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&payload[8..14]); // the asker's MAC and IP
        out.extend_from_slice(&payload[14..18]);
        return Some(out);
    }
    if ethertype == ETH_IPV4 && payload.len() >= 20 {
        let ihl = usize::from(payload[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
        let is_fragment = u16::from_be_bytes([payload[6], payload[7]]) & 0x3fff != 0;
        if ihl < 20
            || total < ihl + 8
            || total > payload.len()
            || payload[9] != 1
            || payload[16..20] != ip.octets()
            || is_fragment
            || payload[ihl] != 8
        {
            return None;
        }
        let mut ipv4 = payload[..total].to_vec();
        // Swap the addresses, echo reply, fresh checksums.
        let (src, dst) = (ipv4[12..16].to_vec(), ipv4[16..20].to_vec());
        ipv4[12..16].copy_from_slice(&dst);
        ipv4[16..20].copy_from_slice(&src);
        ipv4[8] = 64;
        ipv4[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&ipv4[..ihl]);
        ipv4[10..12].copy_from_slice(&sum.to_be_bytes());
        ipv4[ihl] = 0;
        ipv4[ihl + 2..ihl + 4].copy_from_slice(&[0, 0]);
        let sum = checksum(&ipv4[ihl..]);
        ipv4[ihl + 2..ihl + 4].copy_from_slice(&sum.to_be_bytes());
        let mut out = Vec::with_capacity(14 + total);
        out.extend_from_slice(src_mac);
        out.extend_from_slice(&mac);
        out.extend_from_slice(&ETH_IPV4);
        out.extend_from_slice(&ipv4);
        return Some(out);
    }
    None
}

/// Counts `frame` (from `from`) and returns the peer's answer to it, if any.
fn serve(st: &PeerStats, frame: &[u8], from: Option<SocketAddr>, ip: Ipv4Addr) -> Option<Vec<u8>> {
    st.frames.fetch_add(1, Ordering::Relaxed);
    st.largest.fetch_max(frame.len(), Ordering::Relaxed);
    if let (Some(from), Ok(mut s)) = (from, st.sender.lock()) {
        *s = Some(from);
    }
    let reply = answer(frame, ip)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_arp_for_its_address_only() {
        let me = Ipv4Addr::new(192, 168, 0, 1);
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&[2, 0x59, 1, 1, 2, 3]);
        req.extend_from_slice(&ETH_ARP);
        req.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&[2, 0x59, 1, 1, 2, 3, 192, 168, 0, 2]);
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&me.octets());
        let reply = answer(&req, me).unwrap();
        assert_eq!(&reply[0..6], &[2, 0x59, 1, 1, 2, 3]);
        assert_eq!(&reply[22..28], &mac_of(me));
        assert_eq!(&reply[38..42], &[192, 168, 0, 2]);
        assert!(answer(&req, Ipv4Addr::new(192, 168, 0, 9)).is_none());
    }

    #[test]
    fn checksums_are_internet_checksums() {
        // The example header of RFC 1071's neighbourhood: a sum over itself is zero.
        let hdr = [
            0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 0x40, 1, 0, 0, 192, 168, 0, 2, 192, 168, 0, 1,
        ];
        let sum = checksum(&hdr);
        let mut with = hdr;
        with[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&with), 0);
    }
}
