//! The host end of each network card: a socket made by the runtime and inherited by QEMU, so
//! that no port is probed and released (another process could take it in between) and the
//! address reported to the exe-unit is the one bound. A UDP socket is bound on the loopback and
//! connected to the exe-unit's: only its datagrams reach the VM.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::Context;
use qemu_config::NicBackend;

use crate::api::proto::response::create_network::Endpoint;
use crate::network::{Interface, Transport};

/// How long connecting to a `tcp-connect://` endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One card's host socket, until QEMU has inherited it.
#[derive(Debug)]
pub struct NicSocket {
    /// The network it carries.
    pub interface: Interface,
    /// The guest card's MAC address.
    pub mac: [u8; 6],
    /// What the runtime API reports for it.
    pub endpoint: Endpoint,
    socket: OwnedFd,
    backend: fn(RawFd) -> NicBackend,
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
        let (socket, endpoint, backend): (OwnedFd, Endpoint, fn(RawFd) -> NicBackend) =
            match transport {
                Transport::Udp(peer) => {
                    let s = UdpSocket::bind(loopback_any(peer))
                        .with_context(|| format!("{flag}: cannot bind a UDP socket"))?;
                    s.connect(peer)
                        .with_context(|| format!("{flag}: cannot connect to {peer}"))?;
                    let local = s.local_addr()?;
                    (
                        s.into(),
                        Endpoint::UdpDatagram(local.to_string()),
                        NicBackend::Datagram,
                    )
                }
                Transport::TcpConnect(peer) => {
                    let s = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)
                        .with_context(|| format!("{flag}: cannot connect to {peer}"))?;
                    s.set_nodelay(true)?;
                    let local = s.local_addr()?;
                    (
                        s.into(),
                        Endpoint::TcpStream(local.to_string()),
                        NicBackend::Stream,
                    )
                }
                Transport::TcpListen(at) => {
                    let s = TcpListener::bind(at)
                        .with_context(|| format!("{flag}: cannot listen on {at}"))?;
                    let local = s.local_addr()?;
                    (
                        s.into(),
                        Endpoint::TcpStream(local.to_string()),
                        NicBackend::StreamListener,
                    )
                }
            };
        tracing::debug!("{} card: {endpoint:?}", interface.name());
        Ok(Self {
            interface,
            mac: interface.mac(unique()),
            endpoint,
            socket,
            backend,
        })
    }

    /// The card QEMU makes on this socket.
    pub fn nic(&self) -> qemu_config::Nic {
        qemu_config::Nic {
            mac: self.mac,
            backend: (self.backend)(self.socket.as_raw_fd()),
        }
    }

    /// The descriptor QEMU inherits (close-on-exec here).
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// What is kept once QEMU holds the socket (this process's copy is closed).
    pub fn handed_over(self) -> NicInfo {
        NicInfo {
            interface: self.interface,
            mac: self.mac,
            endpoint: self.endpoint,
        }
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

    #[test]
    fn a_udp_card_reports_its_bound_address_and_hears_only_its_peer() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let nic =
            NicSocket::open(Interface::Vpn, Transport::Udp(peer.local_addr().unwrap())).unwrap();
        let Endpoint::UdpDatagram(addr) = &nic.endpoint else {
            panic!("{:?}", nic.endpoint)
        };
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        assert!(matches!(nic.nic().backend, NicBackend::Datagram(_)));
        let ours = UdpSocket::from(nic.socket.try_clone().unwrap());
        ours.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // A stranger's datagram is dropped; the peer's arrives.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"no", addr).unwrap();
        peer.send_to(b"frame", addr).unwrap();
        let mut buf = [0u8; 16];
        let n = ours.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame");
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
