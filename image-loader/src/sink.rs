//! The write-and-hash stage of a download: a writer thread appends each received chunk to the
//! partial file and hands it to a hasher thread, so that hashing overlaps the network transfer
//! and the disk writes, and no second pass over the file is needed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
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
    file: File,
    start_offset: u64,
    algo: HashAlgo,
    mut rx: mpsc::Receiver<Msg>,
) -> io::Result<(u64, Digest)> {
    // The hasher gets its own thread so that hashing, the slowest stage, runs in parallel with
    // writing; it reads an earlier attempt's bytes through its own handle first.
    let prefix = file.try_clone()?;
    let (hash_tx, hash_rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE_CHUNKS);
    let hasher = std::thread::Builder::new()
        .name("download-hash".into())
        .spawn(move || hash_stream(prefix, start_offset, algo, hash_rx))?;
    let written = write_stream(file, start_offset, &mut rx, &hash_tx);
    drop(hash_tx);
    let digest = hasher
        .join()
        .map_err(|_| io::Error::other("hasher thread panicked"))??;
    Ok((written?, digest))
}

/// Writes every chunk to the file (forwarding it to the hasher), pushing dirty pages to disk as
/// it goes so that the final sync is short. Returns the file's length.
fn write_stream(
    file: File,
    start_offset: u64,
    rx: &mut mpsc::Receiver<Msg>,
    hash_tx: &std::sync::mpsc::SyncSender<Msg>,
) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(WRITE_BUF, file);
    out.get_mut().seek(SeekFrom::Start(start_offset))?;
    let mut writeback = Writeback::new(start_offset);
    let mut len = start_offset;
    let hasher_gone = || io::Error::other("hasher thread stopped");
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(chunk) => {
                out.write_all(&chunk)?;
                len += chunk.len() as u64;
                hash_tx.send(Msg::Data(chunk)).map_err(|_| hasher_gone())?;
                if writeback.due(len) {
                    out.flush()?;
                    writeback.advance(out.get_ref(), len);
                }
            }
            Msg::Reset => {
                out.flush()?;
                let f = out.get_mut();
                f.set_len(0)?;
                f.seek(SeekFrom::Start(0))?;
                len = 0;
                writeback = Writeback::new(0);
                hash_tx.send(Msg::Reset).map_err(|_| hasher_gone())?;
            }
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    Ok(len)
}

/// Hashes an earlier attempt's `start_offset` bytes, then every chunk as it comes.
fn hash_stream(
    prefix: File,
    start_offset: u64,
    algo: HashAlgo,
    rx: std::sync::mpsc::Receiver<Msg>,
) -> io::Result<Digest> {
    let mut hasher = algo.hasher();
    hash_prefix(&prefix, start_offset, &mut hasher)?;
    drop(prefix);
    for msg in rx {
        match msg {
            Msg::Data(chunk) => hasher.update(&chunk),
            Msg::Reset => hasher = algo.hasher(),
        }
    }
    Ok(hasher.finish())
}

/// Bytes between two writeback steps.
const WRITEBACK_WINDOW: u64 = 16 << 20;

/// Streams dirty pages to disk behind the writer (Linux `sync_file_range`): each full window is
/// submitted for writeback at once, and the one before it is waited for, so that at most two
/// windows are dirty and the final `fdatasync` has little left to do. Best effort: where the
/// call is not supported, the final sync does all the work.
struct Writeback {
    submitted: u64,
}

impl Writeback {
    fn new(from: u64) -> Self {
        Self { submitted: from }
    }

    fn due(&self, len: u64) -> bool {
        len >= self.submitted + WRITEBACK_WINDOW
    }

    fn advance(&mut self, file: &File, len: u64) {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let (Ok(start), Ok(count)) = (
            libc::off64_t::try_from(self.submitted),
            libc::off64_t::try_from(len - self.submitted),
        ) else {
            return;
        };
        // SAFETY: fd is a valid open descriptor owned by `file`; the call only reads its args.
        unsafe {
            libc::sync_file_range(fd, start, count, libc::SYNC_FILE_RANGE_WRITE);
            if let Some(prev) = start.checked_sub(WRITEBACK_WINDOW as libc::off64_t) {
                libc::sync_file_range(
                    fd,
                    prev.max(0),
                    WRITEBACK_WINDOW as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
        }
        self.submitted = len;
    }
}

/// Feeds the first `len` bytes of `file` (an earlier attempt's data) to the hasher. Reads by
/// position, so a handle shared with the writer keeps its offset.
fn hash_prefix(file: &File, len: u64, hasher: &mut crate::digest::StreamHasher) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; WRITE_BUF];
    let mut pos = 0u64;
    while pos < len {
        let want = buf
            .len()
            .min(usize::try_from(len - pos).unwrap_or(usize::MAX));
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "partial file shrank while resuming",
            ));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// Hashes a whole file (local packages that pin a digest).
pub(crate) fn hash_file(path: &Path, algo: HashAlgo) -> io::Result<Digest> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = algo.hasher();
    hash_prefix(&file, len, &mut hasher)?;
    Ok(hasher.finish())
}
