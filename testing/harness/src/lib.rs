//! # test-harness
//!
//! What every end-to-end test and benchmark of the runtime does the same way: put an image in a
//! private activity directory and deploy it, start `ya-runtime-vm start` and drive it through
//! ya-runtime-api 0.7.0's own client as the exe-unit does (or run `ya-runtime-vm run`), collect
//! one process's events, find the activity's processes and their memory, and check what the
//! activity left behind (processes, scratch dirs, files in the workdir). It sits beside the
//! tests, at the far end of the data flow: it only talks to the runtime binary as yagna would.

pub mod inet_peer;
pub mod net_peer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use local_runner::ChannelEvents;
use tokio::sync::mpsc;
use ya_runtime_api::server::{spawn, ProcessStatus, RunProcess, RuntimeControl, RuntimeService};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `ya-runtime-vm` binary cargo built beside the running test (`target/<profile>/`).
pub fn runtime_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    profile_dir.join("ya-runtime-vm")
}

/// The sample image (`scripts/build-sample-image.sh`).
pub fn sample_image() -> Vec<u8> {
    std::fs::read(repo().join("target/images/sample.gvmi")).expect("scripts/build-sample-image.sh")
}

/// The sample image's squashfs, without its trailer.
fn sample_squashfs() -> Vec<u8> {
    let mut sample = sample_image();
    let n = sample.len();
    let json_len: usize = std::str::from_utf8(&sample[n - 8..])
        .unwrap()
        .parse()
        .unwrap();
    sample.truncate(n - 8 - json_len - 4);
    sample
}

/// The sample image's file system under another configuration.
pub fn sample_with_config(config_json: &str) -> Vec<u8> {
    let mut image = sample_squashfs();
    image.extend(test_fixtures::images::trailer(config_json.as_bytes()));
    image
}

/// A static guest tool built by `scripts/build-runtime.sh` (`vsock-send`, `hostile`,
/// `shared-mmap`).
pub fn guest_tool(name: &str) -> PathBuf {
    let p = repo()
        .join("target/x86_64-unknown-linux-gnu/debug")
        .join(name);
    assert!(p.is_file(), "{} (scripts/build-runtime.sh)", p.display());
    p
}

/// Collects one process's output until its final event; returns (stdout, stderr, code). Events
/// of other processes are not expected.
pub async fn finish(
    events: &mut mpsc::UnboundedReceiver<ProcessStatus>,
    pid: u64,
) -> (Vec<u8>, Vec<u8>, i32) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let s = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("event in time")
            .expect("event stream open");
        assert_eq!(s.pid, pid, "events of one process at a time in this test");
        out.extend(&s.stdout);
        err.extend(&s.stderr);
        if !s.running {
            return (out, err, s.return_code);
        }
    }
}

/// A `RunProcess` request for `bin` with `args` (argv[0] included).
pub fn run(bin: &str, args: &[&str]) -> RunProcess {
    RunProcess {
        bin: bin.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Starts `r` and returns its pid (the request must succeed).
pub async fn pid_of(rt: &impl RuntimeService, r: RunProcess) -> u64 {
    rt.run_process(r).await.expect("the process starts").pid
}

/// `sh -c script`.
pub fn sh(script: &str) -> RunProcess {
    run("/bin/sh", &["sh", "-c", script])
}

/// An image in a private directory, deployed or about to be.
pub struct Activity {
    /// The activity's directory: the image, `work/` (the workdir), the runtime's log, and the
    /// VM's scratch dir (`TMPDIR` points here).
    pub dir: tempfile::TempDir,
    /// The deploy result's `vols`: (guest path, host dir name).
    pub vols: Vec<(String, String)>,
    /// The `ya-runtime-vm` binary.
    runtime: PathBuf,
}

/// A process of an activity, as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its pid.
    pub pid: i32,
    /// Its program's file name.
    pub program: String,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
    /// Its resident set in KiB.
    pub rss_kib: u64,
}

impl Activity {
    /// The sample image, deployed.
    pub async fn deploy() -> Self {
        Self::deploy_image(&sample_image()).await
    }

    /// Deploys these image bytes (as `sample.gvmi` in the activity's dir).
    pub async fn deploy_image(image: &[u8]) -> Self {
        Self::deploy_with(image, &[]).await
    }

    /// Deploys these image bytes with these extra global arguments.
    pub async fn deploy_with(image: &[u8], extra: &[&str]) -> Self {
        Self::deploy_in(tempfile::tempdir().unwrap(), image, extra).await
    }

    /// As [`Activity::deploy_with`], in this directory.
    pub async fn deploy_in(dir: tempfile::TempDir, image: &[u8], extra: &[&str]) -> Self {
        let mut a = Self::new_in(dir, image);
        a.deploy_now(extra).await;
        a
    }

    /// These image bytes as `sample.gvmi` in this directory, not deployed yet (`run` deploys
    /// by itself; [`Activity::deploy_now`] as the exe-unit does).
    pub fn new_in(dir: tempfile::TempDir, image: &[u8]) -> Self {
        std::fs::write(dir.path().join("sample.gvmi"), image).unwrap();
        Self {
            dir,
            vols: Vec::new(),
            runtime: runtime_bin(),
        }
    }

    /// The same activity run by another `ya-runtime-vm` binary (a release build).
    pub fn with_runtime(mut self, runtime: PathBuf) -> Self {
        self.runtime = runtime;
        self
    }

    /// Runs `deploy` with these extra global arguments and keeps its `vols`.
    pub async fn deploy_now(&mut self, extra: &[&str]) {
        let out = self
            .command()
            .args(extra)
            .args(["deploy", "--"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        self.vols = vols_of(&result["vols"]);
    }

    /// The workdir's `deployment.json` (what `deploy`, or `run`, recorded).
    pub fn record(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.dir.path().join("work/deployment.json"))
            .expect("a deployment record");
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Takes the volumes from the deployment record (after a `run`, which deploys by itself).
    pub fn reload_vols(&mut self) {
        self.vols = vols_of(&self.record()["volumes"]);
    }

    /// The host directory of the volume mounted at `guest_path`.
    pub fn volume(&self, guest_path: &str) -> PathBuf {
        let (_, name) = self.vols.iter().find(|(p, _)| p == guest_path).unwrap();
        self.dir.path().join("work").join(name)
    }

    /// Copies a static guest tool into the volume at `guest_path`; returns its path in the guest.
    pub fn install_tool(&self, name: &str, guest_path: &str) -> String {
        std::fs::copy(guest_tool(name), self.volume(guest_path).join(name)).unwrap();
        format!("{guest_path}/{name}")
    }

    /// `ya-runtime-vm` with the activity's global options, under TCG, with the helpers of
    /// `.tools/bin` on `PATH` and the VM's scratch dir inside the activity's dir.
    pub fn std_command(&self) -> std::process::Command {
        let mut path = std::ffi::OsString::from(repo().join(".tools/bin"));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut c = std::process::Command::new(&self.runtime);
        c.arg("--workdir")
            .arg(self.dir.path().join("work"))
            .arg("--task-package")
            .arg(self.dir.path().join("sample.gvmi"))
            .env("PATH", path)
            .env(
                "YA_RUNTIME_VM_ACCEL",
                std::env::var("YA_RUNTIME_VM_ACCEL").unwrap_or_else(|_| "tcg".into()),
            )
            // The VM's sockets go under the activity's dir, so that every helper's command
            // line names it and a socket left behind is seen.
            .env("TMPDIR", self.dir.path());
        c
    }

    /// As [`Activity::std_command`], for tokio (killed when dropped).
    pub fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.std_command());
        c.kill_on_drop(true);
        c
    }

    /// The runtime's stderr, as far as it was written (`runtime.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runtime.log")).unwrap_or_default()
    }

    /// Processes (QEMU, helpers, the runtime) whose command line names this activity, and the
    /// VM scratch dirs left in it.
    pub async fn leftovers(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.leftovers_now()
    }

    /// As [`Activity::leftovers`], without waiting for processes that are exiting.
    pub fn leftovers_now(&self) -> Vec<String> {
        let processes = self.processes().into_iter().map(|p| p.cmdline);
        let run_dirs = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("yrv-"));
        processes.chain(run_dirs).collect()
    }

    /// The processes (the runtime, QEMU, the helpers) whose command line names this activity.
    pub fn processes(&self) -> Vec<Process> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse().ok()?;
                let raw = std::fs::read(e.path().join("cmdline")).ok()?;
                let raw = String::from_utf8_lossy(&raw);
                let program = Path::new(raw.split('\0').next()?)
                    .file_name()?
                    .to_string_lossy()
                    .into_owned();
                let cmdline = raw.replace('\0', " ");
                cmdline.contains(&needle).then(|| Process {
                    pid,
                    program,
                    cmdline,
                    rss_kib: rss_kib(pid),
                })
            })
            .collect()
    }

    /// The running VM's scratch dir (its sockets).
    pub fn scratch_dir(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("yrv-"))
            })
    }

    /// The workdir's entries that are neither `deployment.json` nor a host volume dir of the
    /// deploy result (scratch disks have no name, so there should be none).
    pub fn workdir_extras(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("work"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "deployment.json" && !self.vols.iter().any(|(_, v)| v == n))
            .collect()
    }

    /// The pid of this activity's process whose program is named `program`.
    pub fn pid_of(&self, program: &str) -> Option<i32> {
        self.processes()
            .into_iter()
            .find(|p| p.program == program)
            .map(|p| p.pid)
    }

    /// Sends Shutdown and waits for the runtime to exit; its exit code. A runtime that does not
    /// answer, or does not exit after answering, fails the test with its log instead of
    /// hanging it.
    pub async fn shut_down(&self, rt: &(impl RuntimeService + RuntimeControl)) -> i32 {
        tokio::time::timeout(Duration::from_secs(30), rt.shutdown())
            .await
            .unwrap_or_else(|_| panic!("no Shutdown reply within 30 s: {}", self.log()))
            .unwrap_or_else(|e| panic!("Shutdown: {e:?}: {}", self.log()));
        tokio::time::timeout(Duration::from_secs(15), rt.stopped())
            .await
            .unwrap_or_else(|_| panic!("no exit within 15 s of the Shutdown reply: {}", self.log()))
    }

    /// Spawns `start` through the API's client and waits for hello (the VM has booted).
    pub async fn start(
        &self,
    ) -> (
        impl RuntimeService + RuntimeControl,
        mpsc::UnboundedReceiver<ProcessStatus>,
    ) {
        self.start_with(&["start"]).await
    }

    /// As [`Activity::start`], with these arguments (global flags, `start`, start arguments).
    pub async fn start_with(
        &self,
        args: &[&str],
    ) -> (
        impl RuntimeService + RuntimeControl,
        mpsc::UnboundedReceiver<ProcessStatus>,
    ) {
        let mut cmd = self.command();
        cmd.args(args)
            .stderr(std::fs::File::create(self.dir.path().join("runtime.log")).unwrap());
        let (tx, events) = mpsc::unbounded_channel();
        let rt = spawn(cmd, ChannelEvents(tx)).await.unwrap();
        let version = tokio::time::timeout(Duration::from_secs(120), rt.hello("0.1.0"))
            .await
            .unwrap_or_else(|_| panic!("no boot in time: {}", self.log()))
            .unwrap_or_else(|e| panic!("hello: {e:?}: {}", self.log()));
        assert!(!version.is_empty());
        (rt, events)
    }
}

/// `vols` of a deploy result or `volumes` of a deployment record: (guest path, host dir name).
fn vols_of(list: &serde_json::Value) -> Vec<(String, String)> {
    list.as_array()
        .expect("a list of volumes")
        .iter()
        .map(|v| {
            let field = |k: &str| v[k].as_str().expect("a volume's path and name").to_string();
            (field("path"), field("name"))
        })
        .collect()
}

/// The resident set of process `pid` in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

/// A process's proportional set size in KiB (0 when it is gone): its resident pages, each shared
/// page divided among the processes that map it, so what one more VM costs the host.
pub fn pss_kib(pid: i32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The resident KiB of a process's anonymous mappings that are writable and executable at once:
/// in QEMU under TCG (without split-wx) that is the translation cache and nothing else. 0 when
/// there are none or the process is gone.
pub fn rwx_anon_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_or(0, |s| rwx_anon_rss(&s))
}

/// [`rwx_anon_rss_kib`] of a `/proc/PID/smaps` text.
fn rwx_anon_rss(smaps: &str) -> u64 {
    let mut in_rwx_anon = false;
    let mut total = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            // A mapping's header: range, permissions, offset, device, inode[, path].
            [range, perms, _, _, _, rest @ ..] if range.contains('-') && !range.ends_with(':') => {
                in_rwx_anon = perms.starts_with("rwx") && rest.is_empty();
            }
            ["Rss:", kib, ..] if in_rwx_anon => total += kib.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// CPU time (user and system) a process has used, and its threads' context switches (voluntary
/// and not), summed over the threads alive now; zero when it is gone.
pub fn cpu_and_switches(pid: i32) -> (std::time::Duration, u64) {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    let switches = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| {
                    let status =
                        std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                    status
                        .lines()
                        .filter(|l| l.contains("ctxt_switches:"))
                        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .sum::<u64>()
                })
                .sum()
        })
        .unwrap_or(0);
    (
        std::time::Duration::from_secs_f64(ticks as f64 / tick),
        switches,
    )
}

/// The KiB figure on the line starting with `key` of `/proc/<pid>/<file>` (0 when it is gone).
fn proc_kib(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A runtime-API client that speaks the wire format itself, for what the exe-unit's own client
/// cannot do: send bytes that are not the protocol, close one stream, or watch the exact moment
/// a reply arrives.
pub struct RawApi {
    /// The runtime process.
    pub child: tokio::process::Child,
    /// Its stdin (`None` once closed).
    pub stdin: Option<tokio::process::ChildStdin>,
    /// Its stdout (`None` once closed).
    pub stdout: Option<tokio::process::ChildStdout>,
    buf: Vec<u8>,
}

/// The runtime API's messages, as the exe-unit encodes them.
pub use ya_runtime_api::server::proto;

impl RawApi {
    /// Spawns `start` (stderr to `runtime.log`) with both API streams piped.
    pub fn start(activity: &Activity) -> Self {
        let mut cmd = activity.command();
        cmd.arg("start")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(activity.dir.path().join("runtime.log")).unwrap());
        let mut child = cmd.spawn().unwrap();
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes to the runtime's stdin.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Sends one request.
    pub async fn send(&mut self, id: u64, command: Option<proto::request::Command>) {
        use prost_api::Message;
        let bytes = proto::Request { id, command }.encode_length_delimited_to_vec();
        self.send_bytes(&bytes).await;
    }

    /// The next response or event (`None` at the end of stdout), waiting up to `limit`.
    pub async fn recv(&mut self, limit: Duration) -> Option<proto::Response> {
        use prost_api::Message;
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut rest = &self.buf[..];
            if let Ok(r) = proto::Response::decode_length_delimited(&mut rest) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                return Some(r);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let stdout = self.stdout.as_mut()?;
            let n = tokio::time::timeout_at(deadline, stdout.read(&mut chunk))
                .await
                .expect("a response in time")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `Hello` and waits for its reply (the VM has booted).
    pub async fn hello(&mut self) {
        self.send(
            1,
            Some(proto::request::Command::Hello(proto::request::Hello {
                version: "0.1.0".into(),
            })),
        )
        .await;
        let r = self.recv(Duration::from_secs(120)).await.expect("a reply");
        assert!(
            matches!(r.command, Some(proto::response::Command::Hello(_))),
            "{r:?}"
        );
    }

    /// Waits up to `limit` for the runtime to exit; its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the runtime exits in time")
            .unwrap()
            .code()
    }
}

/// The sample image's file system changed by `change` (run on an unpacked copy of its root),
/// under `config_json`: unsquashfs, change, mksquashfs, trailer.
pub fn sample_changed(change: impl FnOnce(&Path), config_json: &str) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let sqfs = work.path().join("in.sqfs");
    std::fs::write(&sqfs, sample_squashfs()).unwrap();
    let root = work.path().join("root");
    let status = std::process::Command::new("unsquashfs")
        .args(["-quiet", "-no-progress", "-d"])
        .arg(&root)
        .arg(&sqfs)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "unsquashfs");
    change(&root);
    let mut image = test_fixtures::images::squashfs(&root, &work.path().join("out.sqfs")).unwrap();
    image.extend(test_fixtures::images::trailer(config_json.as_bytes()));
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anonymous_rwx_mappings_count() {
        let smaps = "\
7f00-7f10 rwxp 00000000 00:00 0
Size:              65532 kB
Rss:               36864 kB
VmFlags: rd wr ex mr mw me ac
7f10-7f20 rw-p 00000000 00:00 0
Rss:                5012 kB
7f20-7f30 rwxp 00000000 00:00 0 [stack]
Rss:                 100 kB
7f30-7f40 r-xp 00000000 08:01 42 /usr/bin/qemu-system-x86_64
Rss:                5200 kB
7f40-7f50 rwxp 00000000 00:00 0
Rss:                   4 kB
";
        assert_eq!(rwx_anon_rss(smaps), 36868);
        assert_eq!(rwx_anon_rss(""), 0);
    }
}
