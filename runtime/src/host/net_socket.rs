//! The host end of each network card. The runtime makes the exe-unit's side itself, so that no
//! port is probed and released (another process could take it in between) and the address
//! reported to the exe-unit is the one bound: a UDP socket bound on the loopback and connected
//! to the exe-unit's (only its datagrams are taken), a TCP connection, or a TCP listener. QEMU
//! gets one end of a datagram socket pair, and [`super::frame_relay`] carries the frames
//! between the two once QEMU runs.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use anyhow::Context;

use super::frame_relay::{ExeUnitSide, FrameRelay};
use crate::api::proto::response::create_network::Endpoint;
use crate::network::{Interface, Transport};

/// How long connecting to a `tcp-connect://` endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exe-unit's side of a card, as made here (before the async runtime takes it).
#[derive(Debug)]
enum Side {
    Datagram(UdpSocket),
    Stream(TcpStream),
    Listener(TcpListener),
}

/// One card's sockets, until QEMU has inherited its end.
#[derive(Debug)]
pub struct NicSocket {
    /// The network it carries.
    pub interface: Interface,
    /// The guest card's MAC address.
    pub mac: [u8; 6],
    /// What the runtime API reports for it.
    pub endpoint: Endpoint,
    side: Side,
    /// The runtime's end of QEMU's socket pair.
    relay_end: UnixDatagram,
    /// QEMU's end.
    qemu_end: UnixDatagram,
}

/// A socket address on the loopback of `peer`'s family, any port.
fn loopback_any(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    }
}

/// Three random bytes that tell this VM's cards from another's.
fn unique() -> [u8; 3] {
    use std::io::Read;
    let mut b = [0u8; 3];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No urandom: the pid still tells VMs of this host apart.
        let pid = std::process::id().to_be_bytes();
        b.copy_from_slice(&pid[1..]);
    }
    b
}

impl NicSocket {
    /// Makes the socket for `interface` over `transport`.
    pub fn open(interface: Interface, transport: Transport) -> anyhow::Result<Self> {
        let flag = interface.flag();
        let (side, endpoint) = match transport {
            Transport::Udp(peer) => {
                let s = UdpSocket::bind(loopback_any(peer))
                    .with_context(|| format!("{flag}: cannot bind a UDP socket"))?;
                s.connect(peer)
                    .with_context(|| format!("{flag}: cannot connect to {peer}"))?;
                let local = s.local_addr()?;
                (Side::Datagram(s), Endpoint::UdpDatagram(local.to_string()))
            }
            Transport::TcpConnect(peer) => {
                let s = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)
                    .with_context(|| format!("{flag}: cannot connect to {peer}"))?;
                let local = s.local_addr()?;
                (Side::Stream(s), Endpoint::TcpStream(local.to_string()))
            }
            Transport::TcpListen(at) => {
                let s = TcpListener::bind(at)
                    .with_context(|| format!("{flag}: cannot listen on {at}"))?;
                let local = s.local_addr()?;
                (Side::Listener(s), Endpoint::TcpStream(local.to_string()))
            }
        };
        let (relay_end, qemu_end) =
            UnixDatagram::pair().context("cannot make a socket pair for a network card")?;
        tracing::debug!("{} card: {endpoint:?}", interface.name());
        Ok(Self {
            interface,
            mac: interface.mac(unique()),
            endpoint,
            side,
            relay_end,
            qemu_end,
        })
    }

    /// The card QEMU makes on its end of the socket pair.
    pub fn nic(&self) -> qemu_config::Nic {
        qemu_config::Nic {
            mac: self.mac,
            socket: self.qemu_end.as_raw_fd(),
        }
    }

    /// The descriptor QEMU inherits (close-on-exec here).
    pub fn fd(&self) -> RawFd {
        self.qemu_end.as_raw_fd()
    }

    /// Once QEMU holds its end: closes this process's copy of it, starts relaying frames, and
    /// returns what is kept of the card.
    pub fn handed_over(self) -> anyhow::Result<(NicInfo, FrameRelay)> {
        drop(self.qemu_end);
        let side = match self.side {
            Side::Datagram(s) => {
                s.set_nonblocking(true)?;
                ExeUnitSide::Datagram(tokio::net::UdpSocket::from_std(s)?)
            }
            Side::Stream(s) => {
                s.set_nonblocking(true)?;
                ExeUnitSide::Stream(tokio::net::TcpStream::from_std(s)?)
            }
            Side::Listener(s) => {
                s.set_nonblocking(true)?;
                ExeUnitSide::Listener(tokio::net::TcpListener::from_std(s)?)
            }
        };
        self.relay_end.set_nonblocking(true)?;
        let vm = tokio::net::UnixDatagram::from_std(self.relay_end)?;
        let info = NicInfo {
            interface: self.interface,
            mac: self.mac,
            endpoint: self.endpoint,
        };
        Ok((info, FrameRelay::start(side, vm)))
    }
}

/// A running VM's card: what `CreateNetwork` needs of it.
#[derive(Debug, Clone)]
pub struct NicInfo {
    /// The network it carries.
    pub interface: Interface,
    /// The guest card's MAC address.
    pub mac: [u8; 6],
    /// What the runtime API reports for it.
    pub endpoint: Endpoint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_udp_card_reports_its_bound_address_and_hears_only_its_peer() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let nic =
            NicSocket::open(Interface::Vpn, Transport::Udp(peer.local_addr().unwrap())).unwrap();
        let Endpoint::UdpDatagram(addr) = &nic.endpoint else {
            panic!("{:?}", nic.endpoint)
        };
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        let qemu = nic.qemu_end.try_clone().unwrap();
        qemu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (_info, _relay) = nic.handed_over().unwrap();
        // A stranger's datagram is dropped; the peer's arrives.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"no", addr).unwrap();
        peer.send_to(b"frame", addr).unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 16];
            let n = qemu.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .await
        .unwrap();
        assert_eq!(got, b"frame");
    }

    #[test]
    fn a_listening_card_reports_where_to_connect() {
        let nic = NicSocket::open(
            Interface::Inet,
            Transport::TcpListen("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        let Endpoint::TcpStream(addr) = &nic.endpoint else {
            panic!("{:?}", nic.endpoint)
        };
        TcpStream::connect(addr.as_str()).unwrap();
        assert_eq!(nic.mac[2], 0x02);
    }

    #[test]
    fn a_closed_port_is_a_clear_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = NicSocket::open(Interface::Vpn, Transport::TcpConnect(port)).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("--vpn-endpoint: cannot connect to"),
            "{e:#}"
        );
    }
}
