//! Guest benchmark (run by `scripts/bench-guest.sh`): boot-to-agent-ready against the bare
//! kernel-boot floor in the same run, and the `/bin/true` round trip through the agent.
//!
//! Usage: `bench-guest [boots] [round-trips]` (defaults 5 and 200).

use std::time::{Duration, Instant};

use e2e::stats::{median, ms, percentile, runs_ms};
use e2e::{cmd, floor_boot, Artifacts, Vm};

fn main() {
    let mut args = std::env::args().skip(1);
    let boots: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let trips: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let a = Artifacts::find();

    let mut floor = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..boots {
        floor.push(floor_boot(&a));
        let start = Instant::now();
        let mut vm = Vm::boot(&a);
        let mut agent = vm.connect(Duration::from_secs(120));
        agent
            .request(agent_protocol::request::Body::Hello(
                agent_protocol::Hello { version: 1 },
            ))
            .expect("hello");
        ready.push(start.elapsed());
    }

    let mut vm = Vm::boot(&a);
    let mut agent = vm.connect(Duration::from_secs(120));
    let mut hello = Vec::with_capacity(trips);
    for _ in 0..trips {
        let start = Instant::now();
        agent
            .request(agent_protocol::request::Body::Hello(
                agent_protocol::Hello { version: 1 },
            ))
            .expect("hello");
        hello.push(start.elapsed());
    }
    hello.sort();
    let (mut rtt, mut started, mut exited) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trips {
        let start = Instant::now();
        let pid = agent.run(cmd(&["/bin/true"])).expect("run /bin/true");
        let reply = start.elapsed();
        let f = agent.wait(pid).expect("wait /bin/true");
        rtt.push(start.elapsed());
        started.push(reply);
        exited.push(start.elapsed() - reply);
        assert_eq!(f.exit.code, Some(0));
    }
    for v in [&mut rtt, &mut started, &mut exited] {
        v.sort();
    }
    // The floor of a start: the same program started by a shell loop in the same VM.
    let loop_runs = trips.max(50);
    let script = format!("i=0; while [ $i -lt {loop_runs} ]; do /bin/true; i=$((i+1)); done");
    let start = Instant::now();
    let pid = agent
        .run(cmd(&["/bin/sh", "-c", &script]))
        .expect("run the loop");
    let f = agent.wait(pid).expect("wait for the loop");
    assert_eq!(f.exit.code, Some(0));
    let in_guest = start.elapsed() / loop_runs as u32;

    let (f, r) = (median(floor.clone()), median(ready.clone()));
    println!(
        "guest benchmark (TCG, {}, 1 vCPU, 256 MiB)",
        e2e::machine_name()
    );
    println!(
        "  bare kernel-boot floor (start → power-off)   median {:8.0} ms  runs {}",
        ms(f),
        runs_ms(&floor)
    );
    println!(
        "  boot to agent ready (helpers+QEMU+hello)     median {:8.0} ms  runs {}",
        ms(r),
        runs_ms(&ready)
    );
    println!(
        "  ratio ready / floor                          {:8.2}",
        r.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "  /bin/true round trip over {trips} runs           p50 {:6.2} ms  p95 {:6.2} ms",
        ms(percentile(&rtt, 0.5)),
        ms(percentile(&rtt, 0.95))
    );
    println!(
        "    of which run → Started                     p50 {:6.2} ms  p95 {:6.2} ms",
        ms(percentile(&started, 0.5)),
        ms(percentile(&started, 0.95))
    );
    println!(
        "    of which Started → Exited                  p50 {:6.2} ms  p95 {:6.2} ms",
        ms(percentile(&exited, 0.5)),
        ms(percentile(&exited, 0.95))
    );
    println!(
        "  a shell loop of /bin/true in the guest       {:6.2} ms per run → ratio p50 / loop {:.2}",
        ms(in_guest),
        ms(percentile(&rtt, 0.5)) / ms(in_guest)
    );
    println!(
        "  hello round trip (transport alone)           p50 {:6.2} ms  p95 {:6.2} ms",
        ms(percentile(&hello, 0.5)),
        ms(percentile(&hello, 0.95))
    );
    println!(
        "  upstream 0.5.2 warm /bin/true here: 11.6 ms  → ratio p50 / upstream {:.2}",
        ms(percentile(&rtt, 0.5)) / 11.6
    );
}
