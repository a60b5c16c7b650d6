//! `ya-runtime-vm start` driven through ya-runtime-api 0.7.0's own client, as the exe-unit
//! drives it: hello, RunProcess with events, state across processes, work_dir, env, volumes,
//! kill, shutdown; and every other way the runtime ends (stdin closed, SIGTERM, SIGKILL, QEMU
//! dying, a runtime dir without a kernel) leaving no process and no socket behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use local_runner::ChannelEvents;
use tokio::sync::mpsc;
use ya_runtime_api::server::{
    spawn, KillProcess, ProcessStatus, RunProcess, RuntimeControl, RuntimeService,
};

const BIN: &str = env!("CARGO_BIN_EXE_ya-runtime-vm");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Collects one process's output until its final event; returns (stdout, stderr, code).
async fn finish(
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

fn run(bin: &str, args: &[&str]) -> RunProcess {
    RunProcess {
        bin: bin.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A deployed copy of the sample image in a private directory.
struct Activity {
    dir: tempfile::TempDir,
    /// The deploy result's `vols`: (guest path, host dir name).
    vols: Vec<(String, String)>,
}

impl Activity {
    async fn deploy() -> Self {
        let sample = std::fs::read(repo().join("target/images/sample.gvmi"))
            .expect("scripts/build-sample-image.sh");
        Self::deploy_image(&sample).await
    }

    /// Deploys these image bytes (as `sample.gvmi` in the activity's dir).
    async fn deploy_image(image: &[u8]) -> Self {
        Self::deploy_with(image, &[]).await
    }

    /// Deploys these image bytes with these extra deploy arguments.
    async fn deploy_with(image: &[u8], extra: &[&str]) -> Self {
        let mut a = Self {
            dir: tempfile::tempdir().unwrap(),
            vols: Vec::new(),
        };
        std::fs::write(a.dir.path().join("sample.gvmi"), image).unwrap();
        let out = a
            .command()
            .args(extra)
            .args(["deploy", "--"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for v in result["vols"].as_array().unwrap() {
            let field = |k: &str| v[k].as_str().unwrap().to_string();
            a.vols.push((field("path"), field("name")));
        }
        a
    }

    /// The host directory of the volume mounted at `guest_path`.
    fn volume(&self, guest_path: &str) -> PathBuf {
        let (_, name) = self.vols.iter().find(|(p, _)| p == guest_path).unwrap();
        self.dir.path().join("work").join(name)
    }

    fn command(&self) -> tokio::process::Command {
        let mut path = std::ffi::OsString::from(repo().join(".tools/bin"));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut c = tokio::process::Command::new(BIN);
        c.arg("--workdir")
            .arg(self.dir.path().join("work"))
            .arg("--task-package")
            .arg(self.dir.path().join("sample.gvmi"))
            .env("PATH", path)
            .env("YA_RUNTIME_VM_ACCEL", "tcg")
            // The VM's sockets and logs go under the activity's dir, so that every helper's
            // command line names it and a socket left behind is seen.
            .env("TMPDIR", self.dir.path());
        c
    }

    /// Processes (QEMU, helpers, the runtime) whose command line names this activity, and the
    /// VM run dirs (sockets) left in it.
    async fn leftovers(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let needle = self.dir.path().to_string_lossy().into_owned();
        let processes = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle));
        let run_dirs = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("yrv-"));
        processes.chain(run_dirs).collect()
    }

    /// The workdir's entries that are neither `deployment.json` nor a host volume dir of the
    /// deploy result (scratch disks have no name, so there should be none).
    fn workdir_extras(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("work"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "deployment.json" && !self.vols.iter().any(|(_, v)| v == n))
            .collect()
    }

    /// The pid of this activity's process whose program is named `program`.
    fn pid_of(&self, program: &str) -> Option<i32> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd);
            let argv0 = cmd.split('\0').next()?;
            let pid = e.file_name().to_str()?.parse().ok()?;
            (Path::new(argv0).file_name()? == program && cmd.contains(&needle)).then_some(pid)
        })
    }

    /// Spawns `start` through the API's client and waits for hello (the VM has booted).
    async fn start(
        &self,
    ) -> (
        impl RuntimeService + RuntimeControl,
        mpsc::UnboundedReceiver<ProcessStatus>,
    ) {
        self.start_with(&["start"]).await
    }

    /// As [`Activity::start`], with these arguments (global flags, `start`, start arguments).
    async fn start_with(
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
            .expect("boot in time")
            .unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        (rt, events)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exe_units_conversation() {
    let activity = Activity::deploy().await;
    std::fs::write(
        activity.volume("/golem/input").join("in.txt"),
        "from the host\n",
    )
    .unwrap();
    let (rt, mut events) = activity.start().await;

    // echo, exact bytes, both streams
    let pid = rt
        .run_process(run("/bin/sh", &["sh", "-c", "printf 'x\\ny'; echo e >&2"]))
        .await
        .unwrap()
        .pid;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), code),
        (&b"x\ny"[..], &b"e\n"[..], 0)
    );

    // the image's WorkingDir, then work_dir overriding it; non-zero exit
    let pid = rt.run_process(run("/bin/pwd", &["pwd"])).await.unwrap().pid;
    assert_eq!(finish(&mut events, pid).await.0, b"/golem/work\n");
    let mut r = run("/bin/sh", &["sh", "-c", "pwd; exit 5"]);
    r.work_dir = "/etc".into();
    let pid = rt.run_process(r).await.unwrap().pid;
    let (out, _, code) = finish(&mut events, pid).await;
    assert_eq!((out.as_slice(), code), (&b"/etc\n"[..], 5));

    // 64 MiB of stdout arrives complete and in order before the final event
    let mut r = run("/bin/sh", &["sh", "-c", "seq -w 0 1048575 | sed 's/^/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/'"]);
    r.work_dir = "/".into();
    let pid = rt.run_process(r).await.unwrap().pid;
    let (out, _, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0);
    assert_eq!(out.len(), 64 << 20);
    for (i, line) in out.chunks(64).enumerate().step_by(4099) {
        let want = format!("{}{:07}\n", "x".repeat(56), i);
        assert_eq!(line, want.as_bytes(), "line {i}");
    }
    assert!(out.ends_with(format!("{}1048575\n", "x".repeat(56)).as_bytes()));

    // each stream keeps its own order when they interleave
    let pid = rt
        .run_process(run(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 300 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done",
            ],
        ))
        .await
        .unwrap()
        .pid;
    let (out, err, _) = finish(&mut events, pid).await;
    let want = |p: &str| (0..300).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(String::from_utf8(out).unwrap(), want("o"));
    assert_eq!(String::from_utf8(err).unwrap(), want("e"));

    // the image's Env
    let pid = rt
        .run_process(run("/bin/sh", &["sh", "-c", "echo $GOLEM_SAMPLE"]))
        .await
        .unwrap()
        .pid;
    assert_eq!(finish(&mut events, pid).await.0, b"1\n");

    // volumes: a file from the host is read in the guest, a file written in the guest appears
    // on the host
    let pid = rt
        .run_process(run(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "tr a-z A-Z < /golem/input/in.txt > /golem/output/out.txt",
            ],
        ))
        .await
        .unwrap()
        .pid;
    assert_eq!(finish(&mut events, pid).await.2, 0);
    assert_eq!(
        std::fs::read_to_string(activity.volume("/golem/output").join("out.txt")).unwrap(),
        "FROM THE HOST\n"
    );

    // state across processes
    let pid = rt
        .run_process(run("/bin/sh", &["sh", "-c", "echo kept > /root/f"]))
        .await
        .unwrap()
        .pid;
    finish(&mut events, pid).await;
    let pid = rt
        .run_process(run("/bin/cat", &["cat", "/root/f"]))
        .await
        .unwrap()
        .pid;
    assert_eq!(finish(&mut events, pid).await.0, b"kept\n");

    // a missing binary is an error, not a hang
    let e = rt
        .run_process(run("/bin/nope", &["nope"]))
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("exec /bin/nope: No such file or directory"),
        "{e:?}"
    );

    // kill of sleep 1000 ends it within a second
    let pid = rt
        .run_process(run("/bin/sleep", &["sleep", "1000"]))
        .await
        .unwrap()
        .pid;
    let asked = std::time::Instant::now();
    rt.kill_process(KillProcess { pid, signal: 9 })
        .await
        .unwrap();
    let (_, _, code) = finish(&mut events, pid).await;
    let took = asked.elapsed();
    assert_eq!(code, 128 + 9);
    assert!(took < Duration::from_secs(1), "kill took {took:?}");

    // shutdown: the runtime exits and nothing of this VM is left
    rt.shutdown().await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), rt.stopped())
        .await
        .expect("the runtime ends by itself after Shutdown");
    assert_eq!(code, 0);
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_runtime_leaves_nothing_behind() {
    let activity = Activity::deploy().await;
    let (rt, _events) = activity.start().await;
    assert!(
        !activity.leftovers().await.is_empty(),
        "QEMU and the helpers are running"
    );
    // RuntimeControl::stop kills the runtime process with SIGKILL.
    rt.stop();
    let _ = tokio::time::timeout(Duration::from_secs(10), rt.stopped()).await;
    // No process is left; the scratch dir (sockets) is, since nothing ran to remove it ...
    let left = activity.leftovers().await;
    assert!(left.iter().all(|l| l.starts_with("yrv-")), "{left:?}");
    assert_eq!(left.len(), 1, "{left:?}");
    // ... and the root layer's disk is gone with QEMU, having never had a name.
    assert!(activity.workdir_extras().is_empty());
    // ... until the next runtime sweeps it (this one boots, finds stdin closed, powers off).
    let out = activity
        .command()
        .arg("start")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_powers_the_vm_off_and_leaves_nothing() {
    let activity = Activity::deploy().await;
    let (rt, _events) = activity.start().await;
    let pid = rt.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let code = tokio::time::timeout(Duration::from_secs(15), rt.stopped())
        .await
        .expect("the runtime ends after SIGTERM");
    assert_eq!(code, 128 + libc::SIGTERM);
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdin_powers_the_vm_off_and_leaves_nothing() {
    let activity = Activity::deploy().await;
    // The exe-unit goes away before the VM has even booted: the runtime boots, finds the API
    // closed, powers off and exits 0.
    let out = activity
        .command()
        .arg("start")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("closed the runtime API"), "{err}");
    assert!(out.stdout.is_empty());
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

/// The sample image's file system under another configuration.
fn sample_with_config(config_json: &str) -> Vec<u8> {
    let sample = std::fs::read(repo().join("target/images/sample.gvmi"))
        .expect("scripts/build-sample-image.sh");
    let n = sample.len();
    let json_len: usize = std::str::from_utf8(&sample[n - 8..])
        .unwrap()
        .parse()
        .unwrap();
    let mut image = sample[..n - 8 - json_len - 4].to_vec();
    image.extend(test_fixtures::images::trailer(config_json.as_bytes()));
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_entrypoint_runs_the_images_entrypoint_and_reports_its_pid() {
    let activity = Activity::deploy_image(&sample_with_config(
        r#"{"Env":["PATH=/bin","WHO=entrypoint"],"Entrypoint":["/bin/sh","-c"],
            "Cmd":["echo started by $WHO in $(pwd); exec sleep 1000"],
            "WorkingDir":"/golem/work","Volumes":{"/golem/output":{}}}"#,
    ))
    .await;
    let (rt, mut events) = activity.start_with(&["start", "start-entrypoint"]).await;
    // First event: the start result, as stdout of pid 0 (the exe-unit's `start` command output).
    let first = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.pid, first.running), (0, true));
    let result: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(result["start"], serde_json::Value::Null);
    assert_eq!(
        result["entrypoint"]["command"],
        serde_json::json!([
            "/bin/sh",
            "-c",
            "echo started by $WHO in $(pwd); exec sleep 1000"
        ])
    );
    let pid = result["entrypoint"]["pid"].as_u64().unwrap();
    // Then the entrypoint's own output, with the image's Env and WorkingDir; it keeps running
    // while other processes are served.
    let mut out = Vec::new();
    while !out.ends_with(b"\n") {
        let s = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.pid, pid);
        out.extend(s.stdout);
    }
    assert_eq!(out, b"started by entrypoint in /golem/work\n");
    let other = rt
        .run_process(run("/bin/true", &["true"]))
        .await
        .unwrap()
        .pid;
    assert_eq!(finish(&mut events, other).await.2, 0);
    rt.kill_process(KillProcess { pid, signal: 15 })
        .await
        .unwrap();
    assert_eq!(finish(&mut events, pid).await.2, 128 + 15);
    rt.shutdown().await.unwrap();
    assert_eq!(rt.stopped().await, 0);
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn start_entrypoint_without_one_and_unknown_start_arguments_are_clear_errors() {
    let activity = Activity::deploy_image(&sample_with_config(
        r#"{"Env":["PATH=/bin"],"Entrypoint":null,"Cmd":null,"Volumes":{"/golem/output":{}}}"#,
    ))
    .await;
    for (args, needle) in [
        (
            &["start", "start-entrypoint"][..],
            "start-entrypoint: the image defines no Entrypoint or Cmd",
        ),
        (
            &["start", "--bogus-mode"][..],
            "unknown start argument \"--bogus-mode\" (supported: start-entrypoint)",
        ),
    ] {
        let out = activity.command().args(args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(out.stdout.is_empty());
    }
    assert!(activity.leftovers().await.is_empty());
}

/// Kills one of the VM's processes: the runtime notices, ends with an error that names it, and
/// leaves nothing behind.
async fn a_dying_child_ends_the_runtime(program: &str, named: &str) {
    let activity = Activity::deploy().await;
    let (rt, _events) = activity.start().await;
    let pid = activity.pid_of(program).expect("the process runs");
    if program == "virtiofsd" && unsafe { libc::geteuid() } == 0 {
        // As root, virtiofsd can always sandbox itself (chroot at least).
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(!cmd.contains("--sandbox none"), "{cmd}");
    }
    // SAFETY: killing the test's own grandchild.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let code = tokio::time::timeout(Duration::from_secs(15), rt.stopped())
        .await
        .expect("the runtime ends when a process of the VM dies");
    let log = std::fs::read_to_string(activity.dir.path().join("runtime.log")).unwrap();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "ya-runtime-vm: the VM stopped unexpectedly: {named} exited"
        )),
        "{log}"
    );
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_dying_ends_the_runtime_with_an_error_and_leaves_nothing() {
    a_dying_child_ends_the_runtime("qemu-system-x86_64", "QEMU").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtiofsd_dying_ends_the_runtime_with_an_error_and_leaves_nothing() {
    a_dying_child_ends_the_runtime("virtiofsd", "virtiofsd").await;
}

#[tokio::test]
async fn a_runtime_dir_without_a_kernel_fails_at_start_with_a_clear_line() {
    let activity = Activity::deploy().await;
    let empty = activity.dir.path().join("empty-runtime");
    std::fs::create_dir(&empty).unwrap();
    let out = activity
        .command()
        .arg("--runtime-dir")
        .arg(&empty)
        .arg("start")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no guest kernel"), "{err}");
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_vsock_boots_where_the_host_has_it_and_is_a_clear_error_elsewhere() {
    let activity = Activity::deploy().await;
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-vsock")
        .is_ok();
    if usable {
        let (rt, mut events) = activity.start_with(&["--vsock", "kernel", "start"]).await;
        let pid = rt
            .run_process(run("/bin/echo", &["echo", "over the kernel's vsock"]))
            .await
            .unwrap()
            .pid;
        assert_eq!(
            finish(&mut events, pid).await.0,
            b"over the kernel's vsock\n"
        );
        assert!(activity.pid_of("vhost-device-vsock").is_none());
        rt.shutdown().await.unwrap();
        assert_eq!(rt.stopped().await, 0);
    } else {
        let out = activity
            .command()
            .args(["--vsock", "kernel", "start"])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("--vsock kernel: /dev/vhost-vsock is missing"),
            "{err}"
        );
    }
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_volume_keeps_its_state_across_commands() {
    let sample = std::fs::read(repo().join("target/images/sample.gvmi")).unwrap();
    let activity = Activity::deploy_with(
        &sample,
        &[
            "--storage-gib",
            "0.5",
            "--volume-override",
            r#"{"/golem/input": {"host": {}}, "/golem/output": {"host": {}},
                "/cache": {"ram": {"size": "16MiB"}},
                "/data": {"storage": {"size": "64MiB", "preallocate": "16MiB", "errors": "remount-ro"}},
                "/logs": {"storage": {"size": "16MiB", "errors": "continue"}}}"#,
        ],
    )
    .await;
    // Only host volumes are in deploy's vols.
    let mut shared: Vec<&str> = activity.vols.iter().map(|(p, _)| p.as_str()).collect();
    shared.sort();
    assert_eq!(shared, ["/golem/input", "/golem/output"]);
    let (rt, mut events) = activity.start().await;
    let sh = |script: &str| run("/bin/sh", &["sh", "-c", script]);

    let pid = rt
        .run_process(sh(
            "mkdir -p /var/lib/app && for d in /cache /data /logs /var/lib/app \
                         /golem/output; do echo \"kept in $d\" > $d/state; done",
        ))
        .await
        .unwrap()
        .pid;
    let (_, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));

    let pid = rt
        .run_process(sh(
            "cat /cache/state /data/state /logs/state /var/lib/app/state; \
                         awk '$2 ~ /^\\/(cache|data|logs)$/ { print $2, $3 }' /proc/mounts",
        ))
        .await
        .unwrap()
        .pid;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "kept in /cache\nkept in /data\nkept in /logs\nkept in /var/lib/app\n\
         /cache tmpfs\n/data ext4\n/logs ext4\n"
    );
    assert_eq!(
        std::fs::read_to_string(activity.volume("/golem/output").join("state")).unwrap(),
        "kept in /golem/output\n"
    );

    rt.shutdown().await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), rt.stopped())
        .await
        .expect("the runtime ends after Shutdown");
    assert_eq!(code, 0);
    assert!(activity.workdir_extras().is_empty());
    // The host volume keeps its results for the exe-unit.
    assert!(activity.volume("/golem/output").join("state").exists());
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}
