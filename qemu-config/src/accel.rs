//! Choosing the accelerator: KVM only where it will really work (`/dev/kvm` opens read-write
//! and the CPU advertises `vmx` or `svm`), TCG otherwise; an explicit request overrides.

use std::fmt;
use std::str::FromStr;

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for (`--accel`, or the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelRequest {
    /// KVM where it works, else TCG.
    #[default]
    Auto,
    /// KVM, or an error.
    Kvm,
    /// TCG.
    Tcg,
}

impl FromStr for AccelRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: use auto, kvm or tcg"
            )),
        }
    }
}

/// What the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProbe {
    /// `/dev/kvm` opened read-write.
    pub kvm_device: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm`.
    pub cpu_virt: bool,
}

impl HostProbe {
    /// Looks at this host.
    pub fn probe() -> Self {
        let kvm_device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            kvm_device,
            cpu_virt: cpu_has_virt(&cpuinfo),
        }
    }
}

/// Whether a `/proc/cpuinfo` text lists `vmx` or `svm` among the flags.
pub fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// The outcome: the accelerator, and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator to use.
    pub accel: Accel,
    /// A sentence saying why.
    pub reason: String,
}

/// Chooses the accelerator, or explains why the requested one cannot be had.
pub fn choose_accel(request: AccelRequest, host: HostProbe) -> Result<AccelChoice, String> {
    let kvm_ok = host.kvm_device && host.cpu_virt;
    let why_not = if !host.kvm_device {
        "/dev/kvm cannot be opened read-write"
    } else {
        "the CPU does not advertise vmx or svm (nested virtualisation without hardware help)"
    };
    match request {
        AccelRequest::Tcg => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "TCG as requested".into(),
        }),
        AccelRequest::Kvm if kvm_ok => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason: "KVM as requested".into(),
        }),
        AccelRequest::Kvm => Err(format!("KVM was requested, but {why_not}")),
        AccelRequest::Auto if kvm_ok => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason: "KVM: /dev/kvm is usable and the CPU has hardware virtualisation".into(),
        }),
        AccelRequest::Auto => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: format!("TCG (software emulation, slow): {why_not}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: HostProbe = HostProbe {
        kvm_device: true,
        cpu_virt: true,
    };
    const NO_DEV: HostProbe = HostProbe {
        kvm_device: false,
        cpu_virt: true,
    };
    const NO_VIRT: HostProbe = HostProbe {
        kvm_device: true,
        cpu_virt: false,
    };

    #[test]
    fn auto_takes_kvm_only_when_it_works() {
        assert_eq!(
            choose_accel(AccelRequest::Auto, BOTH).unwrap().accel,
            Accel::Kvm
        );
        let c = choose_accel(AccelRequest::Auto, NO_DEV).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("/dev/kvm"));
        let c = choose_accel(AccelRequest::Auto, NO_VIRT).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("vmx or svm"));
    }

    #[test]
    fn explicit_requests() {
        assert_eq!(
            choose_accel(AccelRequest::Tcg, BOTH).unwrap().accel,
            Accel::Tcg
        );
        assert_eq!(
            choose_accel(AccelRequest::Kvm, BOTH).unwrap().accel,
            Accel::Kvm
        );
        assert!(choose_accel(AccelRequest::Kvm, NO_VIRT)
            .unwrap_err()
            .contains("vmx"));
        assert!(choose_accel(AccelRequest::Kvm, NO_DEV)
            .unwrap_err()
            .contains("/dev/kvm"));
    }

    #[test]
    fn parses_requests_and_cpuinfo() {
        assert_eq!("KVM".parse::<AccelRequest>(), Ok(AccelRequest::Kvm));
        assert_eq!("auto".parse::<AccelRequest>(), Ok(AccelRequest::Auto));
        assert!("hvf".parse::<AccelRequest>().is_err());
        assert!(cpu_has_virt("processor : 0\nflags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_virt("flags : fpu svm\n"));
        assert!(!cpu_has_virt("flags : fpu vmxnet\nvmx\n"));
    }
}
