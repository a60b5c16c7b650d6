//! Volume planning: the image's `VOLUME` paths, normalised and checked, each with a stable name
//! for its host directory (`<workdir>/<name>`).

use image_loader::HashAlgo;
use serde::{Deserialize, Serialize};

/// One host directory shared into the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Directory name under the workdir, `vol-<16 hex digits>`.
    pub name: String,
    /// Absolute, normalised path inside the VM.
    pub path: String,
}

/// Why a volume path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    /// Not absolute.
    #[error("volume path {0:?} is not absolute")]
    Relative(String),
    /// Contains `..`.
    #[error("volume path {0:?} contains '..'")]
    DotDot(String),
    /// Is the root.
    #[error("volume path {0:?} is the root directory, which cannot be a host volume")]
    Root(String),
    /// Contains a NUL or control character.
    #[error("volume path {0:?} contains a control character")]
    Control(String),
    /// Is, or is under, a directory the init mounts itself.
    #[error("volume path {0:?} is reserved: /proc, /sys and /dev belong to the guest's kernel")]
    Reserved(String),
}

/// Directories the guest's init mounts itself (procfs, sysfs, devtmpfs): no volume may be at
/// or under them.
pub const RESERVED: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Most volumes of all kinds (host, `ram`, `storage`) one activity may have. Host and storage
/// volumes are a PCI device each, and the VM has slots for a few dozen devices in all.
pub const MAX_VOLUMES: usize = 16;

/// `path` with duplicate and trailing slashes and `.` components removed.
pub fn normalize(path: &str) -> Result<String, VolumeError> {
    if path.chars().any(char::is_control) {
        return Err(VolumeError::Control(path.to_string()));
    }
    if !path.starts_with('/') {
        return Err(VolumeError::Relative(path.to_string()));
    }
    let mut out = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(VolumeError::DotDot(path.to_string()));
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        return Err(VolumeError::Root(path.to_string()));
    }
    let under = |r: &str| {
        out == r
            || out
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if RESERVED.iter().any(|r| under(r)) {
        return Err(VolumeError::Reserved(path.to_string()));
    }
    Ok(out)
}

/// The stable directory name of the volume at the normalised `path`.
pub fn volume_name(path: &str) -> String {
    let mut h = HashAlgo::Sha3_256.hasher();
    h.update(path.as_bytes());
    format!("vol-{}", &h.finish().hex()[..16])
}

/// Volumes for the given paths: normalised, de-duplicated, parents before children.
pub fn plan<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<Vec<Volume>, VolumeError> {
    let mut normalized = paths
        .into_iter()
        .map(normalize)
        .collect::<Result<Vec<_>, _>>()?;
    normalized.sort();
    normalized.dedup();
    Ok(normalized
        .into_iter()
        .map(|path| Volume {
            name: volume_name(&path),
            path,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(normalize("/golem/input").unwrap(), "/golem/input");
        assert_eq!(normalize("//golem/./input//").unwrap(), "/golem/input");
        assert_eq!(
            normalize("golem").unwrap_err(),
            VolumeError::Relative("golem".into())
        );
        assert_eq!(
            normalize("/a/../b").unwrap_err(),
            VolumeError::DotDot("/a/../b".into())
        );
        assert_eq!(normalize("/").unwrap_err(), VolumeError::Root("/".into()));
        assert_eq!(
            normalize("/./").unwrap_err(),
            VolumeError::Root("/./".into())
        );
        assert!(matches!(normalize("/a\nb"), Err(VolumeError::Control(_))));
        assert!(matches!(normalize("/a\0b"), Err(VolumeError::Control(_))));
        for reserved in ["/proc", "//proc/", "/sys/fs/x", "/dev/shm"] {
            assert_eq!(
                normalize(reserved).unwrap_err(),
                VolumeError::Reserved(reserved.into())
            );
        }
        assert_eq!(normalize("/process").unwrap(), "/process");
        assert_eq!(normalize("/devices/x").unwrap(), "/devices/x");
    }

    #[test]
    fn plans_sorted_unique_stable() {
        let v = plan(["/golem/output", "/golem/input/", "/golem/input", "/golem"]).unwrap();
        let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["/golem", "/golem/input", "/golem/output"]);
        assert_eq!(v[1].name, volume_name("/golem/input"));
        assert_eq!(v[1].name.len(), 4 + 16);
        assert_ne!(v[1].name, v[2].name);
        assert_eq!(plan(["/golem/input"]).unwrap()[0].name, v[1].name);
    }
}
