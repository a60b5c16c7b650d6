//! The exe-unit's `--volume-override`: the ExeScript deploy command's `volumes`, in either of
//! yagna's forms — a list of paths (all `host`), or a map from path to
//! `{"host":{}}`, `{"ram":{"size":…}}` or `{"storage":{"size":…,"preallocate":…,"errors":…}}`
//! (`VolumeMount`/`Volumes` in golemfactory/ya-client's `exe_script_command.rs`). Sizes are
//! `bytesize` values: `"10GiB"`, `"1024MiB"`, `"1.5 GB"` or a plain byte count.

use std::collections::BTreeMap;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::deploy::volumes::{normalize, VolumeError};

/// How `storage` volumes react to file-system errors (ext4's `errors=`): the boot contract's
/// type, stored in `deployment.json` as `continue`, `remount-ro` or `panic`.
pub use agent_protocol::boot::Ext4Errors;

/// What backs one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A host directory shared with virtio-fs.
    Host,
    /// A tmpfs of this many bytes.
    Ram {
        /// Bytes.
        size: u64,
    },
    /// A disk image of this many bytes in the workdir.
    Storage {
        /// Bytes.
        size: u64,
        /// Bytes to allocate up front (0: sparse).
        preallocate: u64,
        /// `errors=` behaviour, if asked for.
        errors: Option<Ext4Errors>,
    },
}

/// Why an override was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverrideError {
    /// Not one of the two JSON forms, an unknown kind, or a size that does not parse.
    #[error("--volume-override is not a volume list or map: {0}")]
    Syntax(String),
    /// A bad path.
    #[error("--volume-override: {0}")]
    Path(#[from] VolumeError),
    /// `host` on `/`.
    #[error("--volume-override: / cannot be a host volume (use ram or storage)")]
    HostRoot,
    /// Two entries for one path.
    #[error("--volume-override: {0} is given twice")]
    Duplicate(String),
    /// A zero size.
    #[error("--volume-override: the {kind} volume at {path} has size 0")]
    ZeroSize {
        /// `ram` or `storage`.
        kind: &'static str,
        /// Its path.
        path: String,
    },
    /// Preallocating more than the size.
    #[error("--volume-override: the storage volume at {0} preallocates more than its size")]
    Preallocate(String),
    /// An unknown `errors` value.
    #[error("--volume-override: errors {0:?} is not continue, remount-ro or panic")]
    Errors(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum RawMount {
    Host {},
    Ram {
        size: ByteSize,
    },
    Storage {
        size: ByteSize,
        #[serde(default)]
        preallocate: Option<ByteSize>,
        #[serde(default)]
        errors: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVolumes {
    Simple(Vec<String>),
    Detailed(BTreeMap<String, RawMount>),
}

/// Parses and checks an override; returns normalised paths (the root as `/`) and their mounts.
pub fn parse(json: &str) -> Result<BTreeMap<String, Mount>, OverrideError> {
    let raw: RawVolumes =
        serde_json::from_str(json).map_err(|e| OverrideError::Syntax(e.to_string()))?;
    let entries: Vec<(String, RawMount)> = match raw {
        RawVolumes::Simple(paths) => paths.into_iter().map(|p| (p, RawMount::Host {})).collect(),
        RawVolumes::Detailed(map) => map.into_iter().collect(),
    };
    let mut out = BTreeMap::new();
    for (path, raw) in entries {
        let is_root = path.starts_with('/') && path.split('/').all(|p| p.is_empty() || p == ".");
        let key = if is_root {
            "/".to_string()
        } else {
            normalize(&path)?
        };
        let mount = match raw {
            RawMount::Host {} if is_root => return Err(OverrideError::HostRoot),
            RawMount::Host {} => Mount::Host,
            RawMount::Ram { size } => Mount::Ram {
                size: nonzero(size, "ram", &key)?,
            },
            RawMount::Storage {
                size,
                preallocate,
                errors,
            } => {
                let size = nonzero(size, "storage", &key)?;
                let preallocate = preallocate.map_or(0, |p| p.as_u64());
                if preallocate > size {
                    return Err(OverrideError::Preallocate(key));
                }
                let errors = match errors.as_deref() {
                    None => None,
                    Some("continue") => Some(Ext4Errors::Continue),
                    Some("remount-ro") => Some(Ext4Errors::RemountRo),
                    Some("panic") => Some(Ext4Errors::Panic),
                    Some(other) => return Err(OverrideError::Errors(other.to_string())),
                };
                Mount::Storage {
                    size,
                    preallocate,
                    errors,
                }
            }
        };
        if out.insert(key.clone(), mount).is_some() {
            return Err(OverrideError::Duplicate(key));
        }
    }
    Ok(out)
}

fn nonzero(size: ByteSize, kind: &'static str, path: &str) -> Result<u64, OverrideError> {
    match size.as_u64() {
        0 => Err(OverrideError::ZeroSize {
            kind,
            path: path.to_string(),
        }),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn ya_clients_simple_example() {
        let v = parse(r#"["/golem/input", "/golem/output"]"#).unwrap();
        assert_eq!(
            v.into_iter().collect::<Vec<_>>(),
            [
                ("/golem/input".to_string(), Mount::Host),
                ("/golem/output".to_string(), Mount::Host)
            ]
        );
    }

    #[test]
    fn ya_clients_detailed_example() {
        let v = parse(
            r#"{
            "/golem/input": { "host": {} },
            "/golem/output": { "host": {} },
            "/storage": { "storage": { "size": "10GiB", "preallocate": "2GiB" } },
            "/": { "ram": { "size": "1024MiB" } }
        }"#,
        )
        .unwrap();
        assert_eq!(v["/golem/input"], Mount::Host);
        assert_eq!(
            v["/storage"],
            Mount::Storage {
                size: 10 * GIB,
                preallocate: 2 * GIB,
                errors: None
            }
        );
        assert_eq!(v["/"], Mount::Ram { size: 1073741824 });
    }

    #[test]
    fn sizes_in_every_form() {
        for (text, want) in [
            (r#""1.5 GB""#, 1_500_000_000),
            ("1048576", 1 << 20),
            (r#""64MiB""#, 64 << 20),
        ] {
            let v = parse(&format!(r#"{{"/r": {{"ram": {{"size": {text}}}}}}}"#)).unwrap();
            assert_eq!(v["/r"], Mount::Ram { size: want }, "{text}");
        }
        let v = parse(r#"{"/s": {"storage": {"size": "1GiB", "errors": "remount-ro"}}}"#).unwrap();
        assert_eq!(
            v["/s"],
            Mount::Storage {
                size: GIB,
                preallocate: 0,
                errors: Some(Ext4Errors::RemountRo)
            }
        );
    }

    #[test]
    fn refusals() {
        let err = |j: &str| parse(j).unwrap_err();
        assert!(matches!(
            err("{\"/a\": {\"nfs\": {}}}"),
            OverrideError::Syntax(_)
        ));
        assert!(matches!(
            err("{\"/a\": {\"ram\": {\"size\": \"lots\"}}}"),
            OverrideError::Syntax(_)
        ));
        assert!(matches!(err("\"/a\""), OverrideError::Syntax(_)));
        assert!(matches!(
            err(r#"["a/b"]"#),
            OverrideError::Path(VolumeError::Relative(_))
        ));
        assert!(matches!(
            err(r#"["/a/../b"]"#),
            OverrideError::Path(VolumeError::DotDot(_))
        ));
        assert_eq!(err(r#"["/"]"#), OverrideError::HostRoot);
        assert_eq!(err(r#"{"/": {"host": {}}}"#), OverrideError::HostRoot);
        assert_eq!(
            err(r#"["/data", "/data/"]"#),
            OverrideError::Duplicate("/data".into())
        );
        assert_eq!(
            err(r#"{"/data": {"host": {}}, "/data/": {"ram": {"size": "1MiB"}}}"#),
            OverrideError::Duplicate("/data".into())
        );
        assert_eq!(
            err(r#"{"/r": {"ram": {"size": 0}}}"#),
            OverrideError::ZeroSize {
                kind: "ram",
                path: "/r".into()
            }
        );
        assert_eq!(
            err(r#"{"/s": {"storage": {"size": "1MiB", "preallocate": "2MiB"}}}"#),
            OverrideError::Preallocate("/s".into())
        );
        assert_eq!(
            err(r#"{"/s": {"storage": {"size": "1MiB", "errors": "ignore"}}}"#),
            OverrideError::Errors("ignore".into())
        );
    }
}
