//! Resolving the image's `User` inside the guest: numbers are used as they are, names are looked
//! up in the image root's own `/etc/passwd` and `/etc/group`.

use std::os::fd::OwnedFd;

use crate::error::{InitError, Result};
use crate::in_root;

/// Largest passwd or group file read.
const MAX_DB: u64 = 4 * 1024 * 1024;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A database of the image, read inside its root (see [`crate::in_root`]); empty when missing.
fn read_db(root: &OwnedFd, file: &str) -> Result<String> {
    Ok(in_root::read_regular(root, file, MAX_DB)?.unwrap_or_default())
}

/// (name, id, gid-or-members) rows of a colon-separated database.
fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
}

/// Resolves `user` and `group` (empty: root, and the user's primary group) against the image
/// root `root` (a descriptor from [`in_root::open_root`]).
///
/// The image's `/etc/passwd` and `/etc/group` are only needed to the extent names are involved:
/// when one is not a regular file, a name lookup is an error and the rest goes on without it.
pub fn resolve(root: &OwnedFd, user: &str, group: &str) -> Result<Identity> {
    let passwd_read = read_db(root, "etc/passwd");
    let groups_read = read_db(root, "etc/group");
    let by_name = |s: &str| !s.is_empty() && s.parse::<u32>().is_err();
    let passwd = if by_name(user) {
        passwd_read?
    } else {
        passwd_read.unwrap_or_default()
    };
    let groups_db = if by_name(group) {
        groups_read?
    } else {
        groups_read.unwrap_or_default()
    };
    let (uid, name, primary) = if user.is_empty() {
        (0, Some("root".to_string()), Some(0))
    } else if let Ok(uid) = user.parse::<u32>() {
        let entry = rows(&passwd).find(|f| f[2].parse() == Ok(uid));
        (
            uid,
            entry.as_ref().map(|f| f[0].to_string()),
            entry.and_then(|f| f[3].parse().ok()),
        )
    } else {
        let f = rows(&passwd).find(|f| f[0] == user).ok_or_else(|| {
            InitError::invalid(format!("user {user:?} is not in the image's /etc/passwd"))
        })?;
        let uid = f[2]
            .parse()
            .map_err(|_| InitError::invalid(format!("bad uid for {user:?} in /etc/passwd")))?;
        (uid, Some(user.to_string()), f[3].parse().ok())
    };
    let gid = if group.is_empty() {
        primary.unwrap_or(0)
    } else if let Ok(gid) = group.parse::<u32>() {
        gid
    } else {
        rows(&groups_db)
            .find(|f| f[0] == group)
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                InitError::invalid(format!("group {group:?} is not in the image's /etc/group"))
            })?
    };
    let mut groups = vec![gid];
    if let Some(name) = name {
        for f in rows(&groups_db) {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(Identity { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_in(root: &std::path::Path, user: &str, group: &str) -> Result<Identity> {
        resolve(&in_root::open_root(root)?, user, group)
    }

    fn root() -> tempdir::Dir {
        tempdir::Dir::new()
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "init-users-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(p.join("etc")).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn resolves_names_numbers_and_supplementary_groups() {
        let d = root();
        std::fs::write(
            d.0.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.0.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n# c\n",
        )
        .unwrap();
        assert_eq!(
            resolve_in(&d.0, "", "").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![0]
            }
        );
        assert_eq!(
            resolve_in(&d.0, "app", "").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 50]
            }
        );
        assert_eq!(
            resolve_in(&d.0, "1000", "staff").unwrap(),
            Identity {
                uid: 1000,
                gid: 50,
                groups: vec![50]
            }
        );
        assert_eq!(
            resolve_in(&d.0, "4242", "").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                groups: vec![0]
            }
        );
        assert!(resolve_in(&d.0, "ghost", "")
            .unwrap_err()
            .context
            .contains("ghost"));
        assert!(resolve_in(&d.0, "app", "nogroup")
            .unwrap_err()
            .context
            .contains("nogroup"));
    }

    #[test]
    fn a_fifo_for_a_database_fails_name_lookups_only_and_never_blocks() {
        let d = root();
        nix::unistd::mkfifo(
            &d.0.join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::write(d.0.join("etc/group"), "staff:x:50:\n").unwrap();
        let e = resolve_in(&d.0, "app", "").unwrap_err();
        assert!(
            e.context.contains("/etc/passwd is not a regular file"),
            "{e}"
        );
        assert_eq!(
            resolve_in(&d.0, "1000", "staff").unwrap(),
            Identity {
                uid: 1000,
                gid: 50,
                groups: vec![50]
            }
        );
    }
}
