//! Download progress: a bar on stderr when it is a terminal, periodic `tracing` lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a progress line is logged when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Reports the progress of one download.
pub struct Progress {
    kind: Kind,
    name: String,
}

enum Kind {
    Bar(ProgressBar),
    Log { last: Instant, total: Option<u64> },
}

impl Progress {
    /// Starts reporting for `name`, choosing the bar or log lines from what stderr is.
    pub fn start(name: &str) -> Self {
        let kind = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(name.to_string());
            Kind::Bar(bar)
        } else {
            Kind::Log {
                last: Instant::now(),
                total: None,
            }
        };
        Self {
            kind,
            name: name.to_string(),
        }
    }

    /// Sets the expected total size, once known.
    pub fn set_total(&mut self, total: Option<u64>) {
        match &mut self.kind {
            Kind::Bar(bar) => {
                if let Some(t) = total {
                    bar.set_length(t)
                }
            }
            Kind::Log { total: t, .. } => *t = total,
        }
    }

    /// Records that `done` bytes are now on disk.
    pub fn update(&mut self, done: u64) {
        match &mut self.kind {
            Kind::Bar(bar) => bar.set_position(done),
            Kind::Log { last, total } => {
                if last.elapsed() >= LOG_INTERVAL {
                    *last = Instant::now();
                    match total {
                        Some(t) if *t > 0 => tracing::info!(
                            "downloading {}: {} of {} MiB ({}%)",
                            self.name,
                            done >> 20,
                            *t >> 20,
                            done * 100 / *t
                        ),
                        _ => tracing::info!("downloading {}: {} MiB", self.name, done >> 20),
                    }
                }
            }
        }
    }

    /// Ends the report.
    pub fn finish(self) {
        if let Kind::Bar(bar) = self.kind {
            bar.finish_and_clear();
        }
    }
}
