//! The on-disk package cache: verified images named by content, partial downloads that survive
//! an interruption, and per-package locks so that concurrent deploys neither corrupt an entry
//! nor download it twice.
//!
//! Layout under the root: `images/<key>.gvmi` (complete, verified; renamed into place atomically),
//! `images/<key>.json` (metadata of URL-keyed entries), `partial/<key>.part`, `locks/<key>.lock`.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::LoadError;

/// Environment variable that overrides the default cache directory.
pub const CACHE_DIR_ENV: &str = "YA_RUNTIME_VM_CACHE_DIR";

/// A package cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// An exclusive lock on one cache key, held until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _lock: Flock<File>,
}

impl Cache {
    /// The default root: `$XDG_CACHE_HOME/ya-runtime-vm`, else `$HOME/.cache/ya-runtime-vm`.
    pub fn default_root() -> Option<PathBuf> {
        let non_empty = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        non_empty("XDG_CACHE_HOME")
            .or_else(|| non_empty("HOME").map(|h| h.join(".cache")))
            .map(|base| base.join("ya-runtime-vm"))
    }

    /// Opens (creating as needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, LoadError> {
        let root = root.into();
        for sub in ["images", "partial", "locks"] {
            fs::create_dir_all(root.join(sub)).map_err(|e| LoadError::Cache {
                dir: root.clone(),
                reason: format!("cannot create {sub}/: {e}"),
            })?;
        }
        Ok(Self { root })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the verified image for `key` lives.
    pub fn image_path(&self, key: &str) -> PathBuf {
        self.root.join("images").join(format!("{key}.gvmi"))
    }

    /// Where metadata for `key` lives.
    pub fn meta_path(&self, key: &str) -> PathBuf {
        self.root.join("images").join(format!("{key}.json"))
    }

    /// Where a partial download for `key` lives.
    pub fn partial_path(&self, key: &str) -> PathBuf {
        self.root.join("partial").join(format!("{key}.part"))
    }

    /// Takes the exclusive lock on `key`, waiting for another holder to finish.
    pub async fn lock(&self, key: &str) -> Result<KeyLock, LoadError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| LoadError::io(format!("cannot open lock {}", path.display()), e))?;
            Flock::lock(file, FlockArg::LockExclusive)
                .map(|lock| KeyLock { _lock: lock })
                .map_err(|(_, errno)| {
                    LoadError::io(format!("cannot lock {}", path.display()), errno.into())
                })
        })
        .await
        .map_err(|e| LoadError::io("lock task failed", std::io::Error::other(e)))?
    }
}
