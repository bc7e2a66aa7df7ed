//! A hand-written AWS EventStream (`application/vnd.amazon.eventstream`) frame encoder, and a
//! strict decoder for tests.
//!
//! A frame (message) is:
//!
//! ```text
//! total_length   u32 BE   (the whole frame, these 4 bytes and the final CRC included)
//! headers_length u32 BE
//! prelude_crc    u32 BE   CRC32 of bytes 0..8
//! headers        headers_length bytes: name_len u8, name, type u8, value
//! payload        total_length - headers_length - 16 bytes
//! message_crc    u32 BE   CRC32 of every byte before it
//! ```
//!
//! Only string header values (type 7: u16 BE length, then the bytes) are produced, which is all
//! Bedrock sends; the decoder reads every header type so it can check any frame.

use std::fmt;

/// The prelude: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;
/// Prelude plus the trailing message CRC.
pub const OVERHEAD: usize = PRELUDE_LEN + 4;
/// The largest frame AWS allows (16 MiB).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// The largest headers section AWS allows (128 KiB).
pub const MAX_HEADERS_LEN: usize = 128 * 1024;

const TYPE_STRING: u8 = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    HeaderNameTooLong(usize),
    HeaderValueTooLong(usize),
    HeadersTooLong(usize),
    FrameTooLong(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeaderNameTooLong(n) => write!(f, "header name of {n} bytes (at most 255)"),
            Self::HeaderValueTooLong(n) => write!(f, "header value of {n} bytes (at most 65535)"),
            Self::HeadersTooLong(n) => {
                write!(f, "headers of {n} bytes (at most {MAX_HEADERS_LEN})")
            }
            Self::FrameTooLong(n) => write!(f, "frame of {n} bytes (at most {MAX_FRAME_LEN})"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Encodes one frame whose headers are all strings.
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut header_bytes =
        Vec::with_capacity(headers.iter().map(|(n, v)| 4 + n.len() + v.len()).sum());
    for (name, value) in headers {
        let name_len =
            u8::try_from(name.len()).map_err(|_| EncodeError::HeaderNameTooLong(name.len()))?;
        let value_len =
            u16::try_from(value.len()).map_err(|_| EncodeError::HeaderValueTooLong(value.len()))?;
        header_bytes.push(name_len);
        header_bytes.extend_from_slice(name.as_bytes());
        header_bytes.push(TYPE_STRING);
        header_bytes.extend_from_slice(&value_len.to_be_bytes());
        header_bytes.extend_from_slice(value.as_bytes());
    }
    if header_bytes.len() > MAX_HEADERS_LEN {
        return Err(EncodeError::HeadersTooLong(header_bytes.len()));
    }
    let total = OVERHEAD + header_bytes.len() + payload.len();
    if total > MAX_FRAME_LEN {
        return Err(EncodeError::FrameTooLong(total));
    }
    // Both fit in u32: they are bounded by MAX_FRAME_LEN above.
    let total_u32 = total as u32;
    let headers_u32 = header_bytes.len() as u32;

    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&total_u32.to_be_bytes());
    frame.extend_from_slice(&headers_u32.to_be_bytes());
    let prelude_crc = crc32fast::hash(&frame[..8]);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&header_bytes);
    frame.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&message_crc.to_be_bytes());
    Ok(frame)
}

/// An event frame: `:event-type`, `:content-type: application/json`, `:message-type: event`.
pub fn event_frame(event_type: &str, json_payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    encode_frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json_payload,
    )
}

/// An exception frame: `:exception-type`, `:content-type: application/json`,
/// `:message-type: exception`.
pub fn exception_frame(exception_type: &str, json_payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
    encode_frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json_payload,
    )
}

/// A decoded header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The value of a string header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| match v {
                HeaderValue::String(s) => Some(s.as_str()),
                _ => None,
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed for a whole frame.
    Incomplete {
        needed: usize,
    },
    BadLength(String),
    PreludeCrc {
        expected: u32,
        computed: u32,
    },
    MessageCrc {
        expected: u32,
        computed: u32,
    },
    BadHeader(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete { needed } => {
                write!(f, "incomplete frame: {needed} more bytes needed")
            }
            Self::BadLength(m) => write!(f, "bad frame length: {m}"),
            Self::PreludeCrc { expected, computed } => {
                write!(
                    f,
                    "prelude CRC mismatch: frame says {expected:08x}, computed {computed:08x}"
                )
            }
            Self::MessageCrc { expected, computed } => {
                write!(
                    f,
                    "message CRC mismatch: frame says {expected:08x}, computed {computed:08x}"
                )
            }
            Self::BadHeader(m) => write!(f, "bad header: {m}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes the frame at the start of `buf`, checking both CRCs. Returns the frame and the
/// number of bytes it took.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    if buf.len() < PRELUDE_LEN {
        return Err(DecodeError::Incomplete {
            needed: PRELUDE_LEN - buf.len(),
        });
    }
    let total = be_u32(&buf[0..4]) as usize;
    let headers_len = be_u32(&buf[4..8]) as usize;
    let prelude_crc = be_u32(&buf[8..12]);
    let computed = crc32fast::hash(&buf[0..8]);
    if prelude_crc != computed {
        return Err(DecodeError::PreludeCrc {
            expected: prelude_crc,
            computed,
        });
    }
    if !(OVERHEAD..=MAX_FRAME_LEN).contains(&total) || headers_len > total - OVERHEAD {
        return Err(DecodeError::BadLength(format!(
            "total {total}, headers {headers_len}"
        )));
    }
    if buf.len() < total {
        return Err(DecodeError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let message_crc = be_u32(&buf[total - 4..total]);
    let computed = crc32fast::hash(&buf[..total - 4]);
    if message_crc != computed {
        return Err(DecodeError::MessageCrc {
            expected: message_crc,
            computed,
        });
    }

    let mut headers = Vec::new();
    let mut h = &buf[PRELUDE_LEN..PRELUDE_LEN + headers_len];
    let bad = |m: &str| DecodeError::BadHeader(m.to_string());
    // Each header takes at least 2 bytes, so this loop runs at most headers_len / 2 times.
    while !h.is_empty() {
        let name_len = h[0] as usize;
        let name = h
            .get(1..1 + name_len)
            .ok_or_else(|| bad("name runs past the headers"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name is not UTF-8"))?;
        h = &h[1 + name_len..];
        let (&kind, rest) = h.split_first().ok_or_else(|| bad("missing value type"))?;
        h = rest;
        let take = |h: &mut &[u8], n: usize| -> Result<Vec<u8>, DecodeError> {
            let v = h
                .get(..n)
                .ok_or_else(|| bad("value runs past the headers"))?
                .to_vec();
            *h = &h[n..];
            Ok(v)
        };
        let value = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(take(&mut h, 1)?[0] as i8),
            3 => {
                let v = take(&mut h, 2)?;
                HeaderValue::Short(i16::from_be_bytes([v[0], v[1]]))
            }
            4 => HeaderValue::Int(be_u32(&take(&mut h, 4)?) as i32),
            5 | 8 => {
                let v = take(&mut h, 8)?;
                let n = i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]);
                if kind == 5 {
                    HeaderValue::Long(n)
                } else {
                    HeaderValue::Timestamp(n)
                }
            }
            6 | 7 => {
                let l = take(&mut h, 2)?;
                let v = take(&mut h, u16::from_be_bytes([l[0], l[1]]) as usize)?;
                if kind == 6 {
                    HeaderValue::Bytes(v)
                } else {
                    HeaderValue::String(
                        String::from_utf8(v).map_err(|_| bad("string value is not UTF-8"))?,
                    )
                }
            }
            9 => {
                let v = take(&mut h, 16)?;
                let mut u = [0u8; 16];
                u.copy_from_slice(&v);
                HeaderValue::Uuid(u)
            }
            other => {
                return Err(DecodeError::BadHeader(format!(
                    "unknown value type {other}"
                )))
            }
        };
        headers.push((name, value));
    }
    let payload = buf[PRELUDE_LEN + headers_len..total - 4].to_vec();
    Ok((Frame { headers, payload }, total))
}

/// Decodes a whole stream. Fails if a frame is corrupt or the stream ends inside a frame.
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut frames = Vec::new();
    // Each frame consumes at least OVERHEAD bytes, so this loop is bounded by buf.len() / 16.
    while !buf.is_empty() {
        let (frame, used) = decode_frame(buf)?;
        frames.push(frame);
        buf = &buf[used..];
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_layout() {
        let frame = event_frame("messageStart", br#"{"role":"assistant"}"#).unwrap();
        let total = u32::from_be_bytes(frame[0..4].try_into().unwrap()) as usize;
        let headers_len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, frame.len());
        // 3 string headers: (1 + name + 1 + 2 + value) each.
        let expected_headers = (1 + 11 + 3 + 12) + (1 + 13 + 3 + 16) + (1 + 13 + 3 + 5);
        assert_eq!(headers_len, expected_headers);
        assert_eq!(
            u32::from_be_bytes(frame[8..12].try_into().unwrap()),
            crc32fast::hash(&frame[0..8])
        );
        assert_eq!(
            u32::from_be_bytes(frame[total - 4..].try_into().unwrap()),
            crc32fast::hash(&frame[..total - 4])
        );
        // The first header, byte by byte.
        assert_eq!(frame[12], 11);
        assert_eq!(&frame[13..24], b":event-type");
        assert_eq!(frame[24], 7);
        assert_eq!(&frame[25..27], &12u16.to_be_bytes());
        assert_eq!(&frame[27..39], b"messageStart");
    }

    #[test]
    fn round_trips_and_checks_both_crcs() {
        let payload = br#"{"contentBlockIndex":0,"delta":{"text":"w0"},"p":"abc"}"#;
        let frame = event_frame("contentBlockDelta", payload).unwrap();
        let (decoded, used) = decode_frame(&frame).unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(decoded.payload, payload);
        assert_eq!(decoded.header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(decoded.header(":content-type"), Some("application/json"));
        assert_eq!(decoded.header(":message-type"), Some("event"));

        let mut corrupt = frame.clone();
        corrupt[5] ^= 1;
        assert!(matches!(
            decode_frame(&corrupt),
            Err(DecodeError::PreludeCrc { .. })
        ));
        let mut corrupt = frame.clone();
        let at = frame.len() - 10;
        corrupt[at] ^= 1;
        assert!(matches!(
            decode_frame(&corrupt),
            Err(DecodeError::MessageCrc { .. })
        ));
        assert!(matches!(
            decode_frame(&frame[..frame.len() - 1]),
            Err(DecodeError::Incomplete { needed: 1 })
        ));
    }

    #[test]
    fn exception_frames_and_streams() {
        let a = event_frame("messageStart", b"{}").unwrap();
        let b = exception_frame("modelStreamErrorException", br#"{"message":"boom"}"#).unwrap();
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        let frames = decode_all(&stream).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].header(":message-type"), Some("exception"));
        assert_eq!(
            frames[1].header(":exception-type"),
            Some("modelStreamErrorException")
        );
        assert_eq!(frames[1].payload, br#"{"message":"boom"}"#);
        assert!(decode_all(&stream[..stream.len() - 3]).is_err());
    }

    #[test]
    fn refuses_oversized_parts() {
        let long = "x".repeat(256);
        assert_eq!(
            encode_frame(&[(&long, "v")], b""),
            Err(EncodeError::HeaderNameTooLong(256))
        );
        let long = "x".repeat(65_536);
        assert_eq!(
            encode_frame(&[("n", &long)], b""),
            Err(EncodeError::HeaderValueTooLong(65_536))
        );
        let big = vec![0u8; MAX_FRAME_LEN];
        assert!(matches!(
            encode_frame(&[], &big),
            Err(EncodeError::FrameTooLong(_))
        ));
    }

    #[test]
    fn decodes_every_header_type() {
        let mut headers = Vec::new();
        headers.extend_from_slice(&[1, b'a', 0]);
        headers.extend_from_slice(&[1, b'b', 1]);
        headers.extend_from_slice(&[1, b'c', 2, 0xff]);
        headers.extend_from_slice(&[1, b'd', 3, 0, 5]);
        headers.extend_from_slice(&[1, b'e', 4, 0, 0, 0, 6]);
        headers.extend_from_slice(&[1, b'f', 5, 0, 0, 0, 0, 0, 0, 0, 7]);
        headers.extend_from_slice(&[1, b'g', 6, 0, 2, 9, 9]);
        headers.extend_from_slice(&[1, b'h', 8, 0, 0, 0, 0, 0, 0, 0, 8]);
        headers.extend_from_slice(&[1, b'i', 9]);
        headers.extend_from_slice(&[3; 16]);
        let total = (OVERHEAD + headers.len()) as u32;
        let mut frame = total.to_be_bytes().to_vec();
        frame.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        frame.extend_from_slice(&headers);
        let crc = crc32fast::hash(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        let (decoded, _) = decode_frame(&frame).unwrap();
        let values: Vec<HeaderValue> = decoded.headers.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            vec![
                HeaderValue::Bool(true),
                HeaderValue::Bool(false),
                HeaderValue::Byte(-1),
                HeaderValue::Short(5),
                HeaderValue::Int(6),
                HeaderValue::Long(7),
                HeaderValue::Bytes(vec![9, 9]),
                HeaderValue::Timestamp(8),
                HeaderValue::Uuid([3; 16]),
            ]
        );
    }
}
