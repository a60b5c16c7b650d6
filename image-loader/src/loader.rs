//! Turns a [`PackageRef`] into a verified local file: local packages are checked in place,
//! remote ones are fetched into the [`Cache`] under a per-package lock.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::cache::Cache;
use crate::digest::{Digest, HashAlgo};
use crate::download::{Outcome, Request, Validator};
use crate::error::LoadError;
use crate::reference::{PackageRef, Source};
use crate::sink::hash_file;

/// Longest wait for a TCP connection to the package server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence from the server in the middle of a transfer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The default largest package downloaded: 32 GiB.
pub const DEFAULT_MAX_PACKAGE_BYTES: u64 = 32 << 30;

/// A package available on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPackage {
    /// The file (in the cache for remote packages).
    pub path: PathBuf,
    /// Its digest, when one was computed (every download, and pinned local files).
    pub digest: Option<Digest>,
}

/// Fetches and verifies packages. The cache directory is created on the first download; local
/// packages never touch it.
pub struct Loader {
    cache_root: PathBuf,
    client: reqwest::Client,
    max_bytes: u64,
}

/// What is stored beside a URL-keyed cache entry.
#[derive(Debug, Serialize, Deserialize)]
struct UrlMeta {
    url: String,
    sha3_256: String,
    validator: Option<Validator>,
}

impl Loader {
    /// A loader that keeps downloads in the cache at `cache_root`.
    pub fn new(cache_root: impl Into<PathBuf>) -> Result<Self, LoadError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("ya-runtime-vm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                LoadError::io("cannot create the HTTP client", std::io::Error::other(e))
            })?;
        Ok(Self {
            cache_root: cache_root.into(),
            client,
            max_bytes: DEFAULT_MAX_PACKAGE_BYTES,
        })
    }

    /// Refuses downloads larger than `bytes` (default [`DEFAULT_MAX_PACKAGE_BYTES`]).
    pub fn with_max_package_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Makes the package available locally, verified against the digest the reference pins.
    pub async fn fetch(&self, package: &PackageRef) -> Result<LocalPackage, LoadError> {
        match &package.source {
            Source::Local(path) => self.check_local(path, package.expected.as_ref()).await,
            Source::Remote(url) => match &package.expected {
                Some(expected) => self.fetch_pinned(url, expected).await,
                None => self.fetch_unpinned(url).await,
            },
        }
    }

    async fn check_local(
        &self,
        path: &Path,
        expected: Option<&Digest>,
    ) -> Result<LocalPackage, LoadError> {
        let missing = |reason: &str| LoadError::LocalMissing {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing("does not exist"),
            _ => missing(&format!("cannot be read: {e}")),
        })?;
        if !meta.is_file() {
            return Err(missing("is not a regular file"));
        }
        let path =
            fs::canonicalize(path).map_err(|e| missing(&format!("cannot be resolved: {e}")))?;
        let Some(expected) = expected else {
            return Ok(LocalPackage { path, digest: None });
        };
        let (p, algo) = (path.clone(), expected.algo());
        let actual = tokio::task::spawn_blocking(move || hash_file(&p, algo))
            .await
            .map_err(|e| LoadError::io("hashing task failed", std::io::Error::other(e)))?
            .map_err(|e| LoadError::io(format!("cannot hash {}", path.display()), e))?;
        if &actual != expected {
            return Err(LoadError::HashMismatch {
                source_name: path.display().to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(LocalPackage {
            path,
            digest: Some(actual),
        })
    }

    /// A download pinned by digest: cached by that digest, resumed across runs.
    async fn fetch_pinned(&self, url: &Url, expected: &Digest) -> Result<LocalPackage, LoadError> {
        let cache = Cache::open(&self.cache_root)?;
        let key = expected.cache_key();
        let done = cache.image_path(&key);
        let hit = || LocalPackage {
            path: done.clone(),
            digest: Some(expected.clone()),
        };
        if done.is_file() {
            tracing::debug!("{url}: cache hit {}", done.display());
            return Ok(hit());
        }
        let _lock = cache.lock(&key).await?;
        if done.is_file() {
            return Ok(hit());
        }
        let partial = cache.partial_path(&key);
        let outcome = Request {
            client: &self.client,
            url,
            dest: &partial,
            algo: expected.algo(),
            resume: true,
            if_changed: None,
            max_bytes: self.max_bytes,
        }
        .run()
        .await?;
        let Outcome::Complete { digest, .. } = outcome else {
            return Err(protocol(url, "answered 304 to an unconditional request"));
        };
        if &digest != expected {
            let _ = fs::remove_file(&partial);
            return Err(LoadError::HashMismatch {
                source_name: url.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        publish(&partial, &done)?;
        Ok(hit())
    }

    /// A download with no pinned digest: cached by URL, revalidated with the server each time.
    async fn fetch_unpinned(&self, url: &Url) -> Result<LocalPackage, LoadError> {
        let mut hasher = HashAlgo::Sha3_256.hasher();
        hasher.update(url.as_str().as_bytes());
        let key = format!("url-{}", &hasher.finish().hex()[..40]);
        let cache = Cache::open(&self.cache_root)?;
        let done = cache.image_path(&key);
        let meta_path = cache.meta_path(&key);
        let _lock = cache.lock(&key).await?;
        let known: Option<UrlMeta> = done
            .is_file()
            .then(|| fs::read(&meta_path).ok())
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|m: &UrlMeta| m.url == url.as_str());
        let partial = cache.partial_path(&key);
        let outcome = Request {
            client: &self.client,
            url,
            dest: &partial,
            algo: HashAlgo::Sha3_256,
            resume: false,
            if_changed: known.as_ref().and_then(|m| m.validator.as_ref()),
            max_bytes: self.max_bytes,
        }
        .run()
        .await?;
        match (outcome, known) {
            (Outcome::NotModified, Some(meta)) => {
                let _ = fs::remove_file(&partial);
                tracing::debug!("{url}: not modified, using {}", done.display());
                let digest = hex::decode(&meta.sha3_256)
                    .ok()
                    .and_then(|b| Digest::new(HashAlgo::Sha3_256, b));
                Ok(LocalPackage { path: done, digest })
            }
            (Outcome::NotModified, None) => {
                Err(protocol(url, "answered 304 to an unconditional request"))
            }
            (
                Outcome::Complete {
                    digest, validator, ..
                },
                _,
            ) => {
                let _ = fs::remove_file(&meta_path);
                publish(&partial, &done)?;
                let meta = UrlMeta {
                    url: url.to_string(),
                    sha3_256: digest.hex(),
                    validator,
                };
                // Without metadata the entry is simply fetched again next time.
                if let Ok(json) = serde_json::to_vec(&meta) {
                    let tmp = meta_path.with_extension("json.tmp");
                    if fs::write(&tmp, json).is_ok() {
                        let _ = fs::rename(&tmp, &meta_path);
                    }
                }
                Ok(LocalPackage {
                    path: done,
                    digest: Some(digest),
                })
            }
        }
    }
}

fn protocol(url: &Url, reason: &str) -> LoadError {
    LoadError::Protocol {
        url: url.to_string(),
        reason: format!("the server {reason}"),
    }
}

/// Moves a verified partial file into its final place in one step.
fn publish(partial: &Path, done: &Path) -> Result<(), LoadError> {
    fs::rename(partial, done).map_err(|e| {
        LoadError::io(
            format!("cannot move {} to {}", partial.display(), done.display()),
            e,
        )
    })
}
