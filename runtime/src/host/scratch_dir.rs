//! The VM's scratch directory (`$TMPDIR/yrv-*`): the helpers' sockets and the logs. Unix socket
//! paths are limited to 108 bytes, so it lives outside the (long) workdir. It is removed when
//! the VM is dropped; one left by a runtime that was SIGKILLed is swept by the next runtime,
//! which recognises it by an `owner` file naming a process that no longer exists.

use std::path::Path;
use std::time::Duration;

/// Prefix of scratch directory names.
const PREFIX: &str = "yrv-";
/// File naming the runtime process that owns the directory.
const OWNER_FILE: &str = "owner";
/// A directory without an owner file younger than this may be one being created right now.
const CREATION_GRACE: Duration = Duration::from_secs(60);

/// A process identity that survives pid reuse: the pid and its start time (clock ticks since
/// boot, field 22 of `/proc/<pid>/stat`).
fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Creates this runtime's scratch directory (after sweeping dead ones).
pub fn create() -> std::io::Result<tempfile::TempDir> {
    sweep(&std::env::temp_dir());
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    if let Some(me) = identity(std::process::id()) {
        std::fs::write(dir.path().join(OWNER_FILE), me)?;
    }
    Ok(dir)
}

/// Removes the scratch directories in `parent` whose owner has exited.
pub fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = e.path();
        if is_abandoned(&path) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::debug!("removed {}, left by a runtime that died", path.display())
                }
                Err(err) => tracing::debug!("cannot remove {}: {err}", path.display()),
            }
        }
    }
}

fn is_abandoned(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(owner) => {
            let pid = owner.split_whitespace().next().and_then(|p| p.parse().ok());
            pid.and_then(identity).as_deref() != Some(owner.trim())
        }
        // No owner file: abandoned only once it is clearly not being created right now.
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > CREATION_GRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_has_pid_and_start_time() {
        let me = identity(std::process::id()).unwrap();
        let (pid, start) = me.split_once(' ').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert!(start.parse::<u64>().is_ok(), "{me}");
    }

    #[test]
    fn sweeps_dirs_of_dead_owners_only() {
        let parent = tempfile::tempdir().unwrap();
        let mk = |name: &str, owner: Option<String>| {
            let d = parent.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("vsock.sock"), "").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
            d
        };
        let live = mk("yrv-live", identity(std::process::id()));
        // A pid that exists but started at another time: reused, so the owner is dead.
        let reused = mk("yrv-reused", Some(format!("{} 1", std::process::id())));
        let gone = mk("yrv-gone", Some("4294967 5".into()));
        let fresh = mk("yrv-fresh", None);
        let other = mk("other", Some("4294967 5".into()));
        sweep(parent.path());
        assert!(live.exists() && fresh.exists() && other.exists());
        assert!(!reused.exists() && !gone.exists());
    }
}
