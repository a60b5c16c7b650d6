//! The local runner end to end: the examples under `examples/` against the sample image (real
//! VMs under TCG), and its failures — each a clear line, a non-zero status, and no VM left.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUNNER: &str = env!("CARGO_BIN_EXE_ya-exescript");

/// How long one run of the runner may take here (two VMs under TCG on a loaded 2-core machine
/// take well under a minute): past it, the test fails with what the runner printed so far.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a script with a private TMPDIR (where the runtime's scratch dirs go) under `tmp`.
fn run(script: &Path, tmp: &Path, extra: &[&str]) -> Output {
    run_all(&[script], tmp, extra)
}

/// Runs several scripts at once, as [`run`] runs one.
fn run_all(scripts: &[&Path], tmp: &Path, extra: &[&str]) -> Output {
    let runtime = repo().join("target/debug/ya-runtime-vm");
    assert!(
        runtime.is_file(),
        "build the workspace first (scripts/test.sh does)"
    );
    let image = repo().join("target/images/sample.gvmi");
    assert!(
        image.is_file(),
        "run scripts/build-sample-image.sh (scripts/test.sh does)"
    );
    let mut path = std::ffi::OsString::from(repo().join(".tools/bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mut cmd = Command::new(RUNNER);
    cmd.arg("--package")
        .arg(image)
        .arg("--runtime")
        .arg(runtime)
        .args(extra)
        .args(scripts)
        .env("PATH", path)
        .env("TMPDIR", tmp)
        .env("YA_RUNTIME_VM_ACCEL", "tcg")
        .env("YA_RUNTIME_VM_CACHE_DIR", tmp.join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    output_within(cmd, RUN_LIMIT)
}

/// `cmd`'s output, or a panic showing what it printed if it has not ended within `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.spawn().unwrap();
    let drain = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SIGTERM first: the runner's runtimes then power their VMs off.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the runner did not end within {limit:?}; it printed:\n{}\n{}",
                text(&stdout.join().unwrap()),
                text(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Processes naming `tmp` and VM scratch dirs in it.
fn leftovers(tmp: &Path) -> Vec<String> {
    let needle = tmp.to_string_lossy().into_owned();
    let mut found: Vec<String> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("yrv-") || n.starts_with("ya-exescript-"))
        .collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) && !cmd.contains("examples-") {
                found.push(cmd);
            }
        }
    }
    found
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_examples_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&repo().join("examples/hello.json"), tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "hello from the VM\nrunning as root on golem, in /golem/work\n"
    );

    let out = run(&repo().join("examples/state.json"), tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "written by the first command\nand more by the second\n\
         the same in RAM and on the storage volume\n"
    );

    // The transform example reads and writes beside its data dir: use a copy.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(
        repo().join("examples/transform/input.txt"),
        data.join("input.txt"),
    )
    .unwrap();
    let out = run(
        &repo().join("examples/transform/script.json"),
        tmp.path(),
        &["--data-dir", data.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = std::fs::read_to_string(data.join("input.txt"))
        .unwrap()
        .to_uppercase();
    assert_eq!(
        std::fs::read_to_string(data.join("output.txt")).unwrap(),
        want
    );
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{left:?}");
}

/// One node's script on the local VPN 192.168.0.0/24 (the requestor at .1): `runs` after
/// deploy and start.
fn vpn_node(node_ip: &str, runs: &[&str]) -> String {
    let mut cmds = vec![
        serde_json::json!({"deploy": {
            "net": [{"id": "n", "ip": "192.168.0.0", "mask": "255.255.255.0",
                     "gateway": "192.168.0.1", "nodeIp": node_ip,
                     "nodes": {"192.168.0.2": "0x01", "192.168.0.3": "0x02"}}],
            "hosts": {"a-node": "192.168.0.2", "b-node": "192.168.0.3"}}}),
        serde_json::json!({"start": {"args": []}}),
    ];
    for r in runs {
        cmds.push(serde_json::json!({"run": {"entry_point": "/bin/sh", "args": ["-c", r]}}));
    }
    cmds.push(serde_json::json!({"terminate": {}}));
    serde_json::to_string(&cmds).unwrap()
}

/// Shell: wait until `$1` answers a ping (the other VM may still be booting).
const WAIT_FOR: &str = "wait_for() { i=0; until ping -c 1 -W 2 \"$1\" >/dev/null; do \
                        i=$((i+1)); [ $i -lt 60 ] || exit 1; done; }; ";

#[test]
fn two_vms_on_a_local_vpn_ping_each_other_and_move_64_mib_over_tcp() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.json");
    let b = tmp.path().join("b.json");
    std::fs::write(
        &a,
        vpn_node(
            "192.168.0.2",
            &[
                &format!("{WAIT_FOR} wait_for b-node && ping -c 2 -W 5 b-node >/dev/null && echo pinged-b"),
                "ping -c 1 -W 5 192.168.0.1 >/dev/null && echo pinged-requestor",
                // busybox nc ends at the first EOF from the network, so the server writes
                // nothing back until it has everything: its end is a program reading to EOF.
                "nc -l -p 7000 -e sh -c 'cat > /tmp/got' && \
                 sha256sum < /tmp/got | cut -c1-64 && wc -c < /tmp/got",
            ],
        ),
    )
    .unwrap();
    std::fs::write(
        &b,
        vpn_node(
            "192.168.0.3",
            &[
                &format!("{WAIT_FOR} wait_for a-node && echo pinged-a"),
                "head -c 67108864 /dev/urandom > /tmp/data && sha256sum < /tmp/data | cut -c1-64",
                "i=0; until nc a-node 7000 < /tmp/data; do i=$((i+1)); [ $i -lt 60 ] || exit 1; \
                 sleep 1; done",
            ],
        ),
    )
    .unwrap();
    let out = run_all(&[&a, &b], tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = |who: &str| -> Vec<String> {
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("[{who}] ")).map(str::to_string))
            .collect()
    };
    let (la, lb) = (lines("a"), lines("b"));
    assert_eq!(la.len(), 4, "{la:?}\n{}", text(&out.stderr));
    assert_eq!(&la[..2], ["pinged-b", "pinged-requestor"]);
    assert_eq!(lb.len(), 2, "{lb:?}");
    assert_eq!(lb[0], "pinged-a");
    // The same bytes on both ends.
    assert_eq!(la[2], lb[1], "{la:?} {lb:?}\n{}", text(&out.stderr));
    assert_eq!(la[3].trim(), "67108864");
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_vpn_example_runs_two_vms_that_talk() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client) = (
        repo().join("examples/vpn/server.json"),
        repo().join("examples/vpn/client.json"),
    );
    let out = run_all(&[&server, &client], tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "[client] sent",
            "[client] server is up",
            "[server] got: hello from the client",
            "[server] the requestor answers",
        ]
    );
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn failures_stop_the_script_and_end_the_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };

    // A transfer outside every volume: the exe-unit's kind of error, then the VM is shut down.
    let s = write(
        "outside.json",
        r#"[{"deploy": {}}, {"start": {}},
            {"transfer": {"from": "container:/etc/passwd", "to": "passwd"}},
            {"run": {"entry_point": "/bin/echo", "args": ["not reached"]}}]"#,
    );
    let out = run(&s, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.lines().last().unwrap().ends_with(
            "command 3 (transfer): transfer: container path /etc/passwd is not inside any volume of the image"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // A command that fails ends the script there.
    let s = write(
        "fails.json",
        r#"[{"deploy": {}}, {"start": {}},
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo before; exit 3"]}},
            {"run": {"entry_point": "/bin/echo", "args": ["not reached"]}},
            {"terminate": {}}]"#,
    );
    let out = run(&s, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "before\n");
    assert!(
        text(&out.stderr).contains("command 3 (run): run /bin/sh: exited with 3"),
        "{}",
        text(&out.stderr)
    );

    // Not an ExeScript: one line, nothing started.
    let s = write("bad.json", r#"[{"deploy": {}}, {"sign": {}}]"#);
    let out = run(&s, tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("command 2 (sign): unknown variant"), "{err}");

    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn when_one_of_several_activities_fails_the_others_stop_and_the_failure_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    // `waits` would wait for `fails` forever (as a server waits for a client that gave up).
    let waits = write(
        "waits.json",
        r#"[{"deploy": {}}, {"start": {}},
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo waiting; exec sleep 100000"]}},
            {"run": {"entry_point": "/bin/echo", "args": ["not reached"]}},
            {"terminate": {}}]"#,
    );
    let fails = write(
        "fails.json",
        r#"[{"deploy": {}}, {"start": {}},
            {"run": {"entry_point": "/bin/sh", "args": ["-c", "sleep 2; exit 4"]}},
            {"terminate": {}}]"#,
    );
    let out = run_all(&[&waits, &fails], tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "[waits] waiting\n");
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap();
    // The failure itself, not the activity it stopped.
    assert_eq!(
        last, "ya-exescript: fails: command 3 (run): run /bin/sh: exited with 4",
        "{err}"
    );
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_image_archive_becomes_a_booted_vm_in_two_commands() {
    use test_fixtures::oci::{self, Entry};
    let tmp = tempfile::tempdir().unwrap();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh)");
    let mut base = vec![Entry::File("bin/busybox", busybox, 0o755, 0)];
    for applet in [
        "bin/sh", "bin/ls", "bin/id", "bin/pwd", "bin/env", "bin/sort", "bin/grep", "bin/cut",
    ] {
        base.push(Entry::Symlink(applet, "busybox"));
    }
    let app = vec![
        Entry::File("app/run", b"#!/bin/sh\necho app\n".to_vec(), 0o755, 0),
        Entry::Dir("data", 0o755),
    ];
    let config = serde_json::json!({
        "Env": ["PATH=/bin", "APP_MODE=try"],
        "WorkingDir": "/app",
        "Volumes": {"/data": {}}
    });
    let archive = tmp.path().join("app.tar");
    oci::docker_archive(
        &archive,
        &[(
            &["app:1"],
            config,
            vec![oci::layer(&base), oci::layer(&app)],
        )],
    );

    // 1. gvmi-build app.tar -o app.gvmi
    let gvmi = tmp.path().join("app.gvmi");
    let built = Command::new(repo().join("target/debug/gvmi-build"))
        .arg(&archive)
        .arg("-o")
        .arg(&gvmi)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    // 2. ya-exescript --package app.gvmi --try
    let mut cmd = Command::new(RUNNER);
    cmd.arg("--package")
        .arg(&gvmi)
        .arg("--runtime")
        .arg(repo().join("target/debug/ya-runtime-vm"))
        .arg("--try")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", repo().join(".tools/bin").display()),
        )
        .env("TMPDIR", tmp.path())
        .env("YA_RUNTIME_VM_ACCEL", "tcg")
        .env("YA_RUNTIME_VM_CACHE_DIR", tmp.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = output_within(cmd, RUN_LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for want in [
        "== ls -la /",
        " app\n",
        "== user: uid=0 gid=0",
        "== working directory: /app\n",
        "APP_MODE=try\n",
        "== volumes (virtio-fs, kept on the host)\n/data\n",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{left:?}");
}
