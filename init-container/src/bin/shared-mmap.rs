//! # shared-mmap
//!
//! A guest-side test tool (not shipped in the runtime dir): whether a file system gives programs
//! shared mappings of its files, as SQLite's WAL mode, memory-mapped arrays and many databases use
//! them. The end-to-end tests put this static binary into a volume and run it in the VM.
//!
//! Usage: `shared-mmap PATH TEXT` — creates (or truncates) PATH to the length of TEXT, writes TEXT
//! through a shared writable mapping, `msync`s it, then prints what `read` gives back (`read: …`)
//! and what a second, read-only shared mapping shows (`mapped: …`). On failure it prints
//! `shared-mmap: <step>: <error>` and exits 1.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, text] = args.as_slice() else {
        eprintln!("usage: shared-mmap PATH TEXT");
        std::process::exit(2);
    };
    match check(path, text.as_bytes()) {
        Ok((read, mapped)) => {
            println!("read: {}", String::from_utf8_lossy(&read));
            println!("mapped: {}", String::from_utf8_lossy(&mapped));
        }
        Err(e) => {
            eprintln!("shared-mmap: {e}");
            std::process::exit(1);
        }
    }
}

fn step(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Writes `text` through a shared mapping; what `read` and a read-only mapping then show.
fn check(path: &str, text: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    if text.is_empty() {
        return Err("TEXT is empty".into());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(step("open"))?;
    file.set_len(text.len() as u64).map_err(step("ftruncate"))?;
    let fd = file.as_raw_fd();
    let map = Mapping::new(fd, text.len(), libc::PROT_READ | libc::PROT_WRITE)
        .map_err(step("mmap shared writable"))?;
    // SAFETY: the mapping is `text.len()` bytes long, writable, and ours alone in this process.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), map.ptr, text.len()) };
    // SAFETY: msync over exactly the mapping made above.
    if unsafe { libc::msync(map.ptr.cast(), text.len(), libc::MS_SYNC) } != 0 {
        return Err(step("msync")(io::Error::last_os_error()));
    }
    drop(map);
    let mut read = Vec::new();
    OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|mut f| f.read_to_end(&mut read))
        .map_err(step("read back"))?;
    let ro =
        Mapping::new(fd, text.len(), libc::PROT_READ).map_err(step("mmap shared read-only"))?;
    // SAFETY: the mapping is `text.len()` bytes long and readable.
    let mapped = unsafe { std::slice::from_raw_parts(ro.ptr, text.len()) }.to_vec();
    Ok((read, mapped))
}

/// A shared mapping of a whole (short) file, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: i32, len: usize, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; nothing else is touched.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` made.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
