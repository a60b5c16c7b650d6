//! The loader's error type: one variant per way a package can fail to arrive, each with a
//! one-line message that says what and where.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::ReferenceError;

/// Why a package could not be made available locally.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The reference text is not one of the accepted forms.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A local package does not exist or is not a regular file.
    #[error("task package {path} {reason}")]
    LocalMissing {
        /// The path given.
        path: PathBuf,
        /// "does not exist", "is not a regular file", …
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server answered with a status that will not change on retry.
    #[error("download of {url} failed: HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code and reason.
        status: String,
    },
    /// The download kept failing.
    #[error("download of {url} failed after {attempts} attempts: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// How many requests were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The package is larger than the provider allows.
    #[error("download of {url} refused: the package is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The server's answer contradicts itself (for example a range it was not asked for).
    #[error("download of {url} failed: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The bytes do not have the digest the reference pins.
    #[error("hash mismatch for {source_name}: expected {expected}, got {actual}")]
    HashMismatch {
        /// Where the bytes came from.
        source_name: String,
        /// The digest from the reference.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The cache directory could not be used.
    #[error("cache directory {dir}: {reason}")]
    Cache {
        /// The cache root.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl LoadError {
    /// An [`LoadError::Io`] with `context`.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        LoadError::Io {
            context: context.into(),
            source,
        }
    }
}
