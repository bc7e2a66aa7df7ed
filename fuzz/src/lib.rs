//! What Tollgate's fuzz targets share: reading structured input out of the fuzzer's bytes, and
//! an EventStream encoder written from the specification (every header type), the oracle the
//! decoder's output is re-encoded with.
//!
//! The targets assert properties, not just "no panic": see each file in `fuzz_targets/` and
//! the README's "Fuzzing" section.

use tollgate_core::response::eventstream::{self, HeaderValue};
use tollgate_core::Operation;

/// A cursor over the fuzzer's bytes; reads past the end give zeros / empty slices.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// Cuts `bytes` into chunks of 1..=`max` bytes, sizes drawn from `seed` (cycled).
pub fn chunks<'a>(bytes: &'a [u8], seed: &[u8], max: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let s = seed.get(i % seed.len().max(1)).copied().unwrap_or(0) as usize;
        let n = (s % max.max(1) + 1).min(rest.len());
        let (c, tail) = rest.split_at(n);
        out.push(c);
        rest = tail;
        i += 1;
    }
    out
}

pub const OPERATIONS: [Operation; 4] = [
    Operation::Converse,
    Operation::ConverseStream,
    Operation::Invoke,
    Operation::InvokeWithResponseStream,
];

/// Encodes one EventStream message with headers of any type, from the specification: the
/// oracle for "decoded frames re-encode to the input".
pub fn encode_message<'a>(
    headers: impl IntoIterator<Item = (&'a str, HeaderValue<'a>)>,
    payload: &[u8],
) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        match value {
            HeaderValue::Bool(true) => block.push(0),
            HeaderValue::Bool(false) => block.push(1),
            HeaderValue::Byte(v) => {
                block.push(2);
                block.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int16(v) => {
                block.push(3);
                block.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int32(v) => {
                block.push(4);
                block.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int64(v) => {
                block.push(5);
                block.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(v) => {
                block.push(6);
                block.extend_from_slice(&(v.len() as u16).to_be_bytes());
                block.extend_from_slice(v);
            }
            HeaderValue::String(v) => {
                block.push(7);
                block.extend_from_slice(&(v.len() as u16).to_be_bytes());
                block.extend_from_slice(v.as_bytes());
            }
            HeaderValue::Timestamp(v) => {
                block.push(8);
                block.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(v) => {
                block.push(9);
                block.extend_from_slice(&v);
            }
        }
    }
    let total = 16 + block.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// CRC-32 (IEEE, reflected), bit by bit: independent of the table-driven one core uses.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A response body described by the fuzzer's bytes as a list of records, each framed into
/// valid EventStream messages (so mutations reach the JSON and base64 parsers past the CRC
/// checks) or passed raw (so they reach the decoder's error paths). Record: `kind: u8`,
/// `len: u16` (little-endian), `len` bytes.
///
/// | kind % 8 | bytes become |
/// |---|---|
/// | 0 | raw bytes, unframed |
/// | 1 | `contentBlockDelta` event (ConverseStream) |
/// | 2 | `metadata` event (ConverseStream) |
/// | 3 | `chunk` event whose payload is `{"bytes":"<base64 of the bytes>"}`: a model event of any family (InvokeWithResponseStream) |
/// | 4 | `chunk` event with the bytes as its payload |
/// | 5 | exception message, `:exception-type` the bytes |
/// | 6 | error message, `:error-code` the bytes |
/// | 7 | `messageStart` event |
pub fn response_body(input: &mut Input<'_>) -> Vec<u8> {
    use base64::Engine as _;
    let mut body = Vec::new();
    while !input.is_empty() {
        let kind = input.u8() % 8;
        let len = usize::from(input.u16());
        let bytes = input.bytes(len);
        let text = String::from_utf8_lossy(bytes);
        let event = |t: &str, payload: &[u8]| {
            eventstream::encode(
                &[
                    (":event-type", t),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                payload,
            )
        };
        body.extend(match kind {
            0 => bytes.to_vec(),
            1 => event("contentBlockDelta", bytes),
            2 => event("metadata", bytes),
            3 => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                event(
                    "chunk",
                    format!(r#"{{"bytes":"{b64}","p":"abc"}}"#).as_bytes(),
                )
            }
            4 => event("chunk", bytes),
            5 => eventstream::encode(
                &[
                    (":exception-type", &text),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                br#"{"message":"fuzz"}"#,
            ),
            6 => eventstream::encode(&[(":error-code", &text), (":message-type", "error")], b""),
            _ => event("messageStart", bytes),
        });
    }
    body
}
