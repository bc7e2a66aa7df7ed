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

/// A configuration for the translator targets: one key, default `anthropic_betas`.
pub fn translator_config() -> tollgate_core::config::Config {
    let hash: String = tollgate_core::request::auth::hash_key("tg-fuzz-key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let doc = format!(
        r#"{{"region":"us-east-1","api_keys":[{{"id":"k","sha256":"{hash}","models":["*"]}}],
            "credentials":{{"type":"inline","access_key_id":"AKID","secret_access_key":"fuzz-secret"}}}}"#
    );
    tollgate_core::config::Config::parse(doc.as_bytes(), &|_| None)
        .expect("the fuzz configuration is valid")
}

/// Parses `bytes` as exactly one JSON value in which no object names a member twice, at any
/// depth (a second `model` or `messages` is read differently by different parsers). The
/// value, or why not.
pub fn strict_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    struct NoDuplicates;
    impl<'de> Deserialize<'de> for NoDuplicates {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(NoDuplicates)
        }
    }
    impl<'de> Visitor<'de> for NoDuplicates {
        type Value = NoDuplicates;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_unit<E>(self) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
            while seq.next_element::<NoDuplicates>()?.is_some() {}
            Ok(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
            let mut names = std::collections::BTreeSet::new();
            while let Some(name) = map.next_key::<String>()? {
                if !names.insert(name.clone()) {
                    return Err(serde::de::Error::custom(format!("`{name}` twice")));
                }
                map.next_value::<NoDuplicates>()?;
            }
            Ok(self)
        }
    }
    serde_json::from_slice::<NoDuplicates>(bytes).map_err(|e| e.to_string())?;
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// One server-sent event as the gateway writes them: an optional `event:` line, then one
/// `data:` line.
#[derive(Debug)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Reads a stream of server-sent events the way a client's parser splits it: events end with
/// a blank line; each is `event: <name>` (optional) then `data: <text>`, and nothing else (an
/// extra line would be a field injected into the client's stream).
pub fn sse_events(bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.contains('\r') {
        return Err("a carriage return (a line break to SSE parsers)".into());
    }
    let Some(body) = text.strip_suffix("\n\n") else {
        return if text.is_empty() {
            Ok(Vec::new())
        } else {
            Err(format!("does not end with a blank line: {text:?}"))
        };
    };
    body.split("\n\n")
        .map(|block| {
            let mut lines = block.split('\n');
            let first = lines.next().unwrap_or("");
            let (event, data_line) = match first.strip_prefix("event: ") {
                Some(name) => (Some(name.to_string()), lines.next()),
                None => (None, Some(first)),
            };
            let data = data_line
                .and_then(|l| l.strip_prefix("data: "))
                .ok_or_else(|| format!("an event without its data line: {block:?}"))?;
            if lines.next().is_some() {
                return Err(format!("an event of more than its two lines: {block:?}"));
            }
            Ok(SseEvent {
                event,
                data: data.to_string(),
            })
        })
        .collect()
}

/// The ConverseStream event types, in the order a stream has them.
pub const CONVERSE_EVENTS: [&str; 6] = [
    "messageStart",
    "contentBlockStart",
    "contentBlockDelta",
    "contentBlockStop",
    "messageStop",
    "metadata",
];

/// A Bedrock response body for the translators, as records: `kind: u8`, `len: u16`
/// (little-endian), `len` bytes.
///
/// | kind % 10 | bytes become |
/// |---|---|
/// | 0 | raw bytes, unframed |
/// | 1..=6 | a ConverseStream event of type `CONVERSE_EVENTS[kind - 1]` with the bytes as payload |
/// | 7 | `chunk` event whose payload is `{"bytes":"<base64 of the bytes>"}` (InvokeModelWithResponseStream) |
/// | 8 | exception message, `:exception-type` the bytes |
/// | 9 | error message, `:error-code` the bytes |
pub fn translator_body(input: &mut Input<'_>) -> Vec<u8> {
    use base64::Engine as _;
    let mut body = Vec::new();
    while !input.is_empty() {
        let kind = usize::from(input.u8() % 10);
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
            1..=6 => event(CONVERSE_EVENTS[kind - 1], bytes),
            7 => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                event(
                    "chunk",
                    format!(r#"{{"bytes":"{b64}","p":"ab"}}"#).as_bytes(),
                )
            }
            8 => eventstream::encode(
                &[
                    (":exception-type", &text),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                br#"{"message":"fuzz"}"#,
            ),
            _ => eventstream::encode(&[(":error-code", &text), (":message-type", "error")], b""),
        });
    }
    body
}

/// Model IDs a translated request may resolve to: Claude (InvokeModel for the Anthropic
/// dialect), other chat families (Converse), and an image model (not a chat model).
pub const TRANSLATED_MODELS: [&str; 6] = [
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "us.amazon.nova-lite-v1:0",
    "meta.llama3-8b-instruct-v1:0",
    "mistral.mistral-large-2402-v1:0",
    "amazon.nova-canvas-v1:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
];

/// What every translation to Bedrock must be, whatever the client sent: a body that is one
/// strict JSON object which the gateway's own body reader accepts for the operation (the
/// exchange reads it again for the output cap and the estimate). A body that is not strict (a
/// member twice deep inside a value the translation copies through as the client wrote it)
/// must be refused by that reader: the client then gets a 400, and Bedrock never sees it.
/// Returns the body's JSON, `None` for such a refused body.
pub fn check_bedrock_body(
    operation: tollgate_core::Operation,
    body: &[u8],
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let scanned = tollgate_core::request::body::scan(body, operation);
    let doc = match strict_json(body) {
        Ok(doc) => doc,
        Err(e) => {
            let refused = scanned.err().unwrap_or_else(|| {
                panic!(
                    "a body that is not one strict JSON value ({e}) would go to Bedrock: {}",
                    String::from_utf8_lossy(body)
                )
            });
            assert_eq!(refused.kind.status(), 400, "{}", refused.message);
            return None;
        }
    };
    let serde_json::Value::Object(doc) = doc else {
        panic!("the Bedrock body is not a JSON object: {doc}");
    };
    if let Err(e) = scanned {
        panic!(
            "the gateway refuses its own translation ({}): {}",
            e.message,
            String::from_utf8_lossy(body)
        );
    }
    Some(doc)
}

/// A refusal of a translated request: a client error (4xx), and its reply in the client's
/// dialect is a JSON object carrying the message.
pub fn check_refusal(
    e: &tollgate_core::error::GatewayError,
    dialect: tollgate_core::dialect::Dialect,
) {
    let status = e.kind.status();
    assert!(
        (400..500).contains(&status),
        "a translation refused with {status}: {}",
        e.message
    );
    assert!(!e.message.is_empty(), "a refusal without a message");
    let reply = e.to_reply(dialect);
    assert_eq!(reply.status, status);
    let v = strict_json(&reply.body).expect("the refusal is JSON");
    let message = match dialect {
        tollgate_core::dialect::Dialect::Anthropic => {
            assert_eq!(v["type"], "error");
            &v["error"]["message"]
        }
        _ => &v["error"]["message"],
    };
    assert_eq!(message.as_str(), Some(e.message.as_str()));
}
