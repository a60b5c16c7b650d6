//! Logging to the VM console (the serial port), which the host keeps for error reports.

/// Writes one `init: …` line to the console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "init: {}", format_args!($($arg)*));
    }};
}
