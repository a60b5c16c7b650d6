//! # agent-protocol
//!
//! The wire format between the host runtime and `init-container` (the guest's PID 1), carried
//! over one vsock stream. The host sends [`Request`]s; the guest answers each with a
//! [`Response`] carrying the same request id, and sends [`Notification`]s (process output and
//! exits) on its own.
//!
//! Every message travels in a [`frame`]: a fixed 16-byte header (version, kind, payload length,
//! request id) followed by a protobuf payload ([`messages`], prost-derived, no code generation).
//! Both sides decode with [`FrameDecoder`], which treats its input as hostile: it checks the
//! header before buffering a payload, never holds more than [`MAX_PAYLOAD`] bytes of one, and
//! reports every problem as a typed [`DecodeError`].
//!
//! [`boot`] is the rest of the contract between the two sides: the device serials and tags and
//! the `yarv.*` kernel parameters the host sets and the guest reads.

pub mod boot;
pub mod frame;
pub mod messages;
pub mod network;

pub use frame::{
    encode, encode_output_into, DecodeError, EncodeError, Frame, FrameDecoder, Kind, HEADER_LEN,
    MAX_PAYLOAD, VERSION,
};
pub use messages::*;

/// The vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 10_000;
/// Most bytes the guest hands to one write on a vsock connection to the host. The guest kernel
/// (6.12) puts a larger packet's payload into a nonlinear buffer spread over several virtqueue
/// descriptors (above 32 KiB less the buffer's overhead), and vhost-device-vsock 0.3 (rust-vmm's
/// virtio-vsock 0.10) takes only packets whose payload is in one descriptor: it would drop the
/// bytes. A packet is never larger than the write that made it.
pub const MAX_VSOCK_WRITE: usize = 31 * 1024;
/// Largest output chunk the guest puts in one [`Output`] notification.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;
