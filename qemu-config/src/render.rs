//! Rendering a [`VmConfig`] to QEMU's argv.

use std::collections::HashSet;
use std::path::Path;

use crate::{Accel, ConfigError, Console, DiskAccess, Machine, VmConfig, Vsock, MIN_MEMORY_MIB};

/// A value inside a QEMU `key=value,…` option: commas doubled, control characters refused.
fn opt_value(what: &'static str, value: &str) -> Result<String, ConfigError> {
    if value.chars().any(char::is_control) {
        return Err(ConfigError::BadValue {
            what,
            value: value.into(),
        });
    }
    Ok(value.replace(',', ",,"))
}

fn opt_path(what: &'static str, p: &Path) -> Result<String, ConfigError> {
    opt_value(what, &p.to_string_lossy())
}

/// A name QEMU must take as it is (tags): no commas at all.
fn plain(what: &'static str, value: &str) -> Result<String, ConfigError> {
    if value.is_empty() || value.contains(',') || value.chars().any(char::is_control) {
        return Err(ConfigError::BadValue {
            what,
            value: value.into(),
        });
    }
    Ok(value.to_string())
}

impl Machine {
    fn arg(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            // No option ROMs to scan; the ISA serial port is the console.
            Machine::Microvm => "microvm,x-option-roms=off,isa-serial=on",
        }
    }

    /// The virtio transport suffix of device names: PCI on q35, MMIO on microvm.
    fn device(self, base: &str) -> String {
        match self {
            Machine::Q35 => format!("{base}-pci"),
            Machine::Microvm => format!("{base}-device"),
        }
    }
}

/// A vhost-user device: the chardev to its daemon's socket, and the device on it.
fn vhost_user(
    m: Machine,
    id: &str,
    device: &str,
    socket: &Path,
    extra: &str,
) -> Result<[String; 4], ConfigError> {
    Ok([
        "-chardev".into(),
        format!(
            "socket,id={id},path={}",
            opt_path("vhost-user socket", socket)?
        ),
        "-device".into(),
        format!("{},chardev={id}{extra}", m.device(device)),
    ])
}

impl VmConfig {
    /// The kernel command line with what the machine and the clock need.
    fn full_cmdline(&self) -> String {
        let mut line = self.cmdline.clone();
        if self.machine == Machine::Microvm {
            line.push_str(" reboot=t ");
            line.push_str(crate::MICROVM_QUEUE_PARAMS);
        }
        if let Some(khz) = self.tsc_khz {
            line.push_str(&format!(" tsc_early_khz={khz}"));
        }
        line
    }

    /// QEMU's argv (without the program name).
    pub fn to_args(&self) -> Result<Vec<String>, ConfigError> {
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::TooLittleMemory(self.memory_mib));
        }
        let m = self.machine;
        let mut a: Vec<String> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));
        let (accel, cpu) = match self.accel {
            Accel::Tcg if self.tcg_cache_mib == 0 => return Err(ConfigError::NoTcgCache),
            Accel::Tcg => (
                format!("tcg,tb-size={}", self.tcg_cache_mib),
                crate::TCG_CPU_MODEL,
            ),
            Accel::Kvm => ("kvm".into(), crate::KVM_CPU_MODEL),
        };
        push(&["-accel", &accel, "-M", m.arg(), "-cpu", cpu]);
        push(&[
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &format!("{}M", self.memory_mib),
        ]);
        // vhost-user daemons map guest memory: it must be shareable.
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.memory_mib
            ),
            "-numa",
            "node,memdev=mem",
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ]);
        if self.free_page_reporting {
            push(&[
                "-device",
                &format!("{},free-page-reporting=on", m.device("virtio-balloon")),
            ]);
        }
        // A chardev, not `-serial file:…`: that shorthand takes the rest of its value as the
        // path and cannot carry a comma.
        match &self.console {
            Console::File(p) => push(&[
                "-chardev",
                &format!("file,id=console,path={}", opt_path("console log", p)?),
                "-serial",
                "chardev:console",
            ]),
            Console::Socket(fd) => push(&[
                "-chardev",
                &format!("socket,id=console,fd={fd}"),
                "-serial",
                "chardev:console",
            ]),
            Console::None => push(&["-serial", "none"]),
        }
        push(&["-kernel", &self.kernel.to_string_lossy()]);
        push(&["-initrd", &self.initrd.to_string_lossy()]);
        if self.cmdline.chars().any(char::is_control) {
            return Err(ConfigError::BadValue {
                what: "kernel command line",
                value: self.cmdline.clone(),
            });
        }
        push(&["-append", &self.full_cmdline()]);
        for (i, d) in self.disks.iter().enumerate() {
            let access = match d.access {
                DiskAccess::ReadOnly => ",readonly=on",
                DiskAccess::Scratch => ",cache.no-flush=on,werror=report,rerror=report",
            };
            push(&[
                "-drive",
                &format!(
                    "file={},if=none,id=disk{i},format=raw{access}",
                    opt_path("disk", &d.path)?
                ),
                "-device",
                &format!(
                    "{},drive=disk{i},serial={}",
                    m.device("virtio-blk"),
                    plain("disk serial", &d.serial)?
                ),
            ]);
        }
        match &self.vsock {
            Some(Vsock::Kernel { cid, vhostfd }) => {
                if *cid < 3 || *cid == u32::MAX {
                    return Err(ConfigError::ReservedCid(*cid));
                }
                let fd = vhostfd
                    .map(|fd| format!(",vhostfd={fd}"))
                    .unwrap_or_default();
                push(&[
                    "-device",
                    &format!("{},guest-cid={cid}{fd}", m.device("vhost-vsock")),
                ]);
            }
            Some(Vsock::VhostUser { socket }) => {
                let dev = vhost_user(m, "vsock", "vhost-user-vsock", socket, "")?;
                push(&dev.each_ref().map(String::as_str));
            }
            None => {}
        }
        let mut tags = HashSet::new();
        for (i, s) in self.shares.iter().enumerate() {
            if !tags.insert(s.tag.as_str()) {
                return Err(ConfigError::DuplicateTag(s.tag.clone()));
            }
            let tag = format!(",tag={}", plain("virtio-fs tag", &s.tag)?);
            let dev = vhost_user(m, &format!("fs{i}"), "vhost-user-fs", &s.socket, &tag)?;
            push(&dev.each_ref().map(String::as_str));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            let backend = format!("dgram,id=net{i},local.type=fd,local.str={}", nic.socket);
            let mac = nic
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            // No option ROM on PCI: the guest boots from -kernel, never from the network.
            let rom = match m {
                Machine::Q35 => ",romfile=",
                Machine::Microvm => "",
            };
            push(&[
                "-netdev",
                &backend,
                "-device",
                &format!("{},netdev=net{i},mac={mac}{rom}", m.device("virtio-net")),
            ]);
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::*;

    fn sample(machine: Machine) -> VmConfig {
        VmConfig {
            accel: Accel::Tcg,
            machine,
            cpus: 2,
            memory_mib: 512,
            kernel: "/rt/vmlinux".into(),
            initrd: "/rt/initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
            disks: vec![Disk {
                path: "/cache/img,1.gvmi".into(),
                serial: "image".into(),
                access: DiskAccess::ReadOnly,
            }],
            vsock: Some(Vsock::VhostUser {
                socket: "/run/a/vsock.sock".into(),
            }),
            shares: vec![
                FsShare {
                    socket: "/run/a/fs0.sock".into(),
                    tag: "vol0".into(),
                },
                FsShare {
                    socket: "/run/a/fs1.sock".into(),
                    tag: "vol1".into(),
                },
            ],
            nics: vec![Nic {
                mac: [0x02, 0x59, 0x01, 0xab, 0xcd, 0xef],
                socket: 11,
            }],
            console: Console::File("/run/a/console.log".into()),
            free_page_reporting: false,
            tcg_cache_mib: 64,
            tsc_khz: None,
        }
    }

    fn joined(c: &VmConfig) -> String {
        c.to_args().unwrap().join(" ")
    }

    #[test]
    fn golden_q35() {
        assert_eq!(
            joined(&sample(Machine::Q35)),
            "-accel tcg,tb-size=64 -M q35 -cpu max,-erms -smp 2 -m 512M \
             -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
             -nodefaults -no-user-config -no-reboot -display none \
             -chardev file,id=console,path=/run/a/console.log -serial chardev:console \
             -kernel /rt/vmlinux -initrd /rt/initramfs.cpio.gz -append console=ttyS0 quiet panic=-1 \
             -drive file=/cache/img,,1.gvmi,if=none,id=disk0,format=raw,readonly=on \
             -device virtio-blk-pci,drive=disk0,serial=image \
             -chardev socket,id=vsock,path=/run/a/vsock.sock -device vhost-user-vsock-pci,chardev=vsock \
             -chardev socket,id=fs0,path=/run/a/fs0.sock -device vhost-user-fs-pci,chardev=fs0,tag=vol0 \
             -chardev socket,id=fs1,path=/run/a/fs1.sock -device vhost-user-fs-pci,chardev=fs1,tag=vol1 \
             -netdev dgram,id=net0,local.type=fd,local.str=11 \
             -device virtio-net-pci,netdev=net0,mac=02:59:01:ab:cd:ef,romfile="
        );
    }

    #[test]
    fn golden_microvm_with_kernel_vsock() {
        let mut c = sample(Machine::Microvm);
        c.accel = Accel::Kvm;
        c.vsock = Some(Vsock::Kernel {
            cid: 7,
            vhostfd: None,
        });
        c.shares.truncate(1);
        c.console = Console::None;
        c.disks[0].access = DiskAccess::Scratch;
        c.disks[0].path = PathBuf::from("/dev/fd/9");
        c.free_page_reporting = true;
        c.nics.push(Nic {
            mac: [0x02, 0x59, 0x02, 0, 0, 1],
            socket: 12,
        });
        assert_eq!(
            joined(&c),
            "-accel kvm -M microvm,x-option-roms=off,isa-serial=on -cpu max -smp 2 -m 512M \
             -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
             -nodefaults -no-user-config -no-reboot -display none \
             -device virtio-balloon-device,free-page-reporting=on -serial none \
             -kernel /rt/vmlinux -initrd /rt/initramfs.cpio.gz -append console=ttyS0 quiet panic=-1 reboot=t \
             vmw_vsock_virtio_transport.rx_buffers=128 virtio_blk.queue_depth=256 \
             -drive file=/dev/fd/9,if=none,id=disk0,format=raw,cache.no-flush=on,werror=report,rerror=report \
             -device virtio-blk-device,drive=disk0,serial=image \
             -device vhost-vsock-device,guest-cid=7 \
             -chardev socket,id=fs0,path=/run/a/fs0.sock -device vhost-user-fs-device,chardev=fs0,tag=vol0 \
             -netdev dgram,id=net0,local.type=fd,local.str=11 \
             -device virtio-net-device,netdev=net0,mac=02:59:01:ab:cd:ef \
             -netdev dgram,id=net1,local.type=fd,local.str=12 \
             -device virtio-net-device,netdev=net1,mac=02:59:02:00:00:01"
        );
    }

    #[test]
    fn the_guest_gets_the_tsc_frequency_it_cannot_measure() {
        let mut c = sample(Machine::Microvm);
        c.tsc_khz = Some(2_596_136);
        let args = c.to_args().unwrap();
        let at = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(
            args[at + 1],
            "console=ttyS0 quiet panic=-1 reboot=t \
             vmw_vsock_virtio_transport.rx_buffers=128 virtio_blk.queue_depth=256 \
             tsc_early_khz=2596136"
        );
    }

    #[test]
    fn microvm_unless_tcg_has_no_tsc_frequency() {
        assert_eq!(
            Machine::for_host(Accel::Kvm, None),
            (Machine::Microvm, None)
        );
        assert_eq!(
            Machine::for_host(Accel::Kvm, Some(1)),
            (Machine::Microvm, None)
        );
        assert_eq!(
            Machine::for_host(Accel::Tcg, Some(1)),
            (Machine::Microvm, Some(1))
        );
        assert_eq!(Machine::for_host(Accel::Tcg, None), (Machine::Q35, None));
    }

    #[test]
    fn kernel_vsock_with_an_inherited_device_fd() {
        let mut c = sample(Machine::Q35);
        c.vsock = Some(Vsock::Kernel {
            cid: 41,
            vhostfd: Some(5),
        });
        let args = c.to_args().unwrap();
        let at = args.iter().position(|a| a.contains("vhost-vsock")).unwrap();
        assert_eq!(args[at - 1], "-device");
        assert_eq!(args[at], "vhost-vsock-pci,guest-cid=41,vhostfd=5");
    }

    #[test]
    fn console_to_an_inherited_socket_or_a_file_with_a_comma() {
        let mut c = sample(Machine::Q35);
        c.console = Console::Socket(7);
        let args = joined(&c);
        assert!(
            args.contains("-chardev socket,id=console,fd=7 -serial chardev:console"),
            "{args}"
        );
        c.console = Console::File("/tmp/a,b/console.log".into());
        let args = joined(&c);
        assert!(
            args.contains("-chardev file,id=console,path=/tmp/a,,b/console.log "),
            "{args}"
        );
    }

    #[test]
    fn refusals() {
        let mut c = sample(Machine::Q35);
        c.cpus = 0;
        assert_eq!(c.to_args(), Err(ConfigError::NoCpus));
        let mut c = sample(Machine::Q35);
        c.memory_mib = 32;
        assert_eq!(c.to_args(), Err(ConfigError::TooLittleMemory(32)));
        // QEMU would read 0 as its own default, up to 1 GiB.
        let mut c = sample(Machine::Q35);
        c.tcg_cache_mib = 0;
        assert_eq!(c.to_args(), Err(ConfigError::NoTcgCache));
        c.accel = Accel::Kvm;
        assert!(joined(&c).starts_with("-accel kvm -M q35"));
        let mut c = sample(Machine::Q35);
        c.shares[1].tag = "vol0".into();
        assert_eq!(c.to_args(), Err(ConfigError::DuplicateTag("vol0".into())));
        let mut c = sample(Machine::Q35);
        c.shares[0].tag = "a,b".into();
        assert!(matches!(c.to_args(), Err(ConfigError::BadValue { .. })));
        let mut c = sample(Machine::Q35);
        c.vsock = Some(Vsock::Kernel {
            cid: 2,
            vhostfd: None,
        });
        assert_eq!(c.to_args(), Err(ConfigError::ReservedCid(2)));
        let mut c = sample(Machine::Q35);
        c.vsock = Some(Vsock::Kernel {
            cid: u32::MAX,
            vhostfd: None,
        });
        assert_eq!(c.to_args(), Err(ConfigError::ReservedCid(u32::MAX)));
        let mut c = sample(Machine::Q35);
        c.cmdline = "a\nb".into();
        assert!(matches!(c.to_args(), Err(ConfigError::BadValue { .. })));
    }
}
