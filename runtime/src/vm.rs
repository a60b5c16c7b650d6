//! One VM through its life: [`RunningVm::start`] sets up the host resources (scratch dir, scratch
//! disks, console, vsock transport, one virtiofsd per host volume), renders the VM spec
//! ([`crate::vm_spec`]) into QEMU's command line, starts QEMU, waits for the guest agent and
//! makes the guest-side mounts; the VM is then [`State::Ready`] until it is stopped
//! ([`State::Stopping`], [`State::Stopped`]), in order or by force. Every child process is tied
//! to the runtime (`PR_SET_PDEATHSIG`), so none outlives it even when it is SIGKILLed, and
//! whatever the boot had made is released when it fails. While the VM runs,
//! [`RunningVm::watch`] reports QEMU or a helper dying on its own.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use qemu_config::Accel;
use tokio::process::Command;

use crate::agent::{AgentClient, Events};
use crate::cli::VsockRequest;
use crate::deployment::Deployment;
use crate::host::frame_relay::FrameRelay;
use crate::host::net_socket::{NicInfo, NicSocket};
use crate::host::output_tail::OutputTail;
use crate::host::process::{find_tool, inherit_fd, Helper, HelperExit};
use crate::host::runtime_dir::RuntimeDir;
use crate::host::scratch_disk::create_disks;
use crate::host::{scratch_dir, virtiofsd, vsock};
use crate::network::{Interface, Transport};
use crate::vm_spec::{self, Devices};
use qemu_config::FsShare;

/// How long the guest may take from QEMU's start to the agent answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long QEMU gets to power off after the shutdown request.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(4);
/// How long QEMU gets to finish exiting when the guest is gone without answering (a guest
/// kernel panic reboots, and `-no-reboot` turns that into QEMU's exit).
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How often [`RunningVm::watch`] looks at the child processes.
const WATCH_PERIOD: Duration = Duration::from_millis(200);

/// What to boot with.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Kernel and initramfs.
    pub runtime_dir: RuntimeDir,
    /// The accelerator.
    pub accel: Accel,
    /// TCG's translation cache in MiB.
    pub tcg_cache_mib: u64,
    /// The host TSC's frequency in kHz where it was measured (under TCG: the guest needs it on
    /// microvm, see [`qemu_config::tsc`]).
    pub host_tsc_khz: Option<u64>,
    /// The vsock transport.
    pub vsock: VsockRequest,
    /// The exe-unit's network endpoints: one card each.
    pub network: Vec<(Interface, Transport)>,
}

/// Where a VM is in its life. [`RunningVm::start`] is the booting; a [`RunningVm`] begins
/// ready, and moves on only forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serving.
    Ready,
    /// Being powered off or killed.
    Stopping,
    /// QEMU and the helpers are gone, the scratch dir removed.
    Stopped,
}

/// The VM's processes and its scratch directory: what [`RunningVm`] releases when it stops.
struct Owned {
    qemu: Helper,
    helpers: Vec<Helper>,
    /// The network cards' frame relays.
    relays: Vec<FrameRelay>,
    scratch: tempfile::TempDir,
}

impl Owned {
    /// The first process that has exited.
    fn first_exited(&mut self) -> Option<HelperExit> {
        std::iter::once(&mut self.qemu)
            .chain(&mut self.helpers)
            .find_map(Helper::exited)
    }
}

/// A booted VM with a connected agent. All methods take `&self`, so the VM can be shared by
/// the tasks that serve requests, watch it and stop it.
pub struct RunningVm {
    state: Mutex<State>,
    /// `None` once stopping has begun.
    owned: Mutex<Option<Owned>>,
    /// The guest console, as far as it is kept.
    console: OutputTail,
    /// The network cards.
    nics: Vec<NicInfo>,
    /// The agent.
    pub agent: AgentClient,
}

/// One virtiofsd per share, spawned together and then awaited together.
async fn start_virtiofsds(
    d: &Deployment,
    workdir: &std::path::Path,
    shares: &[FsShare],
    runtime_dir: &std::path::Path,
) -> anyhow::Result<Vec<Helper>> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    let bin = find_tool("virtiofsd", runtime_dir)?;
    let (sandbox, why) = virtiofsd::Sandbox::probe(&bin);
    if sandbox == virtiofsd::Sandbox::Namespace {
        tracing::debug!("virtiofsd sandbox: {}", sandbox.name());
    } else {
        tracing::warn!("{why}");
    }
    let mut spawned = Vec::with_capacity(shares.len());
    for (share, v) in shares.iter().zip(&d.volumes) {
        let mut cmd = virtiofsd::command(&bin, &share.socket, &workdir.join(&v.name), sandbox)?;
        spawned.push((Helper::spawn("virtiofsd", &mut cmd)?, &share.socket));
    }
    futures_util::future::try_join_all(spawned.into_iter().map(|(h, socket)| h.ready(socket))).await
}

impl RunningVm {
    /// Boots the deployment's image and mounts its volumes. Returns the VM and the agent's
    /// events (process output and exits). A failure at any step releases what the earlier
    /// steps made (dropped processes are killed, the scratch dir removed, the disks closed).
    pub async fn start(
        d: &Deployment,
        workdir: &std::path::Path,
        opts: &VmOptions,
    ) -> anyhow::Result<(Self, Events)> {
        let began = std::time::Instant::now();
        let scratch = scratch_dir::create().context("cannot create the VM's scratch directory")?;
        let rd = scratch.path().to_path_buf();
        let mut console = OutputTail::console().context("cannot make the console's socket pair")?;
        let shares = vm_spec::shares(d, &rd);
        // The disks, the vsock helper and the virtiofsds start at once: each start-up waits on
        // its own I/O and namespaces, not on the others.
        let (disks, mut vsock, shared) = tokio::try_join!(
            create_disks(d, workdir),
            // Listen before the guest exists: it connects to us as soon as its agent is up.
            vsock::open(opts.vsock, &opts.runtime_dir.dir, &rd),
            start_virtiofsds(d, workdir, &shares, &opts.runtime_dir.dir),
        )?;
        let mut helpers: Vec<Helper> = Vec::new();
        helpers.extend(vsock.helper.take());
        helpers.extend(shared);
        let nic_sockets = opts
            .network
            .iter()
            .map(|&(interface, transport)| NicSocket::open(interface, transport))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = vm_spec::vm_config(
            d,
            opts.accel,
            opts.tcg_cache_mib,
            opts.host_tsc_khz,
            opts.runtime_dir.kernel.clone(),
            opts.runtime_dir.initramfs.clone(),
            Devices {
                vsock: vsock.device.clone(),
                agent_port: vsock.agent_port,
                scratch_disks: disks
                    .iter()
                    .map(|(serial, disk)| (serial.clone(), disk.qemu_path()))
                    .collect(),
                shares,
                nics: nic_sockets.iter().map(NicSocket::nic).collect(),
                console: console
                    .write_fd()
                    .map_or(qemu_config::Console::None, qemu_config::Console::Socket),
            },
        )?;
        let mut qemu_cmd = Command::new("qemu-system-x86_64");
        qemu_cmd.args(config.to_args()?);
        let inherited = vsock
            .inherited
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .chain(disks.iter().map(|(_, disk)| disk.fd()))
            .chain(nic_sockets.iter().map(NicSocket::fd))
            .chain(console.write_fd());
        for fd in inherited {
            inherit_fd(qemu_cmd.as_std_mut(), fd);
        }
        let mut qemu = Helper::spawn("QEMU", &mut qemu_cmd)?;
        let spawned = began.elapsed();
        // QEMU holds the vsock device (and so the CID), the disks and the console's end now:
        // they are gone when it is.
        drop(vsock.inherited.take());
        drop(disks);
        let (nics, relays): (Vec<NicInfo>, Vec<FrameRelay>) = nic_sockets
            .into_iter()
            .map(NicSocket::handed_over)
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        console.handed_over();
        tracing::debug!(
            "QEMU started: {} vCPU, {} MiB, {}",
            config.cpus,
            config.memory_mib,
            config.accel
        );

        let mut died = None;
        let connected = vsock
            .listener
            .accept(BOOT_TIMEOUT, || match qemu.exited() {
                Some(exit) => {
                    died = Some(exit);
                    Err("QEMU exited".into())
                }
                None => Ok(()),
            })
            .await;
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                let why = match died.take() {
                    Some(exit) => exit.describe().await,
                    None => e.to_string(),
                };
                bail!(
                    "the VM did not start: {why}; console: {}",
                    console.summary()
                )
            }
        };
        let accepted = began.elapsed();
        let (agent, events) = AgentClient::new(conn);
        let vm = Self {
            state: Mutex::new(State::Ready),
            owned: Mutex::new(Some(Owned {
                qemu,
                helpers,
                relays,
                scratch,
            })),
            console,
            nics,
            agent,
        };
        let ready = async {
            vm.agent.hello().await?;
            let hello = began.elapsed();
            for (path, mount) in vm_spec::guest_mounts(d) {
                vm.agent
                    .mount(mount)
                    .await
                    .with_context(|| format!("cannot mount the volume at {path}"))?;
            }
            anyhow::Ok(hello)
        };
        match ready.await {
            Ok(hello) => tracing::debug!(
                "VM ready in {:?}: QEMU spawned at {spawned:?}, the agent connected at \
                 {accepted:?}, its hello at {hello:?}",
                began.elapsed()
            ),
            Err(e) => {
                vm.kill().await;
                return Err(e);
            }
        }
        Ok((vm, events))
    }

    /// The card carrying `interface`, if the exe-unit gave its endpoint.
    pub fn nic(&self, interface: Interface) -> Option<&NicInfo> {
        self.nics.iter().find(|n| n.interface == interface)
    }

    /// The guest console so far, on one line: the kernel panic line, or the last lines.
    pub fn console_tail(&self) -> String {
        self.console.summary()
    }

    /// Where the VM is in its life.
    pub fn state(&self) -> State {
        self.state.lock().map_or(State::Stopped, |s| *s)
    }

    /// Whether stopping has begun.
    pub fn is_shut_down(&self) -> bool {
        self.state() != State::Ready
    }

    /// Resolves when QEMU or a helper exits by itself (not through a stop), with what exited
    /// and the last console lines.
    pub async fn watch(&self) -> String {
        loop {
            tokio::time::sleep(WATCH_PERIOD).await;
            let exited = match self.owned.lock() {
                Ok(mut o) => o.as_mut().and_then(Owned::first_exited),
                Err(_) => None,
            };
            if let Some(exit) = exited {
                return format!(
                    "{}; console: {}",
                    exit.describe().await,
                    self.console_tail()
                );
            }
        }
    }

    /// Asks the guest to power off, waits for QEMU, stops the helpers and removes the scratch
    /// dir. Only the first call (of this or [`RunningVm::kill`]) does anything; a later one
    /// returns at once.
    pub async fn shutdown(&self) {
        self.stop(true).await;
    }

    /// Kills QEMU and the helpers without asking the guest: for a VM that lost a helper or its
    /// agent, whose orderly power-off would only wait.
    pub async fn kill(&self) {
        self.stop(false).await;
    }

    /// Ready → Stopping → Stopped, once.
    async fn stop(&self, orderly: bool) {
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if *state != State::Ready {
                return;
            }
            *state = State::Stopping;
        }
        let taken = self.owned.lock().ok().and_then(|mut o| o.take());
        if let Some(Owned {
            mut qemu,
            helpers,
            relays,
            scratch,
        }) = taken
        {
            let running = orderly && matches!(qemu.child.try_wait(), Ok(None));
            let answered = running && self.agent.shutdown(POWER_OFF_TIMEOUT).await.is_ok();
            let wait = if answered {
                POWER_OFF_TIMEOUT
            } else {
                EXIT_GRACE
            };
            let exited = running && tokio::time::timeout(wait, qemu.child.wait()).await.is_ok();
            if running && !exited {
                tracing::warn!("the guest did not power off in time; killing QEMU");
            }
            qemu.stop().await;
            drop(relays);
            for h in helpers {
                h.stop().await;
            }
            if let Err(e) = scratch.close() {
                tracing::warn!("cannot remove the VM's scratch directory: {e}");
            }
        }
        if let Ok(mut state) = self.state.lock() {
            *state = State::Stopped;
        }
    }
}
