//! A local VPN for several activities on one machine: one loopback UDP port per node, which that
//! node's runtime gets as `--vpn-endpoint udp://…`. Once a node's `CreateNetwork` is answered
//! the switch knows where its VM's frames come from and go to ([`VpnSwitch::attach`]); frames
//! are then routed by [`crate::vpn_frames::Table`] as the exe-unit routes them, with the
//! requestor's stack at each network's gateway answering ARP and ping.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::vpn_frames::{Decision, Table};

/// Largest frame relayed (an Ethernet header and the largest UDP payload).
const MAX_FRAME: usize = 65_535;

/// What the switch knows, shared by its ports.
#[derive(Default)]
struct State {
    table: Table,
    /// Each node's VM socket, once attached.
    vms: Vec<Option<SocketAddr>>,
}

/// The switch; its ports close when it is dropped.
pub struct VpnSwitch {
    ports: Vec<Arc<UdpSocket>>,
    state: Arc<RwLock<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for VpnSwitch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl VpnSwitch {
    /// A switch with `nodes` ports.
    pub async fn new(nodes: usize) -> std::io::Result<Self> {
        let mut ports = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            ports.push(Arc::new(UdpSocket::bind("127.0.0.1:0").await?));
        }
        let state = Arc::new(RwLock::new(State {
            table: Table::default(),
            vms: vec![None; nodes],
        }));
        let tasks = (0..nodes)
            .map(|node| tokio::spawn(serve(node, ports.clone(), state.clone())))
            .collect();
        Ok(Self {
            ports,
            state,
            tasks,
        })
    }

    /// The endpoint URL for node `node`'s runtime (`--vpn-endpoint`).
    pub fn url(&self, node: usize) -> std::io::Result<String> {
        Ok(format!("udp://{}", self.ports[node].local_addr()?))
    }

    /// Node `node`'s VM sends from and receives at `vm`, owns `ips`, and its networks' gateways
    /// are the requestor's.
    pub fn attach(&self, node: usize, vm: SocketAddr, ips: &[Ipv4Addr], gateways: &[Ipv4Addr]) {
        if let Ok(mut st) = self.state.write() {
            if let Some(slot) = st.vms.get_mut(node) {
                *slot = Some(vm);
            }
            for ip in ips {
                st.table.add_node(node, *ip);
            }
            for gw in gateways {
                st.table.add_requestor(*gw);
            }
        }
    }
}

/// Receives node `node`'s frames and sends each where the table says.
async fn serve(node: usize, ports: Vec<Arc<UdpSocket>>, state: Arc<RwLock<State>>) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let Ok((n, from)) = ports[node].recv_from(&mut buf).await else {
            continue;
        };
        let frame = &buf[..n];
        // Decided under the lock, sent after it.
        let sends: Vec<(usize, SocketAddr, Option<Vec<u8>>)> = {
            let Ok(st) = state.read() else { return };
            if st.vms.get(node).copied().flatten() != Some(from) {
                // Not this node's VM (or not attached yet).
                continue;
            }
            let vm = |j: usize| st.vms.get(j).copied().flatten();
            match st.table.decide(node, frame) {
                Decision::To(j) => vm(j).map(|a| (j, a, None)).into_iter().collect(),
                Decision::AllBut(i) => (0..st.vms.len())
                    .filter(|&j| j != i)
                    .filter_map(|j| vm(j).map(|a| (j, a, None)))
                    .collect(),
                Decision::Answer(reply) => vec![(node, from, Some(reply))],
                Decision::Drop => Vec::new(),
            }
        };
        for (j, to, reply) in sends {
            let _ = ports[j]
                .send_to(reply.as_deref().unwrap_or(frame), to)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A frame from `from` to `to` (IPv4, protocol 17, no payload).
    fn packet(from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&from.octets());
        f.extend_from_slice(&to.octets());
        f
    }

    #[tokio::test]
    async fn routes_between_attached_nodes_only() {
        let switch = VpnSwitch::new(2).await.unwrap();
        let port =
            |i: usize| -> SocketAddr { switch.url(i).unwrap()["udp://".len()..].parse().unwrap() };
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (ip_a, ip_b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        switch.attach(0, a.local_addr().unwrap(), &[ip_a], &[]);
        switch.attach(1, b.local_addr().unwrap(), &[ip_b], &[]);
        // A stranger's frame on A's port is dropped; A's own is delivered to B from B's port.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        stranger
            .send_to(&packet(ip_a, ip_b), port(0))
            .await
            .unwrap();
        a.send_to(&packet(ip_a, ip_b), port(0)).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], packet(ip_a, ip_b).as_slice());
        assert_eq!(from, port(1));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), b.recv_from(&mut buf))
                .await
                .is_err(),
            "the stranger's frame was dropped"
        );
    }
}
