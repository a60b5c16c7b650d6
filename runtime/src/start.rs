//! `start`: boot the deployment, then serve yagna's runtime API (ya-runtime-api 0.7.0, length-
//! delimited protobuf on stdin/stdout) until Shutdown or the end of stdin. Process output and
//! exits from the guest become `ProcessStatus` events, in order, with backpressure (the API's
//! event channel holds one event; while it is full, the guest's output is not read).
//!
//! With `start-entrypoint` among the start arguments, the image's Entrypoint + Cmd runs as soon
//! as the VM is up; the start result, `{"start":null,"entrypoint":{"pid":…,"command":[…]}}`, goes
//! out as the first event (pid 0, which the exe-unit hands to its `start` command as stdout),
//! and the entrypoint's output follows as its own process's events.
//!
//! The runtime ends, with the VM powered off and its helpers gone, on whichever comes first:
//! Shutdown, the end of stdin, SIGTERM/SIGINT/SIGHUP, or QEMU or a helper dying (an error).

use std::path::Path;
use std::rc::Rc;

use agent_protocol::{notification, request, response, KillProcess as AgentKill, Notification};
use anyhow::{bail, Context};
use futures_util::future::FutureExt;
use tokio::sync::Notify;
use ya_runtime_api::server::{
    AsyncResponse, CreateNetwork, CreateNetworkResp, ErrorCode, ErrorResponse, KillProcess,
    ProcessStatus, RunProcess, RunProcessResp, RuntimeHandler, RuntimeService,
};

use crate::agent_client::Notes;
use crate::deployment::Deployment;
use crate::run::{exit_code, process_for};
use crate::signals::{self, Termination};
use crate::vm::{RunningVm, VmOptions};

/// How long the server may take to send the Shutdown response before the runtime exits.
const RESPONSE_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// The service behind the runtime API.
struct Service {
    vm: Rc<RunningVm>,
    deployment: Deployment,
    /// Told when Shutdown has powered the VM off.
    stopped: Rc<Notify>,
}

fn error(code: ErrorCode, msg: impl std::fmt::Display) -> ErrorResponse {
    let mut e = ErrorResponse::msg(msg);
    e.set_code(code);
    e
}

impl Service {
    async fn ask(&self, body: request::Body) -> Result<response::Body, ErrorResponse> {
        if self.vm.is_shut_down() {
            return Err(error(ErrorCode::Internal, "the VM has been shut down"));
        }
        self.vm
            .agent
            .request(body)
            .await
            .map_err(|e| error(ErrorCode::Internal, e))
    }
}

impl RuntimeService for Service {
    fn hello(&self, version: &str) -> AsyncResponse<'_, String> {
        tracing::debug!("hello from the exe-unit (API {version})");
        async { Ok(env!("CARGO_PKG_VERSION").to_string()) }.boxed_local()
    }

    fn run_process(&self, run: RunProcess) -> AsyncResponse<'_, RunProcessResp> {
        async move {
            if run.bin.is_empty() {
                return Err(error(ErrorCode::BadRequest, "RunProcess has no bin"));
            }
            // `args` carries argv[0]; an empty list still runs the program under its own name.
            let args = run.args.get(1..).unwrap_or_default();
            let mut req = process_for(&self.deployment, &run.bin, args);
            if let Some(a0) = run.args.first() {
                req.argv[0] = a0.clone();
            }
            if !run.work_dir.is_empty() {
                req.cwd = run.work_dir.clone();
            }
            match self.ask(request::Body::Run(req)).await? {
                response::Body::Started(s) => Ok(RunProcessResp { pid: s.pid }),
                response::Body::Error(e) => Err(error(ErrorCode::BadRequest, e.message)),
                other => Err(error(
                    ErrorCode::Internal,
                    format!("unexpected answer {other:?}"),
                )),
            }
        }
        .boxed_local()
    }

    fn kill_process(&self, kill: KillProcess) -> AsyncResponse<'_, ()> {
        async move {
            let body = request::Body::Kill(AgentKill {
                pid: kill.pid,
                signal: kill.signal,
            });
            match self.ask(body).await? {
                response::Body::Ok(_) => Ok(()),
                response::Body::Error(e) => Err(error(ErrorCode::NotFound, e.message)),
                other => Err(error(
                    ErrorCode::Internal,
                    format!("unexpected answer {other:?}"),
                )),
            }
        }
        .boxed_local()
    }

    fn create_network(&self, _: CreateNetwork) -> AsyncResponse<'_, CreateNetworkResp> {
        async {
            Err(error(
                ErrorCode::BadRequest,
                "networking (VPN) is not supported yet",
            ))
        }
        .boxed_local()
    }

    fn shutdown(&self) -> AsyncResponse<'_, ()> {
        async move {
            self.vm.shutdown().await;
            self.stopped.notify_one();
            Ok(())
        }
        .boxed_local()
    }
}

/// Turns the guest's notifications into runtime API events, in order.
async fn forward(mut notes: Notes, events: impl RuntimeHandler) {
    while let Some(Notification { body }) = notes.recv().await {
        let status = match body {
            Some(notification::Body::Output(o)) => {
                // The chunk moves into the event for its stream; no copy on this hot path.
                let (stdout, stderr) = match o.fd {
                    1 => (o.data, Vec::new()),
                    2 => (Vec::new(), o.data),
                    _ => continue,
                };
                ProcessStatus {
                    pid: o.pid,
                    running: true,
                    return_code: 0,
                    stdout,
                    stderr,
                }
            }
            Some(notification::Body::Exited(e)) => ProcessStatus {
                pid: e.pid,
                running: false,
                return_code: exit_code(&e),
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
            None => continue,
        };
        events.on_process_status(status).await;
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
    match vm.agent.request(request::Body::Run(req)).await? {
        response::Body::Started(s) => Ok(s.pid),
        response::Body::Error(e) => bail!(
            "the image's entrypoint {argv:?} did not start: {}",
            e.message
        ),
        other => bail!("unexpected answer from the guest: {other:?}"),
    }
}

/// Why serving ended.
enum End {
    /// The exe-unit closed stdin.
    InputClosed,
    /// The exe-unit sent Shutdown (the VM is already off).
    ShutdownRequested,
    /// A terminating signal.
    Signal(i32),
    /// QEMU or a helper died: what and the console's last lines.
    VmDied(String),
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
    let (vm, notes) = tokio::select! {
        booted = RunningVm::start(&deployment, workdir, opts) => booted?,
        signal = termination.recv() => {
            // Dropping the boot kills what it started and removes its directory.
            tracing::info!("{} while the VM was booting: stopped", signals::name(signal));
            return Ok(signals::exit_status(signal));
        }
    };
    // The entrypoint starts before serving: its output waits in the notification queue until
    // the start result has gone out.
    let started = match &entrypoint {
        Some(argv) => match run_entrypoint(&vm, &deployment, argv).await {
            Ok(pid) => Some(serde_json::json!({
                "start": null,
                "entrypoint": {"pid": pid, "command": argv},
            })),
            Err(e) => {
                vm.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    let vm = Rc::new(vm);
    let stopped = Rc::new(Notify::new());
    let (served, told) = (vm.clone(), stopped.clone());
    let local = tokio::task::LocalSet::new();
    let end = local
        .run_until(async {
            let server = ya_runtime_api::server::run_async(move |emitter| async move {
                if let Some(result) = started {
                    // What upstream's SDK sends: the start result as stdout of pid 0.
                    emitter
                        .on_process_status(ProcessStatus {
                            pid: 0,
                            running: true,
                            return_code: 0,
                            stdout: result.to_string().into_bytes(),
                            stderr: Vec::new(),
                        })
                        .await;
                }
                tokio::task::spawn_local(forward(notes, emitter));
                Service {
                    vm: served,
                    deployment,
                    stopped: told,
                }
            });
            tokio::pin!(server);
            tokio::select! {
                () = &mut server => End::InputClosed,
                () = stopped.notified() => {
                    // Let the server write the Shutdown response, then stop serving: the
                    // exe-unit expects the runtime to end by itself after Shutdown.
                    let _ = tokio::time::timeout(RESPONSE_GRACE, &mut server).await;
                    End::ShutdownRequested
                }
                signal = termination.recv() => End::Signal(signal),
                what = vm.watch() => End::VmDied(what),
            }
        })
        .await;
    match &end {
        End::VmDied(_) => vm.kill().await,
        _ => vm.shutdown().await,
    }
    match end {
        End::ShutdownRequested => Ok(0),
        End::InputClosed => {
            tracing::info!("the exe-unit closed the runtime API: VM powered off");
            Ok(0)
        }
        End::Signal(signal) => {
            tracing::info!("{}: VM powered off", signals::name(signal));
            Ok(signals::exit_status(signal))
        }
        End::VmDied(what) => bail!("the VM stopped unexpectedly: {what}"),
    }
}
