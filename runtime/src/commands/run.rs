//! `run`: deploy if needed, boot, run one command with its output passed through, shut down, and
//! exit with the command's exit code (128 + signal when a signal ended it).

use std::path::Path;

use agent_protocol::RunProcess;
use anyhow::{anyhow, bail, Context};
use tokio::io::AsyncWriteExt;

use crate::agent::{AgentEvent, Events};
use crate::commands::signals::{self, Termination};
use crate::deployment::Deployment;
use crate::vm::{RunningVm, VmOptions};

/// The process the image's configuration implies for `entrypoint` and `args`.
pub fn process_for(d: &Deployment, entrypoint: &str, args: &[String]) -> RunProcess {
    let mut argv = vec![entrypoint.to_string()];
    argv.extend(args.iter().cloned());
    RunProcess {
        path: entrypoint.to_string(),
        argv,
        env: d.config.env.clone(),
        cwd: if d.config.working_dir.is_empty() {
            "/".into()
        } else {
            d.config.working_dir.clone()
        },
        user: d.user.user.to_string(),
        group: d
            .user
            .group
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        stdin: false,
    }
}

/// One thing a process did.
#[derive(Debug)]
pub enum ProcessEvent {
    /// Output on stdout (1) or stderr (2).
    Output(u32, Vec<u8>),
    /// It ended with this status (128 + signal when a signal ended it).
    Exited(i32),
}

/// The next event of process `pid` (other processes' events are skipped); an error naming why
/// when the agent's connection ends first.
pub async fn next_event(events: &mut Events, pid: u64) -> anyhow::Result<ProcessEvent> {
    while let Some(e) = events.recv().await {
        match e {
            AgentEvent::Output { pid: p, fd, data } if p == pid => {
                return Ok(ProcessEvent::Output(fd, data))
            }
            AgentEvent::Exited { pid: p, code } if p == pid => {
                return Ok(ProcessEvent::Exited(code))
            }
            AgentEvent::Closed { reason, .. } => bail!("{reason}"),
            _ => {}
        }
    }
    bail!("the guest agent's events ended")
}

/// Runs one command in a fresh VM of the deployment in `workdir`; returns the exit code (128 +
/// the signal when SIGTERM, SIGINT or SIGHUP stopped the runtime first; the VM is powered off
/// either way).
pub async fn run(
    workdir: &Path,
    opts: &VmOptions,
    entrypoint: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    let mut termination = Termination::listen().context("cannot listen for signals")?;
    let d = Deployment::load(workdir)?;
    let (vm, mut events) = tokio::select! {
        booted = RunningVm::start(&d, workdir, opts) => booted?,
        signal = termination.recv() => {
            tracing::info!("{} while the VM was booting: stopped", signals::name(signal));
            return Ok(i32::from(signals::exit_status(signal)));
        }
    };
    let result = tokio::select! {
        r = run_in(&vm, &mut events, &d, entrypoint, args) => r,
        signal = termination.recv() => {
            tracing::info!("{}: powering the VM off", signals::name(signal));
            Ok(i32::from(signals::exit_status(signal)))
        }
        what = vm.watch() => {
            vm.kill().await;
            Err(anyhow!("the VM stopped unexpectedly: {what}"))
        }
    };
    vm.shutdown().await;
    result
}

async fn run_in(
    vm: &RunningVm,
    events: &mut Events,
    d: &Deployment,
    entrypoint: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    let pid = vm.agent.run(process_for(d, entrypoint, args)).await?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let event = next_event(events, pid).await.map_err(|e| {
            anyhow!(
                "the VM stopped before the command ended ({e}); console: {}",
                vm.console_tail()
            )
        })?;
        match event {
            ProcessEvent::Output(fd, data) => {
                let out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) =
                    if fd == 2 { &mut stderr } else { &mut stdout };
                out.write_all(&data)
                    .await
                    .context("writing the command's output")?;
                out.flush().await.context("writing the command's output")?;
            }
            ProcessEvent::Exited(code) => return Ok(code),
        }
    }
}
