//! # hostile
//!
//! A guest-side test tool (not shipped in the runtime dir) that acts as a hostile guest. The
//! end-to-end tests put this static binary into a volume and run it in the VM as guest root, then
//! check that the host side stays correct and bounded: the console log is capped, a stopped or
//! disconnected init is detected, bad and forged frames are refused, and a busy guest can still be
//! stopped.
//!
//! Usage (each prints one line on stdout and exits 0, or prints `hostile: <error>` and exits 1):
//! - `hostile console-flood BYTES` — writes BYTES bytes of text lines to `/dev/ttyS0`.
//! - `hostile stop-init` — stops PID 1 with ptrace and leaves a tracer behind that keeps it stopped.
//! - `hostile steal-conn MODE` — takes a copy of init's vsock connection to the host (pidfd_getfd)
//!   and, by MODE: `shutdown`, `garbage` (64 KiB of 0xff), `big-packet` (64 KiB of 0xff in one
//!   write, so one vsock packet larger than the agent ever sends), `bad-frames:N` (good headers,
//!   payloads that do not decode) or `forged-output:N` (Output notifications for a pid the host
//!   never started).
//! - `hostile fork-bomb SECONDS` — a classic fork bomb that stops forking after SECONDS.
//! - `hostile cpu-hog SECONDS N` — N processes spinning for SECONDS.
//! - `hostile code-churn MIB ROUNDS` — makes MIB MiB of machine code in memory and runs every
//!   block of it, ROUNDS times, rewriting it between rounds, as a JIT does: under TCG every block
//!   run is translated anew, which grows QEMU's translation cache.
//! - `hostile create PATH MODE` — creates PATH with `open(O_CREAT | O_EXCL, MODE)` (octal), the
//!   way a program makes a setuid file in one call.
//!
//! Background processes (the tracer, the bomb, the hogs) detach from the command's pipes and
//! session, so the command itself exits right away.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

/// Bytes per line of console flood.
const LINE: usize = 100;
/// A pid the host never started (the guest's pid_max is at most 2^22).
const FORGED_PID: u64 = 4_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["console-flood", bytes] => number(bytes).and_then(console_flood),
        ["stop-init"] => stop_init(),
        ["steal-conn", mode] => steal_conn(mode),
        ["fork-bomb", secs] => number(secs).and_then(fork_bomb),
        ["cpu-hog", secs, n] => number(secs).and_then(|s| cpu_hog(s, number(n)?)),
        ["create", path, mode] => create(path, mode),
        ["code-churn", mib, rounds] => number(mib).and_then(|m| code_churn(m, number(rounds)?)),
        _ => {
            eprintln!(
                "usage: hostile console-flood BYTES | stop-init | steal-conn MODE \
                 | fork-bomb SECONDS | cpu-hog SECONDS N | create PATH MODE \
                 | code-churn MIB ROUNDS"
            );
            std::process::exit(2);
        }
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("hostile: {e}");
            std::process::exit(1);
        }
    }
}

/// Creates `path` with `open(O_CREAT | O_EXCL | O_WRONLY, mode)`; the mode as it landed.
fn create(path: &str, mode: &str) -> Result<String> {
    let mode = u32::from_str_radix(mode, 8).map_err(|_| format!("not an octal mode: {mode:?}"))?;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("create {path}: {e}"))?;
    let m = f.metadata().map_err(|e| format!("stat {path}: {e}"))?;
    use std::os::unix::fs::MetadataExt;
    Ok(format!("created {:o}", m.mode() & 0o7777))
}

fn number(s: &str) -> Result<u64> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

/// `what: <errno text>` for the last failed call.
fn os_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// Turns a C-style return value (negative on failure) into a result.
fn check<T: Copy + PartialOrd + From<i8>>(r: T, what: &str) -> Result<T> {
    if r < T::from(0) {
        Err(os_error(what))
    } else {
        Ok(r)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// ---- console-flood ----

fn console_flood(bytes: u64) -> Result<String> {
    let mut tty = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ttyS0")
        .map_err(|e| format!("open /dev/ttyS0: {e}"))?;
    let mut left = bytes;
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024 + LINE);
    while left > 0 {
        buf.clear();
        while buf.len() < 64 * 1024 {
            line_no += 1;
            let head = format!("flood {line_no:07} ");
            buf.extend_from_slice(head.as_bytes());
            buf.resize(buf.len() + LINE - 1 - head.len(), b'x');
            buf.push(b'\n');
        }
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        tty.write_all(&buf[..n])
            .map_err(|e| format!("write /dev/ttyS0: {e}"))?;
        left -= n as u64;
    }
    Ok(format!("wrote {bytes}"))
}

// ---- background processes ----

/// Forks; in the child, runs `body` detached from the command (stdio on /dev/null, a new
/// session) and exits with its status without returning. Returns the child's pid in the parent.
fn spawn_detached(body: impl FnOnce() -> i32) -> Result<libc::pid_t> {
    // SAFETY: this program is single-threaded, so the child may do anything the parent could.
    let pid = check(unsafe { libc::fork() }, "fork")?;
    if pid == 0 {
        detach();
        let code = body();
        // SAFETY: _exit ends the child without running the parent's exit-time cleanup.
        unsafe { libc::_exit(code) }
    }
    Ok(pid)
}

/// Puts stdin, stdout and stderr on /dev/null and starts a new session; best effort (there is
/// nowhere left to report a failure).
fn detach() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: plain syscall; fails harmlessly if we already lead a process group.
    unsafe { libc::setsid() };
}

fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

// ---- stop-init ----

fn stop_init() -> Result<String> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    // SAFETY: pipe2 just returned these two descriptors, owned from here on.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (rd_fd, wr_fd) = (rd.as_raw_fd(), wr.as_raw_fd());
    spawn_detached(move || {
        let report = match trace_init() {
            Ok(()) => vec![0u8],
            Err(e) => e.into_bytes(),
        };
        let stopped = report == [0];
        // SAFETY: the child's copies of the pipe ends: close the read end, write the report and
        // close the write end so the parent sees the end of it.
        unsafe {
            libc::close(rd_fd);
            libc::write(wr_fd, report.as_ptr().cast(), report.len());
            libc::close(wr_fd);
        }
        if !stopped {
            return 1;
        }
        // The tracee stays stopped for as long as its tracer lives.
        loop {
            // SAFETY: plain syscall.
            unsafe { libc::pause() };
        }
    })?;
    drop(wr);
    // The tracer's report: one zero byte on success, its error text otherwise.
    let deadline = Instant::now() + Duration::from_secs(10);
    wait_fd(
        rd.as_raw_fd(),
        libc::POLLIN,
        deadline,
        "waiting for the tracer",
    )?;
    let mut buf = [0u8; 512];
    // SAFETY: reads into a live buffer of the given size.
    let n = check(
        unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) },
        "read from the tracer",
    )? as usize;
    match &buf[..n] {
        [0] => Ok("init stopped".into()),
        [] => Err("the tracer exited without a report".into()),
        text => Err(String::from_utf8_lossy(text).into_owned()),
    }
}

/// Seizes PID 1 and stops it (a PTRACE_EVENT_STOP trap); it stays stopped until we let go.
fn trace_init() -> Result<()> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace requests with null addr/data, as PTRACE_SEIZE (no options) and
    // PTRACE_INTERRUPT take.
    check(
        unsafe { libc::ptrace(libc::PTRACE_SEIZE, 1 as libc::pid_t, null, null) },
        "ptrace(PTRACE_SEIZE, 1)",
    )?;
    check(
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, 1 as libc::pid_t, null, null) },
        "ptrace(PTRACE_INTERRUPT, 1)",
    )?;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        if unsafe { libc::waitpid(1, &mut status, libc::__WALL) } < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(os_error("waitpid(1)"));
        }
        if libc::WIFSTOPPED(status) {
            return Ok(());
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(format!("init ended (wait status {status:#x})"));
        }
    }
}

/// Polls `fd` for `events` until `deadline`.
fn wait_fd(fd: RawFd, events: libc::c_short, deadline: Instant, what: &str) -> Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{what}: timed out"));
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(()),
            0 => {}
            _ if errno() == libc::EINTR => {}
            _ => return Err(os_error(what)),
        }
    }
}

// ---- steal-conn ----

enum Steal {
    Shutdown,
    Garbage,
    BigPacket,
    BadFrames(u64),
    ForgedOutput(u64),
}

fn steal_conn(mode: &str) -> Result<String> {
    let mode = match mode.split_once(':') {
        None if mode == "shutdown" => Steal::Shutdown,
        None if mode == "garbage" => Steal::Garbage,
        None if mode == "big-packet" => Steal::BigPacket,
        Some(("bad-frames", n)) => Steal::BadFrames(number(n)?),
        Some(("forged-output", n)) => Steal::ForgedOutput(number(n)?),
        _ => {
            return Err(format!(
            "unknown steal-conn mode {mode:?} (shutdown, garbage, bad-frames:N, forged-output:N)"
        ))
        }
    };
    let conn = agent_conn()?;
    let fd = conn.as_raw_fd();
    match mode {
        Steal::Shutdown => {
            // SAFETY: plain syscall on our fd.
            check(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, "shutdown")?;
            Ok("shut down".into())
        }
        Steal::BigPacket => {
            let buf = [0xffu8; 64 * 1024];
            // SAFETY: writes from a live buffer of the given size.
            let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            check(n, "write")?;
            Ok(format!("wrote {n} bytes in one write"))
        }
        Steal::Garbage => {
            write_all(fd, &[0xff; 64 * 1024])?;
            Ok("wrote garbage".into())
        }
        Steal::BadFrames(n) => {
            // Version 1, kind 3 (Notification), reserved 0, length 4 (LE), request id 0 (LE),
            // then a payload that is not a valid Notification.
            let mut frame = vec![1u8, 3, 0, 0];
            frame.extend_from_slice(&4u32.to_le_bytes());
            frame.extend_from_slice(&0u64.to_le_bytes());
            frame.extend_from_slice(&[0xff; 4]);
            for _ in 0..n {
                write_all(fd, &frame)?;
            }
            Ok(format!("wrote {n} bad frames"))
        }
        Steal::ForgedOutput(n) => {
            let mut frame = Vec::new();
            agent_protocol::encode_output_into(&mut frame, FORGED_PID, 1, &[b'x'; 1024])
                .map_err(|e| e.to_string())?;
            for _ in 0..n {
                write_all(fd, &frame)?;
            }
            Ok(format!("wrote {n} forged outputs"))
        }
    }
}

/// A copy of PID 1's one connected AF_VSOCK stream socket.
fn agent_conn() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let pidfd = check(
        unsafe { libc::syscall(libc::SYS_pidfd_open, 1 as libc::c_long, 0 as libc::c_long) },
        "pidfd_open(1)",
    )?;
    // SAFETY: pidfd_open returned a new descriptor that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut found = Vec::new();
    let dir = fs::read_dir("/proc/1/fd").map_err(|e| format!("list /proc/1/fd: {e}"))?;
    for entry in dir {
        let entry = entry.map_err(|e| format!("list /proc/1/fd: {e}"))?;
        let Some(target_fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // An fd closed since the listing is skipped.
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if !link.to_string_lossy().starts_with("socket:[") {
            continue;
        }
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                pidfd.as_raw_fd() as libc::c_long,
                libc::c_long::from(target_fd),
                0 as libc::c_long,
            )
        };
        if fd < 0 {
            if errno() == libc::EBADF {
                continue;
            }
            return Err(os_error(&format!("pidfd_getfd(1, {target_fd})")));
        }
        // SAFETY: pidfd_getfd returned a new descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if is_vsock_stream(fd.as_raw_fd())? {
            found.push(fd);
        }
    }
    match found.len() {
        0 => Err("init has no vsock stream socket".into()),
        1 => Ok(found.remove(0)),
        n => Err(format!("init has {n} vsock stream sockets, expected one")),
    }
}

fn is_vsock_stream(fd: RawFd) -> Result<bool> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: addr and len describe a live buffer.
    check(
        unsafe {
            libc::getsockname(
                fd,
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        },
        "getsockname",
    )?;
    if libc::c_int::from(addr.ss_family) != libc::AF_VSOCK {
        return Ok(false);
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of_val(&ty) as libc::socklen_t;
    // SAFETY: ty and len describe a live c_int.
    check(
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut ty as *mut libc::c_int).cast(),
                &mut len,
            )
        },
        "getsockopt(SO_TYPE)",
    )?;
    Ok(ty == libc::SOCK_STREAM)
}

/// Writes all of `buf`; the fd shares init's file description, which is non-blocking, so
/// EAGAIN waits (up to 5 s) for room.
fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a live buffer of the given size.
        let len = buf.len().min(agent_protocol::MAX_VSOCK_WRITE);
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), len) };
        if n >= 0 {
            buf = &buf[n as usize..];
            continue;
        }
        match errno() {
            libc::EINTR => {}
            libc::EAGAIN => wait_fd(
                fd,
                libc::POLLOUT,
                Instant::now() + Duration::from_secs(5),
                "waiting for room on the vsock connection",
            )?,
            _ => return Err(os_error("write to the vsock connection")),
        }
    }
    Ok(())
}

// ---- fork-bomb, cpu-hog ----

fn fork_bomb(secs: u64) -> Result<String> {
    let deadline = monotonic() + Duration::from_secs(secs);
    spawn_detached(move || {
        // Every process, parent and child alike, goes on forking until the deadline. Failed
        // forks (the pid or memory limit) are the point: keep trying.
        while monotonic() < deadline {
            // SAFETY: single-threaded; the child just continues this loop.
            unsafe { libc::fork() };
        }
        0
    })?;
    Ok("bombing".into())
}

fn cpu_hog(secs: u64, n: u64) -> Result<String> {
    let deadline = monotonic() + Duration::from_secs(secs);
    for _ in 0..n {
        spawn_detached(move || {
            while monotonic() < deadline {
                std::hint::spin_loop();
            }
            0
        })?;
    }
    Ok("hogging".into())
}

// ---- code-churn ----

/// Bytes of one generated block: `mov eax, imm32; ret`, padded.
const BLOCK: usize = 16;

fn code_churn(mib: u64, rounds: u64) -> Result<String> {
    let len = usize::try_from(mib << 20).map_err(|_| "too many MiB".to_string())?;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(os_error("mmap"));
    }
    let blocks = len / BLOCK;
    let mut sum = 0u64;
    for round in 0..rounds {
        // SAFETY: `mem` is `len` writable bytes, and nothing runs from them while they are written.
        let code = unsafe { std::slice::from_raw_parts_mut(mem.cast::<u8>(), len) };
        for (i, block) in code.chunks_exact_mut(BLOCK).enumerate() {
            let imm = (i as u32) ^ (round as u32).rotate_left(24);
            block[0] = 0xb8; // mov eax, imm32
            block[1..5].copy_from_slice(&imm.to_le_bytes());
            block[5] = 0xc3; // ret
            block[6..].fill(0xcc); // int3: never reached
        }
        for i in 0..blocks {
            // SAFETY: block `i` is a complete `mov eax, imm32; ret` written above; x86 keeps
            // instruction fetch coherent with the stores that preceded it.
            let f: extern "C" fn() -> u32 =
                unsafe { std::mem::transmute(mem.cast::<u8>().add(i * BLOCK)) };
            sum = sum.wrapping_add(u64::from(f()));
        }
    }
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(mem, len) };
    Ok(format!("ran {} blocks (sum {sum})", blocks as u64 * rounds))
}
