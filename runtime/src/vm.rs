//! One running VM: the helper daemons (vhost-device-vsock, one virtiofsd per volume), QEMU, and
//! the agent connection, started in that order and torn down together. Every child gets
//! `PR_SET_PDEATHSIG`, so none outlives the runtime even when it is SIGKILLed. While the VM runs,
//! [`RunningVm::watch`] reports QEMU or a helper dying on its own, so the caller can tear the rest
//! down instead of serving a VM that is gone.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agent_protocol::{MountDisk, MountRam, MountVolume};
use anyhow::{bail, Context};
use qemu_config::{Accel, Disk, DiskAccess, FsShare, Machine, VmConfig, Vsock};
use tokio::process::{Child, Command};

use crate::agent::client::Mount;
use crate::agent::{guest_socket, AgentClient, AgentListener, Events};
use crate::cli::VsockRequest;
use crate::console::Console;
use crate::deployment::Deployment;
use crate::kernel_vsock::{self, KernelVsock};
use crate::runtime_dir::RuntimeDir;
use crate::scratch;
use crate::scratch_disk::{create_disks, root_param, storage_serial};
use crate::virtiofsd;

/// How long the guest may take from QEMU's start to the agent answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long QEMU gets to power off after the shutdown request.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(4);
/// How long QEMU gets to finish exiting when the guest is gone without answering (a guest
/// kernel panic reboots, and `-no-reboot` turns that into QEMU's exit).
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long a helper gets to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// What to boot with.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Kernel and initramfs.
    pub runtime_dir: RuntimeDir,
    /// The accelerator.
    pub accel: Accel,
    /// The vsock transport.
    pub vsock: VsockRequest,
}

/// How often [`RunningVm::watch`] looks at the child processes.
const WATCH_PERIOD: Duration = Duration::from_millis(200);

/// The VM's processes: QEMU and the helper daemons it needs.
struct Children {
    qemu: Child,
    helpers: Vec<(&'static str, Child)>,
}

impl Children {
    /// The first process that has exited, described.
    fn first_exited(&mut self) -> Option<String> {
        if let Ok(Some(status)) = self.qemu.try_wait() {
            return Some(format!("QEMU exited ({status})"));
        }
        self.helpers
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited ({status})")),
                _ => None,
            })
    }
}

/// A booted VM with a connected agent. All methods take `&self`, so the VM can be shared by
/// the tasks that serve requests, watch it and shut it down.
pub struct RunningVm {
    /// The scratch dir (sockets, logs); `None` once removed at the end.
    run_dir: std::sync::Mutex<Option<tempfile::TempDir>>,
    /// The guest console, as far as it is kept.
    console: Console,
    /// `None` once [`RunningVm::shutdown`] has begun.
    children: std::sync::Mutex<Option<Children>>,
    /// The agent.
    pub agent: AgentClient,
}

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
fn spawn_tied(cmd: &mut Command, what: &str) -> anyhow::Result<Child> {
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
async fn start_helper(
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
fn tail(path: &Path, n: usize) -> String {
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

impl RunningVm {
    /// Boots the deployment's image and mounts its volumes. Returns the VM and the stream of the
    /// agent's notifications (process output and exits).
    pub async fn start(
        d: &Deployment,
        workdir: &Path,
        opts: &VmOptions,
    ) -> anyhow::Result<(Self, Events)> {
        let run_dir = scratch::create().context("cannot create the VM's scratch directory")?;
        let rd = run_dir.path().to_path_buf();
        let mut helpers: Vec<(&'static str, Child)> = Vec::new();
        let scratch_disks = create_disks(d, workdir).await?;

        // Listen before the guest exists: it connects to us as soon as its agent is up.
        let mut cmdline = format!(
            "console=ttyS0 quiet panic=-1 yarv.hostname={} {}",
            d.hostname,
            root_param(&d.root)
        );
        let kernel = match opts.vsock {
            VsockRequest::User => None,
            VsockRequest::Auto => KernelVsock::open(Path::new(kernel_vsock::DEVICE))?,
            VsockRequest::Kernel => Some(
                KernelVsock::open(Path::new(kernel_vsock::DEVICE))?.with_context(|| {
                    format!("--vsock kernel: {} is missing or not accessible to this user (modprobe vhost_vsock; check its permissions)", kernel_vsock::DEVICE)
                })?,
            ),
        };
        let (vsock, listener, inherited) = match kernel {
            Some(k) => {
                tracing::debug!(
                    "kernel vhost-vsock: guest CID {}, host port {}",
                    k.cid,
                    k.port
                );
                cmdline.push_str(&format!(" yarv.port={}", k.port));
                let fd = k.device.as_raw_fd();
                (
                    Vsock::Kernel {
                        cid: k.cid,
                        vhostfd: Some(fd),
                    },
                    AgentListener::Vsock {
                        listener: k.listener,
                        cid: k.cid,
                    },
                    Some(k.device),
                )
            }
            None => {
                let vsock_bin = find_tool("vhost-device-vsock", &opts.runtime_dir.dir)?;
                let (vsock_sock, uds) = (rd.join("vsock.sock"), rd.join("vm.vsock"));
                let daemon = start_helper(
                    "vhost-device-vsock",
                    Command::new(vsock_bin)
                        .args(["--guest-cid", "3", "--socket"])
                        .arg(&vsock_sock)
                        .arg("--uds-path")
                        .arg(&uds),
                    &vsock_sock,
                    &rd.join("vsock.log"),
                )
                .await?;
                helpers.push(("vhost-device-vsock", daemon));
                let listener = tokio::net::UnixListener::bind(guest_socket(&uds))
                    .context("cannot listen for the guest agent")?;
                (
                    Vsock::VhostUser { socket: vsock_sock },
                    AgentListener::Unix(listener),
                    None,
                )
            }
        };

        let mut shares = Vec::new();
        if !d.volumes.is_empty() {
            let fsd = find_tool("virtiofsd", &opts.runtime_dir.dir)?;
            let (sandbox, why) = virtiofsd::Sandbox::probe(&fsd);
            if sandbox == virtiofsd::Sandbox::Namespace {
                tracing::debug!("virtiofsd sandbox: {}", sandbox.name());
            } else {
                tracing::warn!("{why}");
            }
            for (i, v) in d.volumes.iter().enumerate() {
                let sock = rd.join(format!("fs{i}.sock"));
                let mut cmd = virtiofsd::command(&fsd, &sock, &workdir.join(&v.name), sandbox)?;
                let log = rd.join(format!("virtiofsd{i}.log"));
                let child = start_helper("virtiofsd", &mut cmd, &sock, &log).await?;
                helpers.push(("virtiofsd", child));
                shares.push(FsShare {
                    socket: sock,
                    tag: format!("vol{i}"),
                });
            }
        }

        let mut console = Console::new().context("cannot make the console's socket pair")?;
        let memory_mib = (d.resources.mem_gib * 1024.0).round() as u64;
        let config = VmConfig {
            accel: opts.accel,
            machine: Machine::Q35,
            cpus: d.resources.cpu_cores,
            memory_mib,
            kernel: opts.runtime_dir.kernel.clone(),
            initrd: opts.runtime_dir.initramfs.clone(),
            cmdline,
            disks: std::iter::once(Disk {
                path: d.image.path.clone(),
                serial: "image".into(),
                access: DiskAccess::ReadOnly,
            })
            .chain(scratch_disks.iter().map(|(serial, disk)| Disk {
                path: disk.qemu_path(),
                serial: serial.clone(),
                access: DiskAccess::Scratch,
            }))
            .collect(),
            vsock: Some(vsock),
            shares,
            console: console
                .qemu_fd()
                .map_or(qemu_config::Console::None, qemu_config::Console::Socket),
            free_page_reporting: true,
        };
        let qemu_log = rd.join("qemu.log");
        let mut qemu_cmd = Command::new("qemu-system-x86_64");
        qemu_cmd
            .args(config.to_args()?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_log)?);
        if let Some(device) = &inherited {
            inherit_fd(qemu_cmd.as_std_mut(), device.as_raw_fd());
        }
        for (_, disk) in &scratch_disks {
            inherit_fd(qemu_cmd.as_std_mut(), disk.fd());
        }
        if let Some(fd) = console.qemu_fd() {
            inherit_fd(qemu_cmd.as_std_mut(), fd);
        }
        let mut qemu = spawn_tied(&mut qemu_cmd, "qemu-system-x86_64")?;
        // QEMU holds the device (and so the CID) now, and the disks: they are gone when it is.
        drop(inherited);
        drop(scratch_disks);
        console.handed_over();
        tracing::debug!(
            "QEMU started: {} vCPU, {memory_mib} MiB, {}",
            config.cpus,
            config.accel
        );

        let connected = listener
            .accept(BOOT_TIMEOUT, || match qemu.try_wait() {
                Ok(Some(status)) => Err(format!("QEMU exited ({status}): {}", tail(&qemu_log, 3))),
                _ => Ok(()),
            })
            .await;
        let conn = match connected {
            Ok(c) => c,
            Err(e) => bail!("the VM did not start: {e}; console: {}", console.summary()),
        };
        let (agent, events) = AgentClient::new(conn);
        agent.hello().await?;
        let vm = Self {
            run_dir: std::sync::Mutex::new(Some(run_dir)),
            console,
            children: std::sync::Mutex::new(Some(Children { qemu, helpers })),
            agent,
        };
        // Parents before children, whatever their kinds.
        let mut mounts: Vec<(&str, Mount)> = d
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let body = Mount::Volume(MountVolume {
                    tag: format!("vol{i}"),
                    path: v.path.clone(),
                });
                (v.path.as_str(), body)
            })
            .chain(d.ram_volumes.iter().map(|r| {
                let body = Mount::Ram(MountRam {
                    path: r.path.clone(),
                    size: r.size,
                });
                (r.path.as_str(), body)
            }))
            .chain(d.storage_volumes.iter().enumerate().map(|(i, s)| {
                let body = Mount::Disk(MountDisk {
                    serial: storage_serial(i),
                    path: s.path.clone(),
                    errors: s
                        .disk
                        .errors
                        .map(|e| e.as_str().to_string())
                        .unwrap_or_default(),
                });
                (s.path.as_str(), body)
            }))
            .collect();
        mounts.sort_by(|a, b| a.0.cmp(b.0));
        for (path, mount) in mounts {
            vm.agent
                .mount(mount)
                .await
                .with_context(|| format!("cannot mount the volume at {path}"))?;
        }
        Ok((vm, events))
    }

    /// The guest console so far, on one line: the kernel panic line, or the last lines.
    pub fn console_tail(&self) -> String {
        self.console.summary()
    }

    /// Whether [`RunningVm::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.children.lock().map_or(true, |c| c.is_none())
    }

    /// Resolves when QEMU or a helper exits by itself (not through [`RunningVm::shutdown`]),
    /// with what exited and the last console lines.
    pub async fn watch(&self) -> String {
        loop {
            tokio::time::sleep(WATCH_PERIOD).await;
            let exited = match self.children.lock() {
                Ok(mut c) => c.as_mut().and_then(Children::first_exited),
                Err(_) => None,
            };
            if let Some(what) = exited {
                return format!("{what}; console: {}", self.console_tail());
            }
        }
    }

    /// Asks the guest to power off, waits for QEMU, and stops the helpers. Only the first call
    /// (of this or [`RunningVm::kill`]) does anything.
    pub async fn shutdown(&self) {
        self.stop(true).await;
    }

    /// Kills QEMU and the helpers without asking the guest: for a VM that lost a helper, whose
    /// orderly power-off would only wait on the missing device.
    pub async fn kill(&self) {
        self.stop(false).await;
    }

    async fn stop(&self, orderly: bool) {
        let taken = self.children.lock().ok().and_then(|mut c| c.take());
        let Some(Children { mut qemu, helpers }) = taken else {
            return;
        };
        let running = orderly && matches!(qemu.try_wait(), Ok(None));
        let answered = if running {
            self.agent.shutdown(POWER_OFF_TIMEOUT).await.is_ok()
        } else {
            false
        };
        let wait = if answered {
            POWER_OFF_TIMEOUT
        } else {
            EXIT_GRACE
        };
        let exited = running && tokio::time::timeout(wait, qemu.wait()).await.is_ok();
        if running && !exited {
            tracing::warn!("the guest did not power off in time; killing QEMU");
        }
        if let Err(e) = qemu.kill().await {
            tracing::debug!("stopping QEMU: {e}");
        }
        for (name, mut h) in helpers {
            if let Err(e) = h.kill().await {
                tracing::debug!("stopping {name}: {e}");
            }
        }
        // Nothing uses the sockets and logs now; the console summary was read by the caller if
        // it needed one.
        let dir = self.run_dir.lock().ok().and_then(|mut d| d.take());
        if let Some(Err(e)) = dir.map(tempfile::TempDir::close) {
            tracing::warn!("cannot remove the VM's scratch directory: {e}");
        }
    }
}
