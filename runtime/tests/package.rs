//! The Debian package that `scripts/build-deb.sh` builds (scripts/test.sh does, before the
//! suite): yagna's plugin layout, a descriptor the exe-unit can use, and a runtime that works
//! from the unpacked tree alone — its own kernel, initramfs, self-test image and helpers.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &str = "usr/lib/yagna/plugins";

fn deb() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let want = format!("ya-runtime-vm_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let path = dir.join(want);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-deb.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn files_are_in_yagnas_plugin_layout() {
    let deb = deb();
    let listing = dpkg_deb(&["-c", deb.to_str().unwrap()]);
    let mut files: Vec<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_string())
        .collect();
    files.sort();
    let dir = format!("{PLUGINS}/ya-runtime-vm");
    let mut want = vec![
        format!("{PLUGINS}/ya-runtime-vm.json"),
        format!("{dir}/runtime/VERSION"),
        format!("{dir}/runtime/initramfs.cpio"),
        format!("{dir}/runtime/self-test.gvmi"),
        format!("{dir}/runtime/vhost-device-vsock"),
        format!("{dir}/runtime/virtiofsd"),
        format!("{dir}/runtime/vmlinux"),
        format!("{dir}/ya-runtime-vm"),
        "usr/share/doc/ya-runtime-vm/copyright".to_string(),
    ];
    want.sort();
    assert_eq!(files, want);
    let depends = dpkg_deb(&["-f", deb.to_str().unwrap(), "Depends"]);
    assert!(depends.contains("qemu-system-x86"), "{depends}");
    assert!(depends.contains("e2fsprogs"), "{depends}");
}

#[test]
fn the_unpacked_tree_works_on_its_own() {
    let root = tempfile::tempdir().unwrap();
    dpkg_deb(&["-x", deb().to_str().unwrap(), root.path().to_str().unwrap()]);
    let plugins = root.path().join(PLUGINS);

    // The descriptor: what the exe-unit reads to find and start us.
    let text = std::fs::read_to_string(plugins.join("ya-runtime-vm.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let d = &d[0];
    assert_eq!(d["name"], "vm");
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d["supervisor-path"], "exe-unit");
    assert_eq!(d["extra-args"], serde_json::json!(["--cap-handoff"]));
    let bin = plugins.join(d["runtime-path"].as_str().unwrap());
    assert!(bin.is_file(), "{}", bin.display());

    // The self-test passes with nothing from this repository on PATH: QEMU from the system,
    // kernel, initramfs, image and helpers from the package's runtime dir.
    let system_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .filter(|d| !d.to_string_lossy().contains(".tools"))
        .collect::<Vec<_>>();
    let out = Command::new(&bin)
        .args(["--accel", "tcg", "test"])
        .env("PATH", std::env::join_paths(system_path).unwrap())
        .env_remove("YA_RUNTIME_VM_RUNTIME_DIR")
        .env("TMPDIR", root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
}
