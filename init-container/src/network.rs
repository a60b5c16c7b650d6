//! The guest's network: `lo` up at boot, and each card configured as the host asks
//! ([`ConfigureNetwork`]). A card is found by the MAC address the host gave it, never by the
//! order the kernel probed the cards in; it is set up with its MTU, its addresses and routes over
//! rtnetlink ([`crate::netlink`]); `/etc/hosts` gains the host's names and, when the request
//! names servers, `/etc/resolv.conf` is replaced, both written inside the image root.

use std::net::IpAddr;
use std::path::Path;

use agent_protocol::network::{is_host_name, MAX_ENTRIES};
use agent_protocol::{ConfigureNetwork, IpPrefix};

use crate::error::{InitError, Result};
use crate::in_root::{self, WriteMode};
use crate::netlink::{Netlink, Request};

/// Where the kernel lists network cards.
const SYS_NET: &str = "/sys/class/net";
/// The loopback card's index (always the first one registered).
const LOOPBACK_INDEX: u32 = 1;

/// Brings `lo` up (the kernel gives it 127.0.0.1 and ::1).
pub fn loopback_up() -> Result<()> {
    Netlink::open()?.apply(&Request::LinkUp {
        index: LOOPBACK_INDEX,
        mtu: None,
    })
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The index of the card whose MAC address is `mac`, from `sys_net` (`/sys/class/net`).
fn card_index(sys_net: &Path, mac: &[u8]) -> Result<u32> {
    let want = mac_text(mac);
    let entries = std::fs::read_dir(sys_net)
        .map_err(|e| InitError::io(format!("list {}", sys_net.display()), &e))?;
    for e in entries.flatten() {
        let address = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(&want) {
            let index = std::fs::read_to_string(e.path().join("ifindex")).unwrap_or_default();
            return index.trim().parse().map_err(|_| {
                InitError::invalid(format!(
                    "card {} has no index",
                    e.file_name().to_string_lossy()
                ))
            });
        }
    }
    Err(InitError::invalid(format!(
        "no network card has the MAC address {want}"
    )))
}

fn ip(what: &str, text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| InitError::invalid(format!("{what} {text:?} is not an IP address")))
}

fn prefix(what: &str, p: &IpPrefix) -> Result<(IpAddr, u8)> {
    let addr = ip(what, &p.addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match u8::try_from(p.prefix) {
        Ok(len) if len <= max => Ok((addr, len)),
        _ => Err(InitError::invalid(format!(
            "{what} {}/{}: the prefix is longer than {max}",
            p.addr, p.prefix
        ))),
    }
}

/// `name`, if `/etc/hosts` can carry it ([`is_host_name`]).
fn host_name(name: &str) -> Result<&str> {
    if !is_host_name(name) {
        return Err(InitError::invalid(format!("{name:?} is not a host name")));
    }
    Ok(name)
}

/// What one request does, checked before anything is changed.
#[derive(Debug, PartialEq)]
struct Plan {
    mac: Vec<u8>,
    requests: Vec<Request>,
    hosts: String,
    resolv: Option<String>,
}

/// Checks `req` whole and turns it into netlink requests for card `index` and file contents.
fn plan(req: &ConfigureNetwork, index: u32) -> Result<Plan> {
    if req.addresses.len() > MAX_ENTRIES
        || req.routes.len() > MAX_ENTRIES
        || req.hosts.len() > MAX_ENTRIES
        || req.nameservers.len() > MAX_ENTRIES
    {
        return Err(InitError::invalid(format!(
            "a network request carries at most {MAX_ENTRIES} of each kind of entry"
        )));
    }
    let mtu = match req.mtu {
        0 => None,
        68..=65535 => Some(req.mtu),
        other => return Err(InitError::invalid(format!("MTU {other} is out of range"))),
    };
    let mut requests = vec![Request::LinkUp { index, mtu }];
    for a in &req.addresses {
        let (addr, len) = prefix("address", a)?;
        requests.push(Request::AddAddress {
            index,
            addr,
            prefix: len,
        });
    }
    for r in &req.routes {
        let dest = r
            .dest
            .as_ref()
            .ok_or_else(|| InitError::invalid("a route without a destination"))?;
        let (dest, len) = prefix("route destination", dest)?;
        let gateway = ip("gateway", &r.gateway)?;
        if dest.is_ipv4() != gateway.is_ipv4() {
            return Err(InitError::invalid(format!(
                "route {dest}/{len} and its gateway {gateway} are of different IP versions"
            )));
        }
        requests.push(Request::AddRoute {
            index,
            dest,
            prefix: len,
            gateway,
            metric: r.metric,
        });
    }
    let mut hosts = String::new();
    for h in &req.hosts {
        let addr = ip("host address", &h.ip)?;
        hosts.push_str(&format!("{addr}\t{}\n", host_name(&h.name)?));
    }
    let resolv = if req.nameservers.is_empty() {
        None
    } else {
        let mut text = String::new();
        for n in &req.nameservers {
            text.push_str(&format!("nameserver {}\n", ip("name server", n)?));
        }
        Some(text)
    };
    Ok(Plan {
        mac: req.mac.clone(),
        requests,
        hosts,
        resolv,
    })
}

/// Configures the card `req` names and the name files of the image at `root`.
pub fn configure(root: &Path, req: &ConfigureNetwork) -> Result<()> {
    if req.mac.len() != 6 {
        return Err(InitError::invalid(format!(
            "a MAC address has 6 bytes, not {}",
            req.mac.len()
        )));
    }
    let index = card_index(Path::new(SYS_NET), &req.mac)?;
    let plan = plan(req, index)?;
    let mut nl = Netlink::open()?;
    for r in &plan.requests {
        nl.apply(r)?;
    }
    let root = in_root::open_root(root)?;
    if !plan.hosts.is_empty() {
        in_root::write_file(
            &root,
            "etc",
            "hosts",
            plan.hosts.as_bytes(),
            WriteMode::Append,
        )?;
    }
    if let Some(resolv) = &plan.resolv {
        in_root::write_file(
            &root,
            "etc",
            "resolv.conf",
            resolv.as_bytes(),
            WriteMode::Replace,
        )?;
    }
    crate::log!(
        "network card {} configured ({} addresses, {} routes)",
        mac_text(&plan.mac),
        req.addresses.len(),
        req.routes.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{HostEntry, Route};

    fn inet() -> ConfigureNetwork {
        ConfigureNetwork {
            mac: vec![2, 0x59, 2, 1, 2, 3],
            mtu: 65266,
            addresses: vec![IpPrefix {
                addr: "10.42.42.2".into(),
                prefix: 24,
            }],
            routes: vec![Route {
                dest: Some(IpPrefix {
                    addr: "0.0.0.0".into(),
                    prefix: 0,
                }),
                gateway: "10.42.42.1".into(),
                metric: 0,
            }],
            hosts: vec![HostEntry {
                ip: "192.168.0.1".into(),
                name: "requestor".into(),
            }],
            nameservers: vec!["1.1.1.1".into(), "8.8.8.8".into()],
        }
    }

    #[test]
    fn a_request_becomes_netlink_requests_and_file_lines() {
        let p = plan(&inet(), 3).unwrap();
        assert_eq!(
            p.requests,
            vec![
                Request::LinkUp {
                    index: 3,
                    mtu: Some(65266)
                },
                Request::AddAddress {
                    index: 3,
                    addr: "10.42.42.2".parse().unwrap(),
                    prefix: 24
                },
                Request::AddRoute {
                    index: 3,
                    dest: "0.0.0.0".parse().unwrap(),
                    prefix: 0,
                    gateway: "10.42.42.1".parse().unwrap(),
                    metric: 0
                },
            ]
        );
        assert_eq!(p.hosts, "192.168.0.1\trequestor\n");
        assert_eq!(
            p.resolv.as_deref(),
            Some("nameserver 1.1.1.1\nnameserver 8.8.8.8\n")
        );
    }

    #[test]
    fn bad_entries_are_refused_before_anything_changes() {
        let bad = |f: &dyn Fn(&mut ConfigureNetwork)| {
            let mut r = inet();
            f(&mut r);
            plan(&r, 3).unwrap_err().to_string()
        };
        assert!(bad(&|r| r.addresses[0].addr = "10.42.42".into()).contains("not an IP"));
        assert!(bad(&|r| r.addresses[0].prefix = 33).contains("longer than 32"));
        assert!(bad(&|r| r.mtu = 10).contains("MTU"));
        assert!(bad(&|r| r.routes[0].gateway = "fd00::1".into()).contains("IP versions"));
        assert!(bad(&|r| r.routes[0].dest = None).contains("destination"));
        assert!(bad(&|r| r.hosts[0].name = "a b".into()).contains("not a host name"));
        assert!(bad(&|r| r.hosts[0].name = "x\n1.2.3.4 evil".into()).contains("host name"));
        assert!(bad(&|r| r.nameservers.push("dns".into())).contains("name server"));
        assert!(bad(&|r| r.hosts = vec![r.hosts[0].clone(); 65]).contains("at most"));
    }

    #[test]
    fn cards_are_found_by_mac() {
        let sys = tempfile::tempdir().unwrap();
        for (name, mac, index) in [
            ("eth0", "02:59:01:0a:0b:0c", "2"),
            ("eth1", "02:59:02:01:02:03", "3"),
        ] {
            let d = sys.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            std::fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
        }
        assert_eq!(card_index(sys.path(), &[2, 0x59, 2, 1, 2, 3]).unwrap(), 3);
        assert_eq!(
            card_index(sys.path(), &[2, 0x59, 1, 10, 11, 12]).unwrap(),
            2
        );
        let e = card_index(sys.path(), &[2, 0x59, 9, 9, 9, 9]).unwrap_err();
        assert!(e.to_string().contains("02:59:09:09:09:09"), "{e}");
    }
}
