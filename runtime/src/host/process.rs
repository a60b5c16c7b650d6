//! Host processes the VM needs (QEMU and the helper daemons): found in the runtime dir or on
//! `PATH`, spawned tied to the runtime's life (`PR_SET_PDEATHSIG`, a process group of their own),
//! given the descriptors they inherit, their stderr kept as a bounded tail
//! ([`super::output_tail`]), and waited for until their socket exists.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::output_tail::{OutputTail, TailView};

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

/// A running host process of the VM and the tail of its stderr.
pub struct Helper {
    /// Its program's name, for messages.
    pub name: &'static str,
    /// The process (killed when dropped).
    pub child: Child,
    /// What it last wrote to stderr.
    pub stderr: OutputTail,
}

impl Helper {
    /// Spawns `cmd` tied to the runtime ([`spawn_tied`]), its stderr kept as a bounded tail and
    /// its stdin and stdout closed.
    pub fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        let mut stderr = OutputTail::stderr_of(name)
            .with_context(|| format!("cannot make a socket pair for {name}'s stderr"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.stdio()?);
        let child = spawn_tied(cmd, name)?;
        Ok(Self {
            name,
            child,
            stderr,
        })
    }

    /// `None` while it runs, else what to say of its end.
    pub fn exited(&mut self) -> Option<HelperExit> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(HelperExit {
                what: format!("{} exited ({status})", self.name),
                stderr: self.stderr.view(),
            }),
            _ => None,
        }
    }

    /// Kills it and waits for it.
    pub async fn stop(mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::debug!("stopping {}: {e}", self.name);
        }
    }
}

/// A host process's end, to be described once its last words have been read.
pub struct HelperExit {
    what: String,
    stderr: TailView,
}

impl HelperExit {
    /// How long the reader of its stderr gets to read what is left.
    const DRAIN: Duration = Duration::from_millis(500);

    /// "NAME exited (STATUS): its last stderr lines", on one line.
    pub async fn describe(self) -> String {
        let last = self.stderr.final_summary(Self::DRAIN).await;
        format!("{}: {last}", self.what)
    }
}

/// Starts a helper daemon and waits until it has created `socket`.
pub async fn start_helper(
    name: &'static str,
    cmd: &mut Command,
    socket: &Path,
) -> anyhow::Result<Helper> {
    Helper::spawn(name, cmd)?.ready(socket).await
}

impl Helper {
    /// Waits until the helper has created `socket` (its sign that it serves); fails when it
    /// exits first or takes longer than [`SOCKET_TIMEOUT`]. Helpers spawned together can wait
    /// together, so their start-ups overlap.
    pub async fn ready(mut self, socket: &Path) -> anyhow::Result<Self> {
        let start = std::time::Instant::now();
        while !socket.exists() {
            if let Some(exited) = self.exited() {
                bail!("{} (before creating its socket)", exited.describe().await);
            }
            if start.elapsed() > SOCKET_TIMEOUT {
                bail!(
                    "{} did not create {} within {SOCKET_TIMEOUT:?}",
                    self.name,
                    socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(self)
    }
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
