//! A hostile guest and a hostile runtime-API client, each case as it was tried against the
//! runtime, with the outcome a provider needs: the runtime's memory and the host's disk stay
//! bounded, the runtime goes on answering or ends the activity with one clear line, every open
//! command gets a final status, and nothing of the activity is left behind.
//!
//! The guest's misdeeds are done by `hostile` (a static tool built with the init, copied into a
//! volume) running as guest root.

use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

use test_harness::proto::{request, response};
use test_harness::{finish, pid_of, rss_kib, run, sh, Activity, RawApi};
use tokio::sync::mpsc;
use ya_runtime_api::server::{ProcessStatus, RuntimeControl, RuntimeService};

/// Bytes under `dir`, volumes included.
fn disk_usage(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += disk_usage(&e.path());
        } else {
            use std::os::unix::fs::MetadataExt;
            total += m.blocks() * 512;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_flood_leaves_the_hosts_disk_and_the_runtimes_memory_flat() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let runtime_pid = rt.id() as i32;
    let (rss_before, disk_before) = (rss_kib(runtime_pid), disk_usage(activity.dir.path()));
    let pid = pid_of(&rt, run(&tool, &["hostile", "console-flood", "3000000"])).await;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(out, b"wrote 3000000\n");
    let (rss_after, disk_after) = (rss_kib(runtime_pid), disk_usage(activity.dir.path()));
    assert!(
        rss_after < rss_before + 4096,
        "runtime RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        disk_after < disk_before + 512 * 1024,
        "activity dir {disk_before} -> {disk_after} bytes"
    );
    // Neither the console nor QEMU's or a helper's stderr is a file: the scratch dir holds
    // sockets, the owner's pid and virtiofsd's pid files only.
    let scratch = activity.scratch_dir().expect("the VM's scratch dir");
    let files: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_socket()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "owner" && !n.ends_with(".sock.pid"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
    // The VM goes on.
    let pid = pid_of(&rt, run("/bin/echo", &["echo", "still here"])).await;
    assert_eq!(finish(&mut events, pid).await.0, b"still here\n");
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_makes_code_without_end_grows_qemu_by_at_most_its_translation_cache() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let qemu = activity
        .pid_of("qemu-system-x86_64")
        .expect("QEMU is running");
    let before = rss_kib(qemu);
    // 2 MiB of code, 4 times over: half a million blocks translated anew, which grew QEMU by
    // some 230 MiB with its default cache (an eighth of the host's RAM, up to 1 GiB).
    let pid = pid_of(&rt, run(&tool, &["hostile", "code-churn", "2", "4"])).await;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(out.starts_with(b"ran 524288 blocks"), "{out:?}");
    let after = rss_kib(qemu);
    // At most the cache, the 2 MiB the guest touched and some slack.
    let limit = (qemu_config::DEFAULT_TCG_CACHE_MIB + 24) * 1024;
    eprintln!("QEMU RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + limit,
        "QEMU's RSS grew from {before} KiB to {after} KiB"
    );
    // The VM goes on.
    let pid = pid_of(&rt, run("/bin/echo", &["echo", "still here"])).await;
    assert_eq!(finish(&mut events, pid).await.0, b"still here\n");
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

/// Stops PID 1 with ptrace from inside the guest; returns the tool's pid (whose exit can never be
/// reported).
async fn stop_init(rt: &impl RuntimeService, tool: &str) -> u64 {
    let pid = pid_of(rt, run(tool, &["hostile", "stop-init"])).await;
    // Its output cannot come out either: PID 1 relays it. Give the tracer time to attach.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_init_misses_its_deadline_and_the_activity_ends_with_final_statuses() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let stopper = stop_init(&rt, &tool).await;
    let err = a_wedged_agent_ends_the_activity(&activity, &rt, &mut events, stopper, |m| {
        m.contains("did not answer a run request within")
    })
    .await;
    // The command in flight has the reason on its stderr.
    assert!(
        String::from_utf8_lossy(&err).contains("did not answer a run request"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    let log = activity.log();
    assert!(
        log.lines().last().unwrap_or_default().starts_with(
            "ya-runtime-vm: the guest agent is lost: the guest agent did not answer a run request"
        ),
        "{log}"
    );
}

/// With the agent unable to answer: the next run request fails within its deadline
/// (`request_failed` accepts its message), the command `in_flight` gets its final status -1, and
/// the runtime ends the activity with status 1, leaving nothing. Returns that command's stderr.
async fn a_wedged_agent_ends_the_activity(
    activity: &Activity,
    rt: &(impl RuntimeService + RuntimeControl),
    events: &mut mpsc::UnboundedReceiver<ProcessStatus>,
    in_flight: u64,
    request_failed: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let asked = Instant::now();
    let e = rt
        .run_process(run("/bin/true", &["true"]))
        .await
        .unwrap_err();
    assert!(request_failed(&e.message), "{e:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(40),
        "{:?}",
        asked.elapsed()
    );
    let (_, err, code) = finish(events, in_flight).await;
    assert_eq!(code, -1);
    let code = tokio::time::timeout(Duration::from_secs(20), rt.stopped())
        .await
        .expect("the runtime ends the activity");
    assert_eq!(code, 1);
    assert!(activity.leftovers().await.is_empty());
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_activity_even_with_init_stopped() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, _events) = activity.start().await;
    stop_init(&rt, &tool).await;
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), rt.shutdown())
        .await
        .expect("Shutdown is answered")
        .unwrap();
    assert_eq!(rt.stopped().await, 0);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(activity.leftovers().await.is_empty());
}

/// Takes over PID 1's connection from inside the guest with `steal-conn MODE` while a command
/// runs; the activity must end at once with `reason` in its last line, the running command
/// getting its final status.
async fn a_hijacked_connection_ends_the_activity(mode: &str, reason: &str) {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let sleeper = pid_of(&rt, run("/bin/sleep", &["sleep", "1000"])).await;
    let hijacker = pid_of(&rt, run(&tool, &["hostile", "steal-conn", mode])).await;
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let s = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("final statuses in time")
            .unwrap_or_else(|| {
                panic!(
                    "events ended before both final statuses: {}",
                    activity.log()
                )
            });
        if !s.running {
            ended.push((s.pid, s.return_code));
        }
    }
    ended.sort();
    let mut want = vec![(sleeper, -1), (hijacker, -1)];
    want.sort();
    assert_eq!(ended, want);
    let code = tokio::time::timeout(Duration::from_secs(20), rt.stopped())
        .await
        .expect("the runtime ends the activity");
    assert_eq!(code, 1);
    let log = activity.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ya-runtime-vm: the guest agent is lost: ") && last.contains(reason),
        "{log}"
    );
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_shut_down_by_the_guest_ends_the_activity() {
    a_hijacked_connection_ends_the_activity("shutdown", "closed the connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_connection_ends_the_activity() {
    a_hijacked_connection_ends_the_activity("garbage", "broke the protocol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vsock_packet_the_device_refuses_ends_the_activity_at_the_next_request() {
    // The guest kernel spreads a packet above ~32 KiB over several descriptors, and
    // vhost-device-vsock 0.3 takes no more of the guest's packets after one (the agent itself
    // never writes that much at once). A guest root process can send one: the host stays
    // bounded, and the next request misses its deadline, as with a stopped init. (Over the
    // kernel's vhost-vsock the packet arrives, and its garbage breaks the protocol instead.)
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let hijacker = pid_of(&rt, run(&tool, &["hostile", "steal-conn", "big-packet"])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    a_wedged_agent_ends_the_activity(&activity, &rt, &mut events, hijacker, |m| {
        m.contains("did not answer a run request within") || m.contains("agent")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_frames_ends_the_activity() {
    a_hijacked_connection_ends_the_activity("bad-frames:1000", "bad frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_forged_frames_are_counted_and_the_vm_goes_on() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let pid = pid_of(
        &rt,
        run(&tool, &["hostile", "steal-conn", "forged-output:10"]),
    )
    .await;
    let (out, _, code) = finish(&mut events, pid).await;
    assert_eq!(
        (out.as_slice(), code),
        (&b"wrote 10 forged outputs\n"[..], 0)
    );
    let pid = pid_of(&rt, sh("echo fine")).await;
    assert_eq!(finish(&mut events, pid).await.0, b"fine\n");
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.log().contains("bad frame"), "{}", activity.log());
    assert!(activity.leftovers().await.is_empty());
}

/// Boots, says hello, sends `bytes`; the runtime must exit 1 with `line` in its last line.
async fn a_broken_api_stream_is_an_error(bytes: &[u8], line: &str) {
    let activity = Activity::deploy().await;
    let mut api = RawApi::start(&activity);
    api.hello().await;
    api.send_bytes(bytes).await;
    let code = api.exit_code(Duration::from_secs(30)).await;
    let log = activity.log();
    assert_eq!(code, Some(1), "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ya-runtime-vm: the runtime API's input is broken: ")
            && last.contains(line),
        "{log}"
    );
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_the_api_are_an_error() {
    a_broken_api_stream_is_an_error(&[0xff; 64], "a length prefix that is not a varint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_length_prefix_is_refused_without_buffering() {
    // 2^40 as a varint.
    let prefix = [0x80, 0x80, 0x80, 0x80, 0x80, 0x20];
    a_broken_api_stream_is_an_error(&prefix, "a request of 1099511627776 bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_command_gets_an_error_and_shutdown_leaves_nothing_at_the_reply() {
    let activity = Activity::deploy().await;
    let mut api = RawApi::start(&activity);
    api.hello().await;
    api.send(7, None).await;
    let r = api.recv(Duration::from_secs(10)).await.expect("a reply");
    assert_eq!(r.id, 7);
    assert!(
        matches!(&r.command, Some(response::Command::Error(e)) if e.message.contains("no command")),
        "{r:?}"
    );
    // The moment the Shutdown reply arrives, the runtime is killed, as the exe-unit does it:
    // everything must already be gone.
    api.send(8, Some(request::Command::Shutdown(request::Shutdown {})))
        .await;
    let r = api.recv(Duration::from_secs(20)).await.expect("a reply");
    assert!(
        matches!(r.command, Some(response::Command::Shutdown(_))),
        "{r:?}"
    );
    let _ = api.child.start_kill();
    let left = activity.leftovers_now();
    assert!(left.iter().all(|l| l.contains("ya-runtime-vm")), "{left:?}");
    let _ = api.child.wait().await;
    assert!(activity.leftovers_now().is_empty());
    assert!(activity.workdir_extras().is_empty());
}

/// Starts the activity through a raw client and a process that floods stdout (request 2).
async fn flooding(activity: &Activity) -> RawApi {
    let mut api = RawApi::start(activity);
    api.hello().await;
    let flood = request::RunProcess {
        bin: "/bin/sh".into(),
        args: vec!["sh".into(), "-c".into(), "cat /dev/zero".into()],
        ..Default::default()
    };
    api.send(2, Some(request::Command::Run(flood))).await;
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_during_a_flood_ends_the_activity() {
    let activity = Activity::deploy().await;
    let mut api = flooding(&activity).await;
    // Some of the flood arrives, then the exe-unit's end of stdout goes away.
    for _ in 0..10 {
        api.recv(Duration::from_secs(10)).await.expect("output");
    }
    api.stdout = None;
    let code = api.exit_code(Duration::from_secs(30)).await;
    let log = activity.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.lines()
            .last()
            .unwrap_or_default()
            .contains("the runtime API's output is closed"),
        "{log}"
    );
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_characters_in_every_path_reach_qemu_intact() {
    let dir = tempfile::Builder::new()
        .prefix("odd, dir=x:y ")
        .tempdir()
        .unwrap();
    let activity = Activity::deploy_in(dir, &test_harness::sample_image(), &[]).await;
    std::fs::write(activity.volume("/golem/input").join("in"), "through\n").unwrap();
    let (rt, mut events) = activity.start().await;
    let pid = pid_of(&rt, sh("cat /golem/input/in")).await;
    assert_eq!(finish(&mut events, pid).await.0, b"through\n");
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_place_of_passwd_never_blocks_the_init() {
    let activity = Activity::deploy_image(&test_harness::sample_with_config(
        r#"{"Env":["PATH=/bin"],"User":"root","Volumes":{"/golem/output":{}}}"#,
    ))
    .await;
    let (rt, mut events) = activity.start().await;
    let pid = pid_of(&rt, sh("rm /etc/passwd && mkfifo /etc/passwd")).await;
    assert_eq!(finish(&mut events, pid).await.2, 0);
    // The image's User is a name: it cannot be looked up now, and the request says why.
    let e = tokio::time::timeout(Duration::from_secs(30), rt.run_process(sh("true")))
        .await
        .expect("an answer")
        .unwrap_err();
    assert!(
        e.message.contains("/etc/passwd is not a regular file"),
        "{e:?}"
    );
    // The agent answers on.
    rt.kill_process(ya_runtime_api::server::KillProcess { pid: 1, signal: 0 })
        .await
        .unwrap_err();
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_path_through_an_image_symlink_stays_inside_the_image() {
    let image = test_harness::sample_changed(
        |root| {
            std::fs::remove_dir_all(root.join("golem")).unwrap();
            // /golem points at the root: /golem/output is /output, inside the image.
            std::os::unix::fs::symlink("/", root.join("golem")).unwrap();
        },
        r#"{"Env":["PATH=/bin"],"Volumes":{"/golem/output":{}}}"#,
    );
    let activity = Activity::deploy_image(&image).await;
    let (rt, mut events) = activity.start().await;
    let pid = pid_of(&rt, sh("echo through > /golem/output/f && cat /output/f")).await;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(out, b"through\n");
    assert_eq!(
        std::fs::read_to_string(activity.volume("/golem/output").join("f")).unwrap(),
        "through\n"
    );
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_node_setuid_file_or_foreign_owner_reaches_the_host_through_a_volume() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let script = format!(
        "cd /golem/output; \
         mknod null c 1 3 2>/dev/null; echo mknod-c $?; \
         mknod blk b 7 0 2>/dev/null; echo mknod-b $?; \
         echo x > suid; chmod 4755 suid 2>/dev/null; echo chmod-u $?; \
         chmod 2755 suid 2>/dev/null; echo chmod-g $?; \
         {tool} create created 6755 >/dev/null 2>&1; echo create $?; \
         mkdir -m 2775 dir; chown 1234:5678 dir; \
         echo y > owned; chown 1234:5678 owned; echo chown $?; \
         mkfifo fifo; echo fifo $?; \
         stat -c '%a %u' suid owned"
    );
    let pid = pid_of(&rt, sh(&script)).await;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    // The guest sees each refusal; chown is accepted (and squashed on the host).
    assert_eq!(
        String::from_utf8_lossy(&out),
        "mknod-c 1\nmknod-b 1\nchmod-u 1\nchmod-g 1\ncreate 1\nchown 0\nfifo 0\n644 0\n644 0\n"
    );
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let vol = activity.volume("/golem/output");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&vol).unwrap().flatten() {
        let m = e.metadata().unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !m.file_type().is_char_device() && !m.file_type().is_block_device(),
            "{name} is a device node"
        );
        assert_eq!(m.mode() & 0o6000, 0, "{name} has mode {:o}", m.mode());
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{name}'s owner");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["dir", "fifo", "owned", "suid"]);
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

/// Runs `/bin/true`: how long the agent took to answer, and whether it started (a full process
/// table may refuse the start with EAGAIN). Its end is collected but not timed: under a fork bomb
/// it gets its share of the CPU like any other process of the requestor's.
async fn start_true(
    rt: &impl RuntimeService,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ya_runtime_api::server::ProcessStatus>,
) -> (Duration, bool) {
    let asked = Instant::now();
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        rt.run_process(run("/bin/true", &["true"])),
    )
    .await
    .expect("the agent answers");
    let answered = asked.elapsed();
    match started {
        Ok(p) => {
            let (_, _, code) = finish(events, p.pid).await;
            (answered, code == 0)
        }
        Err(e) => {
            assert!(
                e.message.contains("Resource temporarily unavailable"),
                "{e:?}"
            );
            (answered, false)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_answering_under_a_cpu_hog_and_a_fork_bomb() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("hostile", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let sh_out = |script: String| sh(&script);
    // The requestor's processes run at nice 0 in their own cgroup; the init at -20. The guest
    // kernel has both controllers the init limits that cgroup with.
    let pid = pid_of(
        &rt,
        sh(
            "cut -d' ' -f19 /proc/self/stat /proc/1/stat; cat /proc/self/cgroup; \
            grep -wE '^(cpu|pids)' /proc/cgroups | cut -f1",
        ),
    )
    .await;
    assert_eq!(
        finish(&mut events, pid).await.0,
        b"0\n-20\n0::/requestor\ncpu\npids\n"
    );
    let pid = pid_of(&rt, sh_out(format!("{tool} cpu-hog 8 8"))).await;
    assert_eq!(finish(&mut events, pid).await.0, b"hogging\n");
    for _ in 0..3 {
        let (took, ran) = start_true(&rt, &mut events).await;
        assert!(ran && took < Duration::from_secs(5), "{took:?} {ran}");
    }
    let bombed = Instant::now();
    let pid = pid_of(&rt, sh_out(format!("{tool} fork-bomb 15"))).await;
    assert_eq!(finish(&mut events, pid).await.0, b"bombing\n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..3 {
        let (took, _) = start_true(&rt, &mut events).await;
        eprintln!("answered in {took:?}");
        assert!(
            took < Duration::from_secs(5),
            "the agent took {took:?} under a fork bomb"
        );
    }
    // Once the bomb is over, everything works again.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(bombed.elapsed())).await;
    let (_, ran) = start_true(&rt, &mut events).await;
    assert!(ran);
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}

/// A small tmpfs for an activity's directory (the tests run as root, as the suite does).
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (the suite runs as root)");
        Self(dir)
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.path().join("filler")).unwrap();
        let chunk = vec![1u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_the_space_refuses_the_activity_in_one_line() {
    let fs = SmallFs::mount("96m");
    let activity = Activity::deploy_in(
        tempfile::tempdir_in(fs.0.path()).unwrap(),
        &test_harness::sample_image(),
        &["--storage-gib", "1"],
    )
    .await;
    let out = activity
        .command()
        .arg("start")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ya-runtime-vm: ")
            && last.contains("bytes free; the activity's scratch disks need 1073741824"),
        "{err}"
    );
    assert!(activity.leftovers().await.is_empty());
    assert!(activity.workdir_extras().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_disk_leaves_the_guest_its_reserved_space_and_enospc_past_it() {
    let fs = SmallFs::mount("160m");
    let activity = Activity::deploy_in(
        tempfile::tempdir_in(fs.0.path()).unwrap(),
        &test_harness::sample_image(),
        &["--storage-gib", "0.0625", "--mem-gib", "1"],
    )
    .await;
    let (rt, mut events) = activity.start().await;
    // Everything else on the host's file system fills it up.
    fs.fill();
    let asked = Instant::now();
    let pid = pid_of(
        &rt,
        sh(
            "dd if=/dev/zero of=/root/big bs=1M count=200 conv=fsync 2>&1; \
             rm /root/big; echo after > /root/small && cat /root/small",
        ),
    )
    .await;
    let (out, _, code) = finish(&mut events, pid).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.ends_with("after\n"), "{out}");
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
    drop(activity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_an_exe_unit_that_stopped_reading_still_ends_everything() {
    let activity = Activity::deploy().await;
    let mut api = flooding(&activity).await;
    // The runtime's stdout fills up: nobody reads it any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.send(3, Some(request::Command::Shutdown(request::Shutdown {})))
        .await;
    let code = api.exit_code(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", activity.log());
    assert!(activity.leftovers().await.is_empty());
}
