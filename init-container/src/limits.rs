//! Keeping the agent in charge whatever the requestor's processes do: the init runs at the
//! highest priority (nice -20; its children are put back to 0), and every process it starts
//! is born in the cgroup `requestor` (`clone3(CLONE_INTO_CGROUP)`, see spawn.rs), whose `pids.max` bounds a fork bomb by the VM's memory and
//! whose CPU share, with the cpu controller, is that of one nice-0 task however many processes
//! it holds (nice alone would give 800 spinning processes ten times the init's share). The agent
//! then keeps answering (a run may fail with EAGAIN while the cgroup is full, a kill and a
//! shutdown still work).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::mount::{mount, MsFlags};

use crate::log;

/// Where the cgroup2 hierarchy is mounted in the init's file system.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The requestor's processes' cgroup.
const REQUESTOR: &str = "/sys/fs/cgroup/requestor";
/// Processes per MiB of guest memory the requestor may have (each costs the kernel at least a
/// 16 KiB stack, page tables and task structures).
const PIDS_PER_MIB: u64 = 4;
/// Bounds of the requestor's process limit.
const PIDS_MIN: u64 = 256;
const PIDS_MAX: u64 = 32_768;
/// The init's nice value.
pub const INIT_NICE: i32 = -20;

/// The requestor's process limit for a VM with `mem_kib` of memory.
pub fn pids_for(mem_kib: u64) -> u64 {
    (mem_kib / 1024)
        .saturating_mul(PIDS_PER_MIB)
        .clamp(PIDS_MIN, PIDS_MAX)
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What the spawned processes are put into.
pub struct Limits {
    /// The requestor's cgroup directory, open (`None`: no cgroup, the limit could not be set up
    /// and processes run without it).
    cgroup: Option<OwnedFd>,
}

impl Limits {
    /// Raises the init's priority and makes the requestor's cgroup. Failures are logged: the VM
    /// still works without them, only less well defended.
    pub fn setup() -> Self {
        // SAFETY: changes this process's nice value only.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, INIT_NICE) } != 0 {
            log!(
                "cannot raise the init's priority: {}",
                std::io::Error::last_os_error()
            );
        }
        match requestor_cgroup() {
            Ok((cgroup, pids)) => {
                log!("requestor processes limited to {pids}");
                Self {
                    cgroup: Some(cgroup),
                }
            }
            Err(e) => {
                log!("no process limit for the requestor: {e}");
                Self { cgroup: None }
            }
        }
    }

    /// The requestor's cgroup directory, which new processes are born in.
    pub fn cgroup_fd(&self) -> Option<RawFd> {
        self.cgroup.as_ref().map(AsRawFd::as_raw_fd)
    }
}

/// Mounts cgroup2, enables the pids controller for children and makes the requestor's cgroup
/// with its limit; returns its directory, open, and the limit.
fn requestor_cgroup() -> Result<(OwnedFd, u64), String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // favordynmods: moving a process between cgroups then skips an RCU grace period, which under
    // a fork storm (and TCG) took seconds per spawn when the init moved each child. The init's
    // children are now born in their cgroup; the option stays for moves the requestor makes
    // itself (it is root in the VM) and was not measured again without it.
    let mount_cgroup2 =
        |data: Option<&str>| mount(Some("cgroup2"), CGROUP_ROOT, Some("cgroup2"), flags, data);
    mount_cgroup2(Some("favordynmods"))
        .or_else(|_| mount_cgroup2(None))
        .map_err(|e| format!("mount cgroup2 on {CGROUP_ROOT}: {e}"))?;
    let control = format!("{CGROUP_ROOT}/cgroup.subtree_control");
    fs::write(&control, "+pids").map_err(|e| format!("enable the pids controller: {e}"))?;
    if let Err(e) = fs::write(&control, "+cpu") {
        log!("no cpu controller for the requestor's processes: {e}");
    }
    fs::create_dir_all(REQUESTOR).map_err(|e| format!("mkdir {REQUESTOR}: {e}"))?;
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let pids = pids_for(mem_total_kib(&meminfo).unwrap_or(0));
    fs::write(format!("{REQUESTOR}/pids.max"), pids.to_string())
        .map_err(|e| format!("set pids.max: {e}"))?;
    let dir = fs::File::open(REQUESTOR).map_err(|e| format!("open {REQUESTOR}: {e}"))?;
    Ok((dir.into(), pids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_limit_follows_memory_within_bounds() {
        assert_eq!(pids_for(0), PIDS_MIN);
        assert_eq!(pids_for(256 * 1024), 1024);
        assert_eq!(pids_for(4 * 1024 * 1024), 16_384);
        assert_eq!(pids_for(u64::MAX), PIDS_MAX);
    }

    #[test]
    fn reads_memtotal() {
        let m = "MemTotal:         245576 kB\nMemFree:          200000 kB\n";
        assert_eq!(mem_total_kib(m), Some(245_576));
        assert_eq!(mem_total_kib("nothing"), None);
    }
}
