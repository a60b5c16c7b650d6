//! The agent's transport: the host kernel's vhost-vsock where `/dev/vhost-vsock` opens (a CID
//! claimed on our own descriptor, which QEMU inherits), else the `vhost-device-vsock` daemon with
//! a socket private to this VM. Either way the host listens before the guest exists.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::Context;
use tokio::process::Command;

use super::kernel_vsock::{self, KernelVsock};
use super::process::{find_tool, start_helper, Helper};
use crate::agent::{guest_socket, AgentListener};
use crate::cli::VsockRequest;

/// The vsock device a VM gets, and what the host holds for it.
pub struct VsockHost {
    /// What QEMU is given.
    pub device: qemu_config::Vsock,
    /// Where the guest's agent connects.
    pub listener: AgentListener,
    /// The host port the guest must call (`yarv.port=`), on the kernel's transport.
    pub agent_port: Option<u32>,
    /// The kernel device QEMU inherits; closed here once QEMU holds it.
    pub inherited: Option<OwnedFd>,
    /// The vhost-device-vsock daemon, on the user-space transport.
    pub helper: Option<Helper>,
}

/// Sets up the transport `request` asks for; sockets go in `scratch`.
pub async fn open(
    request: VsockRequest,
    runtime_dir: &Path,
    scratch: &Path,
) -> anyhow::Result<VsockHost> {
    let device = Path::new(kernel_vsock::DEVICE);
    let kernel = match request {
        VsockRequest::User => None,
        VsockRequest::Auto => KernelVsock::open(device)?,
        VsockRequest::Kernel => Some(KernelVsock::open(device)?.with_context(|| {
            format!(
                "--vsock kernel: {} is missing or not accessible to this user (modprobe \
                 vhost_vsock; check its permissions)",
                kernel_vsock::DEVICE
            )
        })?),
    };
    if let Some(k) = kernel {
        tracing::debug!(
            "kernel vhost-vsock: guest CID {}, host port {}",
            k.cid,
            k.port
        );
        return Ok(VsockHost {
            device: qemu_config::Vsock::Kernel {
                cid: k.cid,
                vhostfd: Some(k.device.as_raw_fd()),
            },
            listener: AgentListener::Vsock {
                listener: k.listener,
                cid: k.cid,
            },
            agent_port: Some(k.port),
            inherited: Some(k.device),
            helper: None,
        });
    }
    let bin = find_tool("vhost-device-vsock", runtime_dir)?;
    let (socket, uds) = (scratch.join("vsock.sock"), scratch.join("vm.vsock"));
    let helper = start_helper(
        "vhost-device-vsock",
        Command::new(bin)
            .args(["--guest-cid", "3", "--socket"])
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds),
        &socket,
    )
    .await?;
    let listener = tokio::net::UnixListener::bind(guest_socket(&uds))
        .context("cannot listen for the guest agent")?;
    Ok(VsockHost {
        device: qemu_config::Vsock::VhostUser { socket },
        listener: AgentListener::Unix(listener),
        agent_port: None,
        inherited: None,
        helper: Some(helper),
    })
}
