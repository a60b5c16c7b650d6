//! Property tests: no byte sequence panics the decoder or makes it hold more than one frame's
//! worth of bytes, and everything encoded decodes back, however the stream is split.

use agent_protocol::*;
use proptest::prelude::*;

fn drain(d: &mut FrameDecoder, input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut frames = Vec::new();
    let mut rest = input;
    loop {
        let n = d.feed(rest);
        rest = &rest[n..];
        assert!(d.buffered() <= HEADER_LEN + MAX_PAYLOAD);
        match d.next_frame()? {
            Some(f) => frames.push(f),
            None if rest.is_empty() || n == 0 => return Ok(frames),
            None => {}
        }
    }
}

fn output_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u64>(),
        1u32..3,
        proptest::collection::vec(any::<u8>(), 0..2000),
    )
        .prop_map(|(pid, fd, data)| {
            Frame::Notification(Notification {
                body: Some(notification::Body::Output(Output { pid, fd, data })),
            })
        })
}

fn run_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u64>(),
        ".{0,40}",
        proptest::collection::vec(".{0,20}", 0..8),
        any::<bool>(),
    )
        .prop_map(|(id, path, argv, stdin)| {
            Frame::Request(
                id,
                Request {
                    body: Some(request::Body::Run(RunProcess {
                        path,
                        argv,
                        stdin,
                        ..Default::default()
                    })),
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut d = FrameDecoder::new();
        let _ = drain(&mut d, &bytes);
    }

    #[test]
    fn valid_header_random_payload_never_panics(
        kind in 1u8..4,
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        id in any::<u64>(),
    ) {
        let mut bytes = vec![VERSION, kind, 0, 0];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&payload);
        let mut d = FrameDecoder::new();
        let _ = drain(&mut d, &bytes);
    }

    #[test]
    fn round_trip_with_any_split(
        frames in proptest::collection::vec(prop_oneof![output_frame(), run_frame()], 1..6),
        split in 1usize..64,
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(split) {
            got.extend(drain(&mut d, chunk).unwrap());
        }
        prop_assert_eq!(got, frames);
    }
}
