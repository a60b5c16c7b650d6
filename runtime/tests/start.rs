//! `ya-runtime-vm start` driven through ya-runtime-api 0.7.0's own client, as the exe-unit
//! drives it: hello, RunProcess with events, state across processes, work_dir, kill, shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use ya_runtime_api::server::{
    spawn, KillProcess, ProcessStatus, RunProcess, RuntimeControl, RuntimeHandler, RuntimeService,
    RuntimeStatus,
};

const BIN: &str = env!("CARGO_BIN_EXE_ya-runtime-vm");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Events(mpsc::UnboundedSender<ProcessStatus>);

impl RuntimeHandler for Events {
    fn on_process_status<'a>(&self, status: ProcessStatus) -> BoxFuture<'a, ()> {
        let _ = self.0.send(status);
        futures::future::ready(()).boxed()
    }
    fn on_runtime_status<'a>(&self, _: RuntimeStatus) -> BoxFuture<'a, ()> {
        futures::future::ready(()).boxed()
    }
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
}

impl Activity {
    async fn deploy() -> Self {
        let a = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::copy(
            repo().join("target/images/sample.gvmi"),
            a.dir.path().join("sample.gvmi"),
        )
        .expect("scripts/build-sample-image.sh");
        let out = a.command().args(["deploy", "--"]).output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        a
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
            .env("YA_RUNTIME_VM_ACCEL", "tcg");
        c
    }

    /// Processes (QEMU, helpers, the runtime) whose command line names this activity.
    async fn leftovers(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let needle = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exe_units_conversation() {
    let activity = Activity::deploy().await;
    let mut cmd = activity.command();
    cmd.arg("start");
    let (tx, mut events) = mpsc::unbounded_channel();
    let rt = spawn(cmd, Events(tx)).await.unwrap();
    let version = tokio::time::timeout(Duration::from_secs(120), rt.hello("0.1.0"))
        .await
        .expect("boot in time")
        .unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));

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

    // kill of sleep 1000
    let pid = rt
        .run_process(run("/bin/sleep", &["sleep", "1000"]))
        .await
        .unwrap()
        .pid;
    rt.kill_process(KillProcess { pid, signal: 9 })
        .await
        .unwrap();
    let (_, _, code) = finish(&mut events, pid).await;
    assert_eq!(code, 128 + 9);

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
    let mut cmd = activity.command();
    cmd.arg("start");
    let (tx, _events) = mpsc::unbounded_channel();
    let rt = spawn(cmd, Events(tx)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), rt.hello("0.1.0"))
        .await
        .expect("boot in time")
        .unwrap();
    assert!(
        !activity.leftovers().await.is_empty(),
        "QEMU and the helpers are running"
    );
    // RuntimeControl::stop kills the runtime process with SIGKILL.
    rt.stop();
    let _ = tokio::time::timeout(Duration::from_secs(10), rt.stopped()).await;
    let left = activity.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
}
