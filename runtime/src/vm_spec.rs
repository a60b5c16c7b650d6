//! The VM a deployment becomes, as pure data: QEMU's typed configuration, the guest's `yarv.*`
//! kernel parameters and the guest-side mounts, from the deployment, the runtime's options and
//! the host devices already set up for it. No I/O here, so the whole mapping is golden-tested.

use std::path::PathBuf;

use agent_protocol::boot::{self, BootParams};
use agent_protocol::{MountDisk, MountRam, MountVolume};
use qemu_config::{Accel, Console, Disk, DiskAccess, FsShare, Machine, Nic, VmConfig, Vsock};

use crate::agent::client::Mount;
use crate::deployment::Deployment;
use crate::host::scratch_disk::root_layer;

/// The kernel command line before the `yarv.*` words.
const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// Host devices made for this VM, as QEMU is to find them.
#[derive(Debug, Clone)]
pub struct Devices {
    /// The vsock device.
    pub vsock: Vsock,
    /// The host port the agent calls, when the transport gives each VM its own.
    pub agent_port: Option<u32>,
    /// Scratch disks: (serial, path QEMU opens).
    pub scratch_disks: Vec<(String, PathBuf)>,
    /// One virtio-fs share per host volume, in the deployment's order.
    pub shares: Vec<FsShare>,
    /// Network cards, one per exe-unit endpoint.
    pub nics: Vec<Nic>,
    /// Where the console goes.
    pub console: Console,
}

/// The guest's `yarv.*` parameters.
pub fn boot_params(d: &Deployment, agent_port: Option<u32>) -> BootParams {
    BootParams {
        hostname: Some(d.hostname.clone()),
        root: Some(root_layer(&d.root)),
        port: agent_port,
    }
}

/// QEMU's configuration for `d`; the machine follows the accelerator and whether the host's
/// TSC frequency is known ([`Machine::for_host`]).
pub fn vm_config(
    d: &Deployment,
    accel: Accel,
    tcg_cache_mib: u64,
    host_tsc_khz: Option<u64>,
    kernel: PathBuf,
    initrd: PathBuf,
    devices: Devices,
) -> anyhow::Result<VmConfig> {
    let params = boot_params(d, devices.agent_port).render()?;
    // Validated at deploy (finite, positive, bounded): the cast cannot wrap.
    let memory_mib = (d.resources.mem_gib * 1024.0).round() as u64;
    let image = Disk {
        path: d.image.path.clone(),
        serial: boot::IMAGE_SERIAL.into(),
        access: DiskAccess::ReadOnly,
    };
    let scratch = devices
        .scratch_disks
        .into_iter()
        .map(|(serial, path)| Disk {
            path,
            serial,
            access: DiskAccess::Scratch,
        });
    let (machine, tsc_khz) = Machine::for_host(accel, host_tsc_khz);
    Ok(VmConfig {
        accel,
        machine,
        tsc_khz,
        cpus: d.resources.cpu_cores,
        memory_mib,
        kernel,
        initrd,
        cmdline: format!("{BASE_CMDLINE}{params}"),
        disks: std::iter::once(image).chain(scratch).collect(),
        vsock: Some(devices.vsock),
        shares: devices.shares,
        nics: devices.nics,
        console: devices.console,
        free_page_reporting: true,
        tcg_cache_mib,
    })
}

/// The virtio-fs share of each host volume, with its socket in `scratch`.
pub fn shares(d: &Deployment, scratch: &std::path::Path) -> Vec<FsShare> {
    (0..d.volumes.len())
        .map(|i| FsShare {
            socket: scratch.join(format!("fs{i}.sock")),
            tag: boot::volume_tag(i),
        })
        .collect()
}

/// The mounts the guest makes after boot, parents before children whatever their kinds.
pub fn guest_mounts(d: &Deployment) -> Vec<(String, Mount)> {
    let mut mounts: Vec<(String, Mount)> = d
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let m = Mount::Volume(MountVolume {
                tag: boot::volume_tag(i),
                path: v.path.clone(),
            });
            (v.path.clone(), m)
        })
        .chain(d.ram_volumes.iter().map(|r| {
            let m = Mount::Ram(MountRam {
                path: r.path.clone(),
                size: r.size,
            });
            (r.path.clone(), m)
        }))
        .chain(d.storage_volumes.iter().enumerate().map(|(i, s)| {
            let m = Mount::Disk(MountDisk {
                serial: boot::storage_serial(i),
                path: s.path.clone(),
                errors: s
                    .disk
                    .errors
                    .map(|e| e.as_str().to_string())
                    .unwrap_or_default(),
            });
            (s.path.clone(), m)
        }))
        .collect();
    mounts.sort_by(|a, b| a.0.cmp(&b.0));
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deployment with every kind of volume, as `deploy` writes it.
    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "format": crate::deployment::FORMAT_VERSION,
            "image": {"path": "/cache/img,1.gvmi", "digest": null, "size": 4096},
            "config": {"Env": ["PATH=/bin"], "Volumes": {"/golem/output": {}, "/golem/input": {}}},
            "user": {"user": {"id": 0}, "group": null},
            "volumes": [
                {"name": "vol-a", "path": "/golem/input"},
                {"name": "vol-b", "path": "/golem/output"}
            ],
            "ram_volumes": [{"path": "/golem/input/cache", "size": 1048576}],
            "storage_volumes": [{"path": "/data", "disk": {"size": 67108864, "preallocate": 0, "errors": "panic"}}],
            "root": {"disk": {"size": 268435456, "preallocate": 0, "errors": null}},
            "resources": {"cpu_cores": 2, "mem_gib": 0.5, "storage_gib": 0.25},
            "hostname": "node-1"
        }))
        .unwrap()
    }

    #[test]
    fn golden_qemu_command_line() {
        let d = deployment();
        let scratch = std::path::Path::new("/tmp/yrv-x");
        let devices = Devices {
            vsock: Vsock::VhostUser {
                socket: scratch.join("vsock.sock"),
            },
            agent_port: None,
            scratch_disks: vec![
                (boot::ROOT_SERIAL.into(), "/dev/fd/7".into()),
                (boot::storage_serial(0), "/dev/fd/8".into()),
            ],
            shares: shares(&d, scratch),
            nics: vec![Nic {
                mac: [2, 0x59, 1, 0xaa, 0xbb, 0xcc],
                socket: 10,
            }],
            console: Console::Socket(9),
        };
        let args = vm_config(
            &d,
            Accel::Tcg,
            64,
            Some(2_596_136),
            "/rt/vmlinux".into(),
            "/rt/initramfs.cpio".into(),
            devices,
        )
        .unwrap()
        .to_args()
        .unwrap()
        .join(" ");
        assert_eq!(
            args,
            "-accel tcg,tb-size=64 -M microvm,x-option-roms=off,isa-serial=on -cpu max,-erms -smp 2 -m 512M \
             -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
             -nodefaults -no-user-config -no-reboot -display none \
             -device virtio-balloon-device,free-page-reporting=on \
             -chardev socket,id=console,fd=9 -serial chardev:console \
             -kernel /rt/vmlinux -initrd /rt/initramfs.cpio \
             -append console=ttyS0 quiet panic=-1 yarv.hostname=node-1 yarv.root=disk reboot=t \
             vmw_vsock_virtio_transport.rx_buffers=128 virtio_blk.queue_depth=256 tsc_early_khz=2596136 \
             -drive file=/cache/img,,1.gvmi,if=none,id=disk0,format=raw,readonly=on \
             -device virtio-blk-device,drive=disk0,serial=image \
             -drive file=/dev/fd/7,if=none,id=disk1,format=raw,cache.no-flush=on,werror=report,rerror=report \
             -device virtio-blk-device,drive=disk1,serial=root \
             -drive file=/dev/fd/8,if=none,id=disk2,format=raw,cache.no-flush=on,werror=report,rerror=report \
             -device virtio-blk-device,drive=disk2,serial=data0 \
             -chardev socket,id=vsock,path=/tmp/yrv-x/vsock.sock -device vhost-user-vsock-device,chardev=vsock \
             -chardev socket,id=fs0,path=/tmp/yrv-x/fs0.sock -device vhost-user-fs-device,chardev=fs0,tag=vol0 \
             -chardev socket,id=fs1,path=/tmp/yrv-x/fs1.sock -device vhost-user-fs-device,chardev=fs1,tag=vol1 \
             -netdev dgram,id=net0,local.type=fd,local.str=10 \
             -device virtio-net-device,netdev=net0,mac=02:59:01:aa:bb:cc"
        );
    }

    #[test]
    fn the_kernel_transport_names_its_port_and_the_guest_mounts_parents_first() {
        let d = deployment();
        let p = boot_params(&d, Some(52_000));
        assert_eq!(
            p.render().unwrap(),
            " yarv.hostname=node-1 yarv.root=disk yarv.port=52000"
        );
        let order: Vec<String> = guest_mounts(&d).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            order,
            [
                "/data",
                "/golem/input",
                "/golem/input/cache",
                "/golem/output"
            ]
        );
        match &guest_mounts(&d)[0].1 {
            Mount::Disk(m) => {
                assert_eq!((m.serial.as_str(), m.errors.as_str()), ("data0", "panic"))
            }
            other => panic!("{other:?}"),
        }
    }
}
