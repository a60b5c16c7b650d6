//! One image of an input, resolved to its config and its layers, every blob checked against its
//! digest: a `docker save` / `podman save` archive (`manifest.json`, whose `RepoTags` name the
//! images) or an OCI image layout (`index.json`, whose `org.opencontainers.image.ref.name`
//! annotations name them; a multi-platform index resolves to linux/amd64).

use std::cell::RefCell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::source::{Source, SourceError};

/// Largest manifest, index or config read (they are a few KiB).
const MAX_JSON: u64 = 16 << 20;

/// Why no image could be resolved or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the input.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Neither a docker archive nor an OCI layout.
    #[error("{0} is neither an OCI image layout (index.json) nor a docker/podman save archive (manifest.json)")]
    Unknown(String),
    /// A JSON document that is not what it should be.
    #[error("{member} is not a valid {what}: {message}")]
    Json {
        /// The member.
        member: String,
        /// What it should be.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The input has no image.
    #[error("the input holds no image")]
    Empty,
    /// `--image` matched nothing.
    #[error("no image matches {wanted:?}; the input has: {available}")]
    NoMatch {
        /// What was asked for.
        wanted: String,
        /// What there is.
        available: String,
    },
    /// Several images and no `--image`.
    #[error("the input holds several images, pick one with --image: {0}")]
    Several(String),
    /// No linux/amd64 image in a multi-platform index.
    #[error("{0} has no linux/amd64 image")]
    NoPlatform(String),
    /// A digest this tool cannot check.
    #[error("unsupported digest {0:?} (sha256 only)")]
    Algorithm(String),
    /// Content that does not match its digest.
    #[error("{what} does not match its digest: expected sha256:{expected}, got sha256:{actual}")]
    Mismatch {
        /// What was read.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The one it has.
        actual: String,
    },
    /// Layers and `rootfs.diff_ids` disagree.
    #[error("the manifest lists {layers} layers, the config {diff_ids} diff_ids")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// Entries of `rootfs.diff_ids`.
        diff_ids: usize,
    },
    /// A layer compression this tool cannot read.
    #[error("layer {0} is {1}-compressed, which this tool cannot read")]
    LayerCompression(usize, &'static str),
    /// Reading a layer failed.
    #[error("layer {layer}: {source}")]
    Read {
        /// The layer, from 1.
        layer: usize,
        /// The underlying error.
        source: io::Error,
    },
}

/// A layer: where its bytes are and what they must hash to.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The member of the input.
    pub member: String,
    /// The sha256 (hex) of the member's bytes, when the format states it.
    pub digest: Option<String>,
    /// The sha256 (hex) of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Option<String>,
    /// The member's size.
    pub size: u64,
}

/// The image to convert.
#[derive(Debug)]
pub struct Image {
    /// How it is named in the input (a tag, else its digest).
    pub name: String,
    /// The image id: the sha256 (hex) of its config.
    pub id: String,
    /// The whole image config.
    pub config: Value,
    /// Its layers, lowest first.
    pub layers: Vec<Layer>,
}

/// The hex of a `sha256:<hex>` digest.
fn sha256_hex(digest: &str) -> Result<String, ImageError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hex.to_ascii_lowercase())
        }
        _ => Err(ImageError::Algorithm(digest.to_string())),
    }
}

fn check(what: String, expected: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual == expected {
        Ok(())
    } else {
        Err(ImageError::Mismatch {
            what,
            expected: expected.to_string(),
            actual,
        })
    }
}

fn json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    member: &str,
    what: &'static str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Json {
        member: member.to_string(),
        what,
        message: e.to_string(),
    })
}

/// One entry of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Whether `name` (a tag as the input writes it) is what the user asked for: equal, or equal once
/// Docker Hub's implied prefixes and the `:latest` tag are added to the request.
fn tag_matches(name: &str, wanted: &str) -> bool {
    let with_tag = |s: &str| -> String {
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.contains(':') || s.contains('@') {
            s.to_string()
        } else {
            format!("{s}:latest")
        }
    };
    let (n, w) = (with_tag(name), with_tag(wanted));
    n == w
        || n == format!("docker.io/{w}")
        || n == format!("docker.io/library/{w}")
        || n == format!("localhost/{w}")
}

/// Whether `digest_hex` is what a `sha256:…` or hex prefix of at least 12 digits asks for.
fn digest_matches(digest_hex: &str, wanted: &str) -> bool {
    let w = wanted.strip_prefix("sha256:").unwrap_or(wanted);
    w.len() >= 12 && digest_hex.starts_with(&w.to_ascii_lowercase())
}

/// Picks one of `candidates` (names, value): by `wanted`, or the only one.
fn pick<T>(
    candidates: Vec<(Vec<String>, String, T)>,
    wanted: Option<&str>,
) -> Result<(String, T), ImageError> {
    let list = || {
        candidates
            .iter()
            .map(|(names, digest, _)| match names.first() {
                Some(n) => n.clone(),
                None => format!("sha256:{digest}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(w) => {
            let available = list();
            candidates
                .into_iter()
                .find_map(|(names, digest, v)| {
                    let by_name = names.iter().find(|n| tag_matches(n, w)).cloned();
                    by_name
                        .or_else(|| digest_matches(&digest, w).then(|| format!("sha256:{digest}")))
                        .map(|name| (name, v))
                })
                .ok_or(ImageError::NoMatch {
                    wanted: w.to_string(),
                    available,
                })
        }
        None if candidates.len() > 1 => Err(ImageError::Several(list())),
        None => {
            let (names, digest, v) = candidates.into_iter().next().ok_or(ImageError::Empty)?;
            Ok((
                names
                    .into_iter()
                    .next()
                    .unwrap_or(format!("sha256:{digest}")),
                v,
            ))
        }
    }
}

/// The hex digest that a docker archive member's name states (`<hex>.json`, `blobs/sha256/<hex>`,
/// `<hex>/layer.tar`), if any.
fn digest_in_name(member: &str) -> Option<String> {
    let file = member.rsplit('/').next()?;
    let stem = file.strip_suffix(".json").unwrap_or(file);
    let hex = if stem == "layer.tar" {
        return None;
    } else {
        stem
    };
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_string())
}

/// `rootfs.diff_ids` of a config, as hex.
fn diff_ids(config: &Value) -> Result<Vec<String>, ImageError> {
    config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .map(|v| sha256_hex(v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_else(|| Ok(Vec::new()))
}

impl Image {
    /// Resolves the image `wanted` names (a tag or a digest; the only one when `None`).
    pub fn resolve(source: &Source, wanted: Option<&str>) -> Result<Self, ImageError> {
        if source.has("manifest.json") {
            Self::docker(source, wanted)
        } else if source.has("index.json") {
            Self::oci(source, wanted)
        } else {
            Err(ImageError::Unknown(source.path().display().to_string()))
        }
    }

    fn docker(source: &Source, wanted: Option<&str>) -> Result<Self, ImageError> {
        let bytes = source.read_small("manifest.json", MAX_JSON)?;
        let entries: Vec<DockerEntry> = json(&bytes, "manifest.json", "docker manifest")?;
        let candidates = entries
            .into_iter()
            .map(|e| {
                let digest = digest_in_name(&e.config).unwrap_or_default();
                (e.repo_tags.clone().unwrap_or_default(), digest, e)
            })
            .collect();
        let (name, entry) = pick(candidates, wanted)?;
        let config_bytes = source.read_small(&entry.config, MAX_JSON)?;
        let id = match digest_in_name(&entry.config) {
            Some(hex) => {
                check(entry.config.clone(), &hex, &config_bytes)?;
                hex
            }
            None => hex::encode(Sha256::digest(&config_bytes)),
        };
        let config: Value = json(&config_bytes, &entry.config, "image config")?;
        let ids = diff_ids(&config)?;
        if ids.len() != entry.layers.len() {
            return Err(ImageError::LayerCount {
                layers: entry.layers.len(),
                diff_ids: ids.len(),
            });
        }
        let layers = entry
            .layers
            .iter()
            .zip(ids)
            .map(|(member, diff_id)| Layer {
                member: member.clone(),
                digest: digest_in_name(member),
                size: source.size(member).unwrap_or(0),
                diff_id: Some(diff_id),
            })
            .collect();
        Ok(Self {
            name,
            id,
            config,
            layers,
        })
    }

    /// The blob `digest` of an OCI layout, checked.
    fn blob(source: &Source, digest: &str, what: &'static str) -> Result<Vec<u8>, ImageError> {
        let hex = sha256_hex(digest)?;
        let member = format!("blobs/sha256/{hex}");
        let bytes = source.read_small(&member, MAX_JSON)?;
        check(format!("the {what} {member}"), &hex, &bytes)?;
        Ok(bytes)
    }

    fn oci(source: &Source, wanted: Option<&str>) -> Result<Self, ImageError> {
        use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
        let bytes = source.read_small("index.json", MAX_JSON)?;
        let index: ImageIndex = json(&bytes, "index.json", "OCI image index")?;
        let candidates = index
            .manifests()
            .iter()
            .map(|d| {
                let names = d
                    .annotations()
                    .iter()
                    .flat_map(|a| {
                        [
                            "io.containerd.image.name",
                            "org.opencontainers.image.ref.name",
                        ]
                        .into_iter()
                        .filter_map(|k| a.get(k).cloned())
                    })
                    .collect();
                let digest = d.digest().to_string();
                let hex = sha256_hex(&digest).unwrap_or_default();
                (names, hex, d.clone())
            })
            .collect();
        let (name, mut descriptor) = pick(candidates, wanted)?;
        // A multi-platform index: its linux/amd64 image.
        let is_index = |m: &MediaType| {
            matches!(m, MediaType::ImageIndex)
                || m.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
        };
        if is_index(descriptor.media_type()) {
            let digest = descriptor.digest().to_string();
            let bytes = Self::blob(source, &digest, "image index")?;
            let nested: ImageIndex = json(&bytes, &digest, "OCI image index")?;
            descriptor = nested
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .cloned()
                .ok_or(ImageError::NoPlatform(name.clone()))?;
        }
        let digest = descriptor.digest().to_string();
        let bytes = Self::blob(source, &digest, "manifest")?;
        let manifest: ImageManifest = json(&bytes, &digest, "OCI image manifest")?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = Self::blob(source, &config_digest, "config")?;
        let config: Value = json(&config_bytes, &config_digest, "image config")?;
        let ids = diff_ids(&config)?;
        if ids.len() != manifest.layers().len() {
            return Err(ImageError::LayerCount {
                layers: manifest.layers().len(),
                diff_ids: ids.len(),
            });
        }
        let layers = manifest
            .layers()
            .iter()
            .zip(ids)
            .map(|(d, diff_id)| {
                let hex = sha256_hex(d.digest().as_ref())?;
                let member = format!("blobs/sha256/{hex}");
                Ok(Layer {
                    size: source.size(&member).unwrap_or(d.size()),
                    member,
                    digest: Some(hex),
                    diff_id: Some(diff_id),
                })
            })
            .collect::<Result<_, ImageError>>()?;
        Ok(Self {
            name,
            id: sha256_hex(&config_digest)?,
            config,
            layers,
        })
    }
}

/// A reader that hashes what passes through it into a shared hasher.
struct Hashing<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// A layer's uncompressed tar as it is read, and the digests it must have once read to its end.
pub struct LayerReader<'a> {
    tar: Hashing<Box<dyn Read + 'a>>,
    blob: Rc<RefCell<Sha256>>,
    layer: usize,
    expected: (Option<String>, Option<String>),
    member: String,
}

impl<'a> LayerReader<'a> {
    /// Opens layer `index` (from 0) of `image`, decompressing gzip or zstd as its first bytes
    /// say; `counted` sees every byte read from the input.
    pub fn open(
        source: &'a Source,
        image: &Image,
        index: usize,
        counted: impl FnMut(usize) + 'a,
    ) -> Result<Self, ImageError> {
        let layer = &image.layers[index];
        let blob = Rc::new(RefCell::new(Sha256::new()));
        let raw = Hashing {
            inner: Counting {
                inner: source.open_member(&layer.member)?,
                counted,
            },
            hasher: blob.clone(),
        };
        let mut raw = io::BufReader::with_capacity(1 << 16, raw);
        let magic = raw.fill_buf().map_err(|source| ImageError::Read {
            layer: index + 1,
            source,
        })?;
        let tar: Box<dyn Read + 'a> =
            match crate::source::compression_of(magic) {
                None => Box::new(raw),
                Some("gzip") => Box::new(flate2::read::MultiGzDecoder::new(raw)),
                Some("zstd") => Box::new(zstd::Decoder::with_buffer(raw).map_err(|source| {
                    ImageError::Read {
                        layer: index + 1,
                        source,
                    }
                })?),
                Some(other) => return Err(ImageError::LayerCompression(index + 1, other)),
            };
        Ok(Self {
            tar: Hashing {
                inner: tar,
                hasher: Rc::new(RefCell::new(Sha256::new())),
            },
            blob,
            layer: index,
            expected: (layer.digest.clone(), layer.diff_id.clone()),
            member: layer.member.clone(),
        })
    }

    /// Reads what the tar reader left (end-of-archive padding, trailing bytes) and checks both
    /// digests.
    pub fn finish(mut self) -> Result<(), ImageError> {
        io::copy(&mut self.tar, &mut io::sink()).map_err(|source| ImageError::Read {
            layer: self.layer + 1,
            source,
        })?;
        let result = |h: &Rc<RefCell<Sha256>>| hex::encode(h.borrow_mut().clone().finalize());
        let (digest, diff_id) = &self.expected;
        for (expected, actual, what) in [
            (digest, result(&self.blob), "the blob"),
            (diff_id, result(&self.tar.hasher), "the uncompressed tar"),
        ] {
            if let Some(expected) = expected {
                if *expected != actual {
                    return Err(ImageError::Mismatch {
                        what: format!("layer {} ({}), {what},", self.layer + 1, self.member),
                        expected: expected.clone(),
                        actual,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Read for LayerReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar.read(buf)
    }
}

/// A reader that reports how many bytes it gave.
struct Counting<R, F> {
    inner: R,
    counted: F,
}

impl<R: Read, F: FnMut(usize)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.counted)(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_match_as_docker_names_them() {
        assert!(tag_matches("alpine:3.18", "alpine:3.18"));
        assert!(tag_matches("docker.io/library/alpine:latest", "alpine"));
        assert!(tag_matches("localhost/app:1", "app:1"));
        assert!(!tag_matches("alpine:3.18", "alpine"));
        assert!(digest_matches(&"ab".repeat(32), "sha256:abababababab"));
        assert!(!digest_matches(&"ab".repeat(32), "abab"));
    }

    #[test]
    fn digests_in_names_and_sha256_only() {
        let hex = "0".repeat(64);
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(hex.clone()));
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}")),
            Some(hex.clone())
        );
        assert_eq!(digest_in_name(&format!("{hex}/layer.tar")), None);
        assert!(sha256_hex(&format!("sha512:{hex}")).is_err());
    }
}
