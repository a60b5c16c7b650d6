//! Network benchmark (run by `scripts/bench-network.sh`): two VMs of the `ya-runtime-vm` binary,
//! started as the exe-unit starts them (`--vpn-endpoint`, then `CreateNetwork`), joined by the
//! local VPN switch of `ya-exescript`, all in one run:
//!
//! - VM↔VM ping round trip through the switch, p50 of busybox ping's per-packet times;
//! - VM↔VM TCP throughput through the switch (busybox `nc`, `/dev/zero` into a reader);
//! - the switch's own ceiling: two host sockets pushing 1234-byte frames (the VPN's MTU plus
//!   the Ethernet header) through the same switch code on loopback.
//!
//! Usage: `bench-network RUNTIME_BIN [MiB (64)]`; the runtime dir comes from
//! `YA_RUNTIME_VM_RUNTIME_DIR` as for the runtime itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::stats::percentile;
use local_runner::vpn_switch::VpnSwitch;
use test_harness::proto::response::create_network::Endpoint;
use test_harness::{finish, pid_of, sample_image, sh, Activity};
use tokio::net::UdpSocket;
use ya_runtime_api::server::proto::Network;
use ya_runtime_api::server::{CreateNetwork, RuntimeControl, RuntimeService};

/// The VPN's frames: its MTU and the Ethernet header.
const FRAME: usize = 1220 + 14;

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, 2 + i as u8)
}

/// An IPv4 frame from `from` to `to`, `len` bytes long.
fn frame(from: Ipv4Addr, to: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[26..30].copy_from_slice(&from.octets());
    f[30..34].copy_from_slice(&to.octets());
    f
}

/// The switch's ceiling: frames per second and MiB/s from one host socket to another.
async fn switch_ceiling() -> (f64, f64) {
    let switch = VpnSwitch::new(2).await.expect("the switch");
    let port = |i: usize| -> SocketAddr {
        let url = switch.url(i).expect("a port");
        url["udp://".len()..].parse().expect("an address")
    };
    let (a, b) = (
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    switch.attach(0, a.local_addr().unwrap(), &[node_ip(0)], &[]);
    switch.attach(1, b.local_addr().unwrap(), &[node_ip(1)], &[]);
    let f = frame(node_ip(0), node_ip(1), FRAME);
    let (to, total) = (port(0), 200_000usize);
    let receiver = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut got = 0usize;
        let start = Instant::now();
        // Until the sender is done and nothing came for a while.
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), b.recv_from(&mut buf)).await
        {
            got += 1;
        }
        (
            got,
            start.elapsed().saturating_sub(Duration::from_millis(300)),
        )
    });
    for i in 0..total {
        a.send_to(&f, to).await.unwrap();
        // Paced a little, so that the loopback's buffers measure the switch, not their size.
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let (got, took) = receiver.await.unwrap();
    let secs = took.as_secs_f64().max(1e-6);
    let fps = got as f64 / secs;
    (fps, fps * FRAME as f64 / (1 << 20) as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let runtime = PathBuf::from(args.next().expect("usage: bench-network RUNTIME_BIN [MiB]"));
    let mib: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(64)
        .max(1);

    let switch = VpnSwitch::new(2).await.expect("the switch");
    let image = sample_image();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut a =
            Activity::new_in(tempfile::tempdir().unwrap(), &image).with_runtime(runtime.clone());
        a.deploy_now(&[]).await;
        let url = switch.url(i).expect("a port");
        let (rt, events) = a.start_with(&["--vpn-endpoint", &url, "start"]).await;
        let reply = rt
            .create_network(CreateNetwork {
                networks: vec![Network {
                    addr: "192.168.0.0".into(),
                    gateway: "192.168.0.1".into(),
                    mask: "255.255.255.0".into(),
                    if_addr: node_ip(i).to_string(),
                }],
                hosts: Default::default(),
                interface: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("CreateNetwork: {}", e.message));
        let Some(Endpoint::UdpDatagram(vm)) = reply.endpoint else {
            panic!("{reply:?}")
        };
        switch.attach(
            i,
            vm.parse().expect("an address"),
            &[node_ip(i)],
            &[Ipv4Addr::new(192, 168, 0, 1)],
        );
        nodes.push((a, rt, events));
    }

    // Ping: busybox prints each reply's time; the first one includes ARP.
    let (_, rt0, ev0) = &mut nodes[0];
    let pid = pid_of(rt0, sh("ping -c 41 -i 0.2 192.168.0.3")).await;
    let (out, _, code) = finish(ev0, pid).await;
    assert_eq!(code, 0, "ping: {}", String::from_utf8_lossy(&out));
    let mut rtts: Vec<Duration> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse::<f64>().ok())
        .skip(1)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    rtts.sort();
    let p50 = percentile(&rtts, 0.5);

    // TCP: a reader on node 1, `mib` MiB of zeros from node 0.
    let server = pid_of(
        &nodes[1].1,
        sh("nc -l -p 7000 -e sh -c 'wc -c > /tmp/n' && cat /tmp/n"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rt0, ev0) = &mut nodes[0];
    let start = Instant::now();
    let client = pid_of(
        rt0,
        sh(&format!(
            "head -c {} /dev/zero | nc 192.168.0.3 7000",
            mib << 20
        )),
    )
    .await;
    let (_, err, code) = finish(ev0, client).await;
    let took = start.elapsed();
    assert_eq!(code, 0, "nc: {}", String::from_utf8_lossy(&err));
    let (_, rt1, ev1) = &mut nodes[1];
    let (got, _, _) = finish(ev1, server).await;
    assert_eq!(
        String::from_utf8_lossy(&got).trim(),
        (mib << 20).to_string()
    );
    let _ = rt1;
    let tcp = mib as f64 / took.as_secs_f64();

    for (_, rt, _) in &nodes {
        rt.shutdown().await.expect("shutdown");
    }
    for (_, rt, _) in &nodes {
        rt.stopped().await;
    }
    let (fps, ceiling) = switch_ceiling().await;

    println!("network benchmark (two ya-runtime-vm VMs on ya-exescript's local VPN switch; TCG, 1 vCPU, 256 MiB each)");
    println!("| measure | ours | reference | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| VM↔VM ping through the switch, {} replies | p50 {:.2} ms | | |",
        rtts.len(),
        p50.as_secs_f64() * 1000.0
    );
    println!(
        "| VM↔VM TCP, {mib} MiB (busybox nc, MTU 1220) | {tcp:.1} MiB/s | switch alone on loopback {ceiling:.1} MiB/s ({fps:.0} frames/s of {FRAME} bytes) | {:.2} |",
        tcp / ceiling
    );
}
