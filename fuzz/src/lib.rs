//! # fuzz-targets
//!
//! One function per parser of bytes that come from outside the runtime: from the guest (agent
//! frames), from a requestor's image (the GVMI trailer), from the exe-unit (the volume override,
//! the runtime-API stream) or from the host's command line to the guest (the boot parameters).
//! Each must return for any input, panic on nothing, and keep its bounds. `scripts/fuzz.sh` runs
//! them under AFL++ for a fixed time; the corpus under `fuzz/corpus/<target>/` is replayed by the
//! test suite.

use agent_protocol::{encode, FrameDecoder, MAX_PAYLOAD};

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: [(&str, Target); 5] = [
    ("agent_frames", agent_frames),
    ("gvmi_trailer", gvmi_trailer),
    ("volume_override", volume_override),
    ("runtime_api_stream", runtime_api_stream),
    ("boot_params", boot_params),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Chunk sizes from the input's first byte, so the fuzzer also explores how a stream is split.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (size, rest) = match data.split_first() {
        Some((b, rest)) => (usize::from(*b % 64) + 1, rest),
        None => (1, data),
    };
    rest.chunks(size)
}

/// Agent frames as either side reads them (one decoder for both directions): never more than
/// one frame buffered, and every decoded frame encodes back to something that decodes the same.
pub fn agent_frames(data: &[u8]) {
    let mut d = FrameDecoder::new();
    for chunk in chunks(data) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let took = d.feed(rest);
            rest = &rest[took..];
            loop {
                match d.next_frame() {
                    Ok(Some(frame)) => {
                        let bytes = encode(&frame).expect("a decoded frame re-encodes");
                        let mut again = FrameDecoder::new();
                        again.feed(&bytes);
                        assert_eq!(again.next_frame(), Ok(Some(frame)));
                    }
                    Ok(None) => break,
                    Err(e) if e.is_recoverable() => {}
                    Err(_) => return,
                }
            }
            assert!(d.room() <= agent_protocol::HEADER_LEN + MAX_PAYLOAD);
            if took == 0 && d.room() == 0 {
                return;
            }
        }
    }
}

/// A `.gvmi` file's trailer (and squashfs magic), as `deploy` reads it.
pub fn gvmi_trailer(data: &[u8]) {
    if let Ok(image) = image_loader::gvmi::parse_gvmi_bytes(data) {
        let _ = image.config.user_spec();
        let _ = ya_runtime_vm::deploy::volumes::plan(image.config.volume_paths());
    }
}

/// The exe-unit's `--volume-override` JSON.
pub fn volume_override(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ya_runtime_vm::deploy::volume_override::parse(text);
    }
}

/// The runtime-API byte stream from the exe-unit: bounded, and never a panic.
pub fn runtime_api_stream(data: &[u8]) {
    use ya_runtime_vm::api::codec::{RequestDecoder, MAX_REQUEST};
    let mut d = RequestDecoder::new();
    for chunk in chunks(data) {
        d.feed(chunk);
        loop {
            match d.next_request() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.room() <= MAX_REQUEST + 10);
    }
    let _ = d.finish();
}

/// The guest's `yarv.*` kernel parameters: what parses renders back to the same.
pub fn boot_params(data: &[u8]) {
    use agent_protocol::boot::BootParams;
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = BootParams::parse(text) {
            let words = p.render().expect("parsed parameters render");
            assert_eq!(BootParams::parse(&words), Ok(p));
        }
    }
}
