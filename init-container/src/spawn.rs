//! Starting a program the way `posix_spawn` does, with the steps it cannot do (chroot, setsid,
//! user switch): `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`. The child shares the
//! init's memory and the init sleeps until the child has called `execve` (or failed), so nothing
//! is copied: no page tables, no copy-on-write faults in either process afterwards. Under TCG a
//! `fork` of the init and its faults cost several milliseconds per command; this is the agent's
//! hot path. The child is born in the requestor's cgroup: moving it there by writing
//! `cgroup.procs` cost ~1.2 ms per process under TCG (measured in the guest), more than the rest
//! of the spawn.
//!
//! The child runs on its own stack and only makes raw system calls on data prepared beforehand:
//! it must not allocate, take locks or return. A failure is written into the shared [`Plan`]
//! (which step, errno) before `_exit(127)`, and the init reads it once `clone` returns.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

/// The child's stack.
const STACK_SIZE: usize = 64 * 1024;

/// Set once the init runs as [`adopt_root_identity`] makes it.
static ROOT_IDENTITY: AtomicBool = AtomicBool::new(false);

/// Makes the init's own credentials those of a command run as root (uid 0, gid 0, supplementary
/// groups `[0]`), so such a command (the common case) inherits them and its child skips three
/// system calls. The kernel starts the init as uid 0 and gid 0 with no supplementary groups.
pub fn adopt_root_identity() -> nix::Result<()> {
    nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(0)])?;
    ROOT_IDENTITY.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether the child of `plan` has its credentials from the init already.
fn inherits_identity(plan: &Plan) -> bool {
    ROOT_IDENTITY.load(Ordering::Relaxed) && plan.uid == 0 && plan.gid == 0 && plan.groups == [0]
}

/// The step at which the child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the process (`clone3`): EAGAIN when the requestor's cgroup is at its limit.
    Start,
    /// Setting up stdin/stdout/stderr.
    Stdio,
    /// Resetting the signal mask and dispositions.
    Signals,
    /// `setsid`.
    Session,
    /// `chroot` into the image root.
    Chroot,
    /// `chdir` to the working directory.
    Chdir,
    /// Supplementary groups, gid, uid.
    Identity,
    /// `execve` of every candidate path.
    Exec,
}

/// Everything the child needs, prepared by the init before `clone`.
pub struct Plan {
    /// Paths to try in order (one for a path with a '/', one per `PATH` entry otherwise).
    pub candidates: Vec<CString>,
    /// argv, NUL-terminated strings.
    pub argv: Vec<CString>,
    /// The environment, `KEY=VALUE`.
    pub env: Vec<CString>,
    /// The image root.
    pub root: CString,
    /// The working directory inside it.
    pub cwd: CString,
    /// Descriptors to install as 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// Group id.
    pub gid: libc::gid_t,
    /// User id.
    pub uid: libc::uid_t,
    /// The directory of the cgroup the process is born in (-1: the init's).
    pub cgroup: RawFd,
}

/// Written by the child on failure (shared memory).
struct Outcome {
    failed: Option<(Step, i32)>,
}

struct Shared<'a> {
    plan: &'a Plan,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The init already has the plan's credentials ([`inherits_identity`]): the child keeps them.
    inherit_identity: bool,
    outcome: Outcome,
}

/// Starts the plan's program; returns its pid, or the step that failed and its errno (the
/// failed child is already reaped).
pub fn spawn(plan: &Plan) -> Result<i32, (Step, Errno)> {
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let (argv, envp) = (ptrs(&plan.argv), ptrs(&plan.env));
    let mut shared = Shared {
        plan,
        argv: &argv,
        envp: &envp,
        inherit_identity: inherits_identity(plan),
        outcome: Outcome { failed: None },
    };
    let mut stack = vec![0u8; STACK_SIZE];
    let base = stack.as_mut_ptr() as usize;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: base as u64,
        // The kernel starts the child at stack + stack_size: that top must be 16-byte aligned.
        stack_size: (((base + STACK_SIZE) & !15) - base) as u64,
        ..CloneArgs::default()
    };
    if plan.cgroup >= 0 {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = plan.cgroup as u64;
    }
    // SAFETY: `child` only reads `shared` and writes its outcome, on its own stack, and the
    // parent is suspended (CLONE_VFORK) until the child has exec'd or exited, so `shared`,
    // `argv`, `envp` and `stack` outlive every use.
    let pid = unsafe { clone3(&args, child, std::ptr::addr_of_mut!(shared).cast()) };
    if pid < 0 {
        return Err((Step::Start, Errno::from_raw(-pid as i32)));
    }
    let pid = pid as i32;
    // SAFETY: the child has finished with `shared` (it exec'd or exited); a volatile read makes
    // sure the compiler does not assume the value unchanged across the clone.
    let failed = unsafe { std::ptr::read_volatile(&shared.outcome.failed) };
    match failed {
        None => Ok(pid),
        Some((step, errno)) => {
            let mut status = 0;
            // SAFETY: reaps the child that just failed; it is ours.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Err((step, Errno::from_raw(errno)))
        }
    }
}

/// `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Linux's `CLONE_INTO_CGROUP` (5.7+).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3` that runs `f(arg)` in the child on the stack `args` names, then `_exit`s with its
/// result; returns the child's pid to the parent, or `-errno`. No libc wrapper exists: the child
/// must not return into the parent's frames on a stack that is not theirs.
///
/// # Safety
/// `args.stack` must point to `args.stack_size` writable bytes that outlive the child's use,
/// and `f` must never return into anything of the parent's (it may return: the child exits).
unsafe fn clone3(
    args: &CloneArgs,
    f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // The child comes back from `syscall` with rax = 0 on the new stack (16-byte aligned, so
    // after `call` pushes the return address the callee sees the ABI's alignment); r12 and r13
    // survive the system call in both processes.
    core::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "mov edi, eax",
        "mov eax, {exit}",
        "syscall",
        "ud2",
        "2:",
        exit = const libc::SYS_exit,
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") args as *const CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") arg,
        in("r13") f as usize,
        lateout("rcx") _,
        lateout("r11") _,
    );
    ret
}

fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// The child: raw system calls only.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Shared`, alive and not touched by the suspended parent.
    let shared = unsafe { &mut *arg.cast::<Shared>() };
    let plan = shared.plan;
    let fail = |shared: &mut Shared, step: Step| -> libc::c_int {
        shared.outcome.failed = Some((step, errno()));
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(127) }
    };
    // SAFETY (all calls below): plain system calls on valid descriptors and pointers into
    // `plan`, which outlives the child's use of it.
    unsafe {
        for (target, &fd) in plan.stdio.iter().enumerate() {
            // dup2 onto a different number clears close-on-exec on the copy.
            if libc::dup2(fd, target as RawFd) < 0 {
                return fail(shared, Step::Stdio);
            }
        }
        // Out of the init's priority (see limits.rs); not worth failing the command for.
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        // The init blocks SIGCHLD (signalfd) and Rust ignores SIGPIPE: neither carries over.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0
            || libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR
        {
            return fail(shared, Step::Signals);
        }
        if libc::setsid() < 0 {
            return fail(shared, Step::Session);
        }
        if libc::chroot(plan.root.as_ptr()) < 0 {
            return fail(shared, Step::Chroot);
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            return fail(shared, Step::Chdir);
        }
        // Raw syscalls: glibc's wrappers would try to coordinate threads this child does not own.
        if !shared.inherit_identity
            && (libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setgid, plan.gid) < 0
                || libc::syscall(libc::SYS_setuid, plan.uid) < 0)
        {
            return fail(shared, Step::Identity);
        }
        // Like execvp: the first error other than "not there" wins, else the last one.
        let mut first_real = 0;
        for path in &plan.candidates {
            libc::execve(path.as_ptr(), shared.argv.as_ptr(), shared.envp.as_ptr());
            let e = errno();
            if first_real == 0 && !matches!(e, libc::ENOENT | libc::ENOTDIR) {
                first_real = e;
            }
        }
        if first_real != 0 {
            *libc::__errno_location() = first_real;
        }
        fail(shared, Step::Exec)
    }
}
