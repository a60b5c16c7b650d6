//! The host's end of the connection to the guest agent (the init, PID 1), in the data flow
//! between the running VM and the runtime-API server.
//!
//! - [`listener`]: where the guest connects (vhost-device-vsock's unix socket or the kernel's
//!   AF_VSOCK), and the wait for it at boot.
//! - [`client`]: typed requests (hello, run, kill, mounts, shutdown), each with a deadline, sent
//!   by one writer task so that a dropped request never leaves half a frame.
//! - [`reader`]: the guest's frames, checked against what the guest promised (chunk sizes, known
//!   processes, request ids), turned into [`AgentEvent`]s; bad frames are counted, and past
//!   [`reader::MAX_BAD_FRAMES`] the connection is treated as broken.
//!
//! The guest is hostile: whatever it sends is bounded, and a broken or silent agent ends in
//! [`AgentEvent::Closed`] with the processes that never got their exit, so that every open
//! command still gets a final status.

pub mod client;
pub mod listener;
pub mod reader;

pub use client::{AgentClient, AgentError, Events};
pub use listener::{guest_socket, AgentListener};
pub use reader::AgentEvent;

/// Longest text from the guest quoted in an error line.
pub const MAX_QUOTED: usize = 300;

/// `text` cut to [`MAX_QUOTED`] bytes (at a character boundary), with `…` where it was cut, and
/// control characters replaced, so that a guest cannot flood or forge the runtime's log lines.
pub fn quote_guest(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_QUOTED) + 3);
    for c in text.chars() {
        if out.len() + c.len_utf8() > MAX_QUOTED {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_cut_and_cleaned() {
        assert_eq!(quote_guest("exec /x: no\nsuch"), "exec /x: no such");
        let long = "é".repeat(400);
        let q = quote_guest(&long);
        assert!(q.len() <= MAX_QUOTED + '…'.len_utf8(), "{}", q.len());
        assert!(q.ends_with('…'));
        assert_eq!(quote_guest(""), "");
    }
}
