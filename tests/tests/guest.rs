//! The guest end to end: the real kernel and initramfs under QEMU (TCG), the sample busybox
//! image, vhost-device-vsock and virtiofsd. One VM serves every check of the scenario, in order;
//! the last one shuts it down.

use std::time::{Duration, Instant};

use agent_protocol::{request, response, Empty, KillProcess, MountVolume, RunProcess, WriteStdin};
use e2e::{cmd, Agent, Artifacts, Vm};

const BOOT_LIMIT: Duration = Duration::from_secs(120);

fn sh(script: &str) -> RunProcess {
    cmd(&["/bin/sh", "-c", script])
}

fn run_ok(agent: &mut Agent, req: RunProcess) -> e2e::Finished {
    let pid = agent.run(req).expect("run");
    agent.wait(pid).expect("wait")
}

/// The scenario's current step: printed as it starts, and named again if a check of it fails.
struct Steps(std::cell::Cell<&'static str>);

impl Steps {
    fn enter(&self, name: &'static str) {
        eprintln!("step: {name}");
        self.0.set(name);
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the guest scenario failed in step '{}'", self.0.get());
        }
    }
}

#[test]
fn guest_agent_scenario() {
    let steps = Steps(std::cell::Cell::new("boot"));
    let artifacts = Artifacts::find();
    let mut vm = Vm::boot(&artifacts);
    let mut agent = vm.connect(BOOT_LIMIT);

    steps.enter("hello");
    match agent
        .request(request::Body::Hello(agent_protocol::Hello { version: 1 }))
        .unwrap()
    {
        response::Body::Hello(h) => assert_eq!(h.version, 1),
        other => panic!("{other:?}"),
    }

    // a request the guest cannot read gets an error answer, and the agent goes on
    steps.enter("a request the guest cannot read gets an error answer");
    for payload in [&[0xff, 0xff, 0xff][..], &[0x82, 0x05, 0x00], &[]] {
        match agent.request_raw(payload).unwrap() {
            response::Body::Error(e) => assert!(e.message.starts_with("bad request"), "{e:?}"),
            other => panic!("{other:?}"),
        }
    }

    // echo: exact output and exit code 0
    steps.enter("echo");
    let f = run_ok(&mut agent, cmd(&["/bin/echo", "hello", "world"]));
    assert_eq!(f.stdout, b"hello world\n");
    assert!(f.stderr.is_empty());
    assert_eq!((f.exit.code, f.exit.signal), (Some(0), None));

    // Under TCG the guest's CPU lacks ERMS, so copies run as `rep movsq` or vector loops
    // rather than TCG's byte-per-turn `rep movsb` (qemu_config::TCG_CPU_MODEL).
    steps.enter("the TCG guest CPU has no ERMS");
    let f = run_ok(&mut agent, cmd(&["/bin/cat", "/proc/cpuinfo"]));
    let flags = String::from_utf8_lossy(&f.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(str::to_owned)
        .expect("a flags line in the guest's /proc/cpuinfo");
    assert!(flags.split_whitespace().any(|f| f == "sse2"), "{flags}");
    assert!(!flags.split_whitespace().any(|f| f == "erms"), "{flags}");

    // On microvm, whose virtio-mmio rings are 1024 entries deep, the guest posts as many vsock
    // receive buffers and preallocates as many disk requests as on PCI
    // (qemu_config::MICROVM_QUEUE_PARAMS). `rx_buffers` exists only with our kernel's patch; on
    // q35 both read 0 (the rings are PCI's).
    steps.enter("queue depths as on PCI");
    let f = run_ok(
        &mut agent,
        cmd(&[
            "/bin/cat",
            "/sys/module/vmw_vsock_virtio_transport/parameters/rx_buffers",
            "/sys/module/virtio_blk/parameters/queue_depth",
        ]),
    );
    let expected: &[u8] = match e2e::host_machine().0 {
        qemu_config::Machine::Microvm => b"128\n256\n",
        qemu_config::Machine::Q35 => b"0\n0\n",
    };
    assert_eq!(
        String::from_utf8_lossy(&f.stdout),
        String::from_utf8_lossy(expected)
    );

    steps.enter("exit code 3");
    let f = run_ok(&mut agent, sh("exit 3"));
    assert_eq!(f.exit.code, Some(3));

    // a missing binary is a clear error, and the agent goes on
    steps.enter("a missing binary is a clear error");
    let e = agent.run(cmd(&["/bin/no-such-program"])).unwrap_err();
    assert_eq!(e, "exec /bin/no-such-program: No such file or directory");
    let e = agent
        .run(RunProcess {
            cwd: "/nowhere".into(),
            ..cmd(&["/bin/true"])
        })
        .unwrap_err();
    assert!(e.contains("working directory /nowhere"), "{e}");

    // a name without '/' is looked up in the process's PATH, as execvp does; a file that is not
    // executable is EACCES, not "not found"
    steps.enter("a name without '/' is looked up in the process's PATH");
    let f = run_ok(&mut agent, cmd(&["echo", "found"]));
    assert_eq!(f.stdout, b"found\n");
    let e = agent.run(cmd(&["no-such-tool"])).unwrap_err();
    assert_eq!(e, "exec no-such-tool: No such file or directory");
    let e = agent.run(cmd(&["/etc/passwd"])).unwrap_err();
    assert_eq!(e, "exec /etc/passwd: Permission denied");
    // the signal mask and SIGPIPE's disposition are the defaults, not the init's
    let f = run_ok(
        &mut agent,
        cmd(&["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]),
    );
    assert_eq!(
        f.stdout,
        b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );

    // Credentials: root's are inherited from the init (which takes groups [0] at boot), anyone
    // else's are set in the child; neither leaks into the next command.
    steps.enter("credentials of root and of a numeric user");
    let creds = |agent: &mut Agent, user: &str| {
        let f = run_ok(
            agent,
            RunProcess {
                user: user.into(),
                ..cmd(&["/bin/grep", "-E", "^(Uid|Gid|Groups):", "/proc/self/status"])
            },
        );
        String::from_utf8_lossy(&f.stdout).replace('\t', " ")
    };
    let root = "Uid: 0 0 0 0\nGid: 0 0 0 0\nGroups: 0 \n";
    assert_eq!(creds(&mut agent, ""), root);
    assert_eq!(
        creds(&mut agent, "4242"),
        "Uid: 4242 4242 4242 4242\nGid: 0 0 0 0\nGroups: 0 \n"
    );
    assert_eq!(creds(&mut agent, "0"), root);

    steps.enter("stderr is separate from stdout");
    let f = run_ok(&mut agent, sh("echo out; echo err >&2; echo out2"));
    assert_eq!(f.stdout, b"out\nout2\n");
    assert_eq!(f.stderr, b"err\n");

    steps.enter("environment, working directory, hostname, argv[0]");
    let f = run_ok(
        &mut agent,
        RunProcess {
            env: vec!["PATH=/bin".into(), "GREETING=hi there".into()],
            cwd: "/etc".into(),
            ..sh("echo \"$GREETING\"; pwd; hostname; echo $0")
        },
    );
    assert_eq!(
        String::from_utf8_lossy(&f.stdout),
        "hi there\n/etc\ne2e\n/bin/sh\n"
    );
    // the hostname is also in /etc/hostname and /etc/hosts, as in a container
    let f = run_ok(&mut agent, sh("cat /etc/hostname; grep -c e2e /etc/hosts"));
    assert_eq!(String::from_utf8_lossy(&f.stdout), "e2e\n1\n");

    steps.enter("a file written by one command is read by the next (the overlay keeps state)");
    let f = run_ok(
        &mut agent,
        sh("echo persisted > /root/state && mkdir -p /var/x && echo ok"),
    );
    assert_eq!(f.stdout, b"ok\n");
    let f = run_ok(&mut agent, cmd(&["/bin/cat", "/root/state"]));
    assert_eq!(f.stdout, b"persisted\n");

    // the image's root keeps its mode (755), not the upper layer's
    steps.enter("the image's root keeps its mode (755)");
    let f = run_ok(&mut agent, sh("stat -c %a /"));
    assert_eq!(f.stdout, b"755\n");

    steps.enter("running as another user");
    let f = run_ok(
        &mut agent,
        RunProcess {
            user: "nobody".into(),
            ..cmd(&["/bin/id", "-u"])
        },
    );
    assert_eq!(f.stdout, b"65534\n");

    // stdin, when asked for
    steps.enter("stdin");
    let pid = agent
        .run(RunProcess {
            stdin: true,
            ..cmd(&["/bin/cat"])
        })
        .unwrap();
    let r = agent
        .request(request::Body::Stdin(WriteStdin {
            pid,
            data: b"piped\n".to_vec(),
            close: true,
        }))
        .unwrap();
    assert!(matches!(r, response::Body::Ok(_)), "{r:?}");
    let f = agent.wait(pid).unwrap();
    assert_eq!(f.stdout, b"piped\n");

    // the exit rule: every byte written before exit arrives before the exit notification
    steps.enter("the exit rule");
    let f = run_ok(
        &mut agent,
        sh("i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done"),
    );
    let text = String::from_utf8(f.stdout).unwrap();
    assert_eq!(text.lines().count(), 2000);
    assert_eq!(text.lines().last(), Some("line-1999"));
    let f = run_ok(&mut agent, sh("head -c 3000000 /dev/zero"));
    assert_eq!(f.stdout.len(), 3_000_000);
    // a background child holding the pipe does not hold the command
    let start = Instant::now();
    let f = run_ok(&mut agent, sh("sleep 30 & echo started"));
    assert_eq!(f.stdout, b"started\n");
    assert!(start.elapsed() < Duration::from_secs(10));

    // a virtio-fs volume: written in the guest, seen on the host, and the other way round
    steps.enter("a virtio-fs volume");
    let r = agent
        .request(request::Body::Mount(MountVolume {
            tag: "vol0".into(),
            path: "/golem/output".into(),
        }))
        .unwrap();
    assert!(matches!(r, response::Body::Ok(_)), "{r:?}");
    std::fs::write(vm.volume.join("from-host.txt"), "host data").unwrap();
    let f = run_ok(
        &mut agent,
        sh("cat /golem/output/from-host.txt; echo guest data > /golem/output/result.txt"),
    );
    assert_eq!(f.stdout, b"host data");
    assert_eq!(
        std::fs::read_to_string(vm.volume.join("result.txt")).unwrap(),
        "guest data\n"
    );
    let r = agent
        .request(request::Body::Mount(MountVolume {
            tag: "vol0".into(),
            path: "relative".into(),
        }))
        .unwrap();
    assert!(matches!(r, response::Body::Error(_)), "{r:?}");

    steps.enter("kill of `sleep 1000` reports the signal");
    let pid = agent.run(cmd(&["/bin/sleep", "1000"])).unwrap();
    let r = agent
        .request(request::Body::Kill(KillProcess {
            pid,
            signal: libc::SIGTERM,
        }))
        .unwrap();
    assert!(matches!(r, response::Body::Ok(_)), "{r:?}");
    let f = agent.wait(pid).unwrap();
    assert_eq!((f.exit.code, f.exit.signal), (None, Some(libc::SIGTERM)));
    let r = agent
        .request(request::Body::Kill(KillProcess { pid, signal: 9 }))
        .unwrap();
    assert!(
        matches!(r, response::Body::Error(ref e) if e.message.contains("No such process")),
        "{r:?}"
    );

    // sync, then shutdown powers off and QEMU exits 0
    steps.enter("sync, then shutdown powers off");
    let r = agent.request(request::Body::Sync(Empty {})).unwrap();
    assert!(matches!(r, response::Body::Ok(_)), "{r:?}");
    let r = agent.request(request::Body::Shutdown(Empty {})).unwrap();
    assert!(matches!(r, response::Body::Ok(_)), "{r:?}");
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .expect("QEMU did not exit after shutdown");
    assert!(
        status.success(),
        "QEMU exited with {status}; console:\n{}",
        vm.console()
    );
}

/// The machine the runtime falls back to under TCG when the host's TSC frequency is unknown:
/// q35, whose guest calibrates its own clock. The same kernel and init boot there, run a
/// command in the requestor's cgroup, write to the console and power off.
#[test]
fn the_q35_fallback_boots_runs_and_powers_off() {
    let artifacts = Artifacts::find();
    let mut vm = Vm::boot_on(&artifacts, (qemu_config::Machine::Q35, None));
    let mut agent = vm.connect(BOOT_LIMIT);
    let done = run_ok(
        &mut agent,
        sh("cat /proc/self/cgroup; echo to-the-console > /dev/console && echo written"),
    );
    assert_eq!(done.stdout, b"0::/requestor\nwritten\n", "{done:?}");
    let r = agent.request(request::Body::Shutdown(Empty {})).unwrap();
    assert!(matches!(r, response::Body::Ok(_)), "{r:?}");
    let status = vm
        .wait_exit(Duration::from_secs(30))
        .expect("QEMU did not exit after shutdown");
    assert!(status.success(), "QEMU exited with {status}");
}
