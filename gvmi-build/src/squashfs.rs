//! The squashfs, made by `mksquashfs` (squashfs-tools, which the runtime's setup installs): from
//! a merged tar on its stdin (`-tar`) or from a directory. The options are gvmkit-build's
//! (`-comp <method> -noappend`, `-Xhc` for lz4, mksquashfs's defaults otherwise: 128 KiB blocks,
//! extended attributes kept, the image padded to 4 KiB).

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::merge::Meta;

/// The compressions gvmkit-build offers; lzo is its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// LZO (gvmkit-build's default).
    #[default]
    Lzo,
    /// zlib.
    Gzip,
    /// LZ4, high compression.
    Lz4,
    /// XZ.
    Xz,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn args(self) -> &'static [&'static str] {
        match self {
            Compression::Lzo => &["-comp", "lzo"],
            Compression::Gzip => &["-comp", "gzip"],
            Compression::Lz4 => &["-comp", "lz4", "-Xhc"],
            Compression::Xz => &["-comp", "xz"],
            Compression::Zstd => &["-comp", "zstd"],
        }
    }
}

/// Why no squashfs was made.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    /// mksquashfs could not be started.
    #[error("cannot run mksquashfs (Debian: apt install squashfs-tools): {0}")]
    Spawn(#[source] io::Error),
    /// Feeding mksquashfs failed.
    #[error("cannot feed mksquashfs: {0}")]
    Write(#[source] io::Error),
    /// mksquashfs failed; its last line of output.
    #[error("mksquashfs failed ({status}): {message}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said last.
        message: String,
    },
}

/// The memory mksquashfs may use for its caches.
const MKSQUASHFS_MEM: &str = "256M";

/// Most bytes of mksquashfs's output kept for an error message.
const MESSAGE_LIMIT: usize = 64 * 1024;

/// `mksquashfs SOURCE OUT` with the options every image gets.
fn command(source: &Path, out: &Path, compression: Compression) -> Command {
    let mut c = Command::new("mksquashfs");
    c.arg(source)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress"])
        // mksquashfs sizes its caches to a quarter of the host's RAM and fills them as the image
        // grows (6 GiB here); this bound keeps it near 100 MiB whatever the image, at the same
        // speed (measured: bench-gvmi-build).
        .args(["-mem", MKSQUASHFS_MEM])
        .args(compression.args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Waits for mksquashfs; its last line of output on failure.
fn finish(
    mut child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
) -> Result<(), SquashfsError> {
    let status = child.wait().map_err(SquashfsError::Spawn)?;
    let said = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(SquashfsError::Failed {
            status,
            message: last_line(&said),
        })
    }
}

/// mksquashfs's last non-empty line of `text`.
fn last_line(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

/// Reads at most [`MESSAGE_LIMIT`] bytes of `r` on a thread (mksquashfs must never block on a
/// full pipe).
fn collect(r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut r = r;
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MESSAGE_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    })
}

/// `SOURCE_DATE_EPOCH`, the reproducible-builds convention, when set to a number.
fn source_date_epoch() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

/// A squashfs of the directory `root` at `out` (its owners and modes as they are; the creation
/// time `SOURCE_DATE_EPOCH` when set).
pub fn from_dir(root: &Path, out: &Path, compression: Compression) -> Result<(), SquashfsError> {
    let mut cmd = command(root, out, compression);
    if let Some(t) = source_date_epoch() {
        cmd.args(["-mkfs-time", &t.to_string()]);
    }
    let mut child = cmd.spawn().map_err(SquashfsError::Spawn)?;
    let stderr = child.stderr.take().map(collect);
    finish(child, stderr)
}

/// A squashfs at `out` of the tar that `write` streams; the root directory gets `root`'s
/// attributes, its time the newest of the image (`root.mtime`). An error of `write` stops mksquashfs and is returned as it is.
pub fn from_tar<E: From<SquashfsError>>(
    out: &Path,
    compression: Compression,
    root: &Meta,
    write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let mut child = command(Path::new("-"), out, compression)
        .arg("-tar")
        .args(["-root-mode", &format!("{:o}", root.mode & 0o7777)])
        .args(["-root-uid", &root.uid.to_string()])
        .args(["-root-gid", &root.gid.to_string()])
        // The same layers give the same bytes (and so the same hash). mksquashfs's tar mode
        // ignores -root-time and stamps the root and the file system with the time of the
        // build, unless SOURCE_DATE_EPOCH is set, which also clamps any later file time: the
        // newest time in the image changes nothing and stamps both.
        .env(
            "SOURCE_DATE_EPOCH",
            source_date_epoch().unwrap_or(root.mtime).to_string(),
        )
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| E::from(SquashfsError::Spawn(e)))?;
    let stderr = child.stderr.take().map(collect);
    let mut pipe = Pipe {
        to: child
            .stdin
            .take()
            .map(|s| io::BufWriter::with_capacity(1 << 20, s)),
        broken: false,
    };
    let written =
        write(&mut pipe).and_then(|()| pipe.flush().map_err(|e| E::from(SquashfsError::Write(e))));
    // Closing stdin is the end of the tar (a truncated one after an error: mksquashfs fails).
    let broken = pipe.broken;
    drop(pipe);
    let finished = finish(child, stderr);
    match (written, finished) {
        // mksquashfs stopped reading first: what it said is the cause.
        (Err(_), Err(e)) if broken => Err(E::from(e)),
        (Err(e), _) => Err(e),
        (Ok(()), finished) => finished.map_err(E::from),
    }
}

/// mksquashfs's stdin, noting whether it stopped reading.
struct Pipe {
    to: Option<io::BufWriter<std::process::ChildStdin>>,
    broken: bool,
}

impl Pipe {
    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if r.as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        {
            self.broken = true;
        }
        r
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match &mut self.to {
            Some(w) => w.write(buf),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = match &mut self.to {
            Some(w) => w.flush(),
            None => Ok(()),
        };
        self.note(r)
    }
}
