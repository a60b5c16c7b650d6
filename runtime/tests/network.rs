//! Networking end to end, as yagna's exe-unit drives it: `start` with `--vpn-endpoint udp://…`,
//! then `CreateNetwork`; a test peer on loopback UDP stands where the exe-unit's end of the card
//! is and answers ARP and ICMP echo as the requestor's stack would.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use test_fixtures::http::{Resource, Server};
use test_harness::inet_peer::{inet_request, InetPeer, GATEWAY};
use test_harness::net_peer::NetPeer;
use test_harness::proto::response::create_network::Endpoint;
use test_harness::{finish, pid_of, sh, Activity};
use ya_runtime_api::server::proto::Network;
use ya_runtime_api::server::{CreateNetwork, RuntimeService};

fn vpn_request(hosts: &[(&str, &str)]) -> CreateNetwork {
    CreateNetwork {
        networks: vec![Network {
            addr: "192.168.0.0".into(),
            gateway: "192.168.0.1".into(),
            mask: "255.255.255.0".into(),
            if_addr: "192.168.0.2".into(),
        }],
        hosts: hosts
            .iter()
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect(),
        interface: 0,
    }
}

/// Runs `script` in the guest; its stdout, and stderr for failures.
async fn guest(
    rt: &impl RuntimeService,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ya_runtime_api::server::ProcessStatus>,
    script: &str,
) -> String {
    let pid = pid_of(rt, sh(script)).await;
    let (out, err, code) = finish(events, pid).await;
    assert_eq!(code, 0, "{script}: {}", String::from_utf8_lossy(&err));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpn_card_is_configured_before_the_answer_and_carries_the_requestors_traffic() {
    let peer = NetPeer::start(Ipv4Addr::new(192, 168, 0, 1));
    let activity = Activity::deploy().await;
    let url = peer.url();
    let (rt, mut events) = activity
        .start_with(&["--vpn-endpoint", &url, "start"])
        .await;

    // Errors first: the VM goes on after each.
    let mut inet = vpn_request(&[]);
    inet.interface = 1;
    let e = rt.create_network(inet).await.unwrap_err();
    assert!(e.message.contains("--inet-endpoint"), "{e:?}");
    let mut unknown = vpn_request(&[]);
    unknown.interface = 7;
    let e = rt.create_network(unknown).await.unwrap_err();
    assert!(e.message.contains("unknown interface (7"), "{e:?}");
    let mut outside = vpn_request(&[]);
    outside.networks[0].if_addr = "10.0.0.2".into();
    let e = rt.create_network(outside).await.unwrap_err();
    assert!(e.message.contains("outside network"), "{e:?}");

    let reply = rt
        .create_network(vpn_request(&[("requestor", "192.168.0.1")]))
        .await
        .unwrap();
    let Some(Endpoint::UdpDatagram(ours)) = reply.endpoint else {
        panic!("{reply:?}")
    };
    let ours: SocketAddr = ours.parse().expect("a scheme-less IP:PORT");
    assert!(ours.ip().is_loopback() && ours.port() != 0);

    // Configured before the answer: the very next command sees it.
    let out = guest(
        &rt,
        &mut events,
        "ip -o -4 addr show | grep -o '192.168.0.2/24'; \
         for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = 00:00:00:00:00:00 ] || cat $d/mtu; done; \
         grep -c '^192.168.0.1\trequestor$' /etc/hosts; grep -c localhost /etc/hosts; \
         ip route | grep -c '192.168.0.0/24 via 192.168.0.1'",
    )
    .await;
    assert_eq!(out, "192.168.0.2/24\n1220\n1\n2\n1\n");
    let out = guest(
        &rt,
        &mut events,
        "ping -c 3 -W 5 192.168.0.1 >/dev/null && echo ping; \
         ping -c 1 -W 5 requestor >/dev/null && echo by-name; \
         ping -c 1 -W 5 -s 1192 192.168.0.1 >/dev/null && echo 1192; \
         ping -c 1 -W 3 -s 1193 192.168.0.1 >/dev/null || echo 1193-fragmented",
    )
    .await;
    assert_eq!(out, "ping\nby-name\n1192\n1193-fragmented\n");
    assert!(peer.stats.arp_answered.load(Ordering::Relaxed) >= 1);
    assert!(peer.stats.echo_answered.load(Ordering::Relaxed) >= 5);
    // No frame beyond the MTU, and every frame from the address reported.
    assert_eq!(peer.stats.largest.load(Ordering::Relaxed), 1220 + 14);
    assert_eq!(*peer.stats.sender.lock().unwrap(), Some(ours));

    // Garbage, truncated, 64 KiB and empty datagrams into the VM's socket (QEMU alone would stop
    // reading at an empty one), and a stranger's frames: the VM goes on and still reaches the
    // peer.
    for junk in [vec![0xffu8; 64], vec![1u8; 3], vec![0u8; 65_000], vec![]] {
        peer.send_raw(&junk, ours);
    }
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(&[0xff; 60], ours).unwrap();
    let out = guest(
        &rt,
        &mut events,
        "ping -c 1 -W 5 192.168.0.1 >/dev/null && echo ping",
    )
    .await;
    assert_eq!(out, "ping\n");

    // The exe-unit's socket closing: the VM and the runtime go on.
    drop(peer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = guest(
        &rt,
        &mut events,
        "ping -c 1 -W 1 192.168.0.1 >/dev/null || echo gone; echo alive",
    )
    .await;
    assert_eq!(out, "gone\nalive\n");

    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vpn_networks_in_one_request_give_the_card_both_addresses() {
    // yagna sends one network per `deploy.net` entry, in one request; newer yagna leaves the
    // gateway empty.
    let peer = NetPeer::start(Ipv4Addr::new(10, 9, 0, 1));
    let activity = Activity::deploy().await;
    let url = peer.url();
    let (rt, mut events) = activity
        .start_with(&["--vpn-endpoint", &url, "start"])
        .await;
    let mut req = vpn_request(&[("first", "192.168.0.1"), ("second", "10.9.0.1")]);
    req.networks.push(Network {
        addr: "10.9.0.0".into(),
        gateway: "".into(),
        mask: "255.255.0.0".into(),
        if_addr: "10.9.7.7".into(),
    });
    rt.create_network(req).await.unwrap();
    let out = guest(
        &rt,
        &mut events,
        "ip -o -4 addr show | grep -o -e '192.168.0.2/24' -e '10.9.7.7/16'; \
         ip route | grep -c ' via '; \
         ping -c 1 -W 5 second >/dev/null && echo second",
    )
    .await;
    assert_eq!(out, "192.168.0.2/24\n10.9.7.7/16\n1\nsecond\n");
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_refused_where_they_mean_nothing_or_cannot_work() {
    let activity = Activity::deploy().await;
    for (args, needle) in [
        (
            vec!["--vpn-endpoint", "unix:///tmp/x.sock", "start"],
            "--vpn-endpoint: unix:// endpoints are not supported",
        ),
        (
            vec!["--inet-endpoint", "udp://10.1.2.3:9", "start"],
            "--inet-endpoint: 10.1.2.3:9 is not a loopback address",
        ),
        (
            vec![
                "--vpn-endpoint",
                "udp://127.0.0.1:9",
                "run",
                "--entrypoint",
                "/bin/true",
            ],
            "run takes no --vpn-endpoint or --inet-endpoint",
        ),
        (
            vec!["--inet-endpoint", "udp://127.0.0.1:9", "deploy", "--"],
            "deploy takes no --vpn-endpoint or --inet-endpoint",
        ),
    ] {
        let out = activity.command().args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inet_only_start_over_a_tcp_endpoint_gets_its_address_route_and_resolvers() {
    // The exe-unit's INET stack stands at the gateway; frames go over TCP, each after its length.
    let peer = NetPeer::start_stream(Ipv4Addr::new(10, 42, 42, 1));
    let activity = Activity::deploy().await;
    let url = peer.url();
    let (rt, mut events) = activity
        .start_with(&["--inet-endpoint", &url, "start"])
        .await;
    let e = rt.create_network(vpn_request(&[])).await.unwrap_err();
    assert!(e.message.contains("--vpn-endpoint"), "{e:?}");
    let reply = rt.create_network(inet_request()).await.unwrap();
    assert!(
        matches!(reply.endpoint, Some(Endpoint::TcpStream(_))),
        "{reply:?}"
    );
    let out = guest(
        &rt,
        &mut events,
        "ip -o -4 addr show | grep -o '10.42.42.2/24'; \
         for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = 00:00:00:00:00:00 ] || cat $d/mtu; done; \
         ip route | grep '^default'; cat /etc/resolv.conf; \
         ping -c 2 -W 5 10.42.42.1 >/dev/null && echo ping; \
         ping -c 1 -W 5 -s 60000 10.42.42.1 >/dev/null && echo big-ping",
    )
    .await;
    assert_eq!(
        out,
        "10.42.42.2/24\n65266\ndefault via 10.42.42.1 dev eth0 \n\
         nameserver 1.1.1.1\nnameserver 8.8.8.8\nping\nbig-ping\n"
    );
    // One frame of 60000 bytes of ICMP data: no fragmentation on INET's MTU.
    assert_eq!(
        peer.stats.largest.load(Ordering::Relaxed),
        14 + 20 + 8 + 60_000
    );
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inet_through_a_real_network_stack_reaches_a_server_on_the_hosts_loopback() {
    // passt stands where the exe-unit's INET stack is: it terminates the guest's TCP and opens
    // the same connection on the host, the gateway being the host's loopback.
    let server = Server::start("127.0.0.1:0").await.unwrap();
    server.put("/hello.txt", Resource::bytes("hello over INET\n"));
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    server.put("/big.bin", Resource::bytes(big.clone()));
    let peer = InetPeer::start();
    let activity = Activity::deploy().await;
    let url = peer.url();
    let (rt, mut events) = activity
        .start_with(&["--inet-endpoint", &url, "start"])
        .await;
    rt.create_network(inet_request()).await.unwrap();
    let port = server.addr().port();
    let out = guest(
        &rt,
        &mut events,
        &format!(
            "wget -q -O - http://{GATEWAY}:{port}/hello.txt; \
             wget -q -O - http://{GATEWAY}:{port}/big.bin | sha256sum | cut -c1-64"
        ),
    )
    .await;
    let want = {
        let f = activity.dir.path().join("big.bin");
        std::fs::write(&f, &big).unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(&f)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    assert_eq!(out, format!("hello over INET\n{want}\n"));
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}
