//! The command line, as yagna's exe-unit passes it: global options first, then the subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Which vsock transport to use (`--vsock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VsockRequest {
    /// The kernel's where it can be opened, else vhost-device-vsock.
    #[default]
    Auto,
    /// The kernel's vhost-vsock, or an error.
    Kernel,
    /// vhost-device-vsock.
    User,
}

/// Provider-side Golem runtime that runs GVMI images in QEMU virtual machines.
#[derive(Debug, Parser)]
#[command(name = "ya-runtime-vm", version, about)]
pub struct Cli {
    /// The activity's working directory (deployment.json and volume directories live here).
    #[arg(long, global = true)]
    pub workdir: Option<PathBuf>,
    /// The image: a path, file:// or http(s):// URL, or hash:sha3:<hex>:<url>.
    #[arg(long, global = true)]
    pub task_package: Option<String>,
    /// Virtual CPUs of the VM.
    #[arg(long, global = true, default_value_t = 1)]
    pub cpu_cores: u32,
    /// Memory of the VM in GiB.
    #[arg(
        long,
        global = true,
        default_value_t = 0.25,
        allow_negative_numbers = true
    )]
    pub mem_gib: f64,
    /// Storage granted to the activity in GiB.
    #[arg(
        long,
        global = true,
        default_value_t = 0.25,
        allow_negative_numbers = true
    )]
    pub storage_gib: f64,
    /// Where downloaded packages are cached (default: $XDG_CACHE_HOME/ya-runtime-vm).
    #[arg(long, global = true, env = image_loader::cache::CACHE_DIR_ENV)]
    pub cache_dir: Option<PathBuf>,
    /// Largest package `deploy` downloads, in GiB; a server that announces or sends more is
    /// refused.
    #[arg(
        long,
        global = true,
        env = "YA_RUNTIME_VM_MAX_PACKAGE_GIB",
        default_value_t = 32.0,
        allow_negative_numbers = true
    )]
    pub max_package_gib: f64,
    /// Accelerator: auto (KVM where it works, else TCG), kvm, or tcg.
    #[arg(
        long,
        global = true,
        env = "YA_RUNTIME_VM_ACCEL",
        default_value = "auto"
    )]
    pub accel: qemu_config::AccelRequest,
    /// TCG's translation cache in MiB (without KVM): how much host memory QEMU may hold for the
    /// guest code it has translated, on top of the VM's memory. QEMU's own default is an eighth
    /// of the host's RAM, up to 1 GiB, which a guest that keeps making code fills.
    #[arg(
        long,
        global = true,
        env = "YA_RUNTIME_VM_TCG_CACHE_MIB",
        default_value_t = qemu_config::DEFAULT_TCG_CACHE_MIB,
        value_parser = clap::value_parser!(u64).range(8..=4096)
    )]
    pub tcg_cache_mib: u64,
    /// vsock transport: auto (the kernel's vhost-vsock where /dev/vhost-vsock can be opened,
    /// else vhost-device-vsock), kernel, or user (vhost-device-vsock).
    #[arg(
        long,
        global = true,
        env = "YA_RUNTIME_VM_VSOCK",
        value_enum,
        default_value = "auto"
    )]
    pub vsock: VsockRequest,
    /// Directory with the guest kernel and initramfs (default: `runtime/` beside this binary).
    #[arg(long, global = true, env = crate::host::runtime_dir::RUNTIME_DIR_ENV)]
    pub runtime_dir: Option<PathBuf>,
    /// Volumes requested by the ExeScript's deploy command, as JSON.
    #[arg(long, global = true, env = "YA_RUNTIME_VOLUME_OVERRIDE")]
    pub volume_override: Option<String>,
    /// Hostname of the VM.
    #[arg(
        long,
        global = true,
        env = "YA_RUNTIME_HOSTNAME",
        default_value = "golem"
    )]
    pub hostname: String,
    /// Endpoint of the exe-unit's VPN transport.
    #[arg(long, global = true)]
    pub vpn_endpoint: Option<String>,
    /// Endpoint of the exe-unit's internet-access transport.
    #[arg(long, global = true)]
    pub inet_endpoint: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands the exe-unit and people use.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch and check the image, prepare the working directory, print the deploy result.
    Deploy {
        /// Nothing is expected here; the exe-unit passes a bare `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot the VM and serve the runtime API on stdin/stdout.
    Start {
        /// Start arguments (`start-entrypoint` runs the image's entrypoint).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot the VM, run one command, and exit with its exit code.
    Run {
        /// The program to run inside the VM.
        #[arg(long)]
        entrypoint: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the offer template JSON.
    OfferTemplate,
    /// Boot a self-test image and report whether this host can run VMs.
    Test,
}

impl Command {
    /// The subcommand's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Deploy { .. } => "deploy",
            Command::Start { .. } => "start",
            Command::Run { .. } => "run",
            Command::OfferTemplate => "offer-template",
            Command::Test => "test",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_unit_deploy_order() {
        let cli = Cli::try_parse_from([
            "ya-runtime-vm",
            "--workdir",
            "/w",
            "--task-package",
            "/p.gvmi",
            "--cpu-cores",
            "2",
            "--mem-gib",
            "1.5",
            "--storage-gib",
            "4",
            "--hostname",
            "box",
            "deploy",
            "--",
        ])
        .unwrap();
        assert_eq!(cli.workdir.as_deref(), Some(std::path::Path::new("/w")));
        assert_eq!(cli.cpu_cores, 2);
        assert_eq!(cli.mem_gib, 1.5);
        assert_eq!(cli.storage_gib, 4.0);
        assert_eq!(cli.hostname, "box");
        assert!(matches!(cli.command, Command::Deploy { ref args } if args.is_empty()));
    }

    #[test]
    fn start_and_run_forms() {
        let cli = Cli::try_parse_from([
            "x",
            "--workdir",
            "/w",
            "--vpn-endpoint",
            "udp://127.0.0.1:1",
            "start",
            "start-entrypoint",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Start { ref args } if args == &["start-entrypoint"])
        );
        let cli = Cli::try_parse_from([
            "x",
            "--workdir",
            "/w",
            "run",
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            "echo hi",
        ])
        .unwrap();
        match cli.command {
            Command::Run { entrypoint, args } => {
                assert_eq!(entrypoint, "/bin/sh");
                assert_eq!(args, ["-c", "echo hi"]);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["x", "test"]).unwrap();
        assert_eq!(cli.cpu_cores, 1);
        assert_eq!(cli.mem_gib, 0.25);
        assert_eq!(cli.storage_gib, 0.25);
        assert_eq!(cli.command.name(), "test");
    }
}
