//! Length-delimited protobuf on the runtime API's streams: each message is a varint length
//! followed by that many bytes of a `Request` (exe-unit to runtime) or a `Response` (back).
//! The decoder treats its input as untrusted: it buffers at most one request of at most
//! [`MAX_REQUEST`] bytes, and every other problem is an [`ApiDecodeError`].

use prost_api::Message;

use super::proto::{Request, Response};

/// Largest request accepted. A `RunProcess` larger than the agent protocol's frame could not
/// reach the guest anyway.
pub const MAX_REQUEST: usize = agent_protocol::MAX_PAYLOAD;
/// Longest varint (a u64).
const MAX_VARINT: usize = 10;

/// Why the request stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiDecodeError {
    /// The length prefix is not a varint.
    #[error("a length prefix that is not a varint")]
    BadLength,
    /// The length prefix announces more than [`MAX_REQUEST`] bytes.
    #[error("a request of {0} bytes (the limit is {MAX_REQUEST})")]
    TooLarge(u64),
    /// The payload is not a `Request`.
    #[error("a request that is not the runtime API's protobuf: {0}")]
    Malformed(String),
    /// The stream ended inside a request.
    #[error("the stream ended inside a request ({0} bytes of it)")]
    Truncated(usize),
}

/// The varint at the start of `buf`: `Ok(None)` while it is incomplete.
fn varint(buf: &[u8]) -> Result<Option<(u64, usize)>, ApiDecodeError> {
    let mut value: u64 = 0;
    for (i, b) in buf.iter().take(MAX_VARINT).enumerate() {
        let bits = u64::from(b & 0x7f);
        if i == MAX_VARINT - 1 && (*b > 1) {
            return Err(ApiDecodeError::BadLength);
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT {
        Err(ApiDecodeError::BadLength)
    } else {
        Ok(None)
    }
}

/// Turns the bytes from the exe-unit into requests.
#[derive(Debug, Default)]
pub struct RequestDecoder {
    buf: Vec<u8>,
}

impl RequestDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the decoder takes before it must yield a request or an error: the caller reads
    /// at most this much.
    pub fn room(&self) -> usize {
        (MAX_VARINT + MAX_REQUEST).saturating_sub(self.buf.len())
    }

    /// Appends what arrived (at most [`RequestDecoder::room`] bytes).
    pub fn feed(&mut self, data: &[u8]) {
        let take = data.len().min(self.room());
        self.buf.extend_from_slice(&data[..take]);
    }

    /// The next complete request, if any. After an error the stream is out of step: stop.
    pub fn next_request(&mut self) -> Result<Option<Request>, ApiDecodeError> {
        let Some((len, prefix)) = varint(&self.buf)? else {
            return Ok(None);
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_REQUEST)
            .ok_or(ApiDecodeError::TooLarge(len))?;
        let end = prefix + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let request = Request::decode(&self.buf[prefix..end])
            .map_err(|e| ApiDecodeError::Malformed(e.to_string()))?;
        self.buf.drain(..end);
        Ok(Some(request))
    }

    /// Checks the stream's end: an error when it ended inside a request.
    pub fn finish(&self) -> Result<(), ApiDecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ApiDecodeError::Truncated(self.buf.len()))
        }
    }
}

/// Appends one response or event, length-delimited, to `out`.
pub fn encode_response_into(response: &Response, out: &mut Vec<u8>) {
    // Writing into a Vec cannot run out of space.
    let _ = response.encode_length_delimited(out);
}

#[cfg(test)]
mod tests {
    use super::super::proto::request;
    use super::*;
    use proptest::prelude::*;

    fn framed(r: &Request) -> Vec<u8> {
        r.encode_length_delimited_to_vec()
    }

    fn hello(id: u64) -> Request {
        Request {
            id,
            command: Some(request::Command::Hello(request::Hello {
                version: "0.1.0".into(),
            })),
        }
    }

    #[test]
    fn requests_split_anywhere_come_out_whole() {
        let mut bytes = framed(&hello(1));
        bytes.extend(framed(&hello(2)));
        // A request with no command is 2 bytes on the wire, shorter than any fixed header.
        bytes.extend(framed(&Request {
            id: 3,
            command: None,
        }));
        for split in 0..bytes.len() {
            let mut d = RequestDecoder::new();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                d.feed(part);
                while let Some(r) = d.next_request().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(
                got,
                vec![
                    hello(1),
                    hello(2),
                    Request {
                        id: 3,
                        command: None
                    }
                ]
            );
            d.finish().unwrap();
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_wait() {
        let mut d = RequestDecoder::new();
        d.feed(&[0xff; 64]);
        assert_eq!(d.next_request(), Err(ApiDecodeError::BadLength));

        // 2^40: refused as soon as the length is read, nothing buffered for it.
        let mut d = RequestDecoder::new();
        let mut len = Vec::new();
        prost_api::encoding::encode_varint(1 << 40, &mut len);
        d.feed(&len);
        assert_eq!(d.next_request(), Err(ApiDecodeError::TooLarge(1 << 40)));

        // A good length around a payload that is not a Request.
        let mut d = RequestDecoder::new();
        d.feed(&[4, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_request(),
            Err(ApiDecodeError::Malformed(_))
        ));

        // A varint whose tenth byte overflows a u64.
        let mut d = RequestDecoder::new();
        d.feed(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
        assert_eq!(d.next_request(), Err(ApiDecodeError::BadLength));

        // The stream ends inside a request.
        let mut d = RequestDecoder::new();
        d.feed(&framed(&hello(1))[..3]);
        assert_eq!(d.next_request(), Ok(None));
        assert_eq!(d.finish(), Err(ApiDecodeError::Truncated(3)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)
        ) {
            let mut d = RequestDecoder::new();
            for c in chunks {
                d.feed(&c);
                while let Ok(Some(_)) = d.next_request() {}
                prop_assert!(d.buf.len() <= MAX_VARINT + MAX_REQUEST);
            }
        }

        #[test]
        fn any_request_round_trips(id in any::<u64>(), bin in ".{0,40}", args in proptest::collection::vec(".{0,20}", 0..5)) {
            let r = Request {
                id,
                command: Some(request::Command::Run(request::RunProcess {
                    bin,
                    args,
                    ..Default::default()
                })),
            };
            let mut d = RequestDecoder::new();
            d.feed(&framed(&r));
            prop_assert_eq!(d.next_request(), Ok(Some(r)));
        }
    }
}
