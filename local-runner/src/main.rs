//! # ya-exescript
//!
//! Plays the exe-unit's part without yagna, for requestors trying an image and for tests: reads
//! an ExeScript ([`script`]), runs `ya-runtime-vm deploy`, starts `ya-runtime-vm start` and drives
//! it over the runtime API with ya-runtime-api's own client (as the exe-unit does), performs
//! transfers through the volume directories ([`transfer`]), streams each command's output, and
//! stops at the first failure with a non-zero status.
//!
//! Given several scripts, it runs one activity per script at once (each script's output lines
//! prefixed with its name). Scripts whose `deploy` has a `net` join one local VPN
//! ([`local_runner::vpn_switch`]): each runtime gets `--vpn-endpoint`, and after `Hello` a VPN
//! `CreateNetwork` with the script's networks and `hosts`, as the exe-unit sends it.
//!
//! ```sh
//! ya-exescript --package image.gvmi examples/hello.json
//! ya-exescript --package image.gvmi examples/vpn/server.json examples/vpn/client.json
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use ya_runtime_api::deploy::DeployResult;
use ya_runtime_api::server::{spawn, ProcessStatus, RunProcess, RuntimeControl, RuntimeService};

use local_runner::script::{self, Command, Net};
use local_runner::transfer::{self, Volume};
use local_runner::vpn_switch::VpnSwitch;
use local_runner::ChannelEvents;
use ya_runtime_api::server::proto::response::create_network::Endpoint;
use ya_runtime_api::server::proto::Network;
use ya_runtime_api::server::CreateNetwork;

/// How long the VM may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the runtime may take to configure the guest's network (its requests to the guest
/// are bounded well inside it).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the runtime may take to answer Shutdown: its VM's power-off and teardown are bounded
/// well inside it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the runtime may take to end after Shutdown (the exe-unit kills it after 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs an ExeScript against ya-runtime-vm, as yagna's exe-unit would.
#[derive(Debug, Parser)]
#[command(name = "ya-exescript", version)]
struct Args {
    /// The ExeScript (a JSON list of commands); several run as several activities at once.
    #[arg(required_unless_present = "try_image", conflicts_with = "try_image")]
    scripts: Vec<PathBuf>,
    /// Instead of a script: boot the image and show what a requestor's commands will find
    /// (`ls -la /`, the user and working directory, the environment, the volumes), then stop.
    #[arg(long = "try")]
    try_image: bool,
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

/// What `--try` runs: a look at the image from inside, as a requestor's commands will see it.
const TRY_SCRIPT: &str = r#"[
  {"deploy": {}},
  {"start": {}},
  {"run": {"entry_point": "/bin/sh", "args": ["-c",
    "echo '== ls -la /'; ls -la /; echo; echo \"== user: $(id)\"; echo \"== working directory: $(pwd)\"; echo; echo '== environment'; env | sort; echo; echo '== volumes (virtio-fs, kept on the host)'; grep ' virtiofs ' /proc/mounts | cut -d' ' -f2"]}},
  {"terminate": {}}
]"#;

/// A started runtime.
trait Runtime: RuntimeService + RuntimeControl {}
impl<T: RuntimeService + RuntimeControl> Runtime for T {}

/// The activity being driven.
struct Activity {
    args: Arc<Args>,
    runtime: PathBuf,
    workdir: PathBuf,
    data_dir: PathBuf,
    volumes: Vec<Volume>,
    started: Option<(Box<dyn Runtime>, mpsc::UnboundedReceiver<ProcessStatus>)>,
    /// What starts each output line (several activities at once), or nothing.
    prefix: Option<String>,
    /// The local VPN and this activity's port on it, when its script joins one.
    vpn: Option<(Arc<VpnSwitch>, usize)>,
    /// `deploy`'s networks and names.
    net: Vec<Net>,
    hosts: BTreeMap<String, String>,
    /// This activity's name for messages about it (its script's name).
    name: String,
    /// Shared by all the activities of one run: the name of the first that failed, so that the
    /// others stop too instead of waiting for it forever.
    failed: Arc<watch::Sender<Option<String>>>,
}

/// Why an activity stopped when its own script did not fail: another activity of the run did.
#[derive(Debug)]
struct StoppedBy(String);

impl std::fmt::Display for StoppedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped because {} failed", self.0)
    }
}

impl std::error::Error for StoppedBy {}

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

    /// The VPN `CreateNetwork` of `deploy.net`, as the exe-unit sends it; then the switch
    /// learns where the VM is.
    async fn create_vpn(&self, rt: &dyn Runtime) -> anyhow::Result<()> {
        let Some((switch, port)) = &self.vpn else {
            return Ok(());
        };
        let networks = self
            .net
            .iter()
            .map(|n| Network {
                addr: n.ip.clone(),
                gateway: n.gateway.clone().unwrap_or_default(),
                mask: n.mask.clone().unwrap_or_else(|| "255.255.255.0".into()),
                if_addr: n.node_ip.clone(),
            })
            .collect();
        let request = rt.create_network(CreateNetwork {
            networks,
            hosts: self.hosts.clone().into_iter().collect(),
            interface: 0,
        });
        let reply = tokio::time::timeout(NETWORK_TIMEOUT, request)
            .await
            .map_err(|_| anyhow!("CreateNetwork: no answer within {NETWORK_TIMEOUT:?}"))?
            .map_err(|e| anyhow!("CreateNetwork: {}", e.message))?;
        let Some(Endpoint::UdpDatagram(addr)) = reply.endpoint else {
            bail!("CreateNetwork: the runtime answered no UDP endpoint");
        };
        let vm = addr
            .parse()
            .with_context(|| format!("CreateNetwork: {addr:?} is not an address"))?;
        let ips = |f: &dyn Fn(&Net) -> Option<String>| -> Vec<Ipv4Addr> {
            self.net.iter().filter_map(|n| f(n)?.parse().ok()).collect()
        };
        switch.attach(
            *port,
            vm,
            &ips(&|n| Some(n.node_ip.clone())),
            &ips(&|n| n.gateway.clone()),
        );
        Ok(())
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
                self.net = d.net.clone();
                self.hosts = d.hosts.clone();
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
                if let (Some((switch, port)), false) = (&self.vpn, self.net.is_empty()) {
                    c.arg("--vpn-endpoint").arg(switch.url(*port)?);
                }
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
                if !self.net.is_empty() {
                    self.create_vpn(&rt).await?;
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
                let code = stream(events, pid, self.prefix.as_deref()).await?;
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
                eprintln!("{}ya-exescript: transferred {n} bytes", self.tag());
            }
            Command::Terminate(_) => self.terminate().await?,
        }
        Ok(())
    }

    /// `[name] ` before this activity's lines when several run, else nothing.
    fn tag(&self) -> String {
        self.prefix.clone().unwrap_or_default()
    }

    /// Runs the script's commands in order, stopping at the first failure or when another
    /// activity of the run fails (a command that waits for it would otherwise wait forever), and
    /// always ends the VM.
    async fn run_script(&mut self, commands: &[Command]) -> anyhow::Result<()> {
        let total = commands.len();
        let mut others = self.failed.subscribe();
        let mut result = Ok(());
        for (i, cmd) in commands.iter().enumerate() {
            if let Some(other) = others.borrow().clone() {
                let stopped = StoppedBy(other);
                eprintln!("{}ya-exescript: {stopped}", self.tag());
                result = Err(stopped.into());
                break;
            }
            eprintln!(
                "{}ya-exescript: [{}/{total}] {}",
                self.tag(),
                i + 1,
                cmd.name()
            );
            // Only a run waits on what another activity does; the other commands are bounded.
            let outcome = if matches!(cmd, Command::Run(_)) {
                tokio::select! {
                    r = self.execute(cmd) => r,
                    Ok(other) = others.wait_for(Option::is_some) => {
                        Err(StoppedBy(other.clone().unwrap_or_default()).into())
                    }
                }
            } else {
                self.execute(cmd).await
            };
            if let Err(e) = outcome {
                if let Some(stopped) = e.downcast_ref::<StoppedBy>() {
                    eprintln!("{}ya-exescript: {stopped}", self.tag());
                } else {
                    let name = self.name.clone();
                    self.failed
                        .send_if_modified(|first| first.is_none() && first.replace(name).is_none());
                }
                result = Err(e.context(format!("command {} ({})", i + 1, cmd.name())));
                break;
            }
        }
        // A script that fails or does not terminate still ends its VM.
        let ended = self.terminate().await;
        result.and(ended)
    }

    /// Shutdown, and the runtime's own end.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some((rt, _)) = self.started.take() else {
            return Ok(());
        };
        // yagna's client drops a reply that arrives as the runtime exits, and then waits for it
        // forever: the runtime's own end counts as the answer too.
        let answered = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            tokio::select! {
                reply = rt.shutdown() => reply
                    .map_err(|e| anyhow!("shutdown failed: {}", e.message)),
                code = rt.stopped() => match code {
                    0 => Ok(()),
                    code => Err(anyhow!("the runtime ended with {code} during shutdown")),
                },
            }
        })
        .await;
        match answered {
            Ok(result) => result?,
            Err(_) => {
                rt.stop();
                bail!("the runtime did not answer Shutdown within {SHUTDOWN_TIMEOUT:?}")
            }
        }
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

/// Passes one process's output through until its final event; returns its exit code. With a
/// prefix, output goes out in whole lines, each after the prefix.
async fn stream(
    events: &mut mpsc::UnboundedReceiver<ProcessStatus>,
    pid: u64,
    prefix: Option<&str>,
) -> anyhow::Result<i32> {
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    let mut lines = [Vec::new(), Vec::new()];
    while let Some(s) = events.recv().await {
        if s.pid != pid {
            continue;
        }
        let Some(prefix) = prefix else {
            out.write_all(&s.stdout).await?;
            out.flush().await?;
            err.write_all(&s.stderr).await?;
            if !s.running {
                return Ok(s.return_code);
            }
            continue;
        };
        for (i, data) in [&s.stdout, &s.stderr].into_iter().enumerate() {
            lines[i].extend_from_slice(data);
            let cut = if s.running {
                lines[i]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1)
            } else {
                lines[i].len()
            };
            let mut text = Vec::new();
            for line in lines[i]
                .drain(..cut)
                .collect::<Vec<u8>>()
                .split_inclusive(|b| *b == b'\n')
            {
                text.extend_from_slice(prefix.as_bytes());
                text.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    text.push(b'\n');
                }
            }
            if i == 0 {
                out.write_all(&text).await?;
                out.flush().await?;
            } else {
                err.write_all(&text).await?;
            }
        }
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

/// A script's name for prefixes: its file name without `.json`.
fn script_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

async fn main_inner(args: Args) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let mut scripts = Vec::new();
    if args.try_image {
        let commands = script::parse(TRY_SCRIPT).map_err(|e| anyhow!("the --try script: {e}"))?;
        scripts.push((PathBuf::from("try"), commands));
    }
    for path in &args.scripts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let commands = script::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        scripts.push((path.clone(), commands));
    }
    let several = scripts.len() > 1;
    if several && args.workdir.is_some() {
        bail!("--workdir names one activity's workdir: give one script with it");
    }
    let joins_vpn = |commands: &[Command]| {
        commands
            .iter()
            .any(|c| matches!(c, Command::Deploy(d) if !d.net.is_empty()))
    };
    let switch = if scripts.iter().any(|(_, c)| joins_vpn(c)) {
        Some(Arc::new(
            VpnSwitch::new(scripts.len())
                .await
                .context("cannot open the local VPN's ports")?,
        ))
    } else {
        None
    };
    // Without --workdir, private ones that are removed when the scripts end.
    let temp = tempfile::Builder::new()
        .prefix("ya-exescript-")
        .tempdir()
        .context("cannot create a temporary workdir")?;
    let failed = Arc::new(watch::channel(None).0);
    let mut activities = Vec::new();
    for (i, (path, _)) in scripts.iter().enumerate() {
        let script_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        activities.push(Activity {
            runtime: args.runtime.clone().unwrap_or_else(default_runtime),
            data_dir: args.data_dir.clone().unwrap_or(script_dir),
            workdir: args
                .workdir
                .clone()
                .unwrap_or_else(|| temp.path().join(format!("work{i}"))),
            args: args.clone(),
            volumes: Vec::new(),
            started: None,
            prefix: several.then(|| format!("[{}] ", script_name(path))),
            vpn: switch.as_ref().map(|s| (s.clone(), i)),
            net: Vec::new(),
            hosts: BTreeMap::new(),
            name: script_name(path),
            failed: failed.clone(),
        });
    }
    let runs = activities
        .iter_mut()
        .zip(&scripts)
        .map(|(a, (_, commands))| a.run_script(commands));
    let results = futures::future::join_all(runs).await;
    drop(temp);
    // The failures themselves before the activities they stopped; each named when several ran.
    let mut failures: Vec<(bool, String)> = results
        .into_iter()
        .zip(&scripts)
        .filter_map(|(r, (path, _))| {
            let e = r.err()?;
            let stopped = e.chain().any(|c| c.downcast_ref::<StoppedBy>().is_some());
            let text = format!("{e:#}");
            Some(match several {
                true => (stopped, format!("{}: {text}", script_name(path))),
                false => (stopped, text),
            })
        })
        .collect();
    if failures.iter().any(|(stopped, _)| !stopped) {
        failures.retain(|(stopped, _)| !stopped);
    }
    match failures.is_empty() {
        true => Ok(()),
        false => bail!(
            "{}",
            failures
                .into_iter()
                .map(|(_, text)| text)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
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
