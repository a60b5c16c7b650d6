//! # agent-protocol
//!
//! The wire format between the host runtime and `init-container` (the guest's PID 1), carried
//! over vsock: framed, versioned binary messages with request ids and a hard frame-size cap,
//! decoded as untrusted input in both directions. The messages land with the guest side
//! (issue 3).
