//! Incremental AWS EventStream (`application/vnd.amazon.eventstream`) decoding, and a small encoder.
//!
//! A message is, with every integer big-endian:
//!
//! | bytes            | field                                                           |
//! |------------------|-----------------------------------------------------------------|
//! | 0..4             | `total_length` (u32): the whole message, both CRCs included     |
//! | 4..8             | `headers_length` (u32)                                          |
//! | 8..12            | `prelude_crc`: CRC-32 (IEEE) of bytes 0..8                      |
//! | 12..12+H         | headers                                                         |
//! | ..total-4        | payload                                                         |
//! | total-4..total   | `message_crc`: CRC-32 of bytes 0..total-4 (prelude CRC included) |
//!
//! A header is `name_len: u8` (> 0), the UTF-8 name, `type: u8`, then a value: 0 = true and
//! 1 = false (no value), 2 = i8, 3 = i16, 4 = i32, 5 = i64, 6 = bytes (u16 length), 7 = UTF-8
//! string (u16 length), 8 = timestamp (i64 milliseconds since the epoch), 9 = UUID (16 bytes).
//!
//! The [`Decoder`] never panics and never allocates more than one message's worth of carry-over:
//! the prelude CRC is checked as soon as its 12 bytes are in, before a byte of the body is
//! buffered, and a declared length over [`MAX_MESSAGE_LEN`] (headers over [`MAX_HEADERS_LEN`])
//! is an error. Messages lying wholly inside a pushed chunk are handed out without being copied.

use core::fmt;

/// Bytes before the headers: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;
/// The prelude plus the message CRC.
pub const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;
/// Largest `total_length` accepted (Envoy caps payloads at 24 MiB; Bedrock frames are far smaller).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// Largest `headers_length` accepted (Envoy's and the AWS CRT's limit).
pub const MAX_HEADERS_LEN: usize = 128 * 1024;
/// Longest header value [`encode`] writes (the AWS SDKs reject more than `i16::MAX` on read).
pub const MAX_HEADER_VALUE_LEN: usize = i16::MAX as usize;

/// Carry-over capacity kept between messages; a larger buffer is released once drained.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Why a byte stream stopped decoding. A stream cannot be resynchronised after any of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// CRC-32 of bytes 0..8 differs from the prelude CRC.
    PreludeCrc { computed: u32, declared: u32 },
    /// CRC-32 of bytes 0..total-4 differs from the message CRC.
    MessageCrc { computed: u32, declared: u32 },
    /// `total_length` below [`MIN_MESSAGE_LEN`].
    MessageTooShort(u32),
    /// `total_length` above [`MAX_MESSAGE_LEN`].
    MessageTooLong(u32),
    /// `headers_length` above [`MAX_HEADERS_LEN`].
    HeadersTooLong(u32),
    /// `headers_length` does not fit in `total_length`.
    HeadersExceedMessage { headers_len: u32, total_len: u32 },
    /// A malformed header inside a message whose CRCs were valid.
    InvalidHeader(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PreludeCrc { computed, declared } => write!(
                f,
                "prelude CRC mismatch (computed {computed:#010x}, declared {declared:#010x})"
            ),
            Self::MessageCrc { computed, declared } => write!(
                f,
                "message CRC mismatch (computed {computed:#010x}, declared {declared:#010x})"
            ),
            Self::MessageTooShort(n) => write!(f, "message length {n} below {MIN_MESSAGE_LEN}"),
            Self::MessageTooLong(n) => write!(f, "message length {n} above {MAX_MESSAGE_LEN}"),
            Self::HeadersTooLong(n) => write!(f, "headers length {n} above {MAX_HEADERS_LEN}"),
            Self::HeadersExceedMessage {
                headers_len,
                total_len,
            } => write!(
                f,
                "headers length {headers_len} does not fit in message length {total_len}"
            ),
            Self::InvalidHeader(why) => write!(f, "invalid header: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A header value, borrowing from the message bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(&'a [u8]),
    String(&'a str),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

impl<'a> HeaderValue<'a> {
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One decoded message. Its headers were validated when it was decoded; [`Message::headers`]
/// walks them without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    raw_headers: &'a [u8],
    pub payload: &'a [u8],
    /// The headers the meter asks for on every message, found by the decoding walk.
    known: KnownHeaders<'a>,
}

impl<'a> Message<'a> {
    /// The headers in wire order.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            rest: self.raw_headers,
        }
    }

    /// The first header called `name` (names are compared exactly, as the spec has them).
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        let mut rest = self.raw_headers;
        while !rest.is_empty() {
            let (raw, tail) = split_header(rest).ok()?;
            if raw.name == name.as_bytes() {
                return raw.value().ok();
            }
            rest = tail;
        }
        None
    }

    /// `:message-type`: `event`, `exception` or `error`.
    pub fn message_type(&self) -> Option<&'a str> {
        known_str(self.known.message_type)
    }

    /// `:event-type`: the stream union member, e.g. `contentBlockDelta` or `chunk`.
    pub fn event_type(&self) -> Option<&'a str> {
        known_str(self.known.event_type)
    }

    /// `:exception-type`, e.g. `throttlingException`.
    pub fn exception_type(&self) -> Option<&'a str> {
        known_str(self.known.exception_type)
    }

    /// `:error-code` of a `:message-type: error` message.
    pub fn error_code(&self) -> Option<&'a str> {
        known_str(self.known.error_code)
    }

    /// [`Message::message_type`] as bytes, for matching without another UTF-8 pass.
    pub(crate) fn message_type_bytes(&self) -> Option<&'a [u8]> {
        self.known.message_type
    }

    /// [`Message::event_type`] as bytes, for matching without another UTF-8 pass.
    pub(crate) fn event_type_bytes(&self) -> Option<&'a [u8]> {
        self.known.event_type
    }
}

/// A known header's value, already checked to be UTF-8 (so this cannot fail).
fn known_str(value: Option<&[u8]>) -> Option<&str> {
    core::str::from_utf8(value?).ok()
}

/// String values of the first `:message-type`, `:event-type`, `:exception-type` and
/// `:error-code` headers (UTF-8 checked): `None` if absent or if the first one is not a
/// string, as `Message::header(..)?.as_str()` would answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KnownHeaders<'a> {
    message_type: Option<&'a [u8]>,
    event_type: Option<&'a [u8]>,
    exception_type: Option<&'a [u8]>,
    error_code: Option<&'a [u8]>,
}

impl<'a> KnownHeaders<'a> {
    /// Collects the known headers from a header block, checking every header as
    /// [`read_header`] does.
    fn collect(mut block: &'a [u8]) -> Result<Self, DecodeError> {
        let mut known = Self::default();
        // Bit per known name: its first occurrence was seen (later ones do not count).
        let mut seen = 0u8;
        while !block.is_empty() {
            let (raw, rest) = split_header(block)?;
            block = rest;
            let (bit, slot) = match raw.name {
                b":message-type" => (1, &mut known.message_type),
                b":event-type" => (2, &mut known.event_type),
                b":exception-type" => (4, &mut known.exception_type),
                b":error-code" => (8, &mut known.error_code),
                _ => continue,
            };
            if seen & bit == 0 {
                seen |= bit;
                *slot = (raw.kind == 7).then_some(raw.value);
            }
        }
        Ok(known)
    }
}

/// Iterator over a message's headers.
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, HeaderValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match read_header(self.rest) {
            Ok((name, value, rest)) => {
                self.rest = rest;
                Some((name, value))
            }
            // Unreachable for headers `decode_message` accepted; stop rather than loop or panic.
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Incremental decoder: push chunks split anywhere, get whole messages in order.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Start of a message that straddles chunks (never more than one message).
    buf: Vec<u8>,
    /// `total_length` of the message in `buf`, once its prelude is in.
    frame_len: usize,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `chunk`, calling `on_message` for every message it completes, in order. After an
    /// error the decoder stays failed: later pushes do nothing and return the same error.
    pub fn push(
        &mut self,
        chunk: &[u8],
        mut on_message: impl FnMut(Message<'_>),
    ) -> Result<(), DecodeError> {
        self.push_with_ends(chunk, |m, _| on_message(m))
    }

    /// Like [`Decoder::push`], also telling where in `chunk` each message ends (the offset just
    /// past its last byte): the frame boundaries where a stream can be cut cleanly.
    pub fn push_with_ends(
        &mut self,
        chunk: &[u8],
        mut on_message: impl FnMut(Message<'_>, usize),
    ) -> Result<(), DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.push_inner(chunk, &mut on_message);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
            self.buf = Vec::new();
            self.frame_len = 0;
        }
        result
    }

    /// Bytes of an incomplete message held over; non-zero at the end of a body means it was cut.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The error that stopped the decoder, if any.
    pub fn error(&self) -> Option<&DecodeError> {
        self.failed.as_ref()
    }

    fn push_inner(
        &mut self,
        chunk: &[u8],
        on_message: &mut impl FnMut(Message<'_>, usize),
    ) -> Result<(), DecodeError> {
        let mut input = chunk;

        // Complete the message carried over from earlier chunks.
        if !self.buf.is_empty() {
            if self.buf.len() < PRELUDE_LEN {
                input = self.fill(input, PRELUDE_LEN);
                if self.buf.len() < PRELUDE_LEN {
                    return Ok(());
                }
                self.frame_len = check_prelude(&self.buf)?;
            }
            input = self.fill(input, self.frame_len);
            if self.buf.len() < self.frame_len {
                return Ok(());
            }
            on_message(decode_message(&self.buf)?, chunk.len() - input.len());
            if self.buf.capacity() > RETAINED_CAPACITY {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.frame_len = 0;
        }

        // Messages wholly inside the chunk are decoded in place.
        while !input.is_empty() {
            let Some(prelude) = input.get(..PRELUDE_LEN) else {
                self.buf.extend_from_slice(input);
                break;
            };
            let total = check_prelude(prelude)?;
            match input.split_at_checked(total) {
                Some((message, rest)) => {
                    on_message(decode_message(message)?, chunk.len() - rest.len());
                    input = rest;
                }
                None => {
                    self.frame_len = total;
                    self.buf.extend_from_slice(input);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Moves bytes from `input` into `buf` until it holds `target` bytes; returns the rest.
    fn fill<'i>(&mut self, input: &'i [u8], target: usize) -> &'i [u8] {
        let want = target.saturating_sub(self.buf.len()).min(input.len());
        let (head, rest) = input.split_at_checked(want).unwrap_or((input, &[]));
        self.buf.extend_from_slice(head);
        rest
    }
}

/// Validates a 12-byte prelude and returns the message's total length.
fn check_prelude(prelude: &[u8]) -> Result<usize, DecodeError> {
    let total_len = be_u32(prelude, 0);
    let headers_len = be_u32(prelude, 4);
    let declared = be_u32(prelude, 8);
    let computed = crc32(prelude.get(..8).unwrap_or(&[]));
    if computed != declared {
        return Err(DecodeError::PreludeCrc { computed, declared });
    }
    let total = usize::try_from(total_len).unwrap_or(usize::MAX);
    let headers = usize::try_from(headers_len).unwrap_or(usize::MAX);
    if total < MIN_MESSAGE_LEN {
        return Err(DecodeError::MessageTooShort(total_len));
    }
    if total > MAX_MESSAGE_LEN {
        return Err(DecodeError::MessageTooLong(total_len));
    }
    if headers > MAX_HEADERS_LEN {
        return Err(DecodeError::HeadersTooLong(headers_len));
    }
    if headers > total - MIN_MESSAGE_LEN {
        return Err(DecodeError::HeadersExceedMessage {
            headers_len,
            total_len,
        });
    }
    Ok(total)
}

/// Decodes exactly one message whose prelude `check_prelude` accepted (not checked again).
fn decode_message(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let total = usize::try_from(be_u32(bytes, 0)).unwrap_or(usize::MAX);
    let covered_len = total.saturating_sub(4);
    let (covered, crc) = bytes
        .split_at_checked(covered_len)
        .ok_or(DecodeError::MessageTooShort(be_u32(bytes, 0)))?;
    let declared = be_u32(crc, 0);
    let computed = crc32(covered);
    if computed != declared {
        return Err(DecodeError::MessageCrc { computed, declared });
    }
    let headers_len = usize::try_from(be_u32(bytes, 4)).unwrap_or(usize::MAX);
    let body = covered.get(PRELUDE_LEN..).unwrap_or(&[]);
    let (raw_headers, payload) = body
        .split_at_checked(headers_len)
        .ok_or(DecodeError::InvalidHeader("headers overrun the message"))?;
    Ok(Message {
        raw_headers,
        payload,
        known: KnownHeaders::collect(raw_headers)?,
    })
}

/// Reads one header from the front of `bytes`: name, value, remaining bytes.
fn read_header(bytes: &[u8]) -> Result<(&str, HeaderValue<'_>, &[u8]), DecodeError> {
    let (raw, rest) = split_header(bytes)?;
    let name =
        core::str::from_utf8(raw.name).map_err(|_| DecodeError::InvalidHeader("name not UTF-8"))?;
    Ok((name, raw.value()?, rest))
}

/// One header as it lies on the wire, already checked by [`split_header`].
struct RawHeader<'a> {
    name: &'a [u8],
    kind: u8,
    /// The value bytes (after the length prefix of types 6 and 7).
    value: &'a [u8],
}

impl<'a> RawHeader<'a> {
    fn value(&self) -> Result<HeaderValue<'a>, DecodeError> {
        let v = self.value;
        Ok(match self.kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(array(v)?)),
            3 => HeaderValue::Int16(i16::from_be_bytes(array(v)?)),
            4 => HeaderValue::Int32(i32::from_be_bytes(array(v)?)),
            5 => HeaderValue::Int64(i64::from_be_bytes(array(v)?)),
            6 => HeaderValue::Bytes(v),
            7 => HeaderValue::String(
                core::str::from_utf8(v)
                    .map_err(|_| DecodeError::InvalidHeader("string value not UTF-8"))?,
            ),
            8 => HeaderValue::Timestamp(i64::from_be_bytes(array(v)?)),
            9 => HeaderValue::Uuid(array(v)?),
            _ => return Err(DecodeError::InvalidHeader("unknown value type")),
        })
    }
}

/// Splits one header off the front of `bytes`, with every check (and error, in the same order)
/// of a full read but without building values: names and string values are only checked to be
/// UTF-8, so a walk costs little for headers nobody asks about.
fn split_header(bytes: &[u8]) -> Result<(RawHeader<'_>, &[u8]), DecodeError> {
    let (&name_len, rest) = bytes
        .split_first()
        .ok_or(DecodeError::InvalidHeader("empty"))?;
    if name_len == 0 {
        return Err(DecodeError::InvalidHeader("zero-length name"));
    }
    let (name, rest) = take(rest, usize::from(name_len), "name cut off")?;
    if !is_utf8(name) {
        return Err(DecodeError::InvalidHeader("name not UTF-8"));
    }
    let (&kind, rest) = rest
        .split_first()
        .ok_or(DecodeError::InvalidHeader("type cut off"))?;
    let (value, rest) = match kind {
        0 | 1 => (&[][..], rest),
        2 => take(rest, 1, "value cut off")?,
        3 => take(rest, 2, "value cut off")?,
        4 => take(rest, 4, "value cut off")?,
        5 | 8 => take(rest, 8, "value cut off")?,
        9 => take(rest, 16, "value cut off")?,
        6 | 7 => {
            let (len, rest) = take(rest, 2, "value cut off")?;
            let len = u16::from_be_bytes(array(len)?);
            take(rest, usize::from(len), "value cut off")?
        }
        _ => return Err(DecodeError::InvalidHeader("unknown value type")),
    };
    if kind == 7 && !is_utf8(value) {
        return Err(DecodeError::InvalidHeader("string value not UTF-8"));
    }
    Ok((RawHeader { name, kind, value }, rest))
}

/// `from_utf8(bytes).is_ok()`, with a fast path for the ASCII that header blocks hold.
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || core::str::from_utf8(bytes).is_ok()
}

fn take<'a>(
    bytes: &'a [u8],
    n: usize,
    why: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    bytes
        .split_at_checked(n)
        .ok_or(DecodeError::InvalidHeader(why))
}

/// A value `split_header` cut to length `N`; the error cannot happen.
fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::InvalidHeader("value cut off"))
}

/// Big-endian u32 at `at`, or 0 if `bytes` is too short (callers check lengths first).
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    at.checked_add(4)
        .and_then(|end| bytes.get(at..end))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

/// Encodes one message with string headers (type 7).
///
/// Never panics, and always yields a message [`Decoder`] accepts: an empty header name is
/// skipped, a name is cut to 255 bytes and a value to [`MAX_HEADER_VALUE_LEN`] bytes (both at a
/// UTF-8 boundary), headers that would push the block over [`MAX_HEADERS_LEN`] are dropped, and
/// the payload is cut so the message stays within [`MAX_MESSAGE_LEN`]. Callers emit short
/// constant headers and small JSON payloads, so none of that happens in practice.
#[must_use]
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        let name = truncate_utf8(name, usize::from(u8::MAX));
        let value = truncate_utf8(value, MAX_HEADER_VALUE_LEN);
        if name.is_empty() {
            continue;
        }
        let encoded_len = 1 + name.len() + 1 + 2 + value.len();
        if block.len().saturating_add(encoded_len) > MAX_HEADERS_LEN {
            continue;
        }
        block.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        block.extend_from_slice(name.as_bytes());
        block.push(7);
        block.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    let room = MAX_MESSAGE_LEN.saturating_sub(MIN_MESSAGE_LEN + block.len());
    let payload = payload.get(..room).unwrap_or(payload);
    let total = MIN_MESSAGE_LEN + block.len() + payload.len();

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(block.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or("")
}

/// CRC-32 (IEEE 802.3 / zlib polynomial, reflected), as both EventStream checksums use. Every
/// byte of a stream passes through it: `crc32fast`'s table-driven slice-by-16 (16 KiB of
/// tables) rather than a byte at a time, which was the meter's largest cost.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of a message, for comparing across chunkings.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Owned {
        headers: Vec<(String, OwnedValue)>,
        payload: Vec<u8>,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum OwnedValue {
        Bool(bool),
        Byte(i8),
        Int16(i16),
        Int32(i32),
        Int64(i64),
        Bytes(Vec<u8>),
        String(String),
        Timestamp(i64),
        Uuid([u8; 16]),
    }

    fn owned(m: Message<'_>) -> Owned {
        Owned {
            headers: m
                .headers()
                .map(|(n, v)| {
                    let v = match v {
                        HeaderValue::Bool(b) => OwnedValue::Bool(b),
                        HeaderValue::Byte(b) => OwnedValue::Byte(b),
                        HeaderValue::Int16(i) => OwnedValue::Int16(i),
                        HeaderValue::Int32(i) => OwnedValue::Int32(i),
                        HeaderValue::Int64(i) => OwnedValue::Int64(i),
                        HeaderValue::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
                        HeaderValue::String(s) => OwnedValue::String(s.to_owned()),
                        HeaderValue::Timestamp(t) => OwnedValue::Timestamp(t),
                        HeaderValue::Uuid(u) => OwnedValue::Uuid(u),
                    };
                    (n.to_owned(), v)
                })
                .collect(),
            payload: m.payload.to_vec(),
        }
    }

    fn decode_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (Vec<Owned>, Result<(), DecodeError>, usize) {
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let mut result = Ok(());
        for chunk in chunks {
            result = dec.push(chunk, |m| out.push(owned(m)));
            if result.is_err() {
                break;
            }
        }
        (out, result, dec.buffered())
    }

    fn decode_all(bytes: &[u8]) -> Vec<Owned> {
        let (msgs, result, buffered) = decode_chunks([bytes]);
        assert_eq!(result, Ok(()));
        assert_eq!(buffered, 0);
        msgs
    }

    fn event(event_type: &str, payload: &str) -> Vec<u8> {
        encode(
            &[
                (":event-type", event_type),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    /// A ConverseStream response as Bedrock sends it, `"p"` padding included.
    fn converse_stream() -> Vec<u8> {
        [
            event("messageStart", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO","role":"assistant"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcdef"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":", wörld!"},"p":"abcdefghijkl"}"#),
            event("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopq"}"#),
            event("messageStop", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU","stopReason":"end_turn"}"#),
            event("metadata", r#"{"metrics":{"latencyMs":412},"p":"abcdefghijklmnopqrstuvwxy","usage":{"inputTokens":12,"outputTokens":5,"totalTokens":17}}"#),
        ]
        .concat()
    }

    /// Test vector from the AWS CRT (aws-c-event-stream `message_deserializer_test.c`), as
    /// shipped in smithy-rs `aws-smithy-eventstream/test_data/valid_with_all_headers_and_payload`:
    /// one header of every type, CRCs computed by the CRT.
    const CRT_ALL_HEADERS: &[u8] = &[
        0x00, 0x00, 0x00, 0x96, 0x00, 0x00, 0x00, 0x7a, 0x8b, 0xb4, 0x95, 0xfb, 0x04, 0x74, 0x72,
        0x75, 0x65, 0x00, 0x05, 0x66, 0x61, 0x6c, 0x73, 0x65, 0x01, 0x04, 0x62, 0x79, 0x74, 0x65,
        0x02, 0x32, 0x05, 0x73, 0x68, 0x6f, 0x72, 0x74, 0x03, 0x4e, 0x20, 0x03, 0x69, 0x6e, 0x74,
        0x04, 0x00, 0x07, 0xa1, 0x20, 0x04, 0x6c, 0x6f, 0x6e, 0x67, 0x05, 0x00, 0x00, 0x00, 0x0b,
        0xa4, 0x3b, 0x74, 0x00, 0x05, 0x62, 0x79, 0x74, 0x65, 0x73, 0x06, 0x00, 0x0a, 0x73, 0x6f,
        0x6d, 0x65, 0x20, 0x62, 0x79, 0x74, 0x65, 0x73, 0x03, 0x73, 0x74, 0x72, 0x07, 0x00, 0x08,
        0x73, 0x6f, 0x6d, 0x65, 0x20, 0x73, 0x74, 0x72, 0x04, 0x74, 0x69, 0x6d, 0x65, 0x08, 0x00,
        0x00, 0x00, 0x01, 0x2a, 0x05, 0xf2, 0x00, 0x04, 0x75, 0x75, 0x69, 0x64, 0x09, 0xb7, 0x9b,
        0xc9, 0x14, 0xde, 0x21, 0x4e, 0x13, 0xb8, 0xb2, 0xbc, 0x47, 0xe8, 0x5b, 0x7f, 0x0b, 0x73,
        0x6f, 0x6d, 0x65, 0x20, 0x70, 0x61, 0x79, 0x6c, 0x6f, 0x61, 0x64, 0x01, 0xa0, 0x58, 0x60,
    ];

    /// CRT vector: one string header `content-type: application/json`, payload `{'foo':'bar'}`.
    const CRT_ONE_HEADER: &[u8] = &[
        0x00, 0x00, 0x00, 0x3D, 0x00, 0x00, 0x00, 0x20, 0x07, 0xFD, 0x83, 0x96, 0x0C, b'c', b'o',
        b'n', b't', b'e', b'n', b't', b'-', b't', b'y', b'p', b'e', 0x07, 0x00, 0x10, b'a', b'p',
        b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'j', b's', b'o', b'n', 0x7b,
        0x27, 0x66, 0x6f, 0x6f, 0x27, 0x3a, 0x27, 0x62, 0x61, 0x72, 0x27, 0x7d, 0x8D, 0x9C, 0x08,
        0xB1,
    ];

    /// CRT vector: no headers, payload `{'foo':'bar'}`.
    const CRT_NO_HEADERS: &[u8] = &[
        0x00, 0x00, 0x00, 0x1D, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x52, 0x8c, 0x5a, 0x7b, 0x27, 0x66,
        0x6f, 0x6f, 0x27, 0x3a, 0x27, 0x62, 0x61, 0x72, 0x27, 0x7d, 0xc3, 0x65, 0x39, 0x36,
    ];

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn all_header_types_parse() {
        let msgs = decode_all(CRT_ALL_HEADERS);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        let s = |n: &str| n.to_owned();
        assert_eq!(
            m.headers,
            vec![
                (s("true"), OwnedValue::Bool(true)),
                (s("false"), OwnedValue::Bool(false)),
                (s("byte"), OwnedValue::Byte(50)),
                (s("short"), OwnedValue::Int16(20_000)),
                (s("int"), OwnedValue::Int32(500_000)),
                (s("long"), OwnedValue::Int64(50_000_000_000)),
                (s("bytes"), OwnedValue::Bytes(b"some bytes".to_vec())),
                (s("str"), OwnedValue::String(s("some str"))),
                (s("time"), OwnedValue::Timestamp(5_000_000_000)),
                (
                    s("uuid"),
                    OwnedValue::Uuid([
                        0xb7, 0x9b, 0xc9, 0x14, 0xde, 0x21, 0x4e, 0x13, 0xb8, 0xb2, 0xbc, 0x47,
                        0xe8, 0x5b, 0x7f, 0x0b
                    ])
                ),
            ]
        );
        assert_eq!(m.payload, b"some payload");
    }

    #[test]
    fn negative_integer_headers_parse() {
        // Built byte by byte per the spec; only the CRCs are computed.
        let mut block = Vec::new();
        block.extend_from_slice(&[1, b'b', 2, 0xff]); // byte -1
        block.extend_from_slice(&[1, b's', 3, 0x80, 0x00]); // i16::MIN
        block.extend_from_slice(&[1, b'i', 4, 0xff, 0xff, 0xff, 0xfe]); // -2
        block.extend_from_slice(&[1, b'l', 5, 0x80, 0, 0, 0, 0, 0, 0, 0]); // i64::MIN
        block.extend_from_slice(&[1, b't', 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]); // -1 ms
        block.extend_from_slice(&[1, b'e', 6, 0, 0]); // empty bytes
        block.extend_from_slice(&[1, b'z', 7, 0, 0]); // empty string
        let total = (16 + block.len()) as u32;
        let mut frame = Vec::new();
        frame.extend_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
        let c = crc32(&frame);
        frame.extend_from_slice(&c.to_be_bytes());
        frame.extend_from_slice(&block);
        let c = crc32(&frame);
        frame.extend_from_slice(&c.to_be_bytes());

        let mut dec = Decoder::new();
        let mut seen = Vec::new();
        dec.push(&frame, |m| {
            seen = m.headers().map(|(_, v)| format!("{v:?}")).collect();
            assert!(m.payload.is_empty());
            assert_eq!(m.header("z"), Some(HeaderValue::String("")));
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "Byte(-1)",
                "Int16(-32768)",
                "Int32(-2)",
                "Int64(-9223372036854775808)",
                "Timestamp(-1)",
                "Bytes([])",
                "String(\"\")"
            ]
        );
    }

    #[test]
    fn encoder_matches_crt_vectors() {
        assert_eq!(
            encode(&[("content-type", "application/json")], b"{'foo':'bar'}"),
            CRT_ONE_HEADER
        );
        assert_eq!(encode(&[], b"{'foo':'bar'}"), CRT_NO_HEADERS);
        let msgs = decode_all(CRT_ONE_HEADER);
        assert_eq!(
            msgs[0].headers,
            vec![(
                "content-type".to_owned(),
                OwnedValue::String("application/json".to_owned())
            )]
        );
        assert_eq!(msgs[0].payload, b"{'foo':'bar'}");
    }

    #[test]
    fn encode_round_trips_and_clamps() {
        let long_name = "é".repeat(200); // 400 bytes: cut to 254 at a char boundary
        let long_value = "x".repeat(40_000);
        let bytes = encode(
            &[("", "dropped"), (&long_name, &long_value), ("k", "v")],
            b"payload",
        );
        let msgs = decode_all(&bytes);
        assert_eq!(msgs.len(), 1);
        let h = &msgs[0].headers;
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, "é".repeat(127));
        assert_eq!(h[0].1, OwnedValue::String("x".repeat(MAX_HEADER_VALUE_LEN)));
        assert_eq!(h[1], ("k".to_owned(), OwnedValue::String("v".to_owned())));
        assert_eq!(msgs[0].payload, b"payload");

        let big = vec![b'a'; MAX_MESSAGE_LEN + 10];
        let bytes = encode(&[("k", "v")], &big);
        assert_eq!(bytes.len(), MAX_MESSAGE_LEN);
        assert_eq!(decode_all(&bytes).len(), 1);
    }

    #[test]
    fn accessors() {
        let bytes = encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"slow down"}"#,
        );
        let mut dec = Decoder::new();
        let mut n = 0;
        dec.push(&bytes, |m| {
            n += 1;
            assert_eq!(m.message_type(), Some("exception"));
            assert_eq!(m.exception_type(), Some("throttlingException"));
            assert_eq!(m.event_type(), None);
            assert_eq!(m.error_code(), None);
            assert_eq!(m.payload, br#"{"message":"slow down"}"#);
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn every_two_chunk_split_gives_the_same_messages() {
        let stream = converse_stream();
        let expected = decode_all(&stream);
        assert_eq!(expected.len(), 6);
        assert_eq!(
            expected[2].payload,
            r#"{"contentBlockIndex":0,"delta":{"text":", wörld!"},"p":"abcdefghijkl"}"#.as_bytes()
        );
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let (msgs, result, buffered) = decode_chunks([a, b]);
            assert_eq!(result, Ok(()), "cut at {cut}");
            assert_eq!(buffered, 0, "cut at {cut}");
            assert_eq!(msgs, expected, "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_chunks_give_the_same_messages() {
        let stream = converse_stream();
        let expected = decode_all(&stream);
        let mut dec = Decoder::new();
        let mut msgs = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            dec.push(core::slice::from_ref(byte), |m| msgs.push(owned(m)))
                .unwrap();
            if i + 1 < stream.len() {
                assert!(dec.buffered() > 0 || msgs.len() < expected.len());
            }
        }
        assert_eq!(dec.buffered(), 0);
        assert_eq!(msgs, expected);
    }

    #[test]
    fn three_chunk_splits_give_the_same_messages() {
        let stream = converse_stream();
        let expected = decode_all(&stream);
        for i in (0..stream.len()).step_by(7) {
            for j in (i..=stream.len()).step_by(11) {
                let (msgs, result, buffered) =
                    decode_chunks([&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!((result, buffered), (Ok(()), 0));
                assert_eq!(msgs, expected, "cuts at {i}, {j}");
            }
        }
    }

    #[test]
    fn several_messages_in_one_chunk_and_an_empty_chunk() {
        let mut bytes = converse_stream();
        bytes.extend_from_slice(CRT_ALL_HEADERS);
        bytes.extend_from_slice(CRT_NO_HEADERS);
        let mut dec = Decoder::new();
        let mut n = 0;
        dec.push(&[], |_| n += 1).unwrap();
        dec.push(&bytes, |_| n += 1).unwrap();
        assert_eq!(n, 8);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn corrupt_prelude_crc_is_fatal_and_sticky() {
        let mut bytes = converse_stream();
        bytes[9] ^= 0x01;
        let mut dec = Decoder::new();
        let mut n = 0;
        let err = dec.push(&bytes, |_| n += 1).unwrap_err();
        assert!(matches!(err, DecodeError::PreludeCrc { .. }), "{err}");
        assert_eq!(n, 0);
        // Sticky: even valid input is refused afterwards.
        assert_eq!(dec.push(CRT_NO_HEADERS, |_| n += 1), Err(err.clone()));
        assert_eq!(dec.error(), Some(&err));
        assert_eq!(n, 0);
        assert_eq!(dec.buffered(), 0);

        let mut crt = CRT_ALL_HEADERS.to_vec();
        crt[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let (_, result, _) = decode_chunks([&crt[..]]);
        assert_eq!(
            result,
            Err(DecodeError::PreludeCrc {
                computed: 0x8BB4_95FB,
                declared: 0xDEAD_BEEF
            })
        );
    }

    #[test]
    fn corrupt_prelude_detected_before_the_body_arrives() {
        let mut bytes = CRT_ALL_HEADERS.to_vec();
        bytes[3] ^= 0x10; // total length changed, prelude CRC no longer matches
        let mut dec = Decoder::new();
        assert_eq!(dec.push(&bytes[..11], |_| ()), Ok(()));
        assert_eq!(dec.buffered(), 11);
        assert!(matches!(
            dec.push(&bytes[11..12], |_| ()),
            Err(DecodeError::PreludeCrc { .. })
        ));
    }

    #[test]
    fn corrupt_message_crc() {
        // A flipped payload byte.
        let stream = converse_stream();
        let first_len = usize::try_from(be_u32(&stream, 0)).unwrap();
        let mut bytes = stream.clone();
        bytes[first_len + 40] ^= 0x20;
        let (msgs, result, _) = decode_chunks([&bytes[..]]);
        assert_eq!(
            msgs.len(),
            1,
            "the message before the corruption is delivered"
        );
        assert!(matches!(result, Err(DecodeError::MessageCrc { .. })));

        // A flipped CRC byte, split across chunks.
        let mut crt = CRT_ALL_HEADERS.to_vec();
        let last = crt.len() - 4;
        crt[last..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let (msgs, result, _) = decode_chunks([&crt[..20], &crt[20..]]);
        assert!(msgs.is_empty());
        assert_eq!(
            result,
            Err(DecodeError::MessageCrc {
                computed: 0x01a0_5860,
                declared: 0xDEAD_BEEF
            })
        );
    }

    #[test]
    fn truncated_stream_leaves_bytes_buffered() {
        let stream = converse_stream();
        let (msgs, result, buffered) = decode_chunks([&stream[..stream.len() - 5]]);
        assert_eq!(result, Ok(()));
        assert_eq!(msgs.len(), 5);
        // Walk the frame lengths to find where the last message starts.
        let mut at = 0;
        for _ in 0..5 {
            at += usize::try_from(be_u32(&stream, at)).unwrap();
        }
        assert_eq!(buffered, stream.len() - 5 - at);
        assert!(buffered > PRELUDE_LEN);
        // Cut inside the prelude, too.
        let (msgs, _, buffered) = decode_chunks([&stream[..5]]);
        assert!(msgs.is_empty());
        assert_eq!(buffered, 5);
    }

    /// A prelude with a valid CRC for the given lengths.
    fn prelude(total: u32, headers: u32) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&headers.to_be_bytes());
        let c = crc32(&p);
        p.extend_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn absurd_lengths_rejected_without_allocating() {
        let mut dec = Decoder::new();
        assert_eq!(
            dec.push(&prelude(u32::MAX, 0), |_| ()),
            Err(DecodeError::MessageTooLong(u32::MAX))
        );
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.buf.capacity(), 0);

        let over = (MAX_MESSAGE_LEN + 1) as u32;
        let (_, r, _) = decode_chunks([&prelude(over, 0)[..]]);
        assert_eq!(r, Err(DecodeError::MessageTooLong(over)));
        let (_, r, _) = decode_chunks([&prelude(15, 0)[..]]);
        assert_eq!(r, Err(DecodeError::MessageTooShort(15)));
        let (_, r, _) = decode_chunks([&prelude(0, 0)[..]]);
        assert_eq!(r, Err(DecodeError::MessageTooShort(0)));
        let h = (MAX_HEADERS_LEN + 1) as u32;
        let (_, r, _) = decode_chunks([&prelude(1_000_000, h)[..]]);
        assert_eq!(r, Err(DecodeError::HeadersTooLong(h)));
        let (_, r, _) = decode_chunks([&prelude(20, 5)[..]]);
        assert_eq!(
            r,
            Err(DecodeError::HeadersExceedMessage {
                headers_len: 5,
                total_len: 20
            })
        );

        // A legal 16 MiB declaration with 12 bytes in hand allocates only what arrived.
        let mut dec = Decoder::new();
        dec.push(&prelude(MAX_MESSAGE_LEN as u32, 0), |_| ())
            .unwrap();
        assert_eq!(dec.buffered(), 12);
        assert!(dec.buf.capacity() < 4096);
    }

    #[test]
    fn invalid_headers_in_a_crc_valid_message() {
        fn framed(block: &[u8]) -> Vec<u8> {
            let mut f = prelude((16 + block.len()) as u32, block.len() as u32);
            f.extend_from_slice(block);
            let c = crc32(&f);
            f.extend_from_slice(&c.to_be_bytes());
            f
        }
        for (block, why) in [
            (&[0u8, 0][..], "zero-length name"),
            (&[5, b'a', b'b'][..], "name cut off"),
            (&[1, 0xff, 7, 0, 0][..], "name not UTF-8"),
            (&[1, b'a'][..], "type cut off"),
            (&[1, b'a', 10][..], "unknown value type"),
            (&[1, b'a', 7, 0, 5, b'x'][..], "value cut off"),
            (&[1, b'a', 7, 0, 1, 0xc3][..], "string value not UTF-8"),
            (&[1, b'a', 9, 1, 2, 3][..], "value cut off"),
            (&[1, b'a', 5, 1][..], "value cut off"),
        ] {
            let (msgs, r, _) = decode_chunks([&framed(block)[..]]);
            assert!(msgs.is_empty());
            assert_eq!(r, Err(DecodeError::InvalidHeader(why)), "{block:?}");
        }
    }

    /// A message around a raw header block, CRCs computed.
    fn frame(block: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut f = prelude(
            (MIN_MESSAGE_LEN + block.len() + payload.len()) as u32,
            block.len() as u32,
        );
        f.extend_from_slice(block);
        f.extend_from_slice(payload);
        let c = crc32(&f);
        f.extend_from_slice(&c.to_be_bytes());
        f
    }

    /// One header on the wire: `kind` 6 and 7 get their length prefix.
    fn header(name: &str, kind: u8, value: &[u8]) -> Vec<u8> {
        let mut h = vec![name.len() as u8];
        h.extend_from_slice(name.as_bytes());
        h.push(kind);
        if kind == 6 || kind == 7 {
            h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        }
        h.extend_from_slice(value);
        h
    }

    /// The CRT vector's header block: one header of every type.
    fn crt_header_block() -> &'static [u8] {
        &CRT_ALL_HEADERS[PRELUDE_LEN..PRELUDE_LEN + 0x7a]
    }

    #[test]
    fn known_header_accessors_agree_with_header_lookup() {
        let s = |n: &str, v: &str| header(n, 7, v.as_bytes());
        let blocks: Vec<Vec<u8>> = vec![
            [
                crt_header_block(),
                &s(":event-type", "chunk"),
                &s(":message-type", "event"),
            ]
            .concat(),
            // Duplicates: the first one counts.
            [s(":event-type", "first"), s(":event-type", "second")].concat(),
            // A first `:message-type` that is not a string hides a later string one.
            [
                header(":message-type", 4, &[0, 0, 0, 1]),
                s(":message-type", "exception"),
            ]
            .concat(),
            // Bytes values, UTF-8 or not, are not strings.
            [
                header("blob", 6, &[0xff, 0xfe]),
                header(":event-type", 6, b"chunk"),
            ]
            .concat(),
            [header(":exception-type", 6, &[0xc3]), s(":error-code", "E")].concat(),
            // Near misses are other headers.
            [
                s(":event-typ", "a"),
                s(":event-types", "b"),
                s(":Event-Type", "c"),
            ]
            .concat(),
            [
                s(":exception-type", "throttlingException"),
                header(":error-code", 0, b""),
            ]
            .concat(),
            Vec::new(),
        ];
        for block in blocks {
            let bytes = frame(&block, b"{}");
            let mut n = 0;
            Decoder::new()
                .push(&bytes, |m| {
                    n += 1;
                    let lookup = |name| m.header(name).and_then(|v| v.as_str());
                    assert_eq!(m.message_type(), lookup(":message-type"), "{block:?}");
                    assert_eq!(m.event_type(), lookup(":event-type"), "{block:?}");
                    assert_eq!(m.exception_type(), lookup(":exception-type"), "{block:?}");
                    assert_eq!(m.error_code(), lookup(":error-code"), "{block:?}");
                    assert_eq!(m.message_type_bytes(), m.message_type().map(str::as_bytes));
                    assert_eq!(m.event_type_bytes(), m.event_type().map(str::as_bytes));
                })
                .unwrap();
            assert_eq!(n, 1);
        }

        let bytes = frame(
            &[
                header(":message-type", 4, &[0, 0, 0, 1]),
                header(":message-type", 7, b"x"),
            ]
            .concat(),
            b"",
        );
        Decoder::new()
            .push(&bytes, |m| {
                assert_eq!(m.message_type(), None);
                assert_eq!(m.header(":message-type"), Some(HeaderValue::Int32(1)));
            })
            .unwrap();
    }

    #[test]
    fn unusual_header_blocks_do_not_break_metering() {
        use crate::response::meter::UsageMeter;
        use crate::Operation;

        let s = |n: &str, v: &str| header(n, 7, v.as_bytes());
        let delta = br#"{"delta":{"text":"abc"}}"#;
        let stream = [
            // Every header type (a non-UTF-8 bytes value too) around the usual headers.
            frame(
                &[
                    header("raw", 6, &[0xff, 0x00, 0xfe]),
                    s(":event-type", "contentBlockDelta"),
                    crt_header_block().to_vec(),
                    s(":message-type", "event"),
                ]
                .concat(),
                delta,
            ),
            // Duplicate names: the first counts.
            frame(
                &[
                    s(":event-type", "contentBlockDelta"),
                    s(":event-type", "metadata"),
                    s(":message-type", "event"),
                ]
                .concat(),
                delta,
            ),
            // An `:event-type` that is not a string names no event: counted, not parsed.
            frame(&header(":event-type", 6, b"contentBlockDelta"), delta),
            frame(
                &[s(":message-type", "event"), s(":event-type", "metadata")].concat(),
                br#"{"usage":{"inputTokens":3,"outputTokens":2}}"#,
            ),
        ]
        .concat();
        let mut m = UsageMeter::new(Operation::ConverseStream);
        m.on_response_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        m.on_body(&stream);
        let r = m.finish();
        assert_eq!(
            (r.events, r.output_text_bytes, r.complete, r.problem),
            (4, 6, true, None)
        );
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (3, 2));
    }

    #[test]
    fn crc32_matches_a_bitwise_reference() {
        fn reference(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        0xEDB8_8320 ^ (crc >> 1)
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let data: Vec<u8> = (0u32..200)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        // Every length around the 8-byte steps, at every alignment.
        for start in 0..8 {
            for len in 0..=64 {
                let bytes = &data[start..start + len];
                assert_eq!(crc32(bytes), reference(bytes), "{start}+{len}");
            }
        }
        assert_eq!(crc32(&data), reference(&data));
    }

    /// Re-encodes an owned message from its parsed headers (every type), as the spec lays it
    /// out: the oracle for "decoded frames re-encode to the input".
    fn reencode(m: &Owned) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in &m.headers {
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            match value {
                OwnedValue::Bool(b) => block.push(if *b { 0 } else { 1 }),
                OwnedValue::Byte(v) => block.extend([2, *v as u8]),
                OwnedValue::Int16(v) => {
                    block.push(3);
                    block.extend_from_slice(&v.to_be_bytes());
                }
                OwnedValue::Int32(v) => {
                    block.push(4);
                    block.extend_from_slice(&v.to_be_bytes());
                }
                OwnedValue::Int64(v) => {
                    block.push(5);
                    block.extend_from_slice(&v.to_be_bytes());
                }
                OwnedValue::Bytes(v) => {
                    block.push(6);
                    block.extend_from_slice(&(v.len() as u16).to_be_bytes());
                    block.extend_from_slice(v);
                }
                OwnedValue::String(v) => {
                    block.push(7);
                    block.extend_from_slice(&(v.len() as u16).to_be_bytes());
                    block.extend_from_slice(v.as_bytes());
                }
                OwnedValue::Timestamp(v) => {
                    block.push(8);
                    block.extend_from_slice(&v.to_be_bytes());
                }
                OwnedValue::Uuid(v) => {
                    block.push(9);
                    block.extend_from_slice(v);
                }
            }
        }
        let total = MIN_MESSAGE_LEN + block.len() + m.payload.len();
        let mut out = (total as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        let prelude_crc = crc32(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(&m.payload);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Noise, valid streams with flipped bits (which sometimes pass the CRCs), and the CRT's
    /// every-header-type vector, cut at random: the messages decoded re-encode exactly to the
    /// input's leading bytes, whatever the cut; the error (if any) and the bytes held over are
    /// the same as for the uncut input. (`make fuzz` runs the same properties for longer.)
    #[test]
    fn decoded_messages_re_encode_to_the_input_however_it_is_cut() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = [converse_stream(), CRT_ALL_HEADERS.to_vec(), {
            let mut v = converse_stream();
            v.extend_from_slice(CRT_ALL_HEADERS);
            v
        }];
        let mut decoded_some = 0;
        for round in 0..600 {
            let mut bytes: Vec<u8> = if round % 3 == 0 {
                let len = (next() % 600) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                valid[(next() % 3) as usize].clone()
            };
            if round % 3 == 1 {
                for _ in 0..(next() % 4) {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] ^= next() as u8 | 1;
                }
            }
            let (whole, whole_result, whole_held) = decode_chunks([&bytes[..]]);
            let mut at = 0;
            for m in &whole {
                let again = reencode(m);
                assert_eq!(
                    bytes.get(at..at + again.len()),
                    Some(&again[..]),
                    "round {round}: message at {at} does not re-encode to its bytes"
                );
                at += again.len();
            }
            decoded_some += usize::from(!whole.is_empty());
            if whole_result.is_ok() {
                assert_eq!(whole_held, bytes.len() - at, "round {round}");
            }
            let mut pieces = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = ((next() % 64) as usize + 1).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                pieces.push(chunk);
                rest = tail;
            }
            let (cut, cut_result, cut_held) = decode_chunks(pieces);
            assert_eq!(cut, whole, "round {round}");
            assert_eq!(cut_result, whole_result, "round {round}");
            if whole_result.is_ok() {
                assert_eq!(cut_held, whole_held, "round {round}");
            }
        }
        // The property was exercised, not vacuously true.
        assert!(decoded_some > 300, "{decoded_some}");
    }
}
