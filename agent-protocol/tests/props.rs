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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The output fast path writes exactly what the generic encoder writes, appended to whatever
    /// the buffer held.
    #[test]
    fn output_fast_path_matches_the_generic_encoder(
        pid in prop_oneof![Just(0u64), any::<u64>(), 0u64..300],
        fd in prop_oneof![Just(0u32), Just(1u32), Just(2u32), any::<u32>()],
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<u8>(), 16_380..16_390),
        ],
        prefix in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let frame = Frame::Notification(Notification {
            body: Some(notification::Body::Output(Output { pid, fd, data: data.clone() })),
        });
        let mut want = prefix.clone();
        want.extend(encode(&frame).unwrap());
        let mut got = prefix;
        encode_output_into(&mut got, pid, fd, &data).unwrap();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn output_fast_path_refuses_what_the_generic_encoder_refuses() {
    let data = vec![0u8; MAX_PAYLOAD];
    let mut out = Vec::new();
    assert!(encode_output_into(&mut out, 1, 1, &data).is_err());
    assert!(out.is_empty());
    let max_chunk = vec![7u8; MAX_OUTPUT_CHUNK];
    encode_output_into(&mut out, u64::MAX, 2, &max_chunk).unwrap();
    let mut d = FrameDecoder::new();
    d.feed(&out);
    match d.next_frame().unwrap() {
        Some(Frame::Notification(Notification {
            body: Some(notification::Body::Output(o)),
        })) => assert_eq!((o.pid, o.fd, o.data.len()), (u64::MAX, 2, MAX_OUTPUT_CHUNK)),
        other => panic!("{other:?}"),
    }
}
