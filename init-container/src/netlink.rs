//! The few rtnetlink requests the init makes to configure network cards: a card up with an
//! MTU, an address with its prefix, a route through a gateway. Each request is one typed message
//! encoded here (header, the request's fixed struct, attributes), sent with `NLM_F_ACK`, and
//! answered by the kernel with an error code that becomes an [`InitError`] naming the request.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::error::{Context, InitError, Result};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const IFF_UP: u32 = 0x1;
/// IPv6: no duplicate address detection (the address is usable at once; the host chose it).
const IFA_F_NODAD: u8 = 0x02;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
/// Largest answer read (an ack carries the request's header back).
const ANSWER_MAX: usize = 8192;

/// One rtnetlink request, as the kernel takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The card `index` up, with `mtu` when given.
    LinkUp { index: u32, mtu: Option<u32> },
    /// `addr/prefix` on card `index`.
    AddAddress {
        index: u32,
        addr: IpAddr,
        prefix: u8,
    },
    /// `dest/prefix` through `gateway` on card `index`, with `metric` (0: the kernel's).
    AddRoute {
        index: u32,
        dest: IpAddr,
        prefix: u8,
        gateway: IpAddr,
        metric: u32,
    },
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A message being built: header, fixed part, attributes, each 4-byte aligned.
struct Message(Vec<u8>);

impl Message {
    fn new(ty: u16, flags: u16, seq: u32, fixed: &[u8]) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        b.extend_from_slice(fixed);
        let mut m = Self(b);
        m.align();
        m
    }

    fn align(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        let len = (4 + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.align();
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

impl Request {
    /// The message, with sequence number `seq`.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        match self {
            Request::LinkUp { index, mtu } => {
                // struct ifinfomsg: family, pad, type, index, flags, change
                let mut fixed = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
                fixed.extend_from_slice(&(*index as i32).to_ne_bytes());
                fixed.extend_from_slice(&IFF_UP.to_ne_bytes());
                fixed.extend_from_slice(&IFF_UP.to_ne_bytes());
                let m = Message::new(RTM_NEWLINK, 0, seq, &fixed);
                match mtu {
                    Some(mtu) => m.attr(IFLA_MTU, &mtu.to_ne_bytes()),
                    None => m,
                }
                .finish()
            }
            Request::AddAddress {
                index,
                addr,
                prefix,
            } => {
                // struct ifaddrmsg: family, prefixlen, flags, scope, index
                let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
                let mut fixed = vec![family(addr), *prefix, flags, RT_SCOPE_UNIVERSE];
                fixed.extend_from_slice(&index.to_ne_bytes());
                let bytes = ip_bytes(addr);
                Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, &fixed)
                    .attr(IFA_LOCAL, &bytes)
                    .attr(IFA_ADDRESS, &bytes)
                    .finish()
            }
            Request::AddRoute {
                index,
                dest,
                prefix,
                gateway,
                metric,
            } => {
                // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
                let mut fixed = vec![
                    family(dest),
                    *prefix,
                    0,
                    0,
                    RT_TABLE_MAIN,
                    RTPROT_BOOT,
                    RT_SCOPE_UNIVERSE,
                    RTN_UNICAST,
                ];
                fixed.extend_from_slice(&0u32.to_ne_bytes());
                let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq, &fixed);
                if *prefix > 0 {
                    m = m.attr(RTA_DST, &ip_bytes(dest));
                }
                m = m
                    .attr(RTA_GATEWAY, &ip_bytes(gateway))
                    .attr(RTA_OIF, &index.to_ne_bytes());
                if *metric > 0 {
                    m = m.attr(RTA_PRIORITY, &metric.to_ne_bytes());
                }
                m.finish()
            }
        }
    }

    /// What this request does, for error lines.
    pub fn describe(&self) -> String {
        match self {
            Request::LinkUp { index, mtu } => match mtu {
                Some(mtu) => format!("set card {index} up with MTU {mtu}"),
                None => format!("set card {index} up"),
            },
            Request::AddAddress {
                index,
                addr,
                prefix,
            } => format!("add address {addr}/{prefix} to card {index}"),
            Request::AddRoute {
                dest,
                prefix,
                gateway,
                ..
            } => format!("add route {dest}/{prefix} via {gateway}"),
        }
    }
}

/// The kernel's answer to request `seq` in `answer`: `Ok(Some(()))` for an ack, `Ok(None)` when
/// the answer is about another request, or the kernel's errno.
fn parse_ack(answer: &[u8], seq: u32) -> std::result::Result<Option<()>, Errno> {
    let mut rest = answer;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let their_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Errno::EBADMSG);
        }
        if ty == NLMSG_ERROR && their_seq == seq {
            let body = &rest[NLMSG_HDRLEN..len];
            if body.len() < 4 {
                return Err(Errno::EBADMSG);
            }
            let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            return if code == 0 {
                Ok(Some(()))
            } else {
                Err(Errno::from_raw(code.saturating_neg()))
            };
        }
        let aligned = (len + 3) & !3;
        rest = &rest[aligned.min(rest.len())..];
    }
    Ok(None)
}

/// A route netlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens and binds the socket.
    pub fn open() -> Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .ctx(|| "open a route netlink socket".into())?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).ctx(|| "bind the netlink socket".into())?;
        Ok(Self { fd, seq: 0 })
    }

    /// Sends `req` and waits for the kernel's answer.
    pub fn apply(&mut self, req: &Request) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let msg = req.encode(self.seq);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()).ctx(|| req.describe())?;
        let mut buf = vec![0u8; ANSWER_MAX];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .ctx(|| format!("{}: read the answer", req.describe()))?;
            match parse_ack(&buf[..n], self.seq) {
                Ok(Some(())) => return Ok(()),
                Ok(None) => continue,
                Err(e) => return Err(InitError::sys(req.describe(), e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn link_up_with_an_mtu() {
        let m = Request::LinkUp {
            index: 3,
            mtu: Some(1220),
        }
        .encode(7);
        assert_eq!(m.len(), 16 + 16 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWLINK);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(u32_at(&m, 20), 3); // ifi_index
        assert_eq!(u32_at(&m, 24), IFF_UP);
        assert_eq!(u16::from_ne_bytes([m[32], m[33]]), 8);
        assert_eq!(u16::from_ne_bytes([m[34], m[35]]), IFLA_MTU);
        assert_eq!(u32_at(&m, 36), 1220);
    }

    #[test]
    fn an_ipv4_address_and_a_default_route() {
        let addr: IpAddr = "10.42.42.2".parse().unwrap();
        let m = Request::AddAddress {
            index: 2,
            addr,
            prefix: 24,
        }
        .encode(1);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(&m[28..32], &[10, 42, 42, 2]);
        let m = Request::AddRoute {
            index: 2,
            dest: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            gateway: "10.42.42.1".parse().unwrap(),
            metric: 0,
        }
        .encode(2);
        // No RTA_DST for a default route: gateway and card only.
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), RTA_GATEWAY);
        assert_eq!(&m[32..36], &[10, 42, 42, 1]);
    }

    #[test]
    fn ipv6_addresses_skip_duplicate_detection() {
        let m = Request::AddAddress {
            index: 2,
            addr: "fd00::2".parse().unwrap(),
            prefix: 64,
        }
        .encode(1);
        assert_eq!(&m[16..20], &[libc::AF_INET6 as u8, 64, IFA_F_NODAD, 0]);
        assert_eq!(m.len(), 16 + 8 + 20 + 20);
    }

    fn answer(seq: u32, code: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b
    }

    #[test]
    fn acks_errors_and_bad_answers() {
        assert_eq!(parse_ack(&answer(5, 0), 5), Ok(Some(())));
        assert_eq!(parse_ack(&answer(4, 0), 5), Ok(None));
        assert_eq!(parse_ack(&answer(5, -17), 5), Err(Errno::EEXIST));
        let mut bad = answer(5, 0);
        bad[0] = 200; // longer than what arrived
        assert_eq!(parse_ack(&bad, 5), Err(Errno::EBADMSG));
        assert_eq!(parse_ack(&[1, 2, 3], 5), Ok(None));
        // i32::MIN must not overflow when negated.
        assert!(parse_ack(&answer(5, i32::MIN), 5).is_err());
    }
}
