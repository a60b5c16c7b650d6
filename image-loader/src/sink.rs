//! The write-and-hash stage of a download: a blocking thread that appends each received chunk to
//! the partial file and feeds it to the hasher, so that hashing overlaps the network transfer and
//! no second pass over the file is needed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::digest::{Digest, HashAlgo};

/// Chunks in flight between the network and the writer; bounds memory and gives backpressure.
const QUEUE_CHUNKS: usize = 256;
/// Write buffer size.
const WRITE_BUF: usize = 1 << 20;

enum Msg {
    Data(Bytes),
    Reset,
}

/// A running writer thread for one partial file.
pub(crate) struct Sink {
    tx: mpsc::Sender<Msg>,
    handle: JoinHandle<io::Result<(u64, Digest)>>,
    path: PathBuf,
    /// Bytes already in the file when the sink started (resumed from an earlier attempt).
    pub start_offset: u64,
}

/// What the writer thread ended with.
pub(crate) struct Written {
    /// Total length of the file.
    pub len: u64,
    /// Digest of the whole file.
    pub digest: Digest,
}

impl Sink {
    /// Opens `path` (keeping its bytes when `resume`, truncating otherwise) and starts the writer.
    pub fn start(path: &Path, algo: HashAlgo, resume: bool) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(!resume)
            .open(path)?;
        let start_offset = file.metadata()?.len();
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let handle = tokio::task::spawn_blocking(move || run(file, start_offset, algo, rx));
        Ok(Self {
            tx,
            handle,
            path: path.to_path_buf(),
            start_offset,
        })
    }

    /// Appends a chunk. Fails if the writer has stopped (its error comes from [`Sink::finish`]).
    pub async fn write(&self, chunk: Bytes) -> Result<(), ()> {
        self.tx.send(Msg::Data(chunk)).await.map_err(|_| ())
    }

    /// Drops everything written so far and starts the hash anew.
    pub async fn reset(&self) -> Result<(), ()> {
        self.tx.send(Msg::Reset).await.map_err(|_| ())
    }

    /// Flushes and syncs the file, and returns its length and digest.
    pub async fn finish(self) -> io::Result<Written> {
        drop(self.tx);
        let (len, digest) = self
            .handle
            .await
            .map_err(|e| io::Error::other(format!("writer thread failed: {e}")))?
            .map_err(|e| {
                io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display()))
            })?;
        Ok(Written { len, digest })
    }
}

fn run(
    mut file: File,
    start_offset: u64,
    algo: HashAlgo,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<(u64, Digest)> {
    let mut hasher = algo.hasher();
    hash_prefix(&mut file, start_offset, &mut hasher)?;
    let mut out = BufWriter::with_capacity(WRITE_BUF, file);
    let mut len = start_offset;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(chunk) => {
                out.write_all(&chunk)?;
                hasher.update(&chunk);
                len += chunk.len() as u64;
            }
            Msg::Reset => {
                out.flush()?;
                let f = out.get_mut();
                f.set_len(0)?;
                f.seek(SeekFrom::Start(0))?;
                hasher = algo.hasher();
                len = 0;
            }
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    Ok((len, hasher.finish()))
}

/// Feeds the first `len` bytes of `file` (an earlier attempt's data) to the hasher and leaves the
/// file positioned after them.
fn hash_prefix(
    file: &mut File,
    len: u64,
    hasher: &mut crate::digest::StreamHasher,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; WRITE_BUF];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "partial file shrank while resuming",
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.seek(SeekFrom::Start(len))?;
    Ok(())
}

/// Hashes a whole file (local packages that pin a digest).
pub(crate) fn hash_file(path: &Path, algo: HashAlgo) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = algo.hasher();
    hash_prefix(&mut file, len, &mut hasher)?;
    Ok(hasher.finish())
}
