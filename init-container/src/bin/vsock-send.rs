//! # vsock-send
//!
//! A guest-side benchmark tool (not shipped in the runtime dir): the raw throughput of the vsock
//! transport, with no agent protocol, pipe or runtime API in the way. `scripts/bench-runtime.sh`
//! puts this static binary into a volume and runs it in the VM; the host counts what arrives.
//!
//! Usage: `vsock-send PORT BYTES` — connects to the host (CID 2) on PORT and writes BYTES zero
//! bytes in writes of `agent_protocol::MAX_VSOCK_WRITE` bytes, then closes.

use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// One write: as large as the agent's (see `MAX_VSOCK_WRITE`), so both make the same packets.
const CHUNK: usize = agent_protocol::MAX_VSOCK_WRITE;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match (args.get(1), args.get(2), args.len()) {
        (Some(p), Some(b), 3) => p.parse::<u32>().ok().zip(b.parse::<u64>().ok()),
        _ => None,
    };
    let Some((port, bytes)) = parsed else {
        eprintln!("usage: vsock-send PORT BYTES");
        std::process::exit(2);
    };
    if let Err(e) = send(port, bytes) {
        eprintln!("vsock-send: {e}");
        std::process::exit(1);
    }
}

fn send(port: u32, mut bytes: u64) -> std::io::Result<()> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(libc::VMADDR_CID_HOST, port),
    )?;
    // SAFETY: the fd is an open, connected socket that we own from here on.
    let mut stream = unsafe { std::fs::File::from_raw_fd(fd.into_raw_fd()) };
    let buf = vec![0u8; CHUNK];
    while bytes > 0 {
        let n = usize::try_from(bytes).map_or(CHUNK, |b| b.min(CHUNK));
        stream.write_all(&buf[..n])?;
        bytes -= n as u64;
    }
    stream.flush()
}
