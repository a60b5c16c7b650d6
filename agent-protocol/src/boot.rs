//! The boot contract between the host and the guest's init, defined once for both sides: the
//! virtio serials and virtio-fs tags the host gives its devices, and the `yarv.*` words of the
//! kernel command line. The host renders [`BootParams`]; the guest parses the same type from
//! `/proc/cmdline`.

use std::fmt::Write;

/// The virtio serial of the read-only image disk.
pub const IMAGE_SERIAL: &str = "image";
/// The virtio serial of the disk that holds the root's writable layer.
pub const ROOT_SERIAL: &str = "root";

/// The virtio serial of the `i`th `storage` volume's disk.
pub fn storage_serial(i: usize) -> String {
    format!("data{i}")
}

/// The virtio-fs tag of the `i`th host volume.
pub fn volume_tag(i: usize) -> String {
    format!("vol{i}")
}

/// Longest hostname the guest takes.
pub const MAX_HOSTNAME: usize = 64;

/// What an ext4 file system does on an error (its `errors=` mount option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Ext4Errors {
    /// `continue`.
    Continue,
    /// `remount-ro` (ext4's default).
    RemountRo,
    /// `panic`.
    Panic,
}

impl Ext4Errors {
    /// The option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::RemountRo => "remount-ro",
            Self::Panic => "panic",
        }
    }

    /// The behaviour named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "continue" => Some(Self::Continue),
            "remount-ro" => Some(Self::RemountRo),
            "panic" => Some(Self::Panic),
            _ => None,
        }
    }
}

/// Where the root's writable layer lives (`yarv.root=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLayer {
    /// `disk[:<errors>]`: the ext4 file system on the disk with serial [`ROOT_SERIAL`].
    Disk(Option<Ext4Errors>),
    /// `ram:<bytes>`: a tmpfs of that size.
    Ram(u64),
}

/// The `yarv.*` kernel parameters. Absent ones take the guest's defaults: hostname `golem`, the
/// root's layer in a tmpfs of the kernel's default size, the agent on
/// [`crate::AGENT_PORT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `yarv.hostname=`.
    pub hostname: Option<String>,
    /// `yarv.root=`.
    pub root: Option<RootLayer>,
    /// `yarv.port=`: the host's vsock port for the agent.
    pub port: Option<u32>,
}

/// A `yarv.*` word that cannot be rendered or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootParamError {
    /// A hostname that is empty, too long or not one word.
    #[error("hostname {0:?} is not 1 to {MAX_HOSTNAME} bytes of one word")]
    Hostname(String),
    /// `yarv.root=` with a value that is neither form.
    #[error("yarv.root={0:?} is neither \"disk[:<errors>]\" nor \"ram:<bytes>\"")]
    Root(String),
    /// `yarv.port=` with a value that is not a usable port.
    #[error("yarv.port={0:?} is not a vsock port")]
    Port(String),
}

fn hostname_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOSTNAME
        && !h.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The value of `key=` on a kernel command line (the last one wins, as in the kernel).
fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

impl BootParams {
    /// The words for the kernel command line, each preceded by a space.
    pub fn render(&self) -> Result<String, BootParamError> {
        let mut out = String::new();
        if let Some(h) = &self.hostname {
            if !hostname_ok(h) {
                return Err(BootParamError::Hostname(h.clone()));
            }
            let _ = write!(out, " yarv.hostname={h}");
        }
        match self.root {
            Some(RootLayer::Disk(None)) => out.push_str(" yarv.root=disk"),
            Some(RootLayer::Disk(Some(e))) => {
                let _ = write!(out, " yarv.root=disk:{}", e.as_str());
            }
            Some(RootLayer::Ram(0)) => return Err(BootParamError::Root("ram:0".into())),
            Some(RootLayer::Ram(bytes)) => {
                let _ = write!(out, " yarv.root=ram:{bytes}");
            }
            None => {}
        }
        if let Some(p) = self.port {
            if !port_ok(p) {
                return Err(BootParamError::Port(p.to_string()));
            }
            let _ = write!(out, " yarv.port={p}");
        }
        Ok(out)
    }

    /// The parameters on `cmdline`. A value that does not parse is an error, never a silent
    /// default.
    pub fn parse(cmdline: &str) -> Result<Self, BootParamError> {
        let hostname = match param(cmdline, "yarv.hostname") {
            None => None,
            Some(h) if hostname_ok(h) => Some(h.to_string()),
            Some(h) => return Err(BootParamError::Hostname(h.into())),
        };
        let root = match param(cmdline, "yarv.root") {
            None => None,
            Some("disk") => Some(RootLayer::Disk(None)),
            Some(v) => Some(parse_root(v).ok_or_else(|| BootParamError::Root(v.into()))?),
        };
        let port = match param(cmdline, "yarv.port") {
            None => None,
            Some(p) => Some(
                p.parse()
                    .ok()
                    .filter(|&p| port_ok(p))
                    .ok_or_else(|| BootParamError::Port(p.into()))?,
            ),
        };
        Ok(Self {
            hostname,
            root,
            port,
        })
    }
}

fn port_ok(p: u32) -> bool {
    p != 0 && p != u32::MAX
}

fn parse_root(v: &str) -> Option<RootLayer> {
    if let Some(e) = v.strip_prefix("disk:") {
        return Ext4Errors::parse(e).map(|e| RootLayer::Disk(Some(e)));
    }
    let bytes: u64 = v.strip_prefix("ram:")?.parse().ok()?;
    (bytes > 0).then_some(RootLayer::Ram(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_what_the_guest_parses() {
        let p = BootParams {
            hostname: Some("box".into()),
            root: Some(RootLayer::Disk(Some(Ext4Errors::Panic))),
            port: Some(1234),
        };
        let words = p.render().unwrap();
        assert_eq!(
            words,
            " yarv.hostname=box yarv.root=disk:panic yarv.port=1234"
        );
        let cmdline = format!("console=ttyS0 quiet{words}");
        assert_eq!(BootParams::parse(&cmdline).unwrap(), p);
        assert_eq!(
            BootParams::parse("console=ttyS0").unwrap(),
            BootParams::default()
        );
        // The last word wins, as in the kernel.
        let p = BootParams::parse("yarv.root=disk yarv.root=ram:4096").unwrap();
        assert_eq!(p.root, Some(RootLayer::Ram(4096)));
    }

    #[test]
    fn bad_values_are_errors_on_both_sides() {
        for bad in [
            "yarv.root=ram:0",
            "yarv.root=ram:x",
            "yarv.root=disk:ignore",
            "yarv.root=nfs",
            "yarv.port=0",
            "yarv.port=4294967295",
            "yarv.port=-1",
            "yarv.hostname=",
        ] {
            assert!(BootParams::parse(bad).is_err(), "{bad}");
        }
        let long = "h".repeat(MAX_HOSTNAME + 1);
        assert!(BootParams::parse(&format!("yarv.hostname={long}")).is_err());
        for p in [
            BootParams {
                hostname: Some("two words".into()),
                ..Default::default()
            },
            BootParams {
                root: Some(RootLayer::Ram(0)),
                ..Default::default()
            },
            BootParams {
                port: Some(0),
                ..Default::default()
            },
        ] {
            assert!(p.render().is_err(), "{p:?}");
        }
    }

    proptest! {
        #[test]
        fn any_rendered_params_parse_back(
            hostname in proptest::option::of("[a-z0-9-]{1,64}"),
            root in proptest::option::of(prop_oneof![
                Just(RootLayer::Disk(None)),
                Just(RootLayer::Disk(Some(Ext4Errors::Continue))),
                Just(RootLayer::Disk(Some(Ext4Errors::RemountRo))),
                (1u64..).prop_map(RootLayer::Ram),
            ]),
            port in proptest::option::of(1u32..u32::MAX),
        ) {
            let p = BootParams { hostname, root, port };
            prop_assert_eq!(BootParams::parse(&p.render().unwrap()).unwrap(), p);
        }

        #[test]
        fn arbitrary_command_lines_never_panic(cmdline in ".{0,200}") {
            let _ = BootParams::parse(&cmdline);
        }
    }
}
