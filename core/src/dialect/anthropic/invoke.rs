//! Messages on Claude models: InvokeModel and InvokeModelWithResponseStream, whose body is the
//! Messages API with Bedrock's differences (AWS "Anthropic Claude Messages API: request and
//! response"): `anthropic_version: "bedrock-2023-05-31"`, no `model` (it is in the path) and
//! no `stream` (it is the operation), betas in the body's `anthropic_beta` list. The answer is
//! the Messages API's own; a stream's EventStream `chunk`s each carry one Anthropic stream
//! event (base64 JSON), written out as a server-sent event as soon as its frame is complete.

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;

use super::{betas, json_string, sse, MessagesRequest, Target, Translation, ENVELOPE};
use crate::dialect::answer::{decode, Answer, Frames, Stream};
use crate::dialect::refusal::exception_body;
use crate::dialect::{BedrockRequest, ResponseHead, Translator};
use crate::error::GatewayError;
use crate::request::operation::Operation;
use crate::response::eventstream::{Decoder, Message};

/// Top-level members Bedrock takes in a Claude Messages body besides the ones the translation
/// writes (`anthropic_version`, `anthropic_beta`) and the beta-bound ones
/// ([`betas::BETA_FIELDS`]). Anything else (`model`, `stream`, `service_tier`, `container`,
/// `mcp_servers`…) Bedrock refuses, so it is left out.
const INVOKE_FIELDS: &[&str] = &[
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
];

/// The InvokeModel body for `req`, and what it left out (added to `dropped`). `max_tokens`:
/// a value to add when the client gave none (CountTokens needs a complete body).
pub(super) fn body(
    req: &MessagesRequest<'_>,
    target: &Target<'_>,
    max_tokens: Option<u64>,
    dropped: &mut Vec<String>,
) -> Result<Vec<u8>, GatewayError> {
    let body_betas: Vec<String> = match super::member(&req.members, "anthropic_beta") {
        Some(raw) => serde_json::from_slice(raw.get().as_bytes())
            .map_err(|_| super::bad("`anthropic_beta` must be a list of strings"))?,
        None => Vec::new(),
    };
    let flags = betas::forwarded(
        target.header("anthropic-beta"),
        &body_betas,
        &target.config.anthropic_betas,
        dropped,
    );
    let mut out = Vec::with_capacity(req.body_len + 64);
    out.extend_from_slice(br#"{"anthropic_version":"bedrock-2023-05-31""#);
    if !flags.is_empty() {
        out.extend_from_slice(br#","anthropic_beta":"#);
        out.extend_from_slice(&serde_json::to_vec(&flags).unwrap_or_else(|_| b"[]".to_vec()));
    }
    let mut has_max_tokens = false;
    for (name, raw) in &req.members {
        let name = name.as_ref();
        let keep = match name {
            "model" | "stream" | "anthropic_version" | "anthropic_beta" => continue,
            _ => match betas::flag_of_field(name) {
                Some(flag) => flags.iter().any(|f| f == flag),
                None => INVOKE_FIELDS.contains(&name),
            },
        };
        if !keep {
            dropped.push(format!("field:{name}"));
            continue;
        }
        has_max_tokens |= name == "max_tokens";
        out.push(b',');
        out.extend_from_slice(json_string(name).as_bytes());
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
    }
    if let (false, Some(n)) = (has_max_tokens, max_tokens) {
        out.extend_from_slice(format!(r#","max_tokens":{n}"#).as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

pub(super) fn translate(
    req: &MessagesRequest<'_>,
    target: &Target<'_>,
) -> Result<Translation, GatewayError> {
    let mut dropped = Vec::new();
    let body = body(req, target, None, &mut dropped)?;
    let operation = if req.stream {
        Operation::InvokeWithResponseStream
    } else {
        Operation::Invoke
    };
    let response = InvokeResponse::new(req.stream);
    Ok(BedrockRequest::json(
        operation,
        body,
        Box::new(response),
        dropped,
    ))
}

/// The answer of InvokeModel (or its stream) for an Anthropic client: a 2xx answer is
/// already the Messages API's.
pub(crate) struct InvokeResponse {
    stream: bool,
    answer: Answer<Events>,
}

impl InvokeResponse {
    pub(crate) fn new(stream: bool) -> Self {
        Self {
            stream,
            answer: Answer::Pass,
        }
    }
}

impl Translator for InvokeResponse {
    fn head(&mut self, status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        if let Some(head) = self.answer.refuse(&ENVELOPE, status, headers) {
            return head;
        }
        if !self.stream {
            return ResponseHead::default();
        }
        self.answer = Answer::Stream(Events::default());
        sse::head()
    }

    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
        self.answer.body(bedrock)
    }

    fn end(&mut self) -> Vec<u8> {
        // Never held whole: a 2xx answer passes.
        self.answer.end(|_| Vec::new())
    }

    fn cut_off(&mut self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if let Answer::Stream(e) = &mut self.answer {
            // A stream that has ended (`message_stop`, an error) takes nothing more.
            if std::mem::replace(&mut e.ended, true) {
                return out;
            }
        }
        sse::error(&mut out, "rate_limit_error", message);
        out
    }
}

/// An InvokeModelWithResponseStream body becoming Anthropic server-sent events.
#[derive(Default)]
pub(crate) struct Events {
    decoder: Decoder,
    /// `message_stop` or an error went out: the client's stream is complete.
    ended: bool,
}

impl Stream for Events {
    fn push(&mut self, bedrock: &[u8]) -> Vec<u8> {
        decode(self, bedrock)
    }

    /// The upstream body ended: a stream that stopped before `message_stop` fails visibly.
    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.ended {
            sse::error(
                &mut out,
                "api_error",
                "the model's stream ended before message_stop",
            );
            self.ended = true;
        }
        out
    }
}

impl Frames for Events {
    fn decoder(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    fn ended(&self) -> bool {
        self.ended
    }

    fn event(&mut self, m: Message<'_>, out: &mut Vec<u8>) {
        event(m, out, &mut self.ended);
    }

    fn unreadable(&mut self, out: &mut Vec<u8>, why: &str) {
        sse::error(out, "api_error", why);
        self.ended = true;
    }
}

/// One EventStream message of an invoke stream, as server-sent events into `out`.
fn event(m: Message<'_>, out: &mut Vec<u8>, ended: &mut bool) {
    if *ended {
        return;
    }
    match m.message_type() {
        Some("event") if m.event_type() == Some("chunk") => {
            #[derive(Deserialize)]
            struct Chunk<'a> {
                #[serde(borrow)]
                bytes: Cow<'a, str>,
            }
            #[derive(Deserialize)]
            struct Typed<'a> {
                #[serde(borrow)]
                r#type: Cow<'a, str>,
            }
            let inner = serde_json::from_slice::<Chunk<'_>>(m.payload)
                .ok()
                .and_then(|c| {
                    base64::engine::general_purpose::STANDARD
                        .decode(c.bytes.as_bytes())
                        .ok()
                });
            // The chunk goes onto one `data:` line as it came: it must be UTF-8 (serde skips
            // members it does not read without checking them), and a line break between JSON
            // tokens is whitespace, so it goes as a space (none can be inside a JSON string).
            let Some(mut inner) = inner.and_then(|b| String::from_utf8(b).ok()) else {
                sse::error(out, "api_error", "the model sent a chunk that is not JSON");
                *ended = true;
                return;
            };
            if inner.contains(['\n', '\r']) {
                inner = inner.replace(['\n', '\r'], " ");
            }
            match serde_json::from_str::<Typed<'_>>(&inner) {
                Ok(t) => {
                    sse::event(out, &t.r#type, inner.as_bytes());
                    if t.r#type == "message_stop" || t.r#type == "error" {
                        *ended = true;
                    }
                }
                Err(_) => {
                    sse::error(out, "api_error", "the model sent an event without a type");
                    *ended = true;
                }
            }
        }
        // Other events of the union (none today) have no Anthropic counterpart.
        Some("event") => {}
        _ => {
            let kind = m.exception_type().or(m.error_code()).unwrap_or("");
            stream_exception(out, kind, m.payload);
            *ended = true;
        }
    }
}

/// A Bedrock stream exception frame as Anthropic's `error` event.
pub(super) fn stream_exception(out: &mut Vec<u8>, kind: &str, payload: &[u8]) {
    sse::event(out, "error", &exception_body(&ENVELOPE, kind, payload));
}

#[cfg(test)]
mod tests {
    use super::super::read;
    use super::*;
    use crate::config::Config;
    use crate::request::auth::hash_key;
    use crate::response::eventstream::encode;

    fn config(betas: Option<&str>) -> Config {
        let json = format!(
            r#"{{"region":"us-east-1","api_keys":[{{"id":"a","sha256":"{}","models":["*"]}}],
                "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}
                {}}}"#,
            hex::encode(hash_key("k")),
            betas
                .map(|b| format!(r#","anthropic_betas":{b}"#))
                .unwrap_or_default()
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn translated(
        body: &str,
        beta: Option<&str>,
        config: &Config,
    ) -> (serde_json::Value, Vec<String>) {
        let req = read(body.as_bytes(), false).unwrap();
        let headers: Vec<(String, String)> = beta
            .map(|b| vec![("anthropic-beta".to_string(), b.to_string())])
            .unwrap_or_default();
        let target = Target {
            config,
            model_id: "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            headers: &headers,
            now_ms: 0,
        };
        let mut dropped = Vec::new();
        let out = super::body(&req, &target, None, &mut dropped).unwrap();
        (serde_json::from_slice(&out).unwrap(), dropped)
    }

    #[test]
    fn the_body_bedrock_takes() {
        let body = r#"{"model":"claude-fast","max_tokens":5,"stream":true,
            "messages":[{"role":"user","content":"hi"}],"system":[{"type":"text","text":"s"}],
            "metadata":{"user_id":"u"},"context_management":{"edits":[]},
            "output_config":{"effort":"low"},"service_tier":"auto","thinking":{"type":"enabled","budget_tokens":1024}}"#;
        let (v, dropped) = translated(
            body,
            Some("context-management-2025-06-27,claude-code-20250219"),
            &config(None),
        );
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(
            v["anthropic_beta"],
            serde_json::json!(["context-management-2025-06-27"])
        );
        assert!(v.get("model").is_none() && v.get("stream").is_none());
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(v["metadata"]["user_id"], "u");
        assert_eq!(v["context_management"]["edits"], serde_json::json!([]));
        assert_eq!(v["thinking"]["budget_tokens"], 1024);
        // Its beta was not sent: the field would be refused.
        assert!(v.get("output_config").is_none());
        assert!(v.get("service_tier").is_none());
        assert_eq!(
            dropped,
            [
                "beta:claude-code-20250219",
                "field:output_config",
                "field:service_tier"
            ]
        );
        // No betas at all: no list, and the beta-bound field goes too.
        let (v, dropped) = translated(body, None, &config(Some("[]")));
        assert!(v.get("anthropic_beta").is_none());
        assert!(v.get("context_management").is_none());
        assert!(dropped.contains(&"field:context_management".to_string()));
        // A configured list replaces the documented one.
        let (v, _) = translated(
            body,
            Some("claude-code-20250219"),
            &config(Some(r#"["claude-code-20250219"]"#)),
        );
        assert_eq!(
            v["anthropic_beta"],
            serde_json::json!(["claude-code-20250219"])
        );
    }

    fn chunk(inner: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        encode(
            &[
                (":message-type", "event"),
                (":event-type", "chunk"),
                (":content-type", "application/json"),
            ],
            format!(r#"{{"bytes":"{b64}","p":"abc"}}"#).as_bytes(),
        )
    }

    const EVENTS: &[&str] = &[
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"héllo"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":9,"outputTokenCount":2}}"#,
    ];

    fn expected_sse() -> String {
        EVENTS
            .iter()
            .map(|e| {
                let t: serde_json::Value = serde_json::from_str(e).unwrap();
                format!("event: {}\ndata: {e}\n\n", t["type"].as_str().unwrap())
            })
            .collect()
    }

    /// Feeds `stream` cut at `at` (every offset), then ends the body.
    fn run(stream: &[u8], at: usize) -> String {
        let mut t = InvokeResponse::new(true);
        let head = t.head(
            200,
            &[("content-type", "application/vnd.amazon.eventstream")],
        );
        assert!(head
            .set
            .contains(&("content-type", "text/event-stream".into())));
        let mut out = Vec::new();
        for piece in [&stream[..at], &stream[at..]] {
            out.extend_from_slice(&t.body(piece));
        }
        out.extend_from_slice(&t.end());
        String::from_utf8(out).unwrap()
    }

    /// Found by `fuzz/translate_stream`: a stream cut off after its `message_stop` got an
    /// error event after it.
    #[test]
    fn a_cut_off_after_the_end_adds_nothing() {
        let stream: Vec<u8> = EVENTS.iter().flat_map(|e| chunk(e)).collect();
        let mut t = InvokeResponse::new(true);
        t.head(200, &[]);
        let out = t.body(&stream).into_owned();
        assert_eq!(String::from_utf8(out).unwrap(), expected_sse());
        assert_eq!(
            String::from_utf8(t.cut_off("budget gone")).unwrap(),
            "",
            "an event after message_stop"
        );
    }

    /// Found by `fuzz/translate_stream`: Bedrock's chunk bytes went onto the `data:` line as
    /// they came, so a chunk that was not UTF-8 (serde skips unknown members unread) or held a
    /// newline between JSON tokens broke the client's event stream.
    #[test]
    fn a_chunk_is_one_utf8_data_line_or_an_error() {
        let bad = b"{\"type\":\"message_start\",\"message\":{\"u\xffsage\":1}}".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bad);
        let frame = encode(
            &[
                (":message-type", "event"),
                (":event-type", "chunk"),
                (":content-type", "application/json"),
            ],
            format!(r#"{{"bytes":"{b64}"}}"#).as_bytes(),
        );
        let out = run(&frame, frame.len());
        assert!(std::str::from_utf8(out.as_bytes()).is_ok());
        assert!(out.starts_with("event: error\n"), "{out}");
        let spaced = chunk("{\"type\":\"content_block_stop\",\n\"index\":0}\r\n");
        let out = run(&spaced, spaced.len());
        assert!(
            out.starts_with("event: content_block_stop\ndata: {\"type\":\"content_block_stop\", \"index\":0}  \n\n"),
            "{out:?}"
        );
    }

    #[test]
    fn a_stream_becomes_events_at_every_split() {
        let stream: Vec<u8> = EVENTS.iter().flat_map(|e| chunk(e)).collect();
        let want = expected_sse();
        for at in 0..=stream.len() {
            assert_eq!(run(&stream, at), want, "split at {at}");
        }
    }

    #[test]
    fn an_exception_frame_is_an_error_event() {
        let mut stream: Vec<u8> = EVENTS[..3].iter().flat_map(|e| chunk(e)).collect();
        stream.extend(encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "serviceUnavailableException"),
            ],
            br#"{"message":"Bedrock is busy"}"#,
        ));
        let want: String = expected_sse().split_inclusive("\n\n").take(3).collect::<String>()
            + "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Bedrock is busy\"}}\n\n";
        for at in (0..=stream.len()).step_by(7) {
            assert_eq!(run(&stream, at), want, "split at {at}");
        }
    }

    #[test]
    fn a_stream_cut_short_or_broken_ends_in_an_error() {
        let stream: Vec<u8> = EVENTS[..4].iter().flat_map(|e| chunk(e)).collect();
        let out = run(&stream, 10);
        assert!(out.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the model's stream ended before message_stop\"}}\n\n"
        ));
        let mut broken = chunk(EVENTS[0]);
        let last = broken.len() - 1;
        broken[last] ^= 1; // a bad CRC
        let out = run(&broken, 3);
        assert_eq!(out.matches("event: error").count(), 1, "{out}");
        assert!(out.contains("could not be read"), "{out}");
    }

    #[test]
    fn answers_pass_and_refusals_are_rewritten() {
        let mut t = InvokeResponse::new(false);
        assert!(t.head(200, &[("content-length", "2")]).is_empty());
        assert!(matches!(t.body(b"{}"), Cow::Borrowed(b"{}")));
        assert!(t.end().is_empty());
        for stream in [false, true] {
            let mut t = InvokeResponse::new(stream);
            let head = t.head(429, &[("x-amzn-errortype", "ThrottlingException")]);
            assert_eq!(head.status, None);
            assert!(head
                .set
                .contains(&("content-type", "application/json".into())));
            let mut out = t.body(br#"{"message":"slow "#).into_owned();
            out.extend_from_slice(&t.body(br#"down"}"#));
            out.extend_from_slice(&t.end());
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["error"]["type"], "rate_limit_error");
            assert_eq!(v["error"]["message"], "slow down");
        }
    }
}
