//! `ya-runtime-vm test` through the binary: a real boot of the shipped self-test image, and the
//! actionable failures when a piece is missing. Stdout is always exactly one JSON report.

use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_ya-runtime-vm");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `test` with `extra` flags, PATH `path`, scratch dirs under `tmp`.
fn self_test(extra: &[&str], path: &std::ffi::OsStr, tmp: &Path) -> (Output, serde_json::Value) {
    let out = std::process::Command::new(BIN)
        .args(extra)
        .arg("test")
        .env("PATH", path)
        .env("TMPDIR", tmp)
        .env_remove("YA_RUNTIME_VM_ACCEL")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.matches('\n').count(), 1, "one JSON line: {text:?}");
    let report = serde_json::from_str(&text).unwrap();
    (out, report)
}

fn full_path() -> std::ffi::OsString {
    let mut p = std::ffi::OsString::from(repo().join(".tools/bin"));
    p.push(":");
    p.push(std::env::var_os("PATH").unwrap_or_default());
    p
}

fn assert_one_line_failure(out: &Output, report: &serde_json::Value, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(report["ok"], false);
    assert!(
        report["error"].as_str().unwrap().contains(needle),
        "{report}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ya-runtime-vm: ") && last.contains(needle),
        "{err}"
    );
}

#[test]
fn boots_the_self_test_image_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // With the resources an activity would be granted, not fixed ones.
    let (out, report) = self_test(
        &["--accel", "tcg", "--cpu-cores", "2", "--mem-gib", "0.5"],
        &full_path(),
        tmp.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["accel"], "tcg");
    assert!(report["boot_ms"].as_u64().unwrap() > 0);
    assert!(err.contains("self-test passed (tcg"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn missing_pieces_are_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // No QEMU on PATH.
    let (out, report) = self_test(&["--accel", "tcg"], tmp.path().as_os_str(), tmp.path());
    assert_one_line_failure(
        &out,
        &report,
        "qemu-system-x86_64 is not on PATH: install QEMU",
    );

    // QEMU, but no virtiofsd anywhere.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let qemu = std::env::split_paths(&full_path())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .unwrap();
    std::os::unix::fs::symlink(qemu, bin.join("qemu-system-x86_64")).unwrap();
    let (out, report) = self_test(&["--accel", "tcg"], bin.as_os_str(), tmp.path());
    assert_one_line_failure(&out, &report, "virtiofsd not found");

    // A runtime dir with a kernel and an initramfs but no self-test image.
    let rt = tmp.path().join("runtime");
    std::fs::create_dir(&rt).unwrap();
    let built = repo().join("target/debug/runtime");
    for f in ["vmlinux", "initramfs.cpio"] {
        std::os::unix::fs::symlink(built.join(f), rt.join(f)).unwrap();
    }
    let dir = rt.to_str().unwrap();
    let (out, report) = self_test(
        &["--accel", "tcg", "--runtime-dir", dir],
        &full_path(),
        tmp.path(),
    );
    assert_one_line_failure(
        &out,
        &report,
        "no self-test.gvmi; build it with scripts/build-runtime.sh",
    );

    // Resources no activity could have.
    let (out, report) = self_test(
        &["--accel", "tcg", "--mem-gib", "-1"],
        &full_path(),
        tmp.path(),
    );
    assert_one_line_failure(&out, &report, "--mem-gib");

    // No kernel at all.
    std::fs::remove_file(rt.join("vmlinux")).unwrap();
    let (out, report) = self_test(
        &["--accel", "tcg", "--runtime-dir", dir],
        &full_path(),
        tmp.path(),
    );
    assert_one_line_failure(&out, &report, "no guest kernel");
    assert!(report["accel"].is_null());
}
