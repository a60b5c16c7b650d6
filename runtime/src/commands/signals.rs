//! The signals that end the runtime in an orderly way (SIGTERM, SIGINT, SIGHUP): `start` and
//! `run` listen for them from before the VM boots, so a signal at any moment powers the VM off
//! and removes its helpers and sockets instead of leaving them to `PR_SET_PDEATHSIG`.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Listeners for the terminating signals.
pub struct Termination {
    listeners: Vec<(i32, Signal)>,
}

impl Termination {
    /// Starts listening (the default action, dying at once, no longer applies).
    pub fn listen() -> std::io::Result<Self> {
        let mut listeners = Vec::new();
        for (number, kind) in [
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGHUP, SignalKind::hangup()),
        ] {
            listeners.push((number, signal(kind)?));
        }
        Ok(Self { listeners })
    }

    /// Waits for the next terminating signal; returns its number.
    pub async fn recv(&mut self) -> i32 {
        let waits = self.listeners.iter_mut().map(|(number, s)| {
            let number = *number;
            Box::pin(async move {
                s.recv().await;
                number
            })
        });
        futures_util::future::select_all(waits).await.0
    }
}

/// A signal's conventional name, for log lines.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The exit status of a process that ended because of `signal`, as shells report it.
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_statuses_follow_the_shell_convention() {
        assert_eq!(
            (name(libc::SIGTERM), exit_status(libc::SIGTERM)),
            ("SIGTERM", 143)
        );
        assert_eq!(
            (name(libc::SIGINT), exit_status(libc::SIGINT)),
            ("SIGINT", 130)
        );
        assert_eq!(name(libc::SIGKILL), "a signal");
    }

    #[tokio::test]
    async fn a_raised_signal_is_received_not_fatal() {
        let mut t = Termination::listen().unwrap();
        // SAFETY: raising a signal this process now handles.
        unsafe { libc::raise(libc::SIGHUP) };
        assert_eq!(t.recv().await, libc::SIGHUP);
    }
}
