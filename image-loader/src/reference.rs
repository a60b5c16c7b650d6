//! Parsing of the `--task-package` value: a path, a `file://` or `http(s)://` URL, or yagna's
//! `hash:<algo>:<hex>:<url>` form.

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::digest::{Digest, HashAlgo};

/// The forms a task-package reference may take, for error messages.
pub const ACCEPTED_FORMS: &str =
    "a local path, file:///path, http(s)://host/path, or hash:sha3:<hex>:<url> (also hash:sha256:<hex>:<url>)";

/// Where a package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on this machine.
    Local(PathBuf),
    /// An `http://` or `https://` URL.
    Remote(Url),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local(p) => write!(f, "{}", p.display()),
            Source::Remote(u) => write!(f, "{u}"),
        }
    }
}

/// A parsed task-package reference: where to get it and, optionally, the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    /// Where the bytes come from.
    pub source: Source,
    /// The digest the bytes must have, when the reference pins one.
    pub expected: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid task package {input:?}: {reason}; accepted forms: {ACCEPTED_FORMS}")]
pub struct ReferenceError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PackageRef {
    /// Parses a reference. Paths need no scheme; anything that looks like `scheme:` must be one of
    /// the accepted forms (write `./name:with:colons` for such local files).
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("it is empty".into()));
        }
        if input.starts_with('/') || input.starts_with('.') {
            return Ok(Self {
                source: Source::Local(PathBuf::from(input)),
                expected: None,
            });
        }
        if let Some(rest) = input
            .strip_prefix("hash://")
            .or_else(|| input.strip_prefix("hash:"))
        {
            return parse_hashed(rest).map_err(fail);
        }
        match scheme_of(input) {
            None => Ok(Self {
                source: Source::Local(PathBuf::from(input)),
                expected: None,
            }),
            Some(_) => Ok(Self {
                source: parse_location(input).map_err(fail)?,
                expected: None,
            }),
        }
    }
}

/// The URL scheme `input` starts with, if it starts like one (`[a-zA-Z][a-zA-Z0-9+.-]*:`).
fn scheme_of(input: &str) -> Option<&str> {
    let colon = input.find(':')?;
    let scheme = &input[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
    .then_some(scheme)
}

/// `<algo>:<hex>:<url>` after the `hash:` prefix.
fn parse_hashed(rest: &str) -> Result<PackageRef, String> {
    let mut parts = rest.splitn(3, ':');
    let (Some(algo), Some(hex_digest), Some(location)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("a hash reference needs three parts: hash:<algo>:<hex>:<url>".into());
    };
    let algo_name = algo.to_ascii_lowercase();
    let algo = match algo_name.as_str() {
        "sha3" => HashAlgo::sha3_for_hex_len(hex_digest.len()).ok_or_else(|| {
            format!(
                "a sha3 digest has 56, 64, 96 or 128 hex digits, this one has {}",
                hex_digest.len()
            )
        })?,
        "sha3-224" | "sha3_224" => HashAlgo::Sha3_224,
        "sha3-256" | "sha3_256" => HashAlgo::Sha3_256,
        "sha3-384" | "sha3_384" => HashAlgo::Sha3_384,
        "sha3-512" | "sha3_512" => HashAlgo::Sha3_512,
        "sha256" | "sha2-256" => HashAlgo::Sha256,
        other => {
            return Err(format!(
                "unknown hash algorithm {other:?} (use sha3 or sha256)"
            ))
        }
    };
    let bytes = hex::decode(hex_digest)
        .map_err(|e| format!("the digest {hex_digest:?} is not hex ({e})"))?;
    let expected = Digest::new(algo, bytes).ok_or_else(|| {
        format!(
            "a {algo} digest has {} hex digits, this one has {}",
            algo.digest_len() * 2,
            hex_digest.len()
        )
    })?;
    let source = if scheme_of(location).is_some() {
        parse_location(location)?
    } else if location.is_empty() {
        return Err("the URL after the digest is empty".into());
    } else {
        Source::Local(PathBuf::from(location))
    };
    Ok(PackageRef {
        source,
        expected: Some(expected),
    })
}

/// A `file://`, `http://` or `https://` URL.
fn parse_location(text: &str) -> Result<Source, String> {
    let url = Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err("the URL has no host".into());
            }
            Ok(Source::Remote(url))
        }
        "file" => url
            .to_file_path()
            .map(Source::Local)
            .map_err(|()| "a file:// URL must name an absolute local path".into()),
        other => Err(format!("unsupported scheme {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H256: &str = "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532";

    #[test]
    fn paths() {
        for p in [
            "/a/b.gvmi",
            "./x.gvmi",
            "img.gvmi",
            "../up/y",
            "dir/with:colon",
        ] {
            let r = PackageRef::parse(p).unwrap();
            assert_eq!(r.source, Source::Local(PathBuf::from(p)), "{p}");
            assert!(r.expected.is_none());
        }
    }

    #[test]
    fn urls() {
        let r = PackageRef::parse("file:///srv/a.gvmi").unwrap();
        assert_eq!(r.source, Source::Local(PathBuf::from("/srv/a.gvmi")));
        let r = PackageRef::parse("http://127.0.0.1:8000/a.gvmi").unwrap();
        assert!(matches!(r.source, Source::Remote(ref u) if u.port() == Some(8000)));
        let r = PackageRef::parse("https://example.org/x").unwrap();
        assert!(matches!(r.source, Source::Remote(_)));
    }

    #[test]
    fn hashed_forms() {
        for prefix in ["hash:", "hash://"] {
            let r = PackageRef::parse(&format!("{prefix}sha3:{H256}:http://h/p.gvmi")).unwrap();
            let d = r.expected.unwrap();
            assert_eq!(d.algo(), HashAlgo::Sha3_256);
            assert_eq!(d.hex(), H256);
            assert!(matches!(r.source, Source::Remote(_)));
        }
        let r = PackageRef::parse(&format!("hash:sha256:{}:/tmp/x", H256.to_uppercase())).unwrap();
        assert_eq!(r.expected.unwrap().algo(), HashAlgo::Sha256);
        assert_eq!(r.source, Source::Local(PathBuf::from("/tmp/x")));
        let r = PackageRef::parse(&format!("hash:sha3:{}:file:///x", &"ab".repeat(28))).unwrap();
        assert_eq!(r.expected.unwrap().algo(), HashAlgo::Sha3_224);
        let r = PackageRef::parse(&format!("hash:sha3:{}:file:///x", &"ab".repeat(48))).unwrap();
        assert_eq!(r.expected.unwrap().algo(), HashAlgo::Sha3_384);
        let r = PackageRef::parse(&format!("hash:sha3:{}:file:///x", &"ab".repeat(64))).unwrap();
        assert_eq!(r.expected.unwrap().algo(), HashAlgo::Sha3_512);
    }

    #[test]
    fn refusals_name_the_accepted_forms() {
        let bad = [
            "",
            "ftp://h/x",
            "s3:bucket/key",
            "hash:sha3:abc",
            "hash:md5:00:http://h/x",
            &format!("hash:sha3:{}:http://h/x", &H256[..60]),
            &format!("hash:sha3:{}zz:http://h/x", &H256[..62]),
            &format!("hash:sha256:{}:http://h/x", &"ab".repeat(28)),
            &format!("hash:sha3:{H256}:"),
            &format!("hash:sha3:{H256}:gopher://h/x"),
            "http://",
            "file://host/x",
        ];
        for b in bad {
            let e = PackageRef::parse(b).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("accepted forms"), "{b}: {msg}");
            assert!(!msg.contains('\n'), "{b}: {msg}");
        }
    }
}
