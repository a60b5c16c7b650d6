//! # local-runner
//!
//! The exe-unit's side of the runtime API without yagna: the ExeScript model ([`script`]), the
//! transfer rules for VM volumes ([`transfer`]) and the event handler that hands a runtime's
//! process events to a channel ([`ChannelEvents`]). The `ya-exescript` binary drives
//! `ya-runtime-vm` with them; the runtime's API tests and its benchmark use [`ChannelEvents`].

pub mod script;
pub mod transfer;
pub mod vpn_frames;
pub mod vpn_switch;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use ya_runtime_api::server::{ProcessStatus, RuntimeHandler, RuntimeStatus};

/// A runtime-API event handler that forwards every process event to a channel (runtime status
/// events are not used).
pub struct ChannelEvents(pub mpsc::UnboundedSender<ProcessStatus>);

impl RuntimeHandler for ChannelEvents {
    fn on_process_status<'a>(&self, status: ProcessStatus) -> BoxFuture<'a, ()> {
        // A closed receiver means nobody waits for events any more: dropping them is right.
        let _ = self.0.send(status);
        futures::future::ready(()).boxed()
    }
    fn on_runtime_status<'a>(&self, _: RuntimeStatus) -> BoxFuture<'a, ()> {
        futures::future::ready(()).boxed()
    }
}
