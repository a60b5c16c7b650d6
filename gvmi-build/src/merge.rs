//! An image's layers applied in order, as a container engine applies them, without extracting
//! anything to the host: a first pass over each layer's headers ([`Plan::add_layer`]) decides
//! which entry of which layer ends up in the image, a second pass ([`Plan::write_dirs`] then
//! [`Plan::write_layer`] per layer) streams exactly those entries as one tar, the form
//! `mksquashfs -tar` reads. File contents are never held in memory; the plan holds one small
//! record per path.
//!
//! The rules are the OCI image spec's: a later entry replaces an earlier one at the same path (a
//! directory over a directory only updates its attributes, anything else also drops what was under
//! the old one); `.wh.NAME` deletes NAME from the layers below; `.wh..wh..opq` hides everything the
//! layers below put in its directory. A path with a `..` component, or one that goes through a
//! symbolic link or a file of its own layer, is refused: a layer may only write inside the image,
//! and never through a link.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// The whiteout prefix.
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";
/// The PAX key prefix of an extended attribute.
const XATTR_KEY: &str = "SCHILY.xattr.";

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    HardLink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A FIFO.
    Fifo,
}

impl Kind {
    fn of(t: tar::EntryType) -> Option<Self> {
        use tar::EntryType as T;
        Some(match t {
            T::Directory => Kind::Dir,
            T::Regular | T::Continuous | T::GNUSparse => Kind::File,
            T::Symlink => Kind::Symlink,
            T::Link => Kind::HardLink,
            T::Char => Kind::Char,
            T::Block => Kind::Block,
            T::Fifo => Kind::Fifo,
            _ => return None,
        })
    }

    fn entry_type(self) -> tar::EntryType {
        use tar::EntryType as T;
        match self {
            Kind::Dir => T::Directory,
            Kind::File => T::Regular,
            Kind::Symlink => T::Symlink,
            Kind::HardLink => T::Link,
            Kind::Char => T::Char,
            Kind::Block => T::Block,
            Kind::Fifo => T::Fifo,
        }
    }
}

/// Why the layers cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A `..` component.
    #[error("layer {layer}: {path:?} leaves the image (a `..` component)")]
    Traversal {
        /// The layer's number, from 1.
        layer: usize,
        /// The path as the layer has it.
        path: String,
    },
    /// A path through a link or a file of the same layer.
    #[error("layer {layer}: {path:?} is written through {through:?}, which is not a directory")]
    Through {
        /// The layer's number, from 1.
        layer: usize,
        /// The path.
        path: String,
        /// The ancestor that is a link or a file.
        through: String,
    },
    /// A hard link whose target is not in the image as it was when the link was made.
    #[error("layer {layer}: the hard link {path:?} to {target:?}: {why}")]
    LinkTarget {
        /// The layer's number, from 1.
        layer: usize,
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An entry type an image cannot hold.
    #[error("layer {layer}: {path:?} has the tar entry type {kind:?}, which an image cannot hold")]
    Unsupported {
        /// The layer's number, from 1.
        layer: usize,
        /// The path.
        path: String,
        /// The tar type byte.
        kind: char,
    },
    /// The layer is not a readable tar.
    #[error("layer {layer}: not a readable tar: {source}")]
    Read {
        /// The layer's number, from 1.
        layer: usize,
        /// The underlying error.
        source: io::Error,
    },
    /// The second pass saw a layer other than the first did.
    #[error("layer {layer} changed between the two passes over it")]
    Changed {
        /// The layer's number, from 1.
        layer: usize,
    },
    /// Writing the merged tar failed.
    #[error("cannot write the merged tree: {0}")]
    Write(#[source] io::Error),
}

/// Attributes of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes, by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    /// What a directory the layers imply but never list gets.
    fn implied(mtime: u64) -> Self {
        Self {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }
}

/// Which entry of which layer a path ends up as.
#[derive(Debug, Clone)]
struct Chosen {
    /// The layer, from 0.
    layer: usize,
    /// The entry's position in its layer (`usize::MAX` for an implied directory).
    ordinal: usize,
    kind: Kind,
    /// A directory's attributes (directories are written from the plan, before any layer).
    dir: Option<Meta>,
    /// A hard link's target.
    target: Option<String>,
}

impl Chosen {
    /// Where the entry is written among the non-directories: layer by layer, in layer order.
    fn position(&self) -> (usize, usize) {
        (self.layer, self.ordinal)
    }
}

/// The merge of the layers seen so far.
#[derive(Debug, Default)]
pub struct Plan {
    entries: BTreeMap<String, Chosen>,
    root: Option<Meta>,
    layers: usize,
    newest: u64,
}

/// A path as the layer writes it, made relative and split on `/`: `None` for the root, an error
/// for a `..`.
fn normalize(raw: &[u8], layer: usize) -> Result<Option<String>, MergeError> {
    let text = String::from_utf8_lossy(raw);
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(MergeError::Traversal {
                    layer: layer + 1,
                    path: text.into_owned(),
                })
            }
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// `path`'s parent directory ("" for the root) and its last component.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Every strict ancestor of `path`, outermost first.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// One tar entry's attributes, kind and link target.
struct Seen {
    path: Option<String>,
    kind: Kind,
    meta: Meta,
    /// A device's (major, minor).
    dev: (u32, u32),
    target: Option<String>,
}

fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    layer: usize,
) -> Result<Option<Seen>, MergeError> {
    let read = |source| MergeError::Read {
        layer: layer + 1,
        source,
    };
    let header = entry.header();
    let raw_type = header.entry_type();
    let path_bytes = entry.path_bytes().into_owned();
    let Some(kind) = Kind::of(raw_type) else {
        if raw_type == tar::EntryType::XGlobalHeader {
            return Ok(None);
        }
        return Err(MergeError::Unsupported {
            layer: layer + 1,
            path: String::from_utf8_lossy(&path_bytes).into_owned(),
            kind: char::from(raw_type.as_byte()),
        });
    };
    let path = normalize(&path_bytes, layer)?;
    let target = match kind {
        Kind::HardLink | Kind::Symlink => {
            let raw = entry.link_name_bytes().map(|b| b.into_owned());
            let raw = raw.unwrap_or_default();
            if kind == Kind::HardLink {
                let Some(t) = normalize(&raw, layer)? else {
                    return Err(MergeError::LinkTarget {
                        layer: layer + 1,
                        path: path.unwrap_or_default(),
                        target: String::from_utf8_lossy(&raw).into_owned(),
                        why: "a hard link to the root",
                    });
                };
                Some(t)
            } else {
                // A symbolic link's target is read in the guest, inside the image: any text.
                Some(String::from_utf8_lossy(&raw).into_owned())
            }
        }
        _ => None,
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(read)? {
        for ext in pax {
            let ext = ext.map_err(read)?;
            if let Some(name) = ext.key_bytes().strip_prefix(XATTR_KEY.as_bytes()) {
                xattrs.push((
                    String::from_utf8_lossy(name).into_owned(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    let header = entry.header();
    let dev = (
        header.device_major().ok().flatten().unwrap_or(0),
        header.device_minor().ok().flatten().unwrap_or(0),
    );
    let meta = Meta {
        mode: header.mode().map_err(read)? & 0o7777,
        uid: header.uid().map_err(read)?,
        gid: header.gid().map_err(read)?,
        mtime: header.mtime().unwrap_or(0),
        xattrs,
    };
    Ok(Some(Seen {
        path,
        kind,
        meta,
        dev,
        target,
    }))
}

/// Calls `f` with each entry of the layer `layer` (from 0) that is not a global header, and its
/// position in the layer: the one walk both passes make, so that they number entries alike.
fn each_entry<R: Read>(
    tar: R,
    layer: usize,
    mut f: impl FnMut(usize, &mut tar::Entry<'_, R>, Seen) -> Result<(), MergeError>,
) -> Result<(), MergeError> {
    let read = |source| MergeError::Read {
        layer: layer + 1,
        source,
    };
    let mut archive = tar::Archive::new(tar);
    for (ordinal, entry) in archive.entries().map_err(read)?.enumerate() {
        let mut entry = entry.map_err(read)?;
        if let Some(seen) = read_entry(&mut entry, layer)? {
            f(ordinal, &mut entry, seen)?;
        }
    }
    Ok(())
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many layers were added.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The root directory's attributes, if a layer listed it.
    pub fn root(&self) -> Option<&Meta> {
        self.root.as_ref()
    }

    /// The newest modification time of any entry seen.
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Removes `path`'s subtree (not `path` itself) where it came from a layer below `layer`
    /// (`None`: whatever layer).
    fn remove_under(&mut self, path: &str, below: Option<usize>) {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let doomed: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, c)| below.is_none_or(|l| c.layer < l))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
        // What its own layer put under a hidden directory stays (a layer that both hides and
        // fills a directory is out of the spec, but seen): its directories are implied again, so
        // that nothing is left without a parent.
        if let Some(layer) = below {
            let survivors: Vec<String> = self
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in survivors {
                for a in ancestors(&k) {
                    self.entries.entry(a.to_string()).or_insert_with(|| Chosen {
                        layer,
                        ordinal: usize::MAX,
                        kind: Kind::Dir,
                        dir: Some(Meta::implied(0)),
                        target: None,
                    });
                }
            }
        }
    }

    /// Takes one layer's headers (the uncompressed tar; its file contents are skipped).
    pub fn add_layer(&mut self, tar: impl Read) -> Result<(), MergeError> {
        let layer = self.layers;
        self.layers += 1;
        each_entry(tar, layer, |ordinal, _, seen| {
            self.apply(layer, ordinal, seen)
        })
    }

    fn apply(&mut self, layer: usize, ordinal: usize, seen: Seen) -> Result<(), MergeError> {
        self.newest = self.newest.max(seen.meta.mtime);
        let Some(path) = seen.path else {
            if seen.kind == Kind::Dir {
                self.root = Some(seen.meta);
            }
            return Ok(());
        };
        let (dir, name) = split(&path);
        if name == OPAQUE {
            self.remove_under(dir, Some(layer));
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let hidden = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            if self.entries.get(&hidden).is_some_and(|c| c.layer < layer) {
                self.entries.remove(&hidden);
                self.remove_under(&hidden, Some(layer));
            }
            return Ok(());
        }
        // Every ancestor must be a directory: one this layer lists or implies, or a lower layer's
        // (a lower layer's file or link there is replaced, as an engine would replace it).
        for a in ancestors(&path) {
            match self.entries.get(a) {
                Some(c) if c.kind == Kind::Dir => {}
                Some(c) if c.layer == layer => {
                    return Err(MergeError::Through {
                        layer: layer + 1,
                        path: path.clone(),
                        through: a.to_string(),
                    })
                }
                _ => {
                    self.entries.insert(
                        a.to_string(),
                        Chosen {
                            layer,
                            ordinal: usize::MAX,
                            kind: Kind::Dir,
                            dir: Some(Meta::implied(seen.meta.mtime)),
                            target: None,
                        },
                    );
                }
            }
        }
        let replaces_dir = self.entries.get(&path).is_some_and(|c| c.kind == Kind::Dir);
        if seen.kind != Kind::Dir && replaces_dir {
            self.remove_under(&path, None);
        }
        self.entries.insert(
            path,
            Chosen {
                layer,
                ordinal,
                kind: seen.kind,
                dir: (seen.kind == Kind::Dir).then_some(seen.meta),
                target: seen.target.filter(|_| seen.kind == Kind::HardLink),
            },
        );
        Ok(())
    }

    /// Checks what only the whole plan shows: every hard link's target is in the image and is
    /// written before the link, as it was when the link was made.
    pub fn check(&self) -> Result<(), MergeError> {
        for (path, c) in &self.entries {
            let Some(target) = &c.target else { continue };
            let fail = |why| MergeError::LinkTarget {
                layer: c.layer + 1,
                path: path.clone(),
                target: target.clone(),
                why,
            };
            match self.entries.get(target) {
                None => return Err(fail("the target is not in the image")),
                Some(t) if matches!(t.kind, Kind::Dir) => {
                    return Err(fail("the target is a directory"))
                }
                Some(t) if t.position() >= c.position() => {
                    return Err(fail("the target is replaced by a later layer"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Writes every directory of the image (parents before children), the first part of the
    /// merged tar.
    pub fn write_dirs<W: Write>(&self, out: &mut tar::Builder<W>) -> Result<(), MergeError> {
        for (path, c) in &self.entries {
            if let (Kind::Dir, Some(meta)) = (c.kind, &c.dir) {
                let dir = Seen {
                    path: None,
                    kind: Kind::Dir,
                    meta: meta.clone(),
                    dev: (0, 0),
                    target: None,
                };
                emit(out, path, &dir, 0, io::empty())?;
            }
        }
        Ok(())
    }

    /// Streams the entries of layer `layer` (from 0, the same bytes as given to
    /// [`Plan::add_layer`]) that are in the image, directories excepted.
    pub fn write_layer<W: Write>(
        &self,
        layer: usize,
        tar: impl Read,
        out: &mut tar::Builder<W>,
    ) -> Result<(), MergeError> {
        each_entry(tar, layer, |ordinal, entry, seen| {
            let Some(path) = &seen.path else {
                return Ok(());
            };
            let Some(c) = self.entries.get(path) else {
                return Ok(());
            };
            if c.layer != layer || c.ordinal != ordinal || c.kind == Kind::Dir {
                return Ok(());
            }
            if c.kind != seen.kind {
                return Err(MergeError::Changed { layer: layer + 1 });
            }
            let size = if seen.kind == Kind::File {
                entry.size()
            } else {
                0
            };
            emit(out, path, &seen, size, entry)
        })
    }
}

/// Writes one entry: a PAX record first for extended attributes, GNU long names as the tar crate
/// makes them.
fn emit<W: Write>(
    out: &mut tar::Builder<W>,
    path: &str,
    seen: &Seen,
    size: u64,
    data: impl Read,
) -> Result<(), MergeError> {
    let (kind, meta, (major, minor)) = (seen.kind, &seen.meta, seen.dev);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind.entry_type());
    h.set_mode(meta.mode);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime);
    h.set_size(size);
    if matches!(kind, Kind::Char | Kind::Block) {
        h.set_device_major(major).map_err(MergeError::Write)?;
        h.set_device_minor(minor).map_err(MergeError::Write)?;
    }
    let xattrs: Vec<(String, &[u8])> = meta
        .xattrs
        .iter()
        .map(|(name, value)| (format!("{XATTR_KEY}{name}"), value.as_slice()))
        .collect();
    if !xattrs.is_empty() {
        out.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(MergeError::Write)?;
    }
    match (kind, seen.target.as_deref()) {
        (Kind::Symlink | Kind::HardLink, Some(t)) => out.append_link(&mut h, path, t),
        _ => out.append_data(&mut h, path, data),
    }
    .map_err(MergeError::Write)
}

#[cfg(test)]
mod tests;
