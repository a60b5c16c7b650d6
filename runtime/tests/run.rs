//! `ya-runtime-vm run` end to end: the binary deploys the sample image, boots a real VM (TCG),
//! runs one command, passes its output through, exits with its code, and leaves nothing behind.

use std::process::Output;

use test_harness::{sample_image, Activity};

/// A private copy of the sample image, not deployed: `run` deploys by itself.
fn activity() -> Activity {
    Activity::new_in(tempfile::tempdir().unwrap(), &sample_image())
}

/// `ya-runtime-vm [extra] run --entrypoint argv[0] -- argv[1..]`, to its end.
fn run(a: &Activity, extra: &[&str], argv: &[&str]) -> Output {
    a.std_command()
        .args(extra)
        .args(["run", "--entrypoint", argv[0], "--"])
        .args(&argv[1..])
        .output()
        .unwrap()
}

/// Nothing of the activity runs any more, no scratch dir is left, and the workdir holds the
/// deployment record and the host volume dirs it names only (scratch disks have no name).
fn assert_nothing_left(a: &mut Activity) {
    let left = a.leftovers_now();
    assert!(left.is_empty(), "{left:?}");
    a.reload_vols();
    assert_eq!(a.workdir_extras(), Vec::<String>::new());
}

#[test]
fn runs_one_command_with_the_images_config() {
    let mut env = activity();
    let out = run(
        &env,
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
    assert_nothing_left(&mut env);
}

#[test]
fn volumes_carry_files_both_ways_and_state_is_per_run() {
    let mut env = activity();
    // The first run deploys; find the input volume's host dir from the deployment record.
    let out = run(&env, &[], &["/bin/true"]);
    assert_success(&out);
    env.reload_vols();
    std::fs::write(env.volume("/golem/input").join("in.txt"), "from the host\n").unwrap();
    let out = run(
        &env,
        &[],
        &[
            "/bin/sh",
            "-c",
            "tr a-z A-Z < /golem/input/in.txt > /golem/output/out.txt",
        ],
    );
    assert_success(&out);
    assert_eq!(
        std::fs::read_to_string(env.volume("/golem/output").join("out.txt")).unwrap(),
        "FROM THE HOST\n"
    );
    assert_nothing_left(&mut env);
}

#[test]
fn failures_are_one_clear_line() {
    let mut env = activity();
    let out = run(&env, &[], &["/bin/no-such-program"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        last,
        "ya-runtime-vm: exec /bin/no-such-program: No such file or directory"
    );
    assert_nothing_left(&mut env);

    // A runtime dir without a kernel.
    let empty = env.dir.path().join("empty-runtime");
    std::fs::create_dir(&empty).unwrap();
    let out = run(
        &env,
        &["--runtime-dir", empty.to_str().unwrap()],
        &["/bin/true"],
    );
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
    let mut env = activity();
    let mut child = env
        .std_command()
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
    assert_nothing_left(&mut env);
}

#[test]
fn a_host_volume_from_the_override_is_shared_like_the_images() {
    let mut env = activity();
    let out = run(
        &env,
        &["--volume-override", r#"{"/data": {"host": {}}}"#],
        &[
            "/bin/sh",
            "-c",
            "echo from-the-guest > /data/f && ls /golem",
        ],
    );
    assert_success(&out);
    assert_eq!(out.stdout, b"input\noutput\nwork\n");
    env.reload_vols();
    let file = env.volume("/data").join("f");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "from-the-guest\n");
    assert_nothing_left(&mut env);
}

#[test]
fn a_ram_volume_holds_its_size_and_refuses_more() {
    let mut env = activity();
    // /golem/output is an image VOLUME turned into RAM: no host dir for it any more.
    let out = run(&env,
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
    env.reload_vols();
    let host: Vec<_> = env.vols.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(host, ["/golem/input"]);
    assert_nothing_left(&mut env);
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
    let mut env = activity();
    let script = format!(
        "{EXT4_ERROR} \
         grep -c ' /c ext4 ' /proc/mounts; stat -c '%a %U' /c; ls -A /c | wc -l; \
         dd if=/dev/zero of=/c/big bs=1M count=40 2>&1 | grep -o 'No space left on device'; \
         rm /c/big; echo again > /c/small && cat /c/small; \
         ext4_error /c; ext4_error /ro; \
         echo x > /c/after && echo c-writable; \
         echo x > /ro/after 2>/dev/null || echo ro-refused"
    );
    let out = run(
        &env,
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
    assert_nothing_left(&mut env);
}

#[test]
fn errors_panic_ends_the_vm_with_a_clear_error_and_leaves_nothing() {
    let mut env = activity();
    let script = format!("{EXT4_ERROR} echo before; ext4_error /p; sleep 60; echo after");
    let out = run(
        &env,
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
    assert_nothing_left(&mut env);
}

#[test]
fn the_roots_writable_layer_holds_what_storage_gib_grants_and_keeps_the_images_modes() {
    let mut env = activity();
    // 768 MiB cannot fit in the VM's 256 MiB of RAM: the layer is on disk.
    let out = run(
        &env,
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
    assert_nothing_left(&mut env);
}

#[test]
fn a_full_root_layer_gets_enospc_and_the_vm_goes_on() {
    let mut env = activity();
    let script =
        "dd if=/dev/zero of=/big bs=1M count=100 2>&1 | grep -o 'No space left on device'; \
                  rm /big; echo fine > /after && cat /after";
    // On disk: a 64 MiB grant.
    let out = run(
        &env,
        &["--storage-gib", "0.0625"],
        &["/bin/sh", "-c", script],
    );
    assert_output(&out, "No space left on device\nfine\n");
    // In RAM: a ram override on /, which keeps the image root's mode too.
    let out = run(
        &env,
        &["--volume-override", r#"{"/": {"ram": {"size": "48MiB"}}}"#],
        &["/bin/sh", "-c", &format!("stat -c %a /; {script}")],
    );
    assert_output(&out, "755\nNo space left on device\nfine\n");
    assert_nothing_left(&mut env);
}
