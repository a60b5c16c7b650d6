//! `start`: boot the deployment, then serve yagna's runtime API ([`crate::api`]) until Shutdown
//! or the end of stdin. Process output and exits from the guest become `ProcessStatus` events,
//! in order, with backpressure (while the API's writer is behind, the guest's output is not
//! read).
//!
//! With `start-entrypoint` among the start arguments, the image's Entrypoint + Cmd runs as soon
//! as the VM is up; the start result, `{"start":null,"entrypoint":{"pid":…,"command":[…]}}`, goes
//! out as the first event (pid 0, which the exe-unit hands to its `start` command as stdout),
//! and the entrypoint's output follows as its own process's events.
//!
//! The runtime ends, with the VM powered off and its helpers gone, on whichever comes first:
//! Shutdown, the end of stdin, SIGTERM/SIGINT/SIGHUP; or, as an error, QEMU or a helper dying,
//! the agent's connection breaking or going silent, or the runtime API's input or output
//! breaking. On Shutdown, everything the activity owns on the host is gone before the reply is
//! written, since the exe-unit kills the runtime the moment the reply arrives. When the VM or
//! its agent is lost, every command still open gets a final status first (a line on stderr and
//! return code [`LOST_RETURN_CODE`]).

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::agent::{AgentError, AgentEvent, Events};
use crate::api::proto::{request, response};
use crate::api::server::{self, error, Ending, Handler, Outbox};
use crate::api::stdio;
use crate::commands::run::process_for;
use crate::commands::signals::{self, Termination};
use crate::deployment::Deployment;
use crate::network::guest_config::guest_config;
use crate::network::Interface;
use crate::vm::{RunningVm, VmOptions};

/// The return code of a command whose VM or agent was lost before it ended.
pub const LOST_RETURN_CODE: i32 = -1;
/// How long the last events and replies may take to be queued, and the writer to put them out,
/// before the runtime exits (an exe-unit that stopped reading must not keep it alive).
const FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// How long the runtime stays after its Shutdown reply is written, unless the exe-unit stops it
/// or closes its input first. yagna's client reads replies in a task that it drops as soon as the
/// runtime's process has ended: a runtime that exits right after writing can have its reply
/// discarded unread, and the client then waits for it forever.
const LINGER: Duration = Duration::from_secs(1);
/// After a failure's last events: how long the runtime stays once the exe-unit has read them
/// off the pipe, so that its client (see [`LINGER`]) handles them before the process ends.
const READ_GRACE: Duration = Duration::from_millis(50);
/// How long the agent's last events may take to arrive once the VM is stopped.
const LAST_EVENTS_LIMIT: Duration = Duration::from_secs(2);

/// The service behind the runtime API.
struct Service {
    vm: Rc<RunningVm>,
    deployment: Deployment,
}

/// The API error for an agent error: the guest's own refusal is the request's fault, the rest is
/// the runtime's.
fn api_error(e: AgentError) -> response::Error {
    match e {
        AgentError::Refused(msg) => error(response::ErrorCode::BadRequest, msg),
        other => error(response::ErrorCode::Internal, other),
    }
}

impl Service {
    fn check_running(&self) -> Result<(), response::Error> {
        if self.vm.is_shut_down() {
            return Err(error(
                response::ErrorCode::Internal,
                "the VM has been shut down",
            ));
        }
        Ok(())
    }
}

impl Handler for Service {
    async fn hello(&self, version: String) -> Result<String, response::Error> {
        tracing::debug!("hello from the exe-unit (API {version})");
        Ok(env!("CARGO_PKG_VERSION").to_string())
    }

    async fn run(&self, run: request::RunProcess) -> Result<u64, response::Error> {
        if run.bin.is_empty() {
            return Err(error(
                response::ErrorCode::BadRequest,
                "RunProcess has no bin",
            ));
        }
        self.check_running()?;
        // `args` carries argv[0]; an empty list still runs the program under its own name.
        let args = run.args.get(1..).unwrap_or_default();
        let mut req = process_for(&self.deployment, &run.bin, args);
        if let Some(a0) = run.args.first() {
            req.argv[0] = a0.clone();
        }
        if !run.work_dir.is_empty() {
            req.cwd = run.work_dir.clone();
        }
        self.vm.agent.run(req).await.map_err(api_error)
    }

    async fn kill(&self, kill: request::KillProcess) -> Result<(), response::Error> {
        if !(1..=64).contains(&kill.signal) {
            return Err(error(
                response::ErrorCode::BadRequest,
                format!("{} is not a signal number (1 to 64)", kill.signal),
            ));
        }
        self.check_running()?;
        self.vm
            .agent
            .kill(kill.pid, kill.signal)
            .await
            .map_err(|e| match e {
                AgentError::Refused(msg) => error(response::ErrorCode::NotFound, msg),
                other => api_error(other),
            })
    }

    async fn create_network(
        &self,
        req: request::CreateNetwork,
    ) -> Result<response::CreateNetwork, response::Error> {
        let bad = |msg: String| error(response::ErrorCode::BadRequest, msg);
        let interface = Interface::from_api(req.interface).ok_or_else(|| {
            bad(format!(
                "CreateNetwork for an unknown interface ({}; 0 is VPN, 1 is INET)",
                req.interface
            ))
        })?;
        let nic = self.vm.nic(interface).ok_or_else(|| {
            bad(format!(
                "CreateNetwork for {}, but the runtime was started without {}",
                interface.name(),
                interface.flag()
            ))
        })?;
        let config = guest_config(interface, nic.mac, &req).map_err(|e| bad(format!("{e}")))?;
        self.check_running()?;
        // Configured in the guest before the answer: every later command sees the network.
        self.vm
            .agent
            .configure_network(config)
            .await
            .map_err(api_error)?;
        tracing::debug!("{} network configured", interface.name());
        Ok(response::CreateNetwork {
            endpoint: Some(nic.endpoint.clone()),
        })
    }
}

/// How forwarding the agent's events ended.
enum Forwarded {
    /// The agent's connection ended: why, and the processes that never got their exit.
    AgentGone { reason: String, open: Vec<u64> },
    /// The API's writer is gone.
    OutputClosed,
}

/// Turns the agent's events into runtime API events, in order.
async fn forward(mut events: Events, out: Outbox) -> Forwarded {
    while let Some(event) = events.recv().await {
        let status = match event {
            // The chunk moves into the event for its stream; no copy on this hot path.
            AgentEvent::Output { pid, fd, data } => {
                let (stdout, stderr) = if fd == 2 {
                    (Vec::new(), data)
                } else {
                    (data, Vec::new())
                };
                response::ProcessStatus {
                    pid,
                    running: true,
                    return_code: 0,
                    stdout,
                    stderr,
                }
            }
            AgentEvent::Exited { pid, code } => response::ProcessStatus {
                pid,
                running: false,
                return_code: code,
                ..Default::default()
            },
            AgentEvent::Closed { reason, open } => return Forwarded::AgentGone { reason, open },
        };
        if out.process_status(status).await.is_err() {
            return Forwarded::OutputClosed;
        }
    }
    Forwarded::AgentGone {
        reason: "the guest agent's events ended".into(),
        open: Vec::new(),
    }
}

/// Gives each of `open` its final status: `reason` on stderr, then the end with
/// [`LOST_RETURN_CODE`].
async fn end_open_commands(out: &Outbox, open: &[u64], reason: &str) {
    for &pid in open {
        let line = format!("ya-runtime-vm: the command did not finish: {reason}\n");
        let _ = out
            .process_status(response::ProcessStatus {
                pid,
                running: true,
                stderr: line.into_bytes(),
                ..Default::default()
            })
            .await;
        let _ = out
            .process_status(response::ProcessStatus {
                pid,
                running: false,
                return_code: LOST_RETURN_CODE,
                ..Default::default()
            })
            .await;
    }
}

/// The start argument that runs the image's Entrypoint + Cmd after boot.
pub const START_ENTRYPOINT: &str = "start-entrypoint";

/// Checks `start`'s arguments; returns whether `start-entrypoint` is among them.
pub fn parse_start_args(args: &[String]) -> anyhow::Result<bool> {
    let mut entrypoint = false;
    for a in args {
        match a.as_str() {
            START_ENTRYPOINT => entrypoint = true,
            other => bail!("unknown start argument {other:?} (supported: {START_ENTRYPOINT})"),
        }
    }
    Ok(entrypoint)
}

/// The image's Entrypoint followed by its Cmd, as Docker runs them.
pub fn image_entrypoint(d: &Deployment) -> Option<Vec<String>> {
    let argv: Vec<String> = d
        .config
        .entrypoint
        .iter()
        .chain(&d.config.cmd)
        .cloned()
        .collect();
    (!argv.is_empty()).then_some(argv)
}

/// Runs the entrypoint; returns its pid.
async fn run_entrypoint(vm: &RunningVm, d: &Deployment, argv: &[String]) -> anyhow::Result<u64> {
    let mut req = process_for(d, &argv[0], &argv[1..]);
    // argv[0] is the program's file name, as upstream's runtime passes it.
    if let Some(name) = Path::new(&argv[0]).file_name() {
        req.argv[0] = name.to_string_lossy().into_owned();
    }
    vm.agent
        .run(req)
        .await
        .with_context(|| format!("the image's entrypoint {argv:?} did not start"))
}

/// Why serving ended.
enum End {
    /// The exe-unit closed stdin.
    InputClosed,
    /// The exe-unit sent Shutdown (request id).
    Shutdown(u64),
    /// A terminating signal.
    Signal(i32),
    /// QEMU or a helper died: what and the console's last lines.
    VmDied(String),
    /// The agent's connection broke or went silent.
    AgentLost { reason: String, open: Vec<u64> },
    /// The runtime API's input is not the protocol, or cannot be read.
    InputBroken(String),
    /// The runtime API's output is closed.
    OutputClosed,
}

/// Boots and serves until one of the ends above; powers the VM off and returns the runtime's
/// exit status (0, or 128 + the signal that stopped it).
pub async fn start(workdir: &Path, opts: &VmOptions, start_entrypoint: bool) -> anyhow::Result<u8> {
    let mut termination = Termination::listen().context("cannot listen for signals")?;
    let deployment = Deployment::load(workdir)?;
    let entrypoint = match (start_entrypoint, image_entrypoint(&deployment)) {
        (false, _) => None,
        (true, Some(argv)) => Some(argv),
        (true, None) => bail!("{START_ENTRYPOINT}: the image defines no Entrypoint or Cmd"),
    };
    let (vm, events) = tokio::select! {
        booted = RunningVm::start(&deployment, workdir, opts) => booted?,
        signal = termination.recv() => {
            // Dropping the boot kills what it started and removes its directory.
            tracing::info!("{} while the VM was booting: stopped", signals::name(signal));
            return Ok(signals::exit_status(signal));
        }
    };
    let vm = Rc::new(vm);
    // The entrypoint starts before serving: its output waits in the event queue until the
    // start result has gone out.
    let started = match &entrypoint {
        Some(argv) => {
            let pid = tokio::select! {
                pid = run_entrypoint(&vm, &deployment, argv) => pid,
                signal = termination.recv() => {
                    tracing::info!("{}: VM powered off", signals::name(signal));
                    vm.shutdown().await;
                    return Ok(signals::exit_status(signal));
                }
            };
            match pid {
                Ok(pid) => Some(serde_json::json!({
                    "start": null,
                    "entrypoint": {"pid": pid, "command": argv},
                })),
                Err(e) => {
                    vm.shutdown().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let service = Service {
        vm: vm.clone(),
        deployment,
    };
    let local = tokio::task::LocalSet::new();
    local
        .run_until(serve_activity(vm, service, events, started, termination))
        .await
}

/// Serves the runtime API for a booted VM, then tears down as the end requires.
async fn serve_activity(
    vm: Rc<RunningVm>,
    service: Service,
    events: Events,
    started: Option<serde_json::Value>,
    mut termination: Termination,
) -> anyhow::Result<u8> {
    let (outbox, queue) = Outbox::new();
    let mut writer = tokio::spawn(server::write_all(stdio::output(), queue));
    let mut input = stdio::input();
    if let Some(result) = started {
        // What upstream's SDK sends: the start result as stdout of pid 0.
        let _ = outbox
            .process_status(response::ProcessStatus {
                pid: 0,
                running: true,
                stdout: result.to_string().into_bytes(),
                ..Default::default()
            })
            .await;
    }
    let mut forwarder = tokio::task::spawn_local(forward(events, outbox.clone()));
    let mut serving = Box::pin(server::serve(&mut input, Rc::new(service), outbox.clone()));
    let end = tokio::select! {
        ending = &mut serving => match ending {
            Ending::InputClosed => End::InputClosed,
            Ending::Shutdown(id) => End::Shutdown(id),
            Ending::Corrupt(e) => End::InputBroken(e.to_string()),
            Ending::ReadFailed(e) => End::InputBroken(format!("reading it failed: {e}")),
        },
        _ = &mut writer => End::OutputClosed,
        forwarded = &mut forwarder => match forwarded {
            Ok(Forwarded::AgentGone { reason, open }) => End::AgentLost { reason, open },
            Ok(Forwarded::OutputClosed) | Err(_) => End::OutputClosed,
        },
        signal = termination.recv() => End::Signal(signal),
        what = vm.watch() => End::VmDied(what),
    };
    // Requests still in flight are dropped with the server.
    drop(serving);
    match end {
        End::Shutdown(id) => {
            forwarder.abort();
            // Everything goes before the reply: the exe-unit kills the runtime on seeing it.
            vm.shutdown().await;
            // Bounded: an exe-unit that stopped reading must not keep the runtime alive.
            if tokio::time::timeout(FLUSH_LIMIT, outbox.reply_shutdown(id))
                .await
                .is_err()
            {
                tracing::warn!("the Shutdown reply could not be queued within {FLUSH_LIMIT:?}");
            }
            drop(outbox);
            let _ = forwarder.await;
            match tokio::time::timeout(FLUSH_LIMIT, writer).await {
                Ok(Ok(Ok(()))) => linger(&mut input, &mut termination).await,
                Ok(_) => tracing::warn!("the Shutdown reply could not be written"),
                Err(_) => {
                    tracing::warn!("the Shutdown reply was not written within {FLUSH_LIMIT:?}")
                }
            }
            Ok(0)
        }
        End::InputClosed => {
            forwarder.abort();
            vm.shutdown().await;
            tracing::info!("the exe-unit closed the runtime API: VM powered off");
            Ok(0)
        }
        End::Signal(signal) => {
            forwarder.abort();
            vm.shutdown().await;
            tracing::info!("{}: VM powered off", signals::name(signal));
            Ok(signals::exit_status(signal))
        }
        End::InputBroken(why) => {
            forwarder.abort();
            vm.shutdown().await;
            bail!("the runtime API's input is broken: {why}")
        }
        End::OutputClosed => {
            forwarder.abort();
            vm.shutdown().await;
            bail!("the runtime API's output is closed: the exe-unit is gone")
        }
        End::VmDied(what) => {
            vm.kill().await;
            // The agent's connection ends with the VM: its last events, then the open commands.
            if let Ok(Ok(Forwarded::AgentGone { open, .. })) =
                tokio::time::timeout(LAST_EVENTS_LIMIT, &mut forwarder).await
            {
                let last = end_open_commands(&outbox, &open, "the VM stopped");
                let _ = tokio::time::timeout(FLUSH_LIMIT, last).await;
            }
            forwarder.abort();
            drop(outbox);
            let _ = tokio::time::timeout(FLUSH_LIMIT, writer).await;
            stdio::read_by_client(FLUSH_LIMIT, READ_GRACE).await;
            bail!("the VM stopped unexpectedly: {what}")
        }
        End::AgentLost { reason, open } => {
            // A VM that died takes its agent's connection with it: name the death, not its echo.
            let died = tokio::time::timeout(LAST_EVENTS_LIMIT / 4, vm.watch())
                .await
                .ok();
            vm.kill().await;
            let last = end_open_commands(&outbox, &open, &reason);
            let _ = tokio::time::timeout(FLUSH_LIMIT, last).await;
            forwarder.abort();
            drop(outbox);
            let _ = tokio::time::timeout(FLUSH_LIMIT, writer).await;
            stdio::read_by_client(FLUSH_LIMIT, READ_GRACE).await;
            match died {
                Some(what) => bail!("the VM stopped unexpectedly: {what}"),
                None => bail!("the guest agent is lost: {reason}"),
            }
        }
    }
}

/// After the Shutdown reply: waits until the exe-unit stops the runtime (a signal, or its kill),
/// closes the runtime API's input, or [`LINGER`] has passed, so the reply is read before the
/// process ends. Everything the activity owned is already gone.
async fn linger(input: &mut stdio::Input, termination: &mut Termination) {
    use tokio::io::AsyncReadExt;
    let input_closed = async {
        let mut sink = [0u8; 4096];
        while let Ok(1..) = input.read(&mut sink).await {}
    };
    tokio::select! {
        () = tokio::time::sleep(LINGER) => {}
        () = input_closed => {}
        _ = termination.recv() => {}
    }
}
