//! `ya-runtime-vm run` end to end: the binary deploys the sample image, boots a real VM (TCG),
//! runs one command, passes its output through, exits with its code, and leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_ya-runtime-vm");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Env {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Env {
    /// A private copy of the sample image, so that every process of this test names this dir.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sample = repo().join("target/images/sample.gvmi");
        assert!(
            sample.exists(),
            "run scripts/build-sample-image.sh (scripts/test.sh does)"
        );
        let image = dir.path().join("sample.gvmi");
        std::fs::copy(&sample, &image).unwrap();
        Self { dir, image }
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn command(&self, extra: &[&str]) -> std::process::Command {
        let mut path = std::ffi::OsString::from(repo().join(".tools/bin"));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut c = std::process::Command::new(BIN);
        c.arg("--workdir")
            .arg(self.workdir())
            .arg("--task-package")
            .arg(&self.image)
            .args(extra)
            .env("PATH", path)
            .env("YA_RUNTIME_VM_ACCEL", "tcg")
            // The VM's scratch dir (sockets) under this test's dir: a leftover one is seen.
            .env("TMPDIR", self.dir.path());
        c
    }

    fn run(&self, extra: &[&str], argv: &[&str]) -> Output {
        self.command(extra)
            .args(["run", "--entrypoint", argv[0], "--"])
            .args(&argv[1..])
            .output()
            .unwrap()
    }

    /// What is in the workdir, sorted: after any run, `deployment.json` and the host volume
    /// dirs only (scratch disks have no name).
    fn workdir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.workdir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The workdir's `deployment.json`.
    fn record(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.workdir().join("deployment.json")).unwrap())
            .unwrap()
    }

    /// The host volume dirs the deployment record names, and `deployment.json`, sorted.
    fn expected_workdir(&self) -> Vec<String> {
        let record = self.record();
        let mut names: Vec<String> = record["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .chain(["deployment.json".to_string()])
            .collect();
        names.sort();
        names
    }

    /// Processes whose command line mentions this test's directory, and scratch dirs left in it.
    fn leftovers(&self) -> Vec<String> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let mut found: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("yrv-"))
            .collect();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) && !cmd.contains("run.rs") {
                    found.push(cmd);
                }
            }
        }
        found
    }
}

#[test]
fn runs_one_command_with_the_images_config() {
    let env = Env::new();
    let out = env.run(
        &["--hostname", "runner"],
        &[
            "/bin/sh",
            "-c",
            "printf 'a\\0b'; echo; pwd; uname -n; echo $GOLEM_SAMPLE; echo oops >&2; exit 7",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "a\0b\n/golem/work\nrunner\n1\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops\n"));
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn volumes_carry_files_both_ways_and_state_is_per_run() {
    let env = Env::new();
    // The first run deploys; find the input volume's host dir from the deployment record.
    let out = env.run(&[], &["/bin/true"]);
    assert_success(&out);
    let record = env.record();
    let vol = |path: &str| {
        let v = record["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["path"] == path)
            .unwrap();
        env.workdir().join(v["name"].as_str().unwrap())
    };
    std::fs::write(vol("/golem/input").join("in.txt"), "from the host\n").unwrap();
    let out = env.run(
        &[],
        &[
            "/bin/sh",
            "-c",
            "tr a-z A-Z < /golem/input/in.txt > /golem/output/out.txt",
        ],
    );
    assert_success(&out);
    assert_eq!(
        std::fs::read_to_string(vol("/golem/output").join("out.txt")).unwrap(),
        "FROM THE HOST\n"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn failures_are_one_clear_line() {
    let env = Env::new();
    let out = env.run(&[], &["/bin/no-such-program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        last,
        "ya-runtime-vm: exec /bin/no-such-program: No such file or directory"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());

    // A runtime dir without a kernel.
    let empty = env.dir.path().join("empty-runtime");
    std::fs::create_dir(&empty).unwrap();
    let out = env.run(&["--runtime-dir", empty.to_str().unwrap()], &["/bin/true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap_or_default()
            .contains("no guest kernel"),
        "{err}"
    );
}

#[test]
fn ctrl_c_powers_the_vm_off_and_exits_130() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let mut child = env
        .command(&[])
        .args([
            "run",
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            "echo ready; sleep 1000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // What a terminal's Ctrl-C does: SIGINT to the foreground process group. QEMU and the
    // helpers have groups of their own, so only the runtime gets it and powers the VM off.
    // SAFETY: signalling our own child's process group.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_host_volume_from_the_override_is_shared_like_the_images() {
    let env = Env::new();
    let out = env.run(
        &["--volume-override", r#"{"/data": {"host": {}}}"#],
        &[
            "/bin/sh",
            "-c",
            "echo from-the-guest > /data/f && ls /golem",
        ],
    );
    assert_success(&out);
    assert_eq!(out.stdout, b"input\noutput\nwork\n");
    let record = env.record();
    let data = record["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["path"] == "/data")
        .unwrap();
    let file = env.workdir().join(data["name"].as_str().unwrap()).join("f");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "from-the-guest\n");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_ram_volume_holds_its_size_and_refuses_more() {
    let env = Env::new();
    // /golem/output is an image VOLUME turned into RAM: no host dir for it any more.
    let out = env.run(
        &[
            "--volume-override",
            r#"{"/scratch": {"ram": {"size": "64MiB"}}, "/golem/output": {"ram": {"size": "1MiB"}}}"#,
        ],
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/scratch/a bs=1M count=32 2>/dev/null && echo took-32 && rm /scratch/a; \
             dd if=/dev/zero of=/scratch/b bs=1M count=100 2>/dev/null || echo refused-100; \
             grep -c ' /scratch tmpfs ' /proc/mounts; grep -c ' /golem/output tmpfs ' /proc/mounts",
        ],
    );
    assert_output(&out, "took-32\nrefused-100\n1\n1\n");
    let record = env.record();
    let host: Vec<_> = record["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(host, ["/golem/input"]);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// Asserts a successful run, quoting its stderr otherwise.
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a successful run with exactly this stdout.
fn assert_output(out: &Output, want: &str) {
    assert_success(out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

/// Shell: raise an ext4 error on the file system mounted at $1 (through its sysfs trigger).
const EXT4_ERROR: &str =
    "ext4_error() { d=$(awk -v m=\"$1\" '$2 == m { print $1 }' /proc/mounts); \
                          echo test > /sys/fs/ext4/${d#/dev/}/trigger_fs_error; }; ";

#[test]
fn storage_volumes_are_empty_disks_that_fill_up_and_honour_their_errors_setting() {
    let env = Env::new();
    let script = format!(
        "{EXT4_ERROR} \
         grep -c ' /c ext4 ' /proc/mounts; stat -c '%a %U' /c; ls -A /c | wc -l; \
         dd if=/dev/zero of=/c/big bs=1M count=40 2>&1 | grep -o 'No space left on device'; \
         rm /c/big; echo again > /c/small && cat /c/small; \
         ext4_error /c; ext4_error /ro; \
         echo x > /c/after && echo c-writable; \
         echo x > /ro/after 2>/dev/null || echo ro-refused"
    );
    let out = env.run(
        &[
            "--volume-override",
            r#"{"/c": {"storage": {"size": "16MiB", "errors": "continue"}},
                "/ro": {"storage": {"size": "16MiB", "preallocate": "8MiB", "errors": "remount-ro"}}}"#,
        ],
        &["/bin/sh", "-c", &script],
    );
    assert_output(
        &out,
        "1\n1777 root\n0\nNo space left on device\nagain\nc-writable\nro-refused\n",
    );
    assert_eq!(env.workdir_entries(), env.expected_workdir());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn errors_panic_ends_the_vm_with_a_clear_error_and_leaves_nothing() {
    let env = Env::new();
    let script = format!("{EXT4_ERROR} echo before; ext4_error /p; sleep 60; echo after");
    let out = env.run(
        &[
            "--volume-override",
            r#"{"/p": {"storage": {"size": "16MiB", "errors": "panic"}}}"#,
        ],
        &["/bin/sh", "-c", &script],
    );
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ya-runtime-vm: the VM stopped before the command ended")
            && last.contains("panic forced after error"),
        "{err}"
    );
    assert_eq!(env.workdir_entries(), env.expected_workdir());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn the_roots_writable_layer_holds_what_storage_gib_grants_and_keeps_the_images_modes() {
    let env = Env::new();
    // 768 MiB cannot fit in the VM's 256 MiB of RAM: the layer is on disk.
    let out = env.run(
        &["--storage-gib", "2"],
        &[
            "/bin/sh",
            "-c",
            "stat -c '%a %U' / /etc/motd /bin/busybox; mkdir -p /var; \
             dd if=/dev/zero of=/var/big bs=1M count=768 conv=fsync 2>/dev/null && \
             stat -c %s /var/big; echo changed >> /etc/motd; stat -c '%a %U' / /etc/motd",
        ],
    );
    assert_output(
        &out,
        "755 root\n644 root\n755 root\n805306368\n755 root\n644 root\n",
    );
    assert_eq!(env.workdir_entries(), env.expected_workdir());
}

#[test]
fn a_full_root_layer_gets_enospc_and_the_vm_goes_on() {
    let env = Env::new();
    let script =
        "dd if=/dev/zero of=/big bs=1M count=100 2>&1 | grep -o 'No space left on device'; \
                  rm /big; echo fine > /after && cat /after";
    // On disk: a 64 MiB grant.
    let out = env.run(&["--storage-gib", "0.0625"], &["/bin/sh", "-c", script]);
    assert_output(&out, "No space left on device\nfine\n");
    // In RAM: a ram override on /, which keeps the image root's mode too.
    let out = env.run(
        &["--volume-override", r#"{"/": {"ram": {"size": "48MiB"}}}"#],
        &["/bin/sh", "-c", &format!("stat -c %a /; {script}")],
    );
    assert_output(&out, "755\nNo space left on device\nfine\n");
    assert_eq!(env.workdir_entries(), env.expected_workdir());
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
