//! Network benchmark (run by `scripts/bench-network.sh`): two VMs of the `ya-runtime-vm` binary,
//! started as the exe-unit starts them (`--vpn-endpoint`, then `CreateNetwork`), joined by the
//! local VPN switch of `ya-exescript`, all in one run:
//!
//! - VM↔VM ping round trip through the switch, p50 of busybox ping's per-packet times;
//! - VM↔VM TCP throughput through the switch (busybox `nc`, `/dev/zero` into a reader);
//! - the switch's own ceiling: two host sockets pushing 1234-byte frames (the VPN's MTU plus
//!   the Ethernet header) through the same switch code on loopback;
//! - one VM's TCP throughput over INET to an HTTP server on the host's loopback, through passt
//!   (the tests' stand-in for the exe-unit's INET stack), against the same download on the host.
//!
//! Usage: `bench-network RUNTIME_BIN [MiB (64)]`; the runtime dir comes from
//! `YA_RUNTIME_VM_RUNTIME_DIR` as for the runtime itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::stats::percentile;
use local_runner::vpn_switch::VpnSwitch;
use test_fixtures::http::{Resource, Server};
use test_harness::inet_peer::{inet_request, InetPeer, GATEWAY};
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
    let (inet, host) = inet_download(&runtime, &image, mib).await;

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
    println!(
        "| one VM's TCP over INET via passt, {mib} MiB HTTP download | {inet:.1} MiB/s | the same download on the host {host:.1} MiB/s | {:.2} |",
        inet / host
    );
}

/// The body length of `GET path` from `addr` (HTTP/1.1, the connection closed after it).
async fn host_get(addr: SocketAddr, path: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut all = Vec::new();
    conn.read_to_end(&mut all).await.expect("response");
    let head = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    (all.len() - head) as u64
}

/// MiB/s of a `mib` MiB HTTP download in a VM over INET (passt), and on the host itself.
async fn inet_download(runtime: &std::path::Path, image: &[u8], mib: u64) -> (f64, f64) {
    let server = Server::start("127.0.0.1:0").await.expect("the HTTP server");
    server.put("/data", Resource::bytes(vec![7u8; (mib << 20) as usize]));
    let peer = InetPeer::start();
    let mut a =
        Activity::new_in(tempfile::tempdir().unwrap(), image).with_runtime(runtime.to_path_buf());
    a.deploy_now(&[]).await;
    let url = peer.url();
    let (rt, mut events) = a.start_with(&["--inet-endpoint", &url, "start"]).await;
    rt.create_network(inet_request())
        .await
        .unwrap_or_else(|e| panic!("CreateNetwork: {}", e.message));
    let port = server.addr().port();
    let fetch = format!("wget -q -O - http://{GATEWAY}:{port}/data | wc -c");
    let start = Instant::now();
    let pid = pid_of(&rt, sh(&fetch)).await;
    let (out, err, code) = finish(&mut events, pid).await;
    let took = start.elapsed();
    assert_eq!(code, 0, "wget: {}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        (mib << 20).to_string()
    );
    rt.shutdown().await.expect("shutdown");
    rt.stopped().await;
    // The same download on the host: a plain HTTP GET over loopback.
    let start = Instant::now();
    assert_eq!(host_get(server.addr(), "/data").await, mib << 20);
    let host = mib as f64 / start.elapsed().as_secs_f64();
    (mib as f64 / took.as_secs_f64(), host)
}
