//! The exe-unit's network endpoints (`--vpn-endpoint`, `--inet-endpoint`): which interface, and
//! which transport carries its Ethernet frames.
//!
//! - `udp://IP:PORT`: one datagram per frame; the runtime binds its own socket on the loopback,
//!   connects it to `IP:PORT` and reports its address (every released yagna uses this);
//! - `tcp-connect://IP:PORT`: the runtime connects; each frame follows its length (4 bytes,
//!   big-endian);
//! - `tcp-listen://[IP:PORT]`: the runtime listens (on `127.0.0.1:0` when no address is given)
//!   and reports the address; frames as for `tcp-connect`.
//!
//! Every address must be a loopback one: the exe-unit runs on this host, and a VM's frames
//! never leave it except through the exe-unit.

use std::net::SocketAddr;

/// Why an endpoint is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    /// No `scheme://`.
    #[error(
        "{0:?} is not an endpoint URL (udp://IP:PORT, tcp-connect://IP:PORT or tcp-listen://)"
    )]
    NotUrl(String),
    /// A scheme no transport here speaks.
    #[error("{0}:// endpoints are not supported (udp://, tcp-connect:// or tcp-listen://)")]
    Scheme(String),
    /// Not `IP:PORT`.
    #[error("{0:?} is not an IP:PORT address")]
    Address(String),
    /// An address off this host.
    #[error("{0} is not a loopback address: the exe-unit's endpoints are on this host")]
    NotLoopback(SocketAddr),
    /// Port 0 to connect to.
    #[error("cannot send to port 0 ({0})")]
    PortZero(SocketAddr),
}

/// How frames travel between QEMU and the exe-unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams to the exe-unit's socket at this address.
    Udp(SocketAddr),
    /// A stream connected to this address.
    TcpConnect(SocketAddr),
    /// A stream the exe-unit connects to, listened for at this address.
    TcpListen(SocketAddr),
}

fn address(text: &str) -> Result<SocketAddr, EndpointError> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| EndpointError::Address(text.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(EndpointError::NotLoopback(addr));
    }
    Ok(addr)
}

fn connectable(text: &str) -> Result<SocketAddr, EndpointError> {
    let addr = address(text)?;
    if addr.port() == 0 {
        return Err(EndpointError::PortZero(addr));
    }
    Ok(addr)
}

impl std::str::FromStr for Transport {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, EndpointError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| EndpointError::NotUrl(url.to_string()))?;
        let rest = rest.trim_end_matches('/');
        match scheme {
            "udp" => Ok(Transport::Udp(connectable(rest)?)),
            "tcp-connect" => Ok(Transport::TcpConnect(connectable(rest)?)),
            "tcp-listen" if rest.is_empty() => {
                Ok(Transport::TcpListen(SocketAddr::from(([127, 0, 0, 1], 0))))
            }
            "tcp-listen" => Ok(Transport::TcpListen(address(rest)?)),
            other => Err(EndpointError::Scheme(other.chars().take(32).collect())),
        }
    }
}

/// The two networks the exe-unit offers a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interface {
    /// The requestor's virtual private network.
    Vpn,
    /// Outbound internet access, proxied by the exe-unit.
    Inet,
}

impl Interface {
    /// The value of the runtime API's `NetworkInterface` enum, if it names one.
    pub fn from_api(value: i32) -> Option<Self> {
        match value {
            0 => Some(Interface::Vpn),
            1 => Some(Interface::Inet),
            _ => None,
        }
    }

    /// The command-line flag that gives its endpoint.
    pub fn flag(self) -> &'static str {
        match self {
            Interface::Vpn => "--vpn-endpoint",
            Interface::Inet => "--inet-endpoint",
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Interface::Vpn => "VPN",
            Interface::Inet => "INET",
        }
    }

    /// The guest's MTU on it: 1220 on the VPN (the relay path between providers), and on INET
    /// the largest frame the exe-unit's stack takes (65280 bytes) less the Ethernet header.
    pub fn mtu(self) -> u32 {
        match self {
            Interface::Vpn => 1220,
            Interface::Inet => 65266,
        }
    }

    /// The card's MAC address: locally administered, the interface in the third byte, then
    /// `unique` (random per VM, so that two VMs on one VPN never share one).
    pub fn mac(self, unique: [u8; 3]) -> [u8; 6] {
        let kind = match self {
            Interface::Vpn => 0x01,
            Interface::Inet => 0x02,
        };
        [0x02, 0x59, kind, unique[0], unique[1], unique[2]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exe_units_forms() {
        assert_eq!(
            "udp://127.0.0.1:4000".parse(),
            Ok(Transport::Udp("127.0.0.1:4000".parse().unwrap()))
        );
        assert_eq!(
            "udp://[::1]:4000".parse(),
            Ok(Transport::Udp("[::1]:4000".parse().unwrap()))
        );
        assert_eq!(
            "tcp-connect://127.0.0.1:9".parse(),
            Ok(Transport::TcpConnect("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            "tcp-listen://".parse(),
            Ok(Transport::TcpListen("127.0.0.1:0".parse().unwrap()))
        );
        assert_eq!(
            "tcp-listen://127.0.0.1:7000".parse(),
            Ok(Transport::TcpListen("127.0.0.1:7000".parse().unwrap()))
        );
    }

    #[test]
    fn refusals_say_why() {
        let err = |s: &str| s.parse::<Transport>().unwrap_err().to_string();
        assert!(err("unix:///tmp/vm.sock").contains("unix:// endpoints are not supported"));
        assert!(err("127.0.0.1:4000").contains("not an endpoint URL"));
        assert!(err("udp://localhost:4000").contains("not an IP:PORT"));
        assert!(err("udp://10.0.0.1:4000").contains("not a loopback address"));
        assert!(err("udp://127.0.0.1:0").contains("port 0"));
        assert!(err("tcp-listen://0.0.0.0:7000").contains("not a loopback"));
    }

    proptest::proptest! {
        /// The exe-unit's flag values: any text is parsed or refused, never a panic, and what
        /// parses is on the loopback.
        #[test]
        fn any_text_is_parsed_or_refused(url in "\\PC{0,40}") {
            if let Ok(t) = url.parse::<Transport>() {
                let (Transport::Udp(a) | Transport::TcpConnect(a) | Transport::TcpListen(a)) = t;
                proptest::prop_assert!(a.ip().is_loopback());
            }
        }
    }

    #[test]
    fn interfaces_and_their_cards() {
        assert_eq!(Interface::from_api(0), Some(Interface::Vpn));
        assert_eq!(Interface::from_api(1), Some(Interface::Inet));
        assert_eq!(Interface::from_api(2), None);
        assert_eq!(Interface::Vpn.mac([1, 2, 3]), [2, 0x59, 1, 1, 2, 3]);
        assert_ne!(
            Interface::Vpn.mac([1, 2, 3]),
            Interface::Inet.mac([1, 2, 3])
        );
        // Locally administered, unicast.
        assert_eq!(Interface::Inet.mac([0; 3])[0] & 0b11, 0b10);
    }
}
