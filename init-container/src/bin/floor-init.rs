//! # floor-init
//!
//! The "bare floor" for boot benchmarks: a static PID 1 that does nothing but say it is up and
//! power the VM off. Booting an initramfs holding only this binary measures what the kernel and
//! QEMU cost before any init work starts (`scripts/build-runtime.sh` packs it as
//! `initramfs-floor.*`).
//!
//! It prints one line, `floor-init: up (uptime N.NNN s)`, to `/dev/console` (mounting devtmpfs on
//! `/dev` first if the node is missing, falling back to stdout), then syncs and powers off.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io::Write;

fn main() {
    let line = format!("floor-init: up (uptime {})\n", uptime());
    if !write_console(&line) {
        let _ = std::io::stdout().write_all(line.as_bytes());
    }
    // SAFETY: plain syscalls without pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    eprintln!(
        "floor-init: power off failed: {}",
        std::io::Error::last_os_error()
    );
    // PID 1 exiting makes the kernel panic, which `panic=-1` turns into a reboot.
    std::process::exit(1);
}

/// Seconds since boot (CLOCK_BOOTTIME needs no /proc).
fn uptime() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return "unknown".into();
    }
    format!("{}.{:03} s", ts.tv_sec, ts.tv_nsec / 1_000_000)
}

fn write_console(line: &str) -> bool {
    let open = || OpenOptions::new().write(true).open("/dev/console");
    let console = open().or_else(|_| {
        mount_devtmpfs();
        open()
    });
    match console {
        Ok(mut c) => c.write_all(line.as_bytes()).is_ok(),
        Err(_) => false,
    }
}

fn mount_devtmpfs() {
    const DEV: &CStr = c"/dev";
    const DEVTMPFS: &CStr = c"devtmpfs";
    // SAFETY: all pointers are NUL-terminated static strings or null (no mount data).
    unsafe {
        libc::mkdir(DEV.as_ptr(), 0o755);
        libc::mount(
            DEVTMPFS.as_ptr(),
            DEV.as_ptr(),
            DEVTMPFS.as_ptr(),
            0,
            std::ptr::null(),
        );
    }
}
