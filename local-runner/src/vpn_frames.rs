//! Ethernet frames on a local VPN, decided as yagna's exe-unit decides them: an ARP request goes
//! to the node that owns its target address, an IPv4 packet to the owner of its destination,
//! `255.255.255.255` to every other node, and anything else is dropped. The requestor's own
//! stack (at the network's gateway address) answers ARP and ICMP echo itself, with the MAC
//! yagna gives it, `a0:13:<its IPv4 address>`. Pure code: [`crate::vpn_switch`] moves the frames.

use std::collections::HashMap;
use std::net::Ipv4Addr;

const ETH_ARP: [u8; 2] = [0x08, 0x06];
const ETH_IPV4: [u8; 2] = [0x08, 0x00];
/// Ethernet/IPv4 ARP, the fixed part of its header.
const ARP_ETH_IPV4: [u8; 6] = [0, 1, 8, 0, 6, 4];

/// Where a frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// To one node.
    To(usize),
    /// To every node but the sender.
    AllBut(usize),
    /// Back to the sender: the requestor's answer.
    Answer(Vec<u8>),
    /// Nowhere.
    Drop,
}

/// The requestor stack's MAC for `ip`.
pub fn requestor_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0xa0, 0x13, o[0], o[1], o[2], o[3]]
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_at(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The ARP target of an Ethernet/IPv4 ARP request in `frame`.
fn arp_request_target(frame: &[u8]) -> Option<Ipv4Addr> {
    let p = frame.get(14..42)?;
    (frame[12..14] == ETH_ARP && p[..6] == ARP_ETH_IPV4 && p[6..8] == [0, 1])
        .then(|| ipv4_at(&p[24..28]))
}

/// The requestor's answer at `ip` to `frame`, if it asks the requestor anything: an ARP reply,
/// or an ICMP echo reply to an unfragmented echo request.
pub fn requestor_answer(frame: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let mac = requestor_mac(ip);
    if frame.len() < 14 {
        return None;
    }
    let (src_mac, payload) = (&frame[6..12], &frame[14..]);
    if arp_request_target(frame) == Some(ip) {
        let mut out = Vec::with_capacity(42);
        out.extend_from_slice(src_mac);
        out.extend_from_slice(&mac);
        out.extend_from_slice(&ETH_ARP);
        out.extend_from_slice(&ARP_ETH_IPV4);
        out.extend_from_slice(&[0, 2]);
        out.extend_from_slice(&mac);
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&payload[8..18]); // the asker's MAC and IP
        return Some(out);
    }
    if frame[12..14] != ETH_IPV4 || payload.len() < 20 {
        return None;
    }
    let ihl = usize::from(payload[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
    let fragment = u16::from_be_bytes([payload[6], payload[7]]) & 0x3fff != 0;
    if payload[0] >> 4 != 4
        || ihl < 20
        || total < ihl + 8
        || total > payload.len()
        || payload[9] != 1
        || ipv4_at(&payload[16..20]) != ip
        || fragment
        || payload[ihl] != 8
    {
        return None;
    }
    let mut ipv4 = payload[..total].to_vec();
    // Addresses swapped, a fresh TTL, echo reply, both checksums anew.
    let src: [u8; 4] = [ipv4[12], ipv4[13], ipv4[14], ipv4[15]];
    ipv4.copy_within(16..20, 12);
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
    Some(out)
}

/// Who is where on the network.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Each node's addresses.
    owners: HashMap<Ipv4Addr, usize>,
    /// The requestor's addresses (the networks' gateways), answered by the switch itself.
    requestor: Vec<Ipv4Addr>,
}

impl Table {
    /// Node `node` owns `ip`.
    pub fn add_node(&mut self, node: usize, ip: Ipv4Addr) {
        self.owners.insert(ip, node);
    }

    /// The requestor stands at `ip`.
    pub fn add_requestor(&mut self, ip: Ipv4Addr) {
        if !self.requestor.contains(&ip) {
            self.requestor.push(ip);
        }
    }

    /// Where `frame`, sent by node `from`, goes.
    pub fn decide(&self, from: usize, frame: &[u8]) -> Decision {
        if frame.len() < 14 {
            return Decision::Drop;
        }
        let target = if let Some(t) = arp_request_target(frame) {
            t
        } else if frame[12..14] == ETH_ARP && frame.len() >= 42 {
            // An ARP reply goes to whoever asked (its target address).
            ipv4_at(&frame[38..42])
        } else if frame[12..14] == ETH_IPV4 && frame.len() >= 34 && frame[14] >> 4 == 4 {
            ipv4_at(&frame[30..34])
        } else {
            return Decision::Drop;
        };
        if target == Ipv4Addr::BROADCAST {
            return Decision::AllBut(from);
        }
        if let Some(&node) = self.owners.get(&target) {
            return if node == from {
                Decision::Drop
            } else {
                Decision::To(node)
            };
        }
        if self.requestor.contains(&target) {
            if let Some(reply) = requestor_answer(frame, target) {
                return Decision::Answer(reply);
            }
        }
        Decision::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 3);
    const R: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

    fn arp_request(from_mac: [u8; 6], from: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&from_mac);
        f.extend_from_slice(&ETH_ARP);
        f.extend_from_slice(&ARP_ETH_IPV4);
        f.extend_from_slice(&[0, 1]);
        f.extend_from_slice(&from_mac);
        f.extend_from_slice(&from.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    fn ping(from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&to.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1]);
        let sum = checksum(&ip[20..]);
        ip[22..24].copy_from_slice(&sum.to_be_bytes());
        let mut f = vec![2, 0x59, 1, 0, 0, 9, 2, 0x59, 1, 0, 0, 1];
        f.extend_from_slice(&ETH_IPV4);
        f.extend_from_slice(&ip);
        f
    }

    fn table() -> Table {
        let mut t = Table::default();
        t.add_node(0, A);
        t.add_node(1, B);
        t.add_requestor(R);
        t
    }

    #[test]
    fn frames_go_to_the_owner_of_their_target() {
        let t = table();
        assert_eq!(t.decide(0, &arp_request([2; 6], A, B)), Decision::To(1));
        assert_eq!(t.decide(1, &ping(B, A)), Decision::To(0));
        assert_eq!(
            t.decide(0, &ping(A, Ipv4Addr::BROADCAST)),
            Decision::AllBut(0)
        );
        assert_eq!(
            t.decide(0, &ping(A, Ipv4Addr::new(8, 8, 8, 8))),
            Decision::Drop
        );
        assert_eq!(t.decide(0, &ping(A, A)), Decision::Drop);
        assert_eq!(t.decide(0, &[1, 2, 3]), Decision::Drop);
        let mut ipv6 = ping(A, B);
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(t.decide(0, &ipv6), Decision::Drop);
    }

    #[test]
    fn the_requestor_answers_arp_and_echo() {
        let t = table();
        let Decision::Answer(reply) = t.decide(0, &arp_request([2; 6], A, R)) else {
            panic!()
        };
        assert_eq!(&reply[0..6], &[2; 6]);
        assert_eq!(&reply[22..28], &requestor_mac(R));
        assert_eq!(&reply[38..42], &A.octets());
        let Decision::Answer(reply) = t.decide(0, &ping(A, R)) else {
            panic!()
        };
        let ip = &reply[14..];
        assert_eq!(ip[20], 0, "echo reply");
        assert_eq!(&ip[16..20], &A.octets());
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(checksum(&ip[20..]), 0);
    }

    proptest::proptest! {
        /// Frames come from guests: any bytes are decided without a panic, and an answer is
        /// only ever an ARP reply or an echo reply no longer than what was asked.
        #[test]
        fn any_frame_is_decided_without_a_panic(frame in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let t = table();
            if let Decision::Answer(reply) = t.decide(0, &frame) {
                proptest::prop_assert!(reply.len() <= frame.len().max(42));
            }
            let _ = requestor_answer(&frame, R);
        }

        /// A ping to the requestor with any payload is answered with the same payload.
        #[test]
        fn echo_payloads_come_back(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let mut f = ping(A, R);
            f.extend_from_slice(&payload);
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            let Decision::Answer(reply) = table().decide(0, &f) else {
                return Err(proptest::test_runner::TestCaseError::fail("no answer"));
            };
            proptest::prop_assert_eq!(&reply[42..], &payload[..]);
        }
    }

    #[test]
    fn checksums_sum_to_zero_over_themselves() {
        let hdr = [
            0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 0x40, 1, 0, 0, 192, 168, 0, 2, 192, 168, 0, 1,
        ];
        let mut with = hdr;
        with[10..12].copy_from_slice(&checksum(&hdr).to_be_bytes());
        assert_eq!(checksum(&with), 0);
    }
}
