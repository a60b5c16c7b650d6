//! `run`: deploy if needed, boot, run one command with its output passed through, shut down, and
//! exit with the command's exit code (128 + signal when a signal ended it).

use std::path::Path;

use agent_protocol::{notification, request, response, RunProcess};
use anyhow::{anyhow, bail, Context};
use tokio::io::AsyncWriteExt;

use crate::agent_client::Notes;
use crate::deployment::Deployment;
use crate::signals::{self, Termination};
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

/// The exit code reported for a process: its own, or 128 + the signal that ended it.
pub fn exit_code(e: &agent_protocol::Exited) -> i32 {
    match (e.code, e.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
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
    let (vm, mut notes) = tokio::select! {
        booted = RunningVm::start(&d, workdir, opts) => booted?,
        signal = termination.recv() => {
            tracing::info!("{} while the VM was booting: stopped", signals::name(signal));
            return Ok(i32::from(signals::exit_status(signal)));
        }
    };
    let result = tokio::select! {
        r = run_in(&vm, &mut notes, &d, entrypoint, args) => r,
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
    notes: &mut Notes,
    d: &Deployment,
    entrypoint: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    let pid = match vm
        .agent
        .request(request::Body::Run(process_for(d, entrypoint, args)))
        .await?
    {
        response::Body::Started(s) => s.pid,
        response::Body::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from the guest: {other:?}"),
    };
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(n) = notes.recv().await {
        match n.body {
            Some(notification::Body::Output(o)) if o.pid == pid => {
                let out: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) =
                    if o.fd == 2 { &mut stderr } else { &mut stdout };
                out.write_all(&o.data)
                    .await
                    .context("writing the command's output")?;
                out.flush().await.context("writing the command's output")?;
            }
            Some(notification::Body::Exited(e)) if e.pid == pid => return Ok(exit_code(&e)),
            _ => {}
        }
    }
    bail!(
        "the VM stopped before the command ended; console: {}",
        vm.console_tail()
    )
}
