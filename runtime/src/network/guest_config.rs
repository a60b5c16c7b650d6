//! What a runtime-API `CreateNetwork` becomes in the guest: one [`ConfigureNetwork`] for the card
//! of its interface. Each network gives the card an address (`if_addr` with the prefix of
//! `mask`); INET gets a default route through its gateway and the name servers the exe-unit
//! proxies; a VPN network with a gateway gets a route to the network through it (at a metric
//! above the card's own route), one without none; `hosts` become `/etc/hosts` lines.

use std::net::IpAddr;

use agent_protocol::network::{is_host_name, MAX_ENTRIES};
use agent_protocol::{ConfigureNetwork, HostEntry, IpPrefix, Route};

use super::Interface;
use crate::api::proto::request;

/// Name servers for INET: public resolvers the exe-unit's stack knows and forwards.
pub const INET_NAMESERVERS: [&str; 2] = ["1.1.1.1", "8.8.8.8"];
/// Metric of a VPN network's route through its gateway (the card's own route wins).
const VPN_GATEWAY_METRIC: u32 = 101;

/// Why a `CreateNetwork` cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    /// No network.
    #[error("CreateNetwork names no network")]
    Empty,
    /// Too many networks or hosts.
    #[error("CreateNetwork carries more than {MAX_ENTRIES} networks or hosts")]
    TooMany,
    /// A field that is not an IP address.
    #[error("{field} {value:?} is not an IP address")]
    NotIp {
        /// The field.
        field: &'static str,
        /// Its value (cut to 64 characters).
        value: String,
    },
    /// A mask that is not a run of ones.
    #[error("mask {0} is not a network mask")]
    Mask(IpAddr),
    /// IPv4 and IPv6 mixed in one network.
    #[error("network {0}: its fields mix IPv4 and IPv6")]
    Mixed(IpAddr),
    /// An interface address outside its network.
    #[error("address {addr} is outside network {net}/{prefix}")]
    Outside {
        /// The interface address.
        addr: IpAddr,
        /// The network.
        net: IpAddr,
        /// Its prefix.
        prefix: u8,
    },
    /// INET without a gateway.
    #[error("the INET network has no gateway")]
    NoGateway,
    /// A host name `/etc/hosts` cannot carry.
    #[error("{0:?} is not a host name")]
    HostName(String),
}

fn ip(field: &'static str, value: &str) -> Result<IpAddr, NetworkError> {
    value.parse().map_err(|_| NetworkError::NotIp {
        field,
        value: value.chars().take(64).collect(),
    })
}

/// The prefix length of a network mask.
fn prefix_len(mask: IpAddr) -> Result<u8, NetworkError> {
    let (bits, width) = match mask {
        IpAddr::V4(m) => (u128::from(u32::from(m)) << 96, 32),
        IpAddr::V6(m) => (u128::from(m), 128),
    };
    let ones = bits.leading_ones();
    // A mask is ones then zeros: nothing may follow the first zero.
    if ones < 128 && bits << ones != 0 || ones > width {
        return Err(NetworkError::Mask(mask));
    }
    Ok(ones as u8)
}

/// `addr` with only its first `prefix` bits kept.
fn network_of(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

fn host_name(name: &str) -> Result<String, NetworkError> {
    if !is_host_name(name) {
        return Err(NetworkError::HostName(name.chars().take(64).collect()));
    }
    Ok(name.to_string())
}

/// The guest configuration of `interface`'s card (MAC `mac`) for `req`.
pub fn guest_config(
    interface: Interface,
    mac: [u8; 6],
    req: &request::CreateNetwork,
) -> Result<ConfigureNetwork, NetworkError> {
    if req.networks.is_empty() {
        return Err(NetworkError::Empty);
    }
    if req.networks.len() > MAX_ENTRIES || req.hosts.len() > MAX_ENTRIES {
        return Err(NetworkError::TooMany);
    }
    let mut config = ConfigureNetwork {
        mac: mac.to_vec(),
        mtu: interface.mtu(),
        ..Default::default()
    };
    for n in &req.networks {
        let addr = ip("network address", &n.addr)?;
        let mask = ip("mask", &n.mask)?;
        let if_addr = ip("interface address", &n.if_addr)?;
        let gateway = match n.gateway.trim() {
            "" => None,
            g => Some(ip("gateway", g)?),
        };
        let v4 = addr.is_ipv4();
        if mask.is_ipv4() != v4
            || if_addr.is_ipv4() != v4
            || gateway.is_some_and(|g| g.is_ipv4() != v4)
        {
            return Err(NetworkError::Mixed(addr));
        }
        let prefix = prefix_len(mask)?;
        let net = network_of(addr, prefix);
        if network_of(if_addr, prefix) != net {
            return Err(NetworkError::Outside {
                addr: if_addr,
                net,
                prefix,
            });
        }
        config.addresses.push(IpPrefix {
            addr: if_addr.to_string(),
            prefix: prefix.into(),
        });
        match (interface, gateway) {
            (Interface::Inet, None) => return Err(NetworkError::NoGateway),
            (Interface::Inet, Some(g)) => config.routes.push(Route {
                dest: Some(IpPrefix {
                    addr: if v4 { "0.0.0.0" } else { "::" }.into(),
                    prefix: 0,
                }),
                gateway: g.to_string(),
                metric: 0,
            }),
            (Interface::Vpn, Some(g)) if g != if_addr => config.routes.push(Route {
                dest: Some(IpPrefix {
                    addr: net.to_string(),
                    prefix: prefix.into(),
                }),
                gateway: g.to_string(),
                metric: VPN_GATEWAY_METRIC,
            }),
            (Interface::Vpn, _) => {}
        }
    }
    // In name order, so that the file is the same for the same request.
    let mut hosts: Vec<_> = req.hosts.iter().collect();
    hosts.sort();
    for (name, addr) in hosts {
        config.hosts.push(HostEntry {
            ip: ip("host address", addr)?.to_string(),
            name: host_name(name)?,
        });
    }
    if interface == Interface::Inet {
        config.nameservers = INET_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::Network;

    fn net(addr: &str, gateway: &str, mask: &str, if_addr: &str) -> Network {
        Network {
            addr: addr.into(),
            gateway: gateway.into(),
            mask: mask.into(),
            if_addr: if_addr.into(),
        }
    }

    fn req(networks: Vec<Network>, hosts: &[(&str, &str)]) -> request::CreateNetwork {
        request::CreateNetwork {
            networks,
            hosts: hosts
                .iter()
                .map(|(n, i)| (n.to_string(), i.to_string()))
                .collect(),
            interface: 0,
        }
    }

    const MAC: [u8; 6] = [2, 0x59, 1, 0, 0, 1];

    #[test]
    fn inet_as_the_exe_unit_sends_it() {
        let r = req(
            vec![net(
                "10.42.42.1",
                "10.42.42.1",
                "255.255.255.0",
                "10.42.42.2",
            )],
            &[],
        );
        let c = guest_config(Interface::Inet, MAC, &r).unwrap();
        assert_eq!(c.mtu, 65266);
        assert_eq!(
            c.addresses,
            [IpPrefix {
                addr: "10.42.42.2".into(),
                prefix: 24
            }]
        );
        assert_eq!(
            c.routes,
            [Route {
                dest: Some(IpPrefix {
                    addr: "0.0.0.0".into(),
                    prefix: 0
                }),
                gateway: "10.42.42.1".into(),
                metric: 0
            }]
        );
        assert_eq!(c.nameservers, ["1.1.1.1", "8.8.8.8"]);
    }

    #[test]
    fn vpn_with_a_gateway_an_empty_one_and_two_networks() {
        let r = req(
            vec![
                net("192.168.0.0", "192.168.0.1", "255.255.255.0", "192.168.0.2"),
                net("10.0.0.0", "", "255.255.0.0", "10.0.3.4"),
            ],
            &[("requestor", "192.168.0.1"), ("b-node", "10.0.0.9")],
        );
        let c = guest_config(Interface::Vpn, MAC, &r).unwrap();
        assert_eq!(c.mtu, 1220);
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(c.addresses[1].prefix, 16);
        assert_eq!(c.routes.len(), 1, "an empty gateway adds no route");
        assert_eq!(c.routes[0].dest.as_ref().unwrap().addr, "192.168.0.0");
        assert_eq!(c.routes[0].metric, 101);
        assert_eq!(c.hosts[0].name, "b-node");
        assert_eq!(c.hosts[1].ip, "192.168.0.1");
        assert!(c.nameservers.is_empty());
    }

    #[test]
    fn ipv6_networks() {
        let r = req(
            vec![net("fd00::", "", "ffff:ffff:ffff:ffff::", "fd00::2")],
            &[],
        );
        let c = guest_config(Interface::Vpn, MAC, &r).unwrap();
        assert_eq!(c.addresses[0].prefix, 64);
    }

    #[test]
    fn refusals() {
        let bad = |n: Network| guest_config(Interface::Vpn, MAC, &req(vec![n], &[])).unwrap_err();
        assert_eq!(
            guest_config(Interface::Vpn, MAC, &req(vec![], &[])),
            Err(NetworkError::Empty)
        );
        assert!(matches!(
            bad(net("192.168.0.0", "", "255.0.255.0", "192.168.0.2")),
            NetworkError::Mask(_)
        ));
        assert!(matches!(
            bad(net("192.168.0.0", "", "255.255.255.0", "192.168.1.2")),
            NetworkError::Outside { .. }
        ));
        assert!(matches!(
            bad(net(
                "192.168.0.0",
                "fd00::1",
                "255.255.255.0",
                "192.168.0.2"
            )),
            NetworkError::Mixed(_)
        ));
        assert!(matches!(
            bad(net("192.168.0", "", "255.255.255.0", "192.168.0.2")),
            NetworkError::NotIp { .. }
        ));
        assert_eq!(
            guest_config(
                Interface::Inet,
                MAC,
                &req(
                    vec![net("10.42.42.1", "", "255.255.255.0", "10.42.42.2")],
                    &[]
                )
            ),
            Err(NetworkError::NoGateway)
        );
        let r = req(
            vec![net("192.168.0.0", "", "255.255.255.0", "192.168.0.2")],
            &[("two words", "192.168.0.1")],
        );
        assert!(matches!(
            guest_config(Interface::Vpn, MAC, &r),
            Err(NetworkError::HostName(_))
        ));
    }

    proptest::proptest! {
        /// The networks and names come from the requestor's ExeScript: any strings are either
        /// refused or give a configuration whose every address parses.
        #[test]
        fn any_request_is_refused_or_well_formed(
            addr in "[0-9a-f.:]{0,20}",
            mask in "[0-9f.:]{0,20}",
            if_addr in "[0-9a-f.:]{0,20}",
            gateway in "[0-9a-f.:]{0,20}",
            name in "\\PC{0,20}",
            inet in proptest::bool::ANY,
        ) {
            let r = req(vec![net(&addr, &gateway, &mask, &if_addr)], &[(&name, "10.0.0.1")]);
            let interface = if inet { Interface::Inet } else { Interface::Vpn };
            if let Ok(c) = guest_config(interface, MAC, &r) {
                for a in &c.addresses {
                    proptest::prop_assert!(a.addr.parse::<IpAddr>().is_ok());
                }
                for h in &c.hosts {
                    proptest::prop_assert!(!h.name.chars().any(char::is_whitespace));
                }
            }
        }
    }

    #[test]
    fn masks() {
        let p = |m: &str| prefix_len(m.parse().unwrap());
        assert_eq!(p("255.255.255.255"), Ok(32));
        assert_eq!(p("0.0.0.0"), Ok(0));
        assert_eq!(p("255.255.254.0"), Ok(23));
        assert!(p("255.255.255.1").is_err());
        assert_eq!(p("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Ok(128));
        assert_eq!(p("::"), Ok(0));
    }
}
