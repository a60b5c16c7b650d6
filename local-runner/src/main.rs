//! # ya-exescript
//!
//! Plays the exe-unit's part without yagna, for requestors trying an image and for tests: reads
//! an ExeScript ([`script`]), runs `ya-runtime-vm deploy`, starts `ya-runtime-vm start` and drives
//! it over the runtime API with ya-runtime-api's own client (as the exe-unit does), performs
//! transfers through the volume directories ([`transfer`]), streams each command's output, and
//! stops at the first failure with a non-zero status.
//!
//! ```sh
//! ya-exescript --package image.gvmi examples/hello.json
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use ya_runtime_api::deploy::DeployResult;
use ya_runtime_api::server::{spawn, ProcessStatus, RunProcess, RuntimeControl, RuntimeService};

use local_runner::script::{self, Command};
use local_runner::transfer::{self, Volume};
use local_runner::ChannelEvents;

/// How long the VM may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the runtime may take to end after Shutdown (the exe-unit kills it after 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs an ExeScript against ya-runtime-vm, as yagna's exe-unit would.
#[derive(Debug, Parser)]
#[command(name = "ya-exescript", version)]
struct Args {
    /// The ExeScript (a JSON list of commands).
    script: PathBuf,
    /// The task package: a .gvmi path or any reference ya-runtime-vm accepts.
    #[arg(long)]
    package: String,
    /// The activity's workdir (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// The runtime binary (default: ya-runtime-vm beside this program, else on PATH).
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// Where relative host paths of transfers point (default: the script's directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A global flag for the runtime, repeatable (e.g. --runtime-arg=--accel=tcg).
    #[arg(long = "runtime-arg", allow_hyphen_values = true)]
    runtime_args: Vec<String>,
}

/// A started runtime.
trait Runtime: RuntimeService + RuntimeControl {}
impl<T: RuntimeService + RuntimeControl> Runtime for T {}

/// The activity being driven.
struct Activity {
    args: Args,
    runtime: PathBuf,
    workdir: PathBuf,
    data_dir: PathBuf,
    volumes: Vec<Volume>,
    started: Option<(Box<dyn Runtime>, mpsc::UnboundedReceiver<ProcessStatus>)>,
}

impl Activity {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runtime);
        c.args(&self.args.runtime_args)
            .arg("--workdir")
            .arg(&self.workdir)
            .arg("--task-package")
            .arg(&self.args.package);
        c
    }

    async fn execute(&mut self, cmd: &Command) -> anyhow::Result<()> {
        match cmd {
            Command::Deploy(d) => {
                let mut c = self.command();
                if let Some(h) = &d.hostname {
                    c.args(["--hostname", h]);
                }
                if let Some(v) = &d.volumes {
                    c.arg("--volume-override").arg(v.to_string());
                }
                let out = c
                    .args(["deploy", "--"])
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .await
                    .with_context(|| format!("cannot run {}", self.runtime.display()))?;
                if !out.status.success() {
                    bail!("deploy failed ({})", out.status);
                }
                let result = DeployResult::from_bytes(&out.stdout)
                    .context("the runtime's deploy result is not what the exe-unit expects")?;
                self.volumes = result
                    .vols
                    .iter()
                    .map(|v| Volume {
                        guest: v.path.clone(),
                        host: self.workdir.join(&v.name),
                    })
                    .collect();
            }
            Command::Start(s) => {
                if self.started.is_some() {
                    bail!("the activity is already started");
                }
                let mut c = self.command();
                c.arg("start").args(&s.args);
                let (tx, rx) = mpsc::unbounded_channel();
                let rt = spawn(c, ChannelEvents(tx))
                    .await
                    .with_context(|| format!("cannot start {}", self.runtime.display()))?;
                match tokio::time::timeout(BOOT_TIMEOUT, rt.hello("0.1.0")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => bail!("start failed: {}", e.message),
                    Err(_) => bail!("the VM did not start within {BOOT_TIMEOUT:?}"),
                }
                self.started = Some((Box::new(rt), rx));
            }
            Command::Run(r) => {
                let (rt, events) = self
                    .started
                    .as_mut()
                    .ok_or_else(|| anyhow!("run before start"))?;
                let mut argv = vec![r.entry_point.clone()];
                argv.extend(r.args.iter().cloned());
                let pid = rt
                    .run_process(RunProcess {
                        bin: r.entry_point.clone(),
                        args: argv,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("run {}: {}", r.entry_point, e.message))?
                    .pid;
                let code = stream(events, pid).await?;
                if code != 0 {
                    bail!("run {}: exited with {code}", r.entry_point);
                }
            }
            Command::Transfer(t) => {
                let (src, dst) = transfer::plan(&t.from, &t.to, &self.data_dir, &self.volumes)
                    .map_err(|e| anyhow!("transfer: {e}"))?;
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("transfer: cannot create {}", parent.display()))?;
                }
                let n = std::fs::copy(&src, &dst).with_context(|| {
                    format!(
                        "transfer: cannot copy {} to {}",
                        src.display(),
                        dst.display()
                    )
                })?;
                eprintln!("ya-exescript: transferred {n} bytes");
            }
            Command::Terminate(_) => self.terminate().await?,
        }
        Ok(())
    }

    /// Shutdown, and the runtime's own end.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some((rt, _)) = self.started.take() else {
            return Ok(());
        };
        rt.shutdown()
            .await
            .map_err(|e| anyhow!("shutdown failed: {}", e.message))?;
        match tokio::time::timeout(STOP_TIMEOUT, rt.stopped()).await {
            Ok(0) => Ok(()),
            Ok(code) => bail!("the runtime ended with {code} after shutdown"),
            Err(_) => {
                rt.stop();
                bail!("the runtime did not end within {STOP_TIMEOUT:?} of shutdown")
            }
        }
    }
}

/// Passes one process's output through until its final event; returns its exit code.
async fn stream(
    events: &mut mpsc::UnboundedReceiver<ProcessStatus>,
    pid: u64,
) -> anyhow::Result<i32> {
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some(s) = events.recv().await {
        if s.pid != pid {
            continue;
        }
        out.write_all(&s.stdout).await?;
        out.flush().await?;
        err.write_all(&s.stderr).await?;
        if !s.running {
            return Ok(s.return_code);
        }
    }
    bail!("the runtime ended while the command ran")
}

/// `ya-runtime-vm` beside this program, else the name (found on PATH).
fn default_runtime() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("ya-runtime-vm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ya-runtime-vm"))
}

async fn main_inner(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.script)
        .with_context(|| format!("cannot read {}", args.script.display()))?;
    let commands = script::parse(&text).map_err(|e| anyhow!("{}: {e}", args.script.display()))?;
    // Without --workdir, a private one that is removed when the script ends.
    let temp = tempfile::Builder::new()
        .prefix("ya-exescript-")
        .tempdir()
        .context("cannot create a temporary workdir")?;
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| temp.path().join("work"));
    let script_dir = args
        .script
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut activity = Activity {
        runtime: args.runtime.clone().unwrap_or_else(default_runtime),
        data_dir: args.data_dir.clone().unwrap_or(script_dir),
        args,
        workdir,
        volumes: Vec::new(),
        started: None,
    };
    let total = commands.len();
    let mut result = Ok(());
    for (i, cmd) in commands.iter().enumerate() {
        eprintln!("ya-exescript: [{}/{total}] {}", i + 1, cmd.name());
        if let Err(e) = activity.execute(cmd).await {
            result = Err(e.context(format!("command {} ({})", i + 1, cmd.name())));
            break;
        }
    }
    // A script that fails or does not terminate still ends its VM.
    let ended = activity.terminate().await;
    drop(temp);
    result.and(ended)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ya-exescript: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(main_inner(args));
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ya-exescript: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
