//! Ethernet frames between the exe-unit's transport and QEMU's card, relayed by the runtime.
//! QEMU gets one end of a datagram socket pair (one datagram, one frame); the runtime holds the
//! exe-unit's side: a UDP socket connected to the exe-unit's, or a TCP stream with each frame
//! after its length (4 bytes, big-endian).
//!
//! Relayed rather than handed to QEMU directly, because QEMU 7.2's datagram backend takes an
//! empty datagram for the end of the connection and stops reading for good: one zero-length
//! datagram would cut the VM off. Here every frame is checked on the way in: empty ones and
//! ones longer than [`MAX_FRAME`] are dropped (a TCP stream announcing one is closed). A VM that
//! is slow to take its frames holds up only the direction towards it: a TCP stream is then read
//! no faster, and a UDP socket's buffer fills and drops what does not fit, as a NIC ring would.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram};
use tokio::task::JoinHandle;

/// Largest frame carried: an Ethernet header and the largest IP packet.
pub const MAX_FRAME: usize = 14 + 65_535;
/// How long a failing socket is left alone before the next try (no busy loop on an error
/// that repeats).
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// The exe-unit's side of one card.
#[derive(Debug)]
pub enum ExeUnitSide {
    /// A UDP socket connected to the exe-unit's.
    Datagram(UdpSocket),
    /// A TCP stream to the exe-unit.
    Stream(TcpStream),
    /// A TCP listener the exe-unit connects to (one connection at a time).
    Listener(TcpListener),
}

/// The relay of one card; stopped when dropped.
pub struct FrameRelay {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FrameRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FrameRelay {
    /// Relays between `side` and `vm` (the runtime's end of QEMU's socket pair).
    pub fn start(side: ExeUnitSide, vm: UnixDatagram) -> Self {
        let vm = Arc::new(vm);
        let tasks = match side {
            ExeUnitSide::Datagram(udp) => {
                let udp = Arc::new(udp);
                vec![
                    tokio::spawn(udp_to_vm(udp.clone(), vm.clone())),
                    tokio::spawn(vm_to_udp(vm, udp)),
                ]
            }
            ExeUnitSide::Stream(tcp) => vec![tokio::spawn(stream(tcp, vm))],
            ExeUnitSide::Listener(listener) => vec![tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((tcp, peer)) => {
                            tracing::debug!("network endpoint: {peer} connected");
                            stream(tcp, vm.clone()).await;
                        }
                        Err(_) => tokio::time::sleep(ERROR_PAUSE).await,
                    }
                }
            })],
        };
        Self { tasks }
    }
}

/// Whether a frame of `len` bytes may go to the VM.
fn acceptable(len: usize) -> bool {
    (1..=MAX_FRAME).contains(&len)
}

/// Gives `frame` to QEMU once its socket has room. The socket pair's send buffer (about 200 KiB
/// by default, counted with each datagram's overhead) holds some 90 full-size frames, fewer than
/// a burst of TCP segments: dropping when it was full lost frames whenever QEMU was a moment
/// late. Waiting holds up only
/// this direction; meanwhile the exe-unit's socket buffers what follows, and drops beyond that,
/// as a full NIC ring would.
async fn to_vm(vm: &UnixDatagram, frame: &[u8]) {
    if let Err(e) = vm.send(frame).await {
        tracing::trace!("network: a frame for the VM dropped: {e}");
    }
}

async fn udp_to_vm(udp: Arc<UdpSocket>, vm: Arc<UnixDatagram>) {
    // One byte more than the largest frame: a longer datagram is seen as such, not cut.
    let mut buf = vec![0u8; MAX_FRAME + 1];
    loop {
        match udp.recv(&mut buf).await {
            Ok(n) if acceptable(n) => to_vm(&vm, &buf[..n]).await,
            Ok(n) => tracing::trace!("network: a {n}-byte datagram dropped"),
            // The exe-unit's socket is not there (yet, or any more): keep listening.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => {
                tracing::debug!("network: receiving from the exe-unit: {e}");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}

async fn vm_to_udp(vm: Arc<UnixDatagram>, udp: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_FRAME + 1];
    // QEMU gone: the VM is over, and so is the relay.
    while let Ok(n) = vm.recv(&mut buf).await {
        if acceptable(n) {
            if let Err(e) = udp.send(&buf[..n]).await {
                tracing::trace!("network: a frame for the exe-unit dropped: {e}");
            }
        }
    }
}

/// Relays over one TCP connection until either end closes it or it breaks the framing.
async fn stream(tcp: TcpStream, vm: Arc<UnixDatagram>) {
    let _ = tcp.set_nodelay(true);
    let (rd, wr) = tcp.into_split();
    let outcome = tokio::select! {
        r = stream_to_vm(rd, &vm) => r,
        r = vm_to_stream(&vm, wr) => r,
    };
    if let Err(e) = outcome {
        tracing::debug!("network stream: {e}");
    }
}

async fn stream_to_vm(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    vm: &UnixDatagram,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut len = [0u8; 4];
        rd.read_exact(&mut len).await?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            tracing::warn!("network: the exe-unit announced a {n}-byte frame; connection closed");
            return Ok(());
        }
        rd.read_exact(&mut buf[..n]).await?;
        if n > 0 {
            to_vm(vm, &buf[..n]).await;
        }
    }
}

async fn vm_to_stream(
    vm: &UnixDatagram,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    // One byte more than the largest frame: a longer datagram is seen as such, not cut.
    let mut buf = vec![0u8; MAX_FRAME + 5];
    loop {
        let n = vm.recv(&mut buf[4..]).await?;
        if acceptable(n) {
            buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
            wr.write_all(&buf[..4 + n]).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay over a UDP pair, and the test's ends: (exe-unit's socket, QEMU's end).
    async fn udp_relay() -> (FrameRelay, UdpSocket, UnixDatagram) {
        let exe_unit = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ours = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        ours.connect(exe_unit.local_addr().unwrap()).await.unwrap();
        exe_unit.connect(ours.local_addr().unwrap()).await.unwrap();
        let (vm_end, qemu_end) = UnixDatagram::pair().unwrap();
        let relay = FrameRelay::start(ExeUnitSide::Datagram(ours), vm_end);
        (relay, exe_unit, qemu_end)
    }

    async fn recv(s: &UnixDatagram) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_FRAME + 8];
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .expect("a frame in time")
            .unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn empty_datagrams_never_reach_qemu_and_the_largest_do() {
        let (_relay, exe_unit, qemu) = udp_relay().await;
        exe_unit.send(&[]).await.unwrap();
        exe_unit.send(b"frame-1").await.unwrap();
        // The largest UDP payload over IPv4 (a frame cannot be longer on this transport).
        exe_unit.send(&vec![9u8; 65_507]).await.unwrap();
        assert_eq!(recv(&qemu).await, b"frame-1");
        assert_eq!(recv(&qemu).await.len(), 65_507);
        // And back.
        qemu.send(b"from-the-vm").await.unwrap();
        let mut buf = [0u8; 32];
        let n = tokio::time::timeout(Duration::from_secs(5), exe_unit.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"from-the-vm");
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_vms_socket_buffer_arrives_whole_and_in_order() {
        let (_relay, exe_unit, qemu) = udp_relay().await;
        // 160 full-size Ethernet frames (about 360 KiB of socket memory) is more than a unix
        // socket's default send buffer holds, sent while QEMU's end reads nothing.
        let frame = |i: u16| {
            let mut f = vec![0u8; 1514];
            f[..2].copy_from_slice(&i.to_be_bytes());
            f
        };
        for i in 0..160u16 {
            exe_unit.send(&frame(i)).await.unwrap();
            if i % 40 == 39 {
                // Time for the relay to move them (the exe-unit's socket buffer is no larger).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for i in 0..160u16 {
            assert_eq!(recv(&qemu).await[..2], i.to_be_bytes());
        }
    }

    #[tokio::test]
    async fn streams_carry_length_prefixed_frames_and_a_listener_takes_the_next_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (vm_end, qemu) = UnixDatagram::pair().unwrap();
        let _relay = FrameRelay::start(ExeUnitSide::Listener(listener), vm_end);
        for round in 0..2u8 {
            let mut exe_unit = TcpStream::connect(at).await.unwrap();
            exe_unit.write_all(&[0, 0, 0, 0]).await.unwrap(); // empty: skipped
            exe_unit
                .write_all(&[0, 0, 0, 3, b'a', b'b', round])
                .await
                .unwrap();
            assert_eq!(recv(&qemu).await, [b'a', b'b', round]);
            qemu.send(b"xyz").await.unwrap();
            let mut back = [0u8; 7];
            exe_unit.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, &[0, 0, 0, 3, b'x', b'y', b'z']);
            // A frame longer than any Ethernet frame: the connection is closed.
            exe_unit.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), exe_unit.read_to_end(&mut rest))
                .await
                .expect("closed in time");
        }
    }
}
