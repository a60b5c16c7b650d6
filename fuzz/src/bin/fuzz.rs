//! `fuzz TARGET`: under AFL++ (built with `cargo afl build --features afl`, run by
//! `scripts/fuzz.sh`), feeds the fuzzer's inputs to the target; otherwise, `fuzz TARGET FILE…`
//! runs each file through it once (to reproduce a crash).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(target) = args.first().and_then(|n| fuzz_targets::target(n)) else {
        let names: Vec<&str> = fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: fuzz TARGET [FILE…]; targets: {}", names.join(", "));
        return ExitCode::from(2);
    };
    #[cfg(feature = "afl")]
    if args.len() == 1 {
        afl::fuzz!(|data: &[u8]| target(data));
        return ExitCode::SUCCESS;
    }
    for file in &args[1..] {
        match std::fs::read(file) {
            Ok(data) => target(&data),
            Err(e) => {
                eprintln!("fuzz: {file}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
