//! `ya-runtime-vm start` driven through ya-runtime-api 0.7.0's own client, as the exe-unit
//! drives it: hello, CreateNetwork for INET and the VPN, RunProcess with events, state across processes, work_dir, env, volumes,
//! kill, shutdown; and every other way the runtime ends (stdin closed, SIGTERM, SIGKILL, QEMU
//! dying, a runtime dir without a kernel) leaving no process and no socket behind.

use std::net::Ipv4Addr;
use std::time::Duration;

use test_harness::net_peer::NetPeer;
use test_harness::proto::response::create_network::Endpoint;
use test_harness::{finish, pid_of, proto, run, sample_with_config, Activity, RawApi};
use ya_runtime_api::server::proto::Network;
use ya_runtime_api::server::{CreateNetwork, KillProcess, RuntimeControl, RuntimeService};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exe_units_conversation() {
    let activity = Activity::deploy().await;
    std::fs::write(
        activity.volume("/golem/input").join("in.txt"),
        "from the host\n",
    )
    .unwrap();
    // The exe-unit binds one UDP socket per network the agreement grants and names them before
    // `start`; after Hello come INET's CreateNetwork, then the VPN's.
    let inet_peer = NetPeer::start(Ipv4Addr::new(10, 42, 42, 1));
    let vpn_peer = NetPeer::start(Ipv4Addr::new(192, 168, 0, 1));
    let (inet_url, vpn_url) = (inet_peer.url(), vpn_peer.url());
    let (rt, mut events) = activity
        .start_with(&[
            "--vpn-endpoint",
            &vpn_url,
            "--inet-endpoint",
            &inet_url,
            "start",
        ])
        .await;
    for (interface, net, gw, ip, hosts) in [
        (1, "10.42.42.1", "10.42.42.1", "10.42.42.2", vec![]),
        (
            0,
            "192.168.0.0",
            "",
            "192.168.0.2",
            vec![("requestor", "192.168.0.1")],
        ),
    ] {
        let reply = rt
            .create_network(CreateNetwork {
                networks: vec![Network {
                    addr: net.into(),
                    gateway: gw.into(),
                    mask: "255.255.255.0".into(),
                    if_addr: ip.into(),
                }],
                hosts: hosts
                    .into_iter()
                    .map(|(n, i)| (n.to_string(), i.to_string()))
                    .collect(),
                interface,
            })
            .await
            .unwrap();
        assert!(
            matches!(reply.endpoint, Some(Endpoint::UdpDatagram(_))),
            "{reply:?}"
        );
    }
    let pid = rt
        .run_process(run(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "ping -c 1 -W 5 10.42.42.1 >/dev/null && ping -c 1 -W 5 requestor >/dev/null && \
                 ip route | grep -c -e '^default via 10.42.42.1' -e '^192.168.0.0/24 dev'",
            ],
        ))
        .await
        .unwrap()
        .pid;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), code),
        ("2\n", 0),
        "{}",
        String::from_utf8_lossy(&err)
    );

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

    // a quiet process's line is not held until its exit (the guest gathers small writes only
    // for a few ms)
    let pid = rt
        .run_process(run(
            "/bin/sh",
            &["sh", "-c", "echo first; sleep 3; echo second"],
        ))
        .await
        .unwrap()
        .pid;
    let first = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("an event in time")
        .expect("events open");
    assert_eq!(
        (first.pid, first.running, first.stdout.as_slice()),
        (pid, true, &b"first\n"[..])
    );
    let (out, _, code) = finish(&mut events, pid).await;
    assert_eq!((out.as_slice(), code), (&b"second\n"[..], 0));

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
async fn after_its_shutdown_reply_the_runtime_waits_to_be_stopped_and_ends_when_its_input_closes() {
    // yagna's client discards a reply that arrives as the runtime's process ends (it stops
    // reading once the process is reaped): the runtime stays until the exe-unit stops it.
    let activity = Activity::deploy().await;
    let mut api = RawApi::start(&activity);
    api.hello().await;
    api.send(
        2,
        Some(proto::request::Command::Shutdown(
            proto::request::Shutdown::default(),
        )),
    )
    .await;
    let reply = api
        .recv(Duration::from_secs(30))
        .await
        .expect("a Shutdown reply");
    assert!(
        matches!(reply.command, Some(proto::response::Command::Shutdown(_))),
        "{reply:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        api.child.try_wait().unwrap().is_none(),
        "the runtime ended right after its reply: {}",
        activity.log()
    );
    // Everything but the runtime itself is gone before the reply is written.
    let runtime = api.child.id().map(|p| p as i32);
    let left: Vec<_> = activity
        .processes()
        .into_iter()
        .filter(|p| Some(p.pid) != runtime)
        .map(|p| p.cmdline)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(activity.scratch_dir(), None);
    api.stdin = None;
    assert_eq!(api.exit_code(Duration::from_secs(10)).await, Some(0));
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
    assert_eq!(activity.shut_down(&rt).await, 0);
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
    let log = activity.log();
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
        assert_eq!(activity.shut_down(&rt).await, 0);
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
async fn host_volumes_take_shared_mappings_and_show_what_the_host_writes_at_once() {
    let activity = Activity::deploy().await;
    let tool = activity.install_tool("shared-mmap", "/golem/input");
    let (rt, mut events) = activity.start().await;
    let sh = |script: &str| run("/bin/sh", &["sh", "-c", script]);

    // Databases and memory-mapped arrays write through shared mappings (volumes use direct
    // I/O, which refuses them unless virtiofsd allows it and the kernel supports it).
    let pid = pid_of(
        &rt,
        run(
            &tool,
            &["shared-mmap", "/golem/output/mapped", "through a mapping"],
        ),
    )
    .await;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "read: through a mapping\nmapped: through a mapping\n"
    );
    assert_eq!(
        std::fs::read_to_string(activity.volume("/golem/output").join("mapped")).unwrap(),
        "through a mapping"
    );

    // The exe-unit writes into volumes between commands: the guest reads the new contents at
    // once, the file it read a moment before included.
    let input = activity.volume("/golem/input").join("changing");
    std::fs::write(&input, "first\n").unwrap();
    let read = sh("cat /golem/input/changing; ls -l /golem/input/changing | awk '{print $5}'");
    let pid = pid_of(&rt, read.clone()).await;
    let (out, _, code) = finish(&mut events, pid).await;
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), code),
        ("first\n6\n", 0)
    );
    std::fs::write(&input, "second, longer\n").unwrap();
    let pid = pid_of(&rt, read).await;
    let (out, _, code) = finish(&mut events, pid).await;
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), code),
        ("second, longer\n15\n", 0)
    );
    assert_eq!(activity.shut_down(&rt).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_volume_keeps_its_state_across_commands() {
    let activity = Activity::deploy_with(
        &test_harness::sample_image(),
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
