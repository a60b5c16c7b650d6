//! The conversion itself: an image (or a root directory) and its config in, a complete `.gvmi`
//! out, written beside its final name and renamed into place only when whole, so a failure
//! leaves no partial image behind.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha3::{Digest, Sha3_224};

use crate::image::{Image, ImageError, LayerReader};
use crate::merge::{MergeError, Meta, Plan};
use crate::source::Source;
use crate::squashfs::{self, Compression, SquashfsError};
use crate::trailer::{self, ContainerConfig, TrailerError};

/// Why no `.gvmi` was written.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Resolving or reading the image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Merging its layers.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// Making the squashfs.
    #[error(transparent)]
    Squashfs(#[from] SquashfsError),
    /// Making the trailer.
    #[error(transparent)]
    Trailer(#[from] TrailerError),
    /// Writing the output.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// What Docker adds to every container's root (its "init layer"), and so to what gvmkit-build
/// exports: empty files the engine bind-mounts over, `/etc/mtab`, and the mount points of the
/// kernel's file systems.
fn init_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h
    };
    // Appending to a Vec cannot fail, and these names are short and valid.
    for dir in ["dev/pts", "dev/shm", "proc", "sys"] {
        let _ = b.append_data(
            &mut header(tar::EntryType::Directory, 0o755),
            dir,
            io::empty(),
        );
    }
    for file in [
        ".dockerenv",
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev/console",
    ] {
        let _ = b.append_data(
            &mut header(tar::EntryType::Regular, 0o755),
            file,
            io::empty(),
        );
    }
    let _ = b.append_link(
        &mut header(tar::EntryType::Symlink, 0o777),
        "etc/mtab",
        "/proc/mounts",
    );
    b.into_inner().unwrap_or_default()
}

/// What the output file is being made from.
pub enum Content<'a> {
    /// An image of an input: its layers are merged.
    Image(&'a Source, &'a Image),
    /// A root directory, taken as it is.
    Dir(&'a Path),
}

/// The finished image.
#[derive(Debug)]
pub struct Built {
    /// Its size in bytes.
    pub size: u64,
    /// The SHA3-224 of the whole file, hex: what a requestor's `hash:sha3:` reference names.
    pub sha3_224: String,
}

/// Writes the `.gvmi` of `content` with the trailer `config` at `out`. `progress` sees every byte
/// read from the input's layers.
pub fn build(
    content: Content<'_>,
    config: &ContainerConfig,
    out: &Path,
    compression: Compression,
    progress: &dyn Fn(u64),
) -> Result<Built, BuildError> {
    let out_err = |source| BuildError::Output {
        path: out.to_path_buf(),
        source,
    };
    let trailer = trailer::trailer(&config.to_json())?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Removed on any failure; renamed into place when whole.
    let tmp = tempfile::Builder::new()
        .prefix(".gvmi-build-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(out_err)?;
    match content {
        Content::Dir(root) => squashfs::from_dir(root, tmp.path(), compression)?,
        Content::Image(source, image) => {
            squash_image(source, image, tmp.path(), compression, progress)?
        }
    }
    // mksquashfs wrote its own file at the path: reopen it to append.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .read(true)
        .open(tmp.path())
        .map_err(out_err)?;
    file.write_all(&trailer).map_err(out_err)?;
    file.sync_all().map_err(out_err)?;
    let built = hash_file(&mut file).map_err(out_err)?;
    tmp.persist(out).map_err(|e| out_err(e.error))?;
    Ok(built)
}

/// Merges the layers of `image` (plus Docker's init layer) into a squashfs at `out`.
fn squash_image(
    source: &Source,
    image: &Image,
    out: &Path,
    compression: Compression,
    progress: &dyn Fn(u64),
) -> Result<(), BuildError> {
    let count = |n: usize| progress(n as u64);
    let mut plan = Plan::new();
    for i in 0..image.layers.len() {
        let mut layer = LayerReader::open(source, image, i, |_| {})?;
        plan.add_layer(&mut layer)?;
        layer.finish()?;
    }
    let init = init_layer();
    plan.add_layer(init.as_slice())?;
    plan.check()?;
    let mut root = plan.root().cloned().unwrap_or(Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: Vec::new(),
    });
    root.mtime = plan.newest();
    squashfs::from_tar(out, compression, &root, |w| {
        let mut tar = tar::Builder::new(w);
        plan.write_dirs(&mut tar)?;
        for i in 0..image.layers.len() {
            let mut layer = LayerReader::open(source, image, i, count)?;
            plan.write_layer(i, &mut layer, &mut tar)?;
            layer.finish()?;
        }
        plan.write_layer(image.layers.len(), init.as_slice(), &mut tar)?;
        tar.finish().map_err(MergeError::Write)?;
        Ok::<(), BuildError>(())
    })
}

/// The size and SHA3-224 of `file`, read from its start.
fn hash_file(file: &mut File) -> io::Result<Built> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha3_224::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Built {
        size,
        sha3_224: hex::encode(hasher.finalize()),
    })
}
