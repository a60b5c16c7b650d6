//! A real userspace network stack behind an INET endpoint, as the exe-unit's INET stack stands
//! behind `--inet-endpoint`: Debian's `passt` (installed by `scripts/setup.sh`), which terminates
//! the guest's TCP and UDP and opens the same connections on the host, with the gateway address
//! mapped to the host's loopback. passt speaks QEMU's stream protocol (each frame after its
//! length, 4 bytes big-endian) on a socket it inherits; a bridge here turns that into the
//! exe-unit's transport, one UDP datagram per frame.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The guest's INET address and the gateway, as the exe-unit always gives them.
pub const GUEST: &str = "10.42.42.2";
/// The INET gateway (the exe-unit's stack; here passt, which maps it to the host's loopback).
pub const GATEWAY: &str = "10.42.42.1";

/// The `CreateNetwork` the exe-unit sends for INET: always this network, no host names.
pub fn inet_request() -> ya_runtime_api::server::CreateNetwork {
    ya_runtime_api::server::CreateNetwork {
        networks: vec![ya_runtime_api::server::proto::Network {
            addr: GATEWAY.into(),
            gateway: GATEWAY.into(),
            mask: "255.255.255.0".into(),
            if_addr: GUEST.into(),
        }],
        hosts: Default::default(),
        interface: 1,
    }
}

/// passt and the bridge to it; both end when this is dropped.
pub struct InetPeer {
    /// The bridge's UDP address (what `--inet-endpoint udp://…` names).
    pub addr: SocketAddr,
    passt: Child,
    stream: UnixStream,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for InetPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.passt.kill();
        let _ = self.passt.wait();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl InetPeer {
    /// Starts passt on one end of a socket pair and bridges the other to a loopback UDP socket.
    pub fn start() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind the bridge");
        let addr = udp.local_addr().unwrap();
        let (ours, theirs) = UnixStream::pair().expect("a socket pair for passt");
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("passt");
        cmd.args(["--foreground", "--quiet", "--fd", &fd.to_string()])
            .args(["--address", GUEST, "--netmask", "24", "--gateway", GATEWAY])
            .args(["--no-dhcpv6", "--no-ndp", "--no-ra", "--ipv4-only"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: fcntl only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let passt = cmd.spawn().expect("passt (scripts/setup.sh installs it)");
        drop(theirs);
        // The VM's side of the bridge: where its frames come from, and where passt's go.
        let vm: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (udp_in, vm_in, mut to_passt) = (
            udp.try_clone().unwrap(),
            vm.clone(),
            ours.try_clone().unwrap(),
        );
        udp_in
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stopping = stop.clone();
        let up = std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp_in.recv_from(&mut buf) else {
                    continue;
                };
                if n == 0 {
                    continue;
                }
                *vm_in.lock().unwrap() = Some(from);
                let mut framed = (n as u32).to_be_bytes().to_vec();
                framed.extend_from_slice(&buf[..n]);
                if to_passt.write_all(&framed).is_err() {
                    return;
                }
            }
        });
        let mut from_passt = ours.try_clone().unwrap();
        let down = std::thread::spawn(move || {
            let mut len = [0u8; 4];
            let mut frame = vec![0u8; 70_000];
            loop {
                if from_passt.read_exact(&mut len).is_err() {
                    return;
                }
                let n = u32::from_be_bytes(len) as usize;
                if n > frame.len() || from_passt.read_exact(&mut frame[..n]).is_err() {
                    return;
                }
                if let Some(to) = *vm.lock().unwrap() {
                    let _ = udp.send_to(&frame[..n], to);
                }
            }
        });
        Self {
            addr,
            passt,
            stream: ours,
            stop,
            threads: vec![down, up],
        }
    }

    /// `udp://ADDR`, for `--inet-endpoint`.
    pub fn url(&self) -> String {
        format!("udp://{}", self.addr)
    }
}
