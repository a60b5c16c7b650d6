//! Host processes the VM needs (QEMU and the helper daemons): found in the runtime dir or on
//! `PATH`, spawned tied to the runtime's life (`PR_SET_PDEATHSIG`, a process group of their own),
//! given the descriptors they inherit, and waited for until their socket exists.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// How long a helper gets to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// `name` in the first `PATH` directory that has it as a file.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A helper binary: beside the kernel in the runtime dir, else on `PATH`.
pub fn find_tool(name: &str, runtime_dir: &Path) -> anyhow::Result<PathBuf> {
    let local = runtime_dir.join(name);
    if local.is_file() {
        return Ok(local);
    }
    on_path(name).with_context(|| {
        format!(
            "{name} not found in {} or PATH (scripts/setup.sh builds it)",
            runtime_dir.display()
        )
    })
}

/// Spawns `cmd` so that it dies with this process.
pub fn spawn_tied(cmd: &mut Command, what: &str) -> anyhow::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // A group of its own: a terminal's Ctrl-C reaches the runtime, which powers the
            // VM off in order, and not QEMU and the helpers directly.
            libc::setpgid(0, 0);
            if libc::getppid() != parent {
                // The runtime died before the prctl took effect.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {what}"))
}

/// Lets the program `cmd` runs inherit `fd` under the same number (it is close-on-exec here).
pub fn inherit_fd(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: fcntl is async-signal-safe; it changes the child's descriptor table only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts a helper daemon (output to `log`) and waits until it has created `socket`.
pub async fn start_helper(
    name: &'static str,
    cmd: &mut Command,
    socket: &Path,
    log: &Path,
) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?,
    );
    let mut child = spawn_tied(cmd, name)?;
    wait_socket(socket, &mut child, name, log).await?;
    Ok(child)
}

async fn wait_socket(
    path: &Path,
    helper: &mut Child,
    name: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !path.exists() {
        if let Some(status) = helper.try_wait()? {
            bail!(
                "{name} exited ({status}) before creating its socket: {}",
                tail(log, 3)
            );
        }
        if start.elapsed() > SOCKET_TIMEOUT {
            bail!(
                "{name} did not create {} within {SOCKET_TIMEOUT:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The last `n` non-empty lines of a file, on one line.
pub fn tail(path: &Path, n: usize) -> String {
    last_lines(&std::fs::read_to_string(path).unwrap_or_default(), n)
}

/// The last `n` non-empty lines of `text`, trimmed and joined with ` | ` on one line.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(n);
    if lines.is_empty() {
        "(no output)".into()
    } else {
        lines[from..].join(" | ")
    }
}
