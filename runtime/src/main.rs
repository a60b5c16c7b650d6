//! The `ya-runtime-vm` binary: parses the command line, sets up logging (stderr) and the async
//! runtime, dispatches to the library, and turns errors into one line and a non-zero status.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use qemu_config::{choose_accel, Accel, AccelRequest, HostProbe};
use ya_runtime_vm::cli::{Cli, Command};
use ya_runtime_vm::commands::self_test;
use ya_runtime_vm::deploy::{self, DeployRequest};
use ya_runtime_vm::deployment::{Resources, DEPLOYMENT_FILE};
use ya_runtime_vm::host::runtime_dir::RuntimeDir;
use ya_runtime_vm::network::{Interface, Transport};
use ya_runtime_vm::vm::VmOptions;

/// Environment variable with a `tracing` filter for the runtime's logs (default `info`).
const LOG_ENV: &str = "YA_RUNTIME_VM_LOG";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            eprintln!(
                "ya-runtime-vm: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    init_logging();
    // One thread: a round trip then costs no thread switches inside the runtime, and QEMU's
    // vCPU keeps the host's cores (hashing and file copies run on threads of their own).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ya-runtime-vm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A blocking read of stdin (the runtime API) may still be pending: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ya-runtime-vm: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

fn resources(cli: &Cli) -> Resources {
    Resources {
        cpu_cores: cli.cpu_cores,
        mem_gib: cli.mem_gib,
        storage_gib: cli.storage_gib,
    }
}

fn deploy_request(cli: &Cli) -> anyhow::Result<DeployRequest> {
    let volume_override = match cli.volume_override.as_deref().map(str::trim) {
        None | Some("") => Default::default(),
        Some(json) => ya_runtime_vm::deploy::volume_override::parse(json)?,
    };
    Ok(DeployRequest {
        workdir: cli.workdir.clone().context("--workdir is required")?,
        package: cli
            .task_package
            .clone()
            .context("--task-package is required")?,
        cache_dir: match cli.cache_dir.clone() {
            Some(d) => d,
            None => image_loader::Cache::default_root()
                .context("no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME")?,
        },
        max_package_bytes: deploy::max_package_bytes(cli.max_package_gib)?,
        resources: resources(cli),
        hostname: cli.hostname.clone(),
        volume_override,
    })
}

/// The exe-unit's network endpoints (`start` only).
fn network(cli: &Cli) -> anyhow::Result<Vec<(Interface, Transport)>> {
    let given = [
        (Interface::Inet, &cli.inet_endpoint),
        (Interface::Vpn, &cli.vpn_endpoint),
    ];
    given
        .into_iter()
        .filter_map(|(i, url)| url.as_ref().map(|u| (i, u)))
        .map(|(i, url)| {
            let t: Transport = url.parse().with_context(|| i.flag())?;
            Ok((i, t))
        })
        .collect()
}

/// Refuses network endpoints for a subcommand that has no use for them.
fn no_network(cli: &Cli) -> anyhow::Result<()> {
    if cli.vpn_endpoint.is_some() || cli.inet_endpoint.is_some() {
        bail!(
            "{} takes no --vpn-endpoint or --inet-endpoint: only `start` serves networks (the exe-unit's CreateNetwork)",
            cli.command.name()
        );
    }
    Ok(())
}

fn vm_options(cli: &Cli, network: Vec<(Interface, Transport)>) -> anyhow::Result<VmOptions> {
    let runtime_dir = RuntimeDir::locate(cli.runtime_dir.as_deref())?;
    let choice = choose_accel(cli.accel, HostProbe::probe()).map_err(anyhow::Error::msg)?;
    if choice.accel == Accel::Tcg && cli.accel != AccelRequest::Tcg {
        tracing::warn!("{}", choice.reason);
    } else {
        tracing::debug!("{}", choice.reason);
    }
    let host_tsc_khz = match choice.accel {
        Accel::Tcg => qemu_config::tsc::host_tsc_khz(),
        Accel::Kvm => None,
    };
    if choice.accel == Accel::Tcg && host_tsc_khz.is_none() {
        tracing::warn!("the host's TSC frequency is unknown: booting q35, slower than microvm");
    }
    Ok(VmOptions {
        runtime_dir,
        accel: choice.accel,
        tcg_cache_mib: cli.tcg_cache_mib,
        host_tsc_khz,
        vsock: cli.vsock,
        network,
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Deploy { args } => {
            no_network(&cli)?;
            if !args.is_empty() {
                bail!("deploy takes no arguments after '--', got {args:?}");
            }
            let result = deploy::deploy(&deploy_request(&cli)?).await?;
            let json = serde_json::to_string(&result).context("cannot encode the deploy result")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")
                .and_then(|()| out.flush())
                .context("cannot write the deploy result to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { entrypoint, args } => {
            no_network(&cli)?;
            let workdir = cli.workdir.clone().context("--workdir is required")?;
            if !workdir.join(DEPLOYMENT_FILE).exists() {
                deploy::deploy(&deploy_request(&cli)?).await?;
            }
            let opts = vm_options(&cli, Vec::new())?;
            let code = ya_runtime_vm::commands::run::run(&workdir, &opts, entrypoint, args).await?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
        }
        Command::Start { args } => {
            let start_entrypoint = ya_runtime_vm::commands::start::parse_start_args(args)?;
            let network = network(&cli)?;
            let workdir = cli.workdir.clone().context("--workdir is required")?;
            let status = ya_runtime_vm::commands::start::start(
                &workdir,
                &vm_options(&cli, network)?,
                start_entrypoint,
            )
            .await?;
            Ok(ExitCode::from(status))
        }
        Command::Test => {
            let started = std::time::Instant::now();
            let mut accel = None;
            let outcome = async {
                no_network(&cli)?;
                let opts = vm_options(&cli, Vec::new())?;
                accel = Some(opts.accel.to_string());
                self_test::preflight(
                    &opts,
                    cli.accel,
                    &HostProbe::probe(),
                    self_test::kvm_present(),
                )?;
                self_test::run(&opts, resources(&cli)).await
            }
            .await;
            let report = self_test::Report {
                ok: outcome.is_ok(),
                accel: accel.clone(),
                boot_ms: outcome.as_ref().ok().map(|d| d.as_millis() as u64),
                total_ms: started.elapsed().as_millis() as u64,
                error: outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{e:#}").replace('\n', " ")),
            };
            let json = serde_json::to_string(&report).context("cannot encode the report")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")
                .and_then(|()| out.flush())
                .context("cannot write the report to stdout")?;
            let boot = outcome?;
            eprintln!(
                "ya-runtime-vm: self-test passed ({}, VM up in {} ms)",
                accel.unwrap_or_default(),
                boot.as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::OfferTemplate => {
            let text =
                std::fs::read_to_string("/proc/cpuinfo").context("cannot read /proc/cpuinfo")?;
            let cpu = ya_runtime_vm::commands::offer::parse_cpuinfo(&text)
                .context("/proc/cpuinfo names no CPU vendor")?;
            let json = serde_json::to_string(&ya_runtime_vm::commands::offer::template(&cpu))
                .context("cannot encode the offer template")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")
                .and_then(|()| out.flush())
                .context("cannot write the offer template to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
