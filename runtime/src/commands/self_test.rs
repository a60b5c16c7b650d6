//! `test`: the provider's installation check. Boots the self-test image shipped in the runtime
//! dir exactly as an activity boots (same accelerator choice, vsock transport, virtiofsd, QEMU
//! options), runs a command that writes through a volume, checks the answer on both sides, and
//! reports. Every step has a time limit; a missing piece is named with what to do about it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qemu_config::{AccelRequest, HostProbe};
use serde::Serialize;

use crate::agent::Events;
use crate::commands::run::{next_event, process_for, ProcessEvent};
use crate::deploy::{self, DeployRequest};
use crate::deployment::{Deployment, Resources};
use crate::host::process::{find_tool, on_path};
use crate::vm::{RunningVm, VmOptions};

/// The image in the runtime dir.
pub const IMAGE: &str = "self-test.gvmi";
/// What the probe prints and writes.
const ANSWER: &str = "42";
/// The probe: arithmetic in the guest's shell, written to the volume and read back.
const PROBE: &str = "echo $((6 * 7)) > /golem/output/probe && cat /golem/output/probe";
/// How long the probe may run once the VM is up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The result, printed as JSON on stdout.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether everything worked.
    pub ok: bool,
    /// The accelerator used (`kvm`, `tcg`), once chosen.
    pub accel: Option<String>,
    /// Milliseconds from the start of the boot to the agent's answer.
    pub boot_ms: Option<u64>,
    /// Milliseconds for the whole test.
    pub total_ms: u64,
    /// What went wrong.
    pub error: Option<String>,
}

/// Problems found before booting: what is missing and what to do.
pub fn preflight(
    opts: &VmOptions,
    request: AccelRequest,
    host: &HostProbe,
    kvm_present: bool,
) -> anyhow::Result<()> {
    if request == AccelRequest::Auto && kvm_present && host.cpu_virt && !host.kvm_device {
        bail!(
            "this host has KVM, but /dev/kvm cannot be opened read-write by this user: add the \
             user to the kvm group (or pass --accel tcg to test the slow path on purpose)"
        );
    }
    if on_path("qemu-system-x86_64").is_none() {
        bail!(
            "qemu-system-x86_64 is not on PATH: install QEMU (Debian: apt install qemu-system-x86)"
        );
    }
    find_tool("virtiofsd", &opts.runtime_dir.dir)?;
    if !opts.runtime_dir.dir.join(IMAGE).is_file() {
        bail!(
            "runtime directory {}: no {IMAGE}; build it with scripts/build-runtime.sh",
            opts.runtime_dir.dir.display()
        );
    }
    Ok(())
}

/// Boots the self-test image and runs the probe; `Ok` carries the boot time.
///
/// `resources` are those of the global options, so a provider checks the VM its activities
/// would get (`--cpu-cores`, `--mem-gib`, `--storage-gib`; the defaults otherwise).
pub async fn run(opts: &VmOptions, resources: Resources) -> anyhow::Result<Duration> {
    let scratch = tempfile::Builder::new()
        .prefix("yrv-test-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let workdir = scratch.path().join("work");
    deploy::deploy(&DeployRequest {
        workdir: workdir.clone(),
        package: opts
            .runtime_dir
            .dir
            .join(IMAGE)
            .to_string_lossy()
            .into_owned(),
        cache_dir: scratch.path().join("cache"),
        max_package_bytes: image_loader::loader::DEFAULT_MAX_PACKAGE_BYTES,
        resources,
        hostname: "golem-test".into(),
        volume_override: Default::default(),
    })
    .await
    .context("the self-test image does not deploy")?;
    let d = Deployment::load(&workdir)?;
    let boot = Instant::now();
    let (vm, notes) = RunningVm::start(&d, &workdir, opts).await?;
    let booted = boot.elapsed();
    let result = tokio::time::timeout(PROBE_TIMEOUT, probe(&vm, notes, &d)).await;
    let console = vm.console_tail();
    vm.shutdown().await;
    let out = match result {
        Ok(r) => r?,
        Err(_) => bail!("the probe did not finish within {PROBE_TIMEOUT:?}; console: {console}"),
    };
    if out.trim() != ANSWER {
        bail!("the probe answered {out:?} instead of {ANSWER:?}");
    }
    let volume = d
        .volumes
        .first()
        .map(|v| workdir.join(&v.name).join("probe"))
        .context("the self-test image declares no volume")?;
    let written = std::fs::read_to_string(&volume).unwrap_or_default();
    if written.trim() != ANSWER {
        bail!(
            "the guest's write to its volume did not reach {} (virtio-fs)",
            volume.display()
        );
    }
    Ok(booted)
}

async fn probe(vm: &RunningVm, mut events: Events, d: &Deployment) -> anyhow::Result<String> {
    let args = ["-c".to_string(), PROBE.to_string()];
    let pid = vm
        .agent
        .run(process_for(d, "/bin/sh", &args))
        .await
        .context("the guest cannot run the probe")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let event = next_event(&mut events, pid).await.map_err(|e| {
            anyhow::anyhow!(
                "the VM stopped during the probe: {e}; console: {}",
                vm.console_tail()
            )
        })?;
        match event {
            ProcessEvent::Output(fd, data) => {
                let buf = if fd == 2 { &mut err } else { &mut out };
                // The probe prints a few bytes; a flood is an answer too, just a wrong one.
                if buf.len() < 4096 {
                    buf.extend_from_slice(&data);
                }
            }
            ProcessEvent::Exited(0) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            ProcessEvent::Exited(code) => bail!(
                "the probe exited with {code}: {}",
                String::from_utf8_lossy(&err).trim()
            ),
        }
    }
}

/// Whether this host has KVM at all (the device node exists).
pub fn kvm_present() -> bool {
    Path::new("/dev/kvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::runtime_dir::RuntimeDir;

    #[test]
    fn kvm_present_but_inaccessible_is_named() {
        let opts = VmOptions {
            runtime_dir: RuntimeDir {
                dir: "/nonexistent".into(),
                kernel: "/nonexistent/vmlinux".into(),
                initramfs: "/nonexistent/initramfs.cpio".into(),
            },
            accel: qemu_config::Accel::Tcg,
            tcg_cache_mib: qemu_config::DEFAULT_TCG_CACHE_MIB,
            host_tsc_khz: None,
            vsock: crate::cli::VsockRequest::Auto,
            network: Vec::new(),
        };
        let host = HostProbe {
            kvm_device: false,
            cpu_virt: true,
        };
        let e = preflight(&opts, AccelRequest::Auto, &host, true).unwrap_err();
        assert!(
            e.to_string().contains("add the user to the kvm group"),
            "{e}"
        );
        // Asked for TCG on purpose, or no KVM on the host at all: not this error.
        for (request, present) in [(AccelRequest::Tcg, true), (AccelRequest::Auto, false)] {
            let e = preflight(&opts, request, &host, present).unwrap_err();
            assert!(!e.to_string().contains("kvm group"), "{e}");
        }
    }
}
