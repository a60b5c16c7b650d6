//! The local runner end to end: the examples under `examples/` against the sample image (real
//! VMs under TCG), and its failures — each a clear line, a non-zero status, and no VM left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RUNNER: &str = env!("CARGO_BIN_EXE_ya-exescript");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a script with a private TMPDIR (where the runtime's scratch dirs go) under `tmp`.
fn run(script: &Path, tmp: &Path, extra: &[&str]) -> Output {
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
    Command::new(RUNNER)
        .arg("--package")
        .arg(image)
        .arg("--runtime")
        .arg(runtime)
        .args(extra)
        .arg(script)
        .env("PATH", path)
        .env("TMPDIR", tmp)
        .env("YA_RUNTIME_VM_ACCEL", "tcg")
        .env("YA_RUNTIME_VM_CACHE_DIR", tmp.join("cache"))
        .output()
        .unwrap()
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
