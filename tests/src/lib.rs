//! # e2e
//!
//! Harness for the end-to-end tests: boots the real guest (kernel and initramfs from the runtime
//! directory that `scripts/build-runtime.sh` assembles, the sample image from
//! `scripts/build-sample-image.sh`) under QEMU with vhost-device-vsock and virtiofsd, and talks to
//! the agent, which connects to the host: vhost-device-vsock delivers the guest's connection to
//! port P at `<uds-path>_P`, where the harness listens before QEMU starts.

pub mod stats;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use qemu_config::{Accel, Console, Disk, DiskAccess, FsShare, Machine, VmConfig, Vsock};

use agent_protocol::{
    notification, request, response, Exited, Frame, FrameDecoder, Notification, Request,
    RunProcess, AGENT_PORT,
};

/// Where the artifacts the tests boot live.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// `vmlinux`, `initramfs*`.
    pub runtime_dir: PathBuf,
    /// `virtiofsd`, `vhost-device-vsock`.
    pub tools_bin: PathBuf,
    /// The sample GVMI image.
    pub image: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Artifacts {
    /// Finds the artifacts (env overrides: `YA_RUNTIME_VM_RUNTIME_DIR`, `YA_RUNTIME_VM_TOOLS_DIR`,
    /// `E2E_IMAGE`); panics with what to run when one is missing.
    pub fn find() -> Self {
        let root = repo_root();
        let env_or = |k: &str, d: PathBuf| std::env::var_os(k).map(PathBuf::from).unwrap_or(d);
        let a = Self {
            runtime_dir: env_or(
                "YA_RUNTIME_VM_RUNTIME_DIR",
                root.join("target/debug/runtime"),
            ),
            tools_bin: env_or("YA_RUNTIME_VM_TOOLS_DIR", root.join(".tools")).join("bin"),
            image: env_or("E2E_IMAGE", root.join("target/images/sample.gvmi")),
        };
        for (p, how) in [
            (a.runtime_dir.join("vmlinux"), "scripts/build-runtime.sh"),
            (a.initramfs(), "scripts/build-runtime.sh"),
            (a.tools_bin.join("virtiofsd"), "scripts/setup.sh"),
            (a.tools_bin.join("vhost-device-vsock"), "scripts/setup.sh"),
            (a.image.clone(), "scripts/build-sample-image.sh"),
        ] {
            assert!(
                p.exists(),
                "{} is missing: run {how} (scripts/test.sh does)",
                p.display()
            );
        }
        a
    }

    /// The agent initramfs.
    pub fn initramfs(&self) -> PathBuf {
        first_existing(&self.runtime_dir, "initramfs")
    }

    /// The bare-floor initramfs (its init only powers off).
    pub fn floor_initramfs(&self) -> PathBuf {
        first_existing(&self.runtime_dir, "initramfs-floor")
    }
}

fn first_existing(dir: &Path, stem: &str) -> PathBuf {
    for ext in ["cpio", "cpio.gz", "cpio.lz4", "cpio.zst"] {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.exists() {
            return p;
        }
    }
    dir.join(format!("{stem}.cpio"))
}

/// A running VM and its helpers; everything is killed on drop.
pub struct Vm {
    dir: tempfile::TempDir,
    /// Where the guest's agent connection arrives (bound before QEMU starts).
    listener: UnixListener,
    helpers: Vec<Child>,
    qemu: Child,
    /// The host directory shared as virtio-fs tag `vol0`.
    pub volume: PathBuf,
}

fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(cmd: &mut Command) -> Child {
    // Children die with the test process, even when it is killed.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

impl Vm {
    /// Boots the sample image with the agent initramfs and a shared volume dir, on the machine
    /// the runtime picks for TCG on this host.
    pub fn boot(a: &Artifacts) -> Self {
        Self::boot_on(a, host_machine())
    }

    /// [`Vm::boot`] on a given machine, with the TSC frequency its guest is told.
    pub fn boot_on(a: &Artifacts, machine: (Machine, Option<u64>)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let volume = d.join("volume");
        std::fs::create_dir(&volume).expect("volume dir");
        let mut helpers = Vec::new();
        helpers.push(spawn(
            Command::new(a.tools_bin.join("virtiofsd"))
                .arg(format!("--socket-path={}", d.join("fs0.sock").display()))
                .arg(format!("--shared-dir={}", volume.display()))
                .args(["--sandbox", "none", "--cache", "auto"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("virtiofsd.log")).expect("log")),
        ));
        helpers.push(spawn(
            Command::new(a.tools_bin.join("vhost-device-vsock"))
                .args(["--guest-cid", "3", "--socket"])
                .arg(d.join("vsock.sock"))
                .arg("--uds-path")
                .arg(d.join("vm.vsock"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("vsock.log")).expect("log")),
        ));
        wait_for(&d.join("fs0.sock"), Duration::from_secs(10));
        wait_for(&d.join("vsock.sock"), Duration::from_secs(10));
        // vhost-device-vsock delivers the guest's connection to port P at `<uds-path>_P`.
        let listener =
            UnixListener::bind(d.join(format!("vm.vsock_{AGENT_PORT}"))).expect("listen");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let qemu = spawn(
            Command::new("qemu-system-x86_64")
                .args(qemu_args_on(machine, a, d, &a.initramfs(), true))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("qemu.log")).expect("log")),
        );
        Self {
            dir,
            listener,
            helpers,
            qemu,
            volume,
        }
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Waits for the agent's connection (the guest calls the host), up to `limit`.
    pub fn connect(&mut self, limit: Duration) -> Agent {
        let start = Instant::now();
        loop {
            if let Some(status) = self.qemu.try_wait().ok().flatten() {
                panic!(
                    "QEMU exited ({status}) before the agent answered; console:\n{}",
                    self.console()
                );
            }
            if let Ok((s, _)) = self.listener.accept() {
                s.set_nonblocking(false).expect("blocking socket");
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                return Agent {
                    stream: s,
                    decoder: FrameDecoder::new(),
                    next_id: 1,
                    notes: VecDeque::new(),
                };
            }
            assert!(
                start.elapsed() < limit,
                "agent not ready within {limit:?}; console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.qemu.try_wait().ok().flatten() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        for h in &mut self.helpers {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// The machine the runtime boots under TCG on this host, with its guest's TSC frequency.
pub fn host_machine() -> (Machine, Option<u64>) {
    Machine::for_host(Accel::Tcg, qemu_config::tsc::host_tsc_khz())
}

/// The machine the runtime boots under TCG on this host, as benchmarks name it.
pub fn machine_name() -> &'static str {
    match host_machine().0 {
        Machine::Microvm => "microvm",
        Machine::Q35 => "q35",
    }
}

/// QEMU's argv for one VM in `d` (sockets made by the helpers there), rendered by qemu-config;
/// `devices` adds the image disk, the volume and vsock.
pub fn qemu_args(a: &Artifacts, d: &Path, initrd: &Path, devices: bool) -> Vec<String> {
    qemu_args_on(host_machine(), a, d, initrd, devices)
}

/// [`qemu_args`] on a given machine, with the TSC frequency its guest is told.
pub fn qemu_args_on(
    (machine, tsc_khz): (Machine, Option<u64>),
    a: &Artifacts,
    d: &Path,
    initrd: &Path,
    devices: bool,
) -> Vec<String> {
    let mut vm = VmConfig {
        accel: Accel::Tcg,
        machine,
        tsc_khz,
        cpus: 1,
        memory_mib: 256,
        kernel: a.runtime_dir.join("vmlinux"),
        initrd: initrd.to_path_buf(),
        cmdline: "console=ttyS0 quiet panic=-1 yarv.hostname=e2e".into(),
        disks: Vec::new(),
        vsock: None,
        shares: Vec::new(),
        nics: Vec::new(),
        console: Console::File(d.join("console.log")),
        free_page_reporting: false,
        tcg_cache_mib: qemu_config::DEFAULT_TCG_CACHE_MIB,
    };
    if devices {
        vm.disks.push(Disk {
            path: a.image.clone(),
            serial: "image".into(),
            access: DiskAccess::ReadOnly,
        });
        vm.vsock = Some(Vsock::VhostUser {
            socket: d.join("vsock.sock"),
        });
        vm.shares.push(FsShare {
            socket: d.join("fs0.sock"),
            tag: "vol0".into(),
        });
    }
    vm.to_args().expect("a valid VM configuration")
}

/// Boots the floor initramfs (its init powers off at once) and returns QEMU's wall time from
/// start to exit: the bare cost of booting this kernel on this machine.
pub fn floor_boot(a: &Artifacts) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    let status = spawn(
        Command::new("qemu-system-x86_64")
            .args(qemu_args(a, dir.path(), &a.floor_initramfs(), false))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .wait()
    .expect("wait for QEMU");
    let took = start.elapsed();
    assert!(status.success(), "floor boot failed: {status}");
    took
}

/// A client of the guest agent.
pub struct Agent {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    notes: VecDeque<Notification>,
}

/// What a process produced.
#[derive(Debug, Default)]
pub struct Finished {
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub exit: Exited,
    /// Output received after the exit notification (must stay empty).
    pub late: usize,
}

impl Agent {
    fn read_frame(&mut self) -> std::io::Result<Frame> {
        let mut buf = [0u8; 65536];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.decoder.feed(&buf[..n]);
        }
    }

    /// Sends a request and waits for its response (notifications meanwhile are kept).
    pub fn request(&mut self, body: request::Body) -> std::io::Result<response::Body> {
        let payload = prost::Message::encode_to_vec(&Request { body: Some(body) });
        self.request_raw(&payload)
    }

    /// Sends a request frame with `payload` as it is (valid or not) and waits for its response,
    /// keeping the notifications that arrive meanwhile.
    pub fn request_raw(&mut self, payload: &[u8]) -> std::io::Result<response::Body> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = vec![
            agent_protocol::VERSION,
            agent_protocol::Kind::Request as u8,
            0,
            0,
        ];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame)?;
        loop {
            match self.read_frame()? {
                Frame::Response(rid, r) if rid == id => {
                    return r
                        .body
                        .ok_or_else(|| std::io::Error::other("empty response"))
                }
                Frame::Notification(n) => self.notes.push_back(n),
                other => return Err(std::io::Error::other(format!("unexpected frame {other:?}"))),
            }
        }
    }

    /// Starts a process; `Err` carries the agent's error message.
    pub fn run(&mut self, req: RunProcess) -> Result<u64, String> {
        match self
            .request(request::Body::Run(req))
            .map_err(|e| e.to_string())?
        {
            response::Body::Started(s) => Ok(s.pid),
            response::Body::Error(e) => Err(e.message),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    fn next_note(&mut self) -> std::io::Result<Notification> {
        if let Some(n) = self.notes.pop_front() {
            return Ok(n);
        }
        match self.read_frame()? {
            Frame::Notification(n) => Ok(n),
            other => Err(std::io::Error::other(format!("unexpected frame {other:?}"))),
        }
    }

    /// Collects a process's output until its exit notification.
    pub fn wait(&mut self, pid: u64) -> std::io::Result<Finished> {
        let mut f = Finished::default();
        let mut others = VecDeque::new();
        loop {
            let n = self.next_note()?;
            match n.body {
                Some(notification::Body::Output(o)) if o.pid == pid => match o.fd {
                    1 => f.stdout.extend(o.data),
                    _ => f.stderr.extend(o.data),
                },
                Some(notification::Body::Exited(e)) if e.pid == pid => {
                    f.exit = e;
                    // Put back what belonged to other processes.
                    others.extend(self.notes.drain(..));
                    self.notes = others;
                    return Ok(f);
                }
                _ => others.push_back(n),
            }
        }
    }
}

/// A `RunProcess` for `argv` (argv\[0\] is the program) in the sample image's environment.
pub fn cmd(argv: &[&str]) -> RunProcess {
    RunProcess {
        path: argv[0].to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            "PATH=/bin:/sbin:/usr/bin:/usr/sbin".into(),
            "HOME=/root".into(),
        ],
        cwd: "/".into(),
        ..Default::default()
    }
}
