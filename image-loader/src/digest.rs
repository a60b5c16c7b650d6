//! Hash algorithms accepted in task-package references, and a streaming hasher over them.

use std::fmt;

use sha2::Sha256;
use sha3::{Digest as _, Sha3_224, Sha3_256, Sha3_384, Sha3_512};

/// A hash algorithm a package reference may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// SHA3-224 (56 hex digits).
    Sha3_224,
    /// SHA3-256 (64 hex digits); yagna's usual choice.
    Sha3_256,
    /// SHA3-384 (96 hex digits).
    Sha3_384,
    /// SHA3-512 (128 hex digits).
    Sha3_512,
    /// SHA-256 (64 hex digits).
    Sha256,
}

impl HashAlgo {
    /// The SHA3 variant whose digest has `hex_len` hex digits, as yagna's `hash:sha3:` form infers it.
    pub fn sha3_for_hex_len(hex_len: usize) -> Option<Self> {
        match hex_len {
            56 => Some(Self::Sha3_224),
            64 => Some(Self::Sha3_256),
            96 => Some(Self::Sha3_384),
            128 => Some(Self::Sha3_512),
            _ => None,
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha3_224 => 28,
            Self::Sha3_256 | Self::Sha256 => 32,
            Self::Sha3_384 => 48,
            Self::Sha3_512 => 64,
        }
    }

    /// Canonical lower-case name, used in messages and cache file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha3_224 => "sha3-224",
            Self::Sha3_256 => "sha3-256",
            Self::Sha3_384 => "sha3-384",
            Self::Sha3_512 => "sha3-512",
            Self::Sha256 => "sha256",
        }
    }

    /// A fresh hasher for this algorithm.
    pub fn hasher(self) -> StreamHasher {
        StreamHasher(match self {
            Self::Sha3_224 => Inner::Sha3_224(Sha3_224::new()),
            Self::Sha3_256 => Inner::Sha3_256(Sha3_256::new()),
            Self::Sha3_384 => Inner::Sha3_384(Sha3_384::new()),
            Self::Sha3_512 => Inner::Sha3_512(Sha3_512::new()),
            Self::Sha256 => Inner::Sha256(Sha256::new()),
        })
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A digest value together with the algorithm that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algo: HashAlgo,
    bytes: Vec<u8>,
}

impl Digest {
    /// Builds a digest from raw bytes; `None` when the length does not fit the algorithm.
    pub fn new(algo: HashAlgo, bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() == algo.digest_len()).then_some(Self { algo, bytes })
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// Lower-case hex of the digest bytes.
    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// A name that identifies the content in the cache: `<algo>-<hex>`.
    pub fn cache_key(&self) -> String {
        format!("{}-{}", self.algo, self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.hex())
    }
}

enum Inner {
    Sha3_224(Sha3_224),
    Sha3_256(Sha3_256),
    Sha3_384(Sha3_384),
    Sha3_512(Sha3_512),
    Sha256(Sha256),
}

/// An incremental hasher: feed it bytes as they arrive, then take the digest.
pub struct StreamHasher(Inner);

impl StreamHasher {
    /// Adds bytes to the hash.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Sha3_224(h) => h.update(data),
            Inner::Sha3_256(h) => h.update(data),
            Inner::Sha3_384(h) => h.update(data),
            Inner::Sha3_512(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algo(&self) -> HashAlgo {
        match self.0 {
            Inner::Sha3_224(_) => HashAlgo::Sha3_224,
            Inner::Sha3_256(_) => HashAlgo::Sha3_256,
            Inner::Sha3_384(_) => HashAlgo::Sha3_384,
            Inner::Sha3_512(_) => HashAlgo::Sha3_512,
            Inner::Sha256(_) => HashAlgo::Sha256,
        }
    }

    /// Consumes the hasher and returns the digest.
    pub fn finish(self) -> Digest {
        let algo = self.algo();
        let bytes = match self.0 {
            Inner::Sha3_224(h) => h.finalize().to_vec(),
            Inner::Sha3_256(h) => h.finalize().to_vec(),
            Inner::Sha3_384(h) => h.finalize().to_vec(),
            Inner::Sha3_512(h) => h.finalize().to_vec(),
            Inner::Sha256(h) => h.finalize().to_vec(),
        };
        Digest { algo, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let cases = [
            (
                HashAlgo::Sha3_256,
                "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
            ),
            (
                HashAlgo::Sha3_224,
                "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf",
            ),
            (
                HashAlgo::Sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (algo, want) in cases {
            let mut h = algo.hasher();
            h.update(b"a");
            h.update(b"bc");
            let d = h.finish();
            assert_eq!(d.hex(), want, "{algo}");
            assert_eq!(d.algo(), algo);
        }
    }

    #[test]
    fn sha3_variant_by_length() {
        assert_eq!(HashAlgo::sha3_for_hex_len(56), Some(HashAlgo::Sha3_224));
        assert_eq!(HashAlgo::sha3_for_hex_len(64), Some(HashAlgo::Sha3_256));
        assert_eq!(HashAlgo::sha3_for_hex_len(96), Some(HashAlgo::Sha3_384));
        assert_eq!(HashAlgo::sha3_for_hex_len(128), Some(HashAlgo::Sha3_512));
        assert_eq!(HashAlgo::sha3_for_hex_len(63), None);
    }

    #[test]
    fn digest_length_checked() {
        assert!(Digest::new(HashAlgo::Sha3_256, vec![0; 32]).is_some());
        assert!(Digest::new(HashAlgo::Sha3_256, vec![0; 28]).is_none());
    }
}
