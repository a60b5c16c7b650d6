//! Where an image's files are read from: a directory (an OCI image layout, or an unpacked
//! `docker save`) or an archive of one (an OCI archive, a `docker save` / `podman save` tarball).
//! An archive is indexed once (each member's offset and size) and its members are then read in
//! place, as often as needed: nothing is unpacked to disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Why the input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O error on the input.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The input is not a tar.
    #[error("{path} is not a whole tar archive: {source}")]
    NotTar {
        /// The file.
        path: PathBuf,
        /// What the tar reader said.
        source: io::Error,
    },
    /// A compressed archive (docker and podman write plain ones).
    #[error("{path} is {what}-compressed: decompress it first (an image archive is a plain tar)")]
    Compressed {
        /// The file.
        path: PathBuf,
        /// gzip, zstd, xz.
        what: &'static str,
    },
    /// A member the image names is missing.
    #[error("{name} is not in {input}")]
    Missing {
        /// The member.
        name: String,
        /// The input.
        input: PathBuf,
    },
    /// A member name that leaves the input.
    #[error("{0:?} is not a path inside the image")]
    BadName(String),
}

/// A readable member.
pub type Member<'a> = Box<dyn Read + 'a>;

/// The files of an image input.
#[derive(Debug)]
pub enum Source {
    /// A directory.
    Dir(PathBuf),
    /// An archive and where each member's bytes are.
    Archive {
        /// The archive.
        path: PathBuf,
        /// Member name (no leading `./`) → (offset, size).
        members: HashMap<String, (u64, u64)>,
    },
}

/// A member name as a relative path without `.` components; `..` and absolute names refused.
fn clean(name: &str) -> Result<String, SourceError> {
    let mut parts = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(SourceError::BadName(name.to_string())),
            p => parts.push(p),
        }
    }
    if parts.is_empty() || name.starts_with('/') {
        return Err(SourceError::BadName(name.to_string()));
    }
    Ok(parts.join("/"))
}

/// What the first bytes of a file say it is compressed with.
pub fn compression_of(magic: &[u8]) -> Option<&'static str> {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else {
        None
    }
}

impl Source {
    /// Opens `path`: a directory as it is, a file as an archive (indexed here).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let io_err = |source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(io_err)?;
        let mut magic = [0u8; 6];
        let n = read_up_to(&mut file, &mut magic).map_err(io_err)?;
        if let Some(what) = compression_of(&magic[..n]) {
            return Err(SourceError::Compressed {
                path: path.to_path_buf(),
                what,
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let not_tar = |source| SourceError::NotTar {
            path: path.to_path_buf(),
            source,
        };
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut members = HashMap::new();
        for entry in archive.entries().map_err(not_tar)? {
            let entry = entry.map_err(not_tar)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if let Ok(name) = clean(&name) {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        if members.is_empty() {
            return Err(not_tar(io::Error::other("no files in it")));
        }
        Ok(Source::Archive {
            path: path.to_path_buf(),
            members,
        })
    }

    /// The input's path.
    pub fn path(&self) -> &Path {
        match self {
            Source::Dir(p) | Source::Archive { path: p, .. } => p,
        }
    }

    /// Whether the input has the member `name`.
    pub fn has(&self, name: &str) -> bool {
        let Ok(name) = clean(name) else { return false };
        match self {
            Source::Dir(d) => d.join(&name).is_file(),
            Source::Archive { members, .. } => members.contains_key(&name),
        }
    }

    /// The member `name`'s size, if it is there.
    pub fn size(&self, name: &str) -> Option<u64> {
        let name = clean(name).ok()?;
        match self {
            Source::Dir(d) => std::fs::metadata(d.join(&name)).ok().map(|m| m.len()),
            Source::Archive { members, .. } => members.get(&name).map(|&(_, size)| size),
        }
    }

    /// Reads the member `name`.
    pub fn open_member(&self, name: &str) -> Result<Member<'_>, SourceError> {
        let clean_name = clean(name)?;
        let missing = || SourceError::Missing {
            name: name.to_string(),
            input: self.path().to_path_buf(),
        };
        match self {
            Source::Dir(d) => {
                let p = d.join(&clean_name);
                match File::open(&p) {
                    Ok(f) => Ok(Box::new(io::BufReader::with_capacity(1 << 20, f))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
                    Err(source) => Err(SourceError::Io { path: p, source }),
                }
            }
            Source::Archive { path, members } => {
                let &(offset, size) = members.get(&clean_name).ok_or_else(missing)?;
                let io_err = |source| SourceError::Io {
                    path: path.clone(),
                    source,
                };
                let mut f = File::open(path).map_err(io_err)?;
                f.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                Ok(Box::new(
                    io::BufReader::with_capacity(1 << 20, f).take(size),
                ))
            }
        }
    }

    /// Reads the whole (small) member `name`, at most `limit` bytes.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, SourceError> {
        let mut bytes = Vec::new();
        self.open_member(name)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| SourceError::Io {
                path: self.path().join(name),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(SourceError::Io {
                path: self.path().join(name),
                source: io::Error::other(format!("larger than {limit} bytes")),
            });
        }
        Ok(bytes)
    }
}

/// Reads until `buf` is full or the end; how many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inside_only() {
        assert_eq!(clean("./blobs/sha256/ab").unwrap(), "blobs/sha256/ab");
        assert!(clean("../x").is_err());
        assert!(clean("/etc/passwd").is_err());
        assert!(clean("a/../../b").is_err());
    }

    #[test]
    fn an_archive_is_read_in_place_and_a_compressed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [("./index.json", &b"{}"[..]), ("blobs/sha256/aa", b"blob")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        let path = dir.path().join("image.tar");
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        let s = Source::open(&path).unwrap();
        assert!(s.has("index.json"));
        let mut got = String::new();
        s.open_member("blobs/sha256/aa")
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "blob");
        assert_eq!(
            s.open_member("blobs/sha256/bb").err().unwrap().to_string(),
            format!("blobs/sha256/bb is not in {}", path.display())
        );
        let gz = dir.path().join("image.tar.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        assert!(Source::open(&gz).unwrap_err().to_string().ends_with(
            "is gzip-compressed: decompress it first (an image archive is a plain tar)"
        ));
    }
}
