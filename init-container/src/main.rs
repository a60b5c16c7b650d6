//! # init-container
//!
//! The guest side of the data flow: the kernel starts this static binary as PID 1 inside the VM.
//! It mounts the kernel's file systems, loads the drivers, mounts the image's squashfs under an
//! overlay whose upper layer is a tmpfs, and serves the agent protocol over a vsock connection
//! it makes to the host's port [`agent_protocol::AGENT_PORT`]: processes run chrooted in the image root with their output
//! streamed to the host. As PID 1 it reaps every orphan, never exits, and powers the VM off on
//! shutdown or on a fatal error (logged to the console, which the host keeps).

mod agent;
mod boot;
mod console;
mod error;
mod in_root;
mod limits;
mod netlink;
mod network;
mod process;
mod spawn;
mod users;

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Logs `why`, flushes the disks and powers off; never returns.
fn power_off(why: &str) -> ! {
    log!("{why}");
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Only reached if the reboot call itself failed.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Unmounts everything under the image root (deepest first) so that writes reach the volumes.
fn unmount_root() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(boot::ROOT))
        .collect();
    targets.reverse();
    for t in targets {
        let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("init-container: must run as PID 1 inside the VM");
        std::process::exit(1);
    }
    std::panic::set_hook(Box::new(|info| power_off(&format!("fatal: panic: {info}"))));
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if let Err(e) = mask.thread_block() {
        power_off(&format!("fatal: block SIGCHLD: {e}"));
    }
    let sigfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => power_off(&format!("fatal: signalfd: {e}")),
    };
    let port = match boot::boot() {
        Ok(port) => port,
        Err(e) => power_off(&format!("fatal: boot: {e}")),
    };
    if let Err(e) = spawn::adopt_root_identity() {
        log!("commands set their credentials each: setgroups: {e}");
    }
    let limits = limits::Limits::setup();
    let mut agent = agent::Agent::new(sigfd, PathBuf::from(boot::ROOT), port, limits);
    if let Err(e) = agent.run() {
        power_off(&format!("fatal: agent: {e}"));
    }
    agent.flush_blocking(Duration::from_secs(2));
    agent::terminate_all();
    nix::unistd::sync();
    unmount_root();
    nix::unistd::sync();
    power_off("shutdown requested: powering off");
}
