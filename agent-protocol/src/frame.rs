//! Framing: `[version u8][kind u8][reserved u16 = 0][payload length u32 LE][request id u64 LE]`
//! followed by the protobuf payload.

use prost::Message;

use crate::messages::{Notification, Request, Response};

/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest payload either side sends or accepts.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host to guest.
    Request = 1,
    /// Guest to host, answering the request with the same id.
    Response = 2,
    /// Guest to host, unsolicited (id 0).
    Notification = 3,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A request and its id.
    Request(u64, Request),
    /// A response and the id of the request it answers.
    Response(u64, Response),
    /// A notification.
    Notification(Notification),
}

/// Why bytes could not be decoded. Header errors leave the stream out of step (close it); a bad
/// payload under a good header is skipped, and its request id can still be answered
/// ([`DecodeError::is_recoverable`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A version this side does not speak.
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    Version(u8),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Reserved header bits set.
    #[error("reserved header field is {0:#x}, not 0")]
    Reserved(u16),
    /// A payload larger than [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(u32),
    /// The payload is not a valid message of its kind.
    #[error("malformed {kind:?} payload: {reason}")]
    Payload {
        /// The frame kind.
        kind: Kind,
        /// The frame's request id.
        id: u64,
        /// prost's description.
        reason: String,
    },
    /// The message has no body, or one this side does not know.
    #[error("{kind:?} frame without a known body")]
    Empty {
        /// The frame kind.
        kind: Kind,
        /// The frame's request id.
        id: u64,
    },
}

impl DecodeError {
    /// Whether the decoder skipped the bad frame and can go on.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            DecodeError::Payload { .. } | DecodeError::Empty { .. }
        )
    }

    /// The request id of a skipped request frame, which the receiver can answer with an error.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::Payload {
                kind: Kind::Request,
                id,
                ..
            }
            | DecodeError::Empty {
                kind: Kind::Request,
                id,
            } => Some(*id),
            _ => None,
        }
    }
}

/// Why a message could not be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("message of {0} bytes exceeds the frame limit of {MAX_PAYLOAD}")]
pub struct EncodeError(pub usize);

/// Encodes one frame.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let (kind, id, len) = match frame {
        Frame::Request(id, m) => (Kind::Request, *id, m.encoded_len()),
        Frame::Response(id, m) => (Kind::Response, *id, m.encoded_len()),
        Frame::Notification(m) => (Kind::Notification, 0, m.encoded_len()),
    };
    if len > MAX_PAYLOAD {
        return Err(EncodeError(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    push_header(&mut out, kind, len, id);
    // Writing into a Vec cannot run out of space.
    let _ = match frame {
        Frame::Request(_, m) => m.encode(&mut out),
        Frame::Response(_, m) => m.encode(&mut out),
        Frame::Notification(m) => m.encode(&mut out),
    };
    Ok(out)
}

fn push_header(out: &mut Vec<u8>, kind: Kind, len: usize, id: u64) {
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
}

/// Appends to `out` the frame of an `Output` notification: byte for byte what [`encode`] makes
/// of `Notification { body: Output { pid, fd, data } }`, without building the message first, so
/// the guest's hot path copies the process output once (from its read buffer into `out`).
pub fn encode_output_into(
    out: &mut Vec<u8>,
    pid: u64,
    fd: u32,
    data: &[u8],
) -> Result<(), EncodeError> {
    use prost::encoding::{encode_varint, encoded_len_varint};
    // Output's fields (proto3: zero values and empty bytes are not written).
    let field = |present: bool, value: u64| {
        if present {
            1 + encoded_len_varint(value)
        } else {
            0
        }
    };
    let inner = field(pid != 0, pid)
        + field(fd != 0, u64::from(fd))
        + field(!data.is_empty(), data.len() as u64)
        + data.len();
    // Notification { body: oneof tag 1 = Output }, always written when set.
    let len = 1 + encoded_len_varint(inner as u64) + inner;
    if len > MAX_PAYLOAD {
        return Err(EncodeError(len));
    }
    out.reserve(HEADER_LEN + len);
    push_header(out, Kind::Notification, len, 0);
    out.push(0x0A); // field 1, length-delimited
    encode_varint(inner as u64, out);
    if pid != 0 {
        out.push(0x08); // field 1, varint
        encode_varint(pid, out);
    }
    if fd != 0 {
        out.push(0x10); // field 2, varint
        encode_varint(u64::from(fd), out);
    }
    if !data.is_empty() {
        out.push(0x1A); // field 3, length-delimited
        encode_varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
    Ok(())
}

/// Turns a byte stream into frames. Feed it whatever arrives; it keeps at most one frame's worth
/// of bytes (header plus [`MAX_PAYLOAD`]).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

struct Header {
    kind: Kind,
    len: usize,
    id: u64,
}

fn parse_header(h: &[u8]) -> Result<Header, DecodeError> {
    if h[0] != VERSION {
        return Err(DecodeError::Version(h[0]));
    }
    let kind = match h[1] {
        1 => Kind::Request,
        2 => Kind::Response,
        3 => Kind::Notification,
        k => return Err(DecodeError::Kind(k)),
    };
    let reserved = u16::from_le_bytes([h[2], h[3]]);
    if reserved != 0 {
        return Err(DecodeError::Reserved(reserved));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len as usize > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge(len));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[8..16]);
    Ok(Header {
        kind,
        len: len as usize,
        id: u64::from_le_bytes(id),
    })
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many more bytes the decoder can take before it must yield a frame: feed at most this
    /// much, then call [`FrameDecoder::next_frame`].
    pub fn room(&self) -> usize {
        (HEADER_LEN + MAX_PAYLOAD).saturating_sub(self.buf.len())
    }

    /// Bytes held and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds received bytes; takes at most [`FrameDecoder::room`] of them and returns how many.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let h = parse_header(&self.buf[..HEADER_LEN])?;
        if self.buf.len() < HEADER_LEN + h.len {
            return Ok(None);
        }
        let frame = decode_payload(&h, &self.buf[HEADER_LEN..HEADER_LEN + h.len]);
        // The frame is consumed whether or not its payload was good: the stream stays in step.
        self.buf.drain(..HEADER_LEN + h.len);
        frame.map(Some)
    }
}

fn decode_payload(h: &Header, payload: &[u8]) -> Result<Frame, DecodeError> {
    let (kind, id) = (h.kind, h.id);
    let bad = |e: prost::DecodeError| DecodeError::Payload {
        kind,
        id,
        reason: e.to_string(),
    };
    let empty = DecodeError::Empty { kind, id };
    match kind {
        Kind::Request => {
            let m = Request::decode(payload).map_err(bad)?;
            m.body.as_ref().ok_or(empty)?;
            Ok(Frame::Request(id, m))
        }
        Kind::Response => {
            let m = Response::decode(payload).map_err(bad)?;
            m.body.as_ref().ok_or(empty)?;
            Ok(Frame::Response(id, m))
        }
        Kind::Notification => {
            let m = Notification::decode(payload).map_err(bad)?;
            m.body.as_ref().ok_or(empty)?;
            Ok(Frame::Notification(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn run_request() -> Frame {
        Frame::Request(
            7,
            Request {
                body: Some(request::Body::Run(RunProcess {
                    path: "/bin/echo".into(),
                    argv: vec!["echo".into(), "hi".into()],
                    env: vec!["PATH=/bin".into()],
                    cwd: "/".into(),
                    user: "1000".into(),
                    group: String::new(),
                    stdin: false,
                })),
            },
        )
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let frames = vec![
            run_request(),
            Frame::Response(
                7,
                Response {
                    body: Some(response::Body::Started(Started { pid: 42 })),
                },
            ),
            Frame::Notification(Notification {
                body: Some(notification::Body::Output(Output {
                    pid: 42,
                    fd: 2,
                    data: vec![0, 255, 10],
                })),
            }),
            Frame::Notification(Notification {
                body: Some(notification::Body::Exited(Exited {
                    pid: 42,
                    code: Some(0),
                    signal: None,
                })),
            }),
            Frame::Response(
                8,
                Response {
                    body: Some(response::Body::Ok(Empty {})),
                },
            ),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in wire {
            assert_eq!(d.feed(&[b]), 1);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn header_errors() {
        let good = encode(&run_request()).unwrap();
        let cases: [(usize, u8, DecodeError); 4] = [
            (0, 9, DecodeError::Version(9)),
            (1, 0, DecodeError::Kind(0)),
            (2, 1, DecodeError::Reserved(1)),
            (
                7,
                0x80,
                DecodeError::TooLarge(0x8000_0000 | (good.len() as u32 - HEADER_LEN as u32)),
            ),
        ];
        for (at, value, want) in cases {
            let mut bytes = good.clone();
            bytes[at] = value;
            let mut d = FrameDecoder::new();
            d.feed(&bytes);
            assert_eq!(d.next_frame().unwrap_err(), want);
        }
    }

    #[test]
    fn payload_errors() {
        let header = |kind: Kind, len: u8, id: u8| {
            vec![
                VERSION, kind as u8, 0, 0, len, 0, 0, 0, id, 0, 0, 0, 0, 0, 0, 0,
            ]
        };
        // A request frame whose payload is garbage: skipped, its id can be answered.
        let mut bytes = header(Kind::Request, 3, 1);
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut d = FrameDecoder::new();
        d.feed(&bytes);
        let e = d.next_frame().unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Payload {
                    kind: Kind::Request,
                    id: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_recoverable());
        assert_eq!(e.request_id(), Some(1));
        assert_eq!(d.buffered(), 0);
        // An empty response.
        let mut d = FrameDecoder::new();
        d.feed(&header(Kind::Response, 0, 1));
        let e = d.next_frame().unwrap_err();
        assert_eq!(
            e,
            DecodeError::Empty {
                kind: Kind::Response,
                id: 1
            }
        );
        assert_eq!(e.request_id(), None);
        // A request with a body this side does not know (field 80, from a newer host), followed
        // by a good frame: the first is skipped, the second decodes.
        let mut bytes = header(Kind::Request, 3, 5);
        bytes.extend_from_slice(&[0x82, 0x05, 0x00]);
        bytes.extend(encode(&run_request()).unwrap());
        let mut d = FrameDecoder::new();
        d.feed(&bytes);
        assert_eq!(d.next_frame().unwrap_err().request_id(), Some(5));
        assert_eq!(d.next_frame().unwrap(), Some(run_request()));
    }

    #[test]
    fn oversized_messages_are_refused() {
        let f = Frame::Notification(Notification {
            body: Some(notification::Body::Output(Output {
                pid: 1,
                fd: 1,
                data: vec![0; MAX_PAYLOAD],
            })),
        });
        assert!(matches!(encode(&f), Err(EncodeError(n)) if n > MAX_PAYLOAD));
    }

    #[test]
    fn decoder_takes_no_more_than_one_frame() {
        let mut d = FrameDecoder::new();
        let big = vec![0u8; HEADER_LEN + MAX_PAYLOAD + 100];
        assert_eq!(d.feed(&big), HEADER_LEN + MAX_PAYLOAD);
        assert_eq!(d.room(), 0);
    }
}
