//! Transfers as the exe-unit does them for a VM activity: one side is `container:/path`, which
//! must lie inside a volume and maps to that volume's host directory; the other is a host file
//! (`file:///abs`, or a plain path, taken relative to the data directory).

use std::path::{Component, Path, PathBuf};

/// A volume: its path in the guest and its host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Path in the guest, e.g. `/golem/input`.
    pub guest: String,
    /// Host directory.
    pub host: PathBuf,
}

/// The host path behind a `container:` path, or the error the exe-unit gives.
pub fn container_to_host(path: &str, volumes: &[Volume]) -> Result<PathBuf, String> {
    let clean = Path::new(path);
    if !clean.is_absolute() || clean.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "container path {path} must be absolute and free of '..'"
        ));
    }
    volumes
        .iter()
        .filter_map(|v| {
            let rest = clean.strip_prefix(&v.guest).ok()?;
            Some((v.guest.len(), v.host.join(rest)))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, host)| host)
        .ok_or_else(|| format!("container path {path} is not inside any volume of the image"))
}

/// Where a transfer's side points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path in the guest.
    Container(String),
    /// A host file.
    Host(PathBuf),
}

/// Parses one side of a transfer.
pub fn location(text: &str, data_dir: &Path) -> Result<Location, String> {
    if let Some(p) = text.strip_prefix("container:") {
        return Ok(Location::Container(p.to_string()));
    }
    if let Some(p) = text.strip_prefix("file://") {
        return Ok(Location::Host(PathBuf::from(p)));
    }
    if text.contains("://") {
        return Err(format!(
            "{text}: the local runner transfers files only (container:, file:// or a path)"
        ));
    }
    Ok(Location::Host(data_dir.join(text)))
}

/// The (source, destination) host paths of a transfer with exactly one `container:` side.
pub fn plan(
    from: &str,
    to: &str,
    data_dir: &Path,
    volumes: &[Volume],
) -> Result<(PathBuf, PathBuf), String> {
    match (location(from, data_dir)?, location(to, data_dir)?) {
        (Location::Host(src), Location::Container(dst)) => {
            Ok((src, container_to_host(&dst, volumes)?))
        }
        (Location::Container(src), Location::Host(dst)) => {
            Ok((container_to_host(&src, volumes)?, dst))
        }
        _ => Err(format!(
            "transfer {from} -> {to}: exactly one side must be container:/…"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols() -> Vec<Volume> {
        vec![
            Volume {
                guest: "/golem/input".into(),
                host: "/w/vol-a".into(),
            },
            Volume {
                guest: "/golem/input/deep".into(),
                host: "/w/vol-b".into(),
            },
        ]
    }

    #[test]
    fn maps_into_the_innermost_volume() {
        assert_eq!(
            container_to_host("/golem/input/x.txt", &vols()).unwrap(),
            Path::new("/w/vol-a/x.txt")
        );
        assert_eq!(
            container_to_host("/golem/input/deep/y", &vols()).unwrap(),
            Path::new("/w/vol-b/y")
        );
        // A prefix of a name is not a parent directory.
        assert!(container_to_host("/golem/inputs/z", &vols()).is_err());
        let e = container_to_host("/etc/passwd", &vols()).unwrap_err();
        assert_eq!(
            e,
            "container path /etc/passwd is not inside any volume of the image"
        );
        assert!(container_to_host("/golem/input/../../etc", &vols()).is_err());
        assert!(container_to_host("golem/input/x", &vols()).is_err());
    }

    #[test]
    fn plans_either_direction() {
        let d = Path::new("/data");
        assert_eq!(
            plan("in.txt", "container:/golem/input/in.txt", d, &vols()).unwrap(),
            (
                PathBuf::from("/data/in.txt"),
                PathBuf::from("/w/vol-a/in.txt")
            )
        );
        assert_eq!(
            plan("container:/golem/input/o", "file:///tmp/o", d, &vols()).unwrap(),
            (PathBuf::from("/w/vol-a/o"), PathBuf::from("/tmp/o"))
        );
        assert!(plan("a", "b", d, &vols()).is_err());
        assert!(plan("http://x/y", "container:/golem/input/y", d, &vols())
            .unwrap_err()
            .contains("files only"));
    }
}
