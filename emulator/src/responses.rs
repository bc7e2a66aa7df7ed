//! What the emulator answers: JSON bodies and EventStream frames shaped like Bedrock's, built
//! deterministically from the request body and its directives (sans-IO: no clock, no sockets;
//! latencies are passed in).

use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Value};

use crate::directives::{Directives, ReportedOutput, MAX_OUTPUT_TOKENS};
use crate::eventstream_encode::{event_frame, exception_frame, EncodeError};
use crate::families::Family;
use crate::guardrails::{GuardrailEcho, BLOCKED_MESSAGE};
use crate::messages::ToolCall;

/// Output tokens served when neither a directive nor the request's max tokens say otherwise.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 32;
/// Default number of content delta events in a stream is min(output tokens, this), at least 1.
pub const DEFAULT_MAX_EVENTS: u64 = 64;

/// The Bedrock runtime operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeWithResponseStream,
    /// The input tokens of a Converse or InvokeModel request, free of charge.
    CountTokens,
}

impl Operation {
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        Some(match segment {
            "converse" => Self::Converse,
            "converse-stream" => Self::ConverseStream,
            "invoke" => Self::Invoke,
            "invoke-with-response-stream" => Self::InvokeWithResponseStream,
            "count-tokens" => Self::CountTokens,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Converse => "converse",
            Self::ConverseStream => "converse-stream",
            Self::Invoke => "invoke",
            Self::InvokeWithResponseStream => "invoke-with-response-stream",
            Self::CountTokens => "count-tokens",
        }
    }

    pub fn is_stream(self) -> bool {
        matches!(self, Self::ConverseStream | Self::InvokeWithResponseStream)
    }

    /// Converse-family bodies (Bedrock's own schema) as opposed to Anthropic Messages bodies.
    pub fn is_converse(self) -> bool {
        matches!(self, Self::Converse | Self::ConverseStream)
    }
}

/// Tokens of one exchange, as served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Images generated (image models); absent from the ledger when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub images: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }
}

/// Everything about an answer that follows from the request alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub usage: Usage,
    /// Content delta events of a stream.
    pub events: u32,
    /// For streams: end with an exception after this many content deltas (at most `events`).
    pub fail_after: Option<u32>,
    pub stop_reason: String,
    /// How the final usage misreports its output count, if it does.
    pub reported_output: Option<ReportedOutput>,
    /// The request's guardrail, echoed in the answer (see `guardrails`).
    pub guardrail: Option<GuardrailEcho>,
    /// The tool the answer calls after its text (Anthropic and Converse answers).
    pub tool: Option<ToolCall>,
    /// Bytes of `"p"` padding in every stream frame (`[[emu:pad]]`); 0: Bedrock's short padding.
    pub pad: usize,
}

impl Plan {
    /// `json` is the parsed request body (if it parsed); `family` decides how an invoke body
    /// names its output limit and which stop reason the answer reports.
    pub fn new(
        op: Operation,
        family: Family,
        body: &[u8],
        json: Option<&Value>,
        d: &Directives,
    ) -> Self {
        let input = d.input.unwrap_or_else(|| (body.len() as u64).div_ceil(4));
        let requested_max = json.and_then(|j| {
            if op.is_converse() {
                j.get("inferenceConfig")
                    .and_then(|c| c.get("maxTokens"))
                    .and_then(Value::as_u64)
            } else {
                family.requested_max(j)
            }
        });
        let default_stop = if op.is_converse() {
            "end_turn"
        } else {
            family.stop_reason()
        };
        let output = d
            .output
            .or(requested_max)
            .unwrap_or(DEFAULT_OUTPUT_TOKENS)
            .min(MAX_OUTPUT_TOKENS);
        let events = match d.events {
            Some(n) => n.max(1),
            None => output.clamp(1, DEFAULT_MAX_EVENTS) as u32,
        };
        // Image models are billed per image, not per token.
        let usage = match family.images_requested(json) {
            Some(asked) if !op.is_converse() => Usage {
                images: d.images.unwrap_or(asked),
                ..Usage::default()
            },
            _ => Usage {
                input_tokens: input,
                output_tokens: output,
                cache_read_tokens: d.cache_read.unwrap_or(0),
                cache_write_tokens: d.cache_write.unwrap_or(0),
                images: 0,
            },
        };
        Plan {
            usage,
            events,
            fail_after: d.fail_after.map(|n| n.min(events)),
            stop_reason: d
                .stop_reason
                .clone()
                .unwrap_or_else(|| default_stop.to_string()),
            reported_output: d.reported_output,
            guardrail: None,
            tool: None,
            pad: d.pad.map_or(0, |n| n as usize),
        }
    }

    /// Applies the request's guardrail: one that intervenes answers in the model's place (no
    /// tokens, its own message, `guardrail_intervened` on Converse); its units are assessed.
    pub fn with_guardrail(mut self, guardrail: Option<GuardrailEcho>, converse: bool) -> Self {
        let Some(mut g) = guardrail else {
            return self;
        };
        if g.intervened {
            self.usage.input_tokens = 0;
            self.usage.output_tokens = 0;
            self.usage.cache_read_tokens = 0;
            self.usage.cache_write_tokens = 0;
            self.events = 1;
            self.fail_after = None;
            if converse {
                self.stop_reason = "guardrail_intervened".into();
            }
        }
        g.assess_output(self.full_text().len());
        self.guardrail = Some(g);
        self
    }

    fn blocked(&self) -> bool {
        self.guardrail.as_ref().is_some_and(|g| g.intervened)
    }

    /// The answer ends by calling `tool` (stop reason `tool_use` unless a directive says
    /// otherwise).
    pub fn call(&mut self, tool: Option<ToolCall>, d: &Directives) {
        if tool.is_some() && d.stop_reason.is_none() {
            self.stop_reason = "tool_use".into();
        }
        self.tool = tool;
    }

    /// Applies `reported-output` to the output count `key` of a final usage object.
    pub fn misreport(&self, usage: &mut Value, key: &str) {
        match (self.reported_output, usage.as_object_mut()) {
            (Some(ReportedOutput::Omitted), Some(o)) => {
                o.remove(key);
            }
            (Some(ReportedOutput::Negative), Some(o)) => {
                o.insert(key.to_string(), json!(-1));
            }
            _ => {}
        }
    }

    /// The whole answer text: one word per output token, `w0 w1 w2 …`.
    pub fn full_text(&self) -> String {
        if self.blocked() {
            return BLOCKED_MESSAGE.to_string();
        }
        words(0, self.usage.output_tokens)
    }

    /// The text of each content delta: the output tokens spread as evenly as possible over
    /// `events` deltas (the first `output % events` get one more). Concatenated, they are
    /// exactly [`Plan::full_text`]. A delta may carry 0 tokens (empty text) when `events`
    /// exceeds the output tokens.
    pub fn deltas(&self) -> Vec<(String, u64)> {
        if self.blocked() {
            return vec![(BLOCKED_MESSAGE.to_string(), 0)];
        }
        let n = u64::from(self.events.max(1));
        let out = self.usage.output_tokens;
        let (base, extra) = (out / n, out % n);
        let mut next = 0u64;
        (0..n)
            .map(|i| {
                let tokens = base + u64::from(i < extra);
                let text = words(next, tokens);
                next += tokens;
                (text, tokens)
            })
            .collect()
    }
}

/// Words `first..first+count`, each preceded by a space except word 0.
fn words(first: u64, count: u64) -> String {
    let mut s = String::with_capacity(count as usize * 6);
    for i in first..first.saturating_add(count) {
        if i > 0 {
            s.push(' ');
        }
        s.push('w');
        s.push_str(&i.to_string());
    }
    s
}

/// Bedrock's `"p"` padding field: a prefix of the alphabet whose length varies per event.
pub fn padding(seq: u64, index: u64) -> &'static str {
    const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = 1
        + (seq.wrapping_mul(7).wrapping_add(index.wrapping_mul(13)) % (ALPHABET.len() as u64 - 1))
            as usize;
    &ALPHABET[..len]
}

/// A deterministic request ID in UUID form.
pub fn request_id(seq: u64) -> String {
    format!("00000000-0000-4000-8000-{:012x}", seq & 0xffff_ffff_ffff)
}

/// A deterministic Anthropic message ID.
pub fn message_id(seq: u64) -> String {
    format!("msg_bdrk_emu{seq:012}")
}

/// A restJson1 error body.
pub fn error_body(message: &str) -> Vec<u8> {
    json!({ "message": message }).to_string().into_bytes()
}

fn converse_usage(u: &Usage) -> Value {
    let mut v = json!({
        "inputTokens": u.input_tokens,
        "outputTokens": u.output_tokens,
        "totalTokens": u.total(),
    });
    if u.cache_read_tokens > 0 {
        v["cacheReadInputTokens"] = json!(u.cache_read_tokens);
    }
    if u.cache_write_tokens > 0 {
        v["cacheWriteInputTokens"] = json!(u.cache_write_tokens);
    }
    v
}

/// The Converse answer.
pub fn converse_body(plan: &Plan, latency_ms: u64) -> Vec<u8> {
    let mut content = vec![json!({ "text": plan.full_text() })];
    if let Some(t) = &plan.tool {
        content.push(
            json!({ "toolUse": { "toolUseId": t.id, "name": t.name, "input": tool_input(t) } }),
        );
    }
    let mut v = json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": plan.stop_reason,
        "usage": reported(plan, converse_usage(&plan.usage), "outputTokens"),
        "metrics": { "latencyMs": latency_ms },
    });
    if let Some(g) = plan.guardrail.as_ref().filter(|g| g.trace) {
        v["trace"] = g.converse_trace();
    }
    v.to_string().into_bytes()
}

fn tool_input(t: &ToolCall) -> Value {
    serde_json::from_str(&t.input).unwrap_or_else(|_| json!({}))
}

fn reported(plan: &Plan, mut usage: Value, key: &str) -> Value {
    plan.misreport(&mut usage, key);
    usage
}

fn anthropic_usage(u: &Usage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    })
}

/// The InvokeModel answer, in the model family's format.
pub fn invoke_body(family: Family, plan: &Plan, model_id: &str, message_id: &str) -> Vec<u8> {
    let mut v = if family != Family::Anthropic {
        family.body(plan, model_id, message_id)
    } else {
        anthropic_body(plan, model_id, message_id)
    };
    if let Some(g) = &plan.guardrail {
        g.add_to_invoke(&mut v);
    }
    v.to_string().into_bytes()
}

fn anthropic_body(plan: &Plan, model_id: &str, message_id: &str) -> Value {
    let mut content = vec![json!({ "type": "text", "text": plan.full_text() })];
    if let Some(t) = &plan.tool {
        content.push(
            json!({ "type": "tool_use", "id": t.id, "name": t.name, "input": tool_input(t) }),
        );
    }
    json!({
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": content,
        "stop_reason": plan.stop_reason,
        "stop_sequence": null,
        "usage": reported(plan, anthropic_usage(&plan.usage, plan.usage.output_tokens), "output_tokens"),
    })
}

/// The `X-Amzn-Bedrock-*` headers of an InvokeModel answer.
pub fn invoke_headers(plan: &Plan, latency_ms: u64) -> Vec<(&'static str, String)> {
    let usage = &plan.usage;
    let mut h = vec![
        (
            "x-amzn-bedrock-input-token-count",
            usage.input_tokens.to_string(),
        ),
        ("x-amzn-bedrock-invocation-latency", latency_ms.to_string()),
    ];
    match plan.reported_output {
        None => h.push((
            "x-amzn-bedrock-output-token-count",
            usage.output_tokens.to_string(),
        )),
        Some(ReportedOutput::Negative) => {
            h.push(("x-amzn-bedrock-output-token-count", "-1".into()))
        }
        Some(ReportedOutput::Omitted) => {}
    }
    if usage.cache_read_tokens > 0 {
        h.push((
            "x-amzn-bedrock-cache-read-input-token-count",
            usage.cache_read_tokens.to_string(),
        ));
    }
    if usage.cache_write_tokens > 0 {
        h.push((
            "x-amzn-bedrock-cache-write-input-token-count",
            usage.cache_write_tokens.to_string(),
        ));
    }
    h
}

/// One event of a stream, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// `messageStart` / `message_start`.
    MessageStart,
    /// Anthropic `content_block_start` (Converse sends none for text).
    BlockStart,
    /// Content delta number `index`, carrying `tokens` words after `tokens_before`.
    Delta {
        text: String,
        tokens: u64,
        tokens_before: u64,
        index: u32,
    },
    /// `contentBlockStop` / `content_block_stop`.
    BlockStop,
    /// The tool call's block opens (block 1, after the text).
    ToolStart,
    /// The tool call's input, as one JSON delta.
    ToolInput,
    /// The tool call's block closes.
    ToolStop,
    /// Anthropic `message_delta` (stop reason and cumulative output tokens).
    MessageDelta,
    /// `messageStop` / `message_stop` (with the invocation metrics for Anthropic).
    MessageStop,
    /// Converse `metadata` (usage and metrics).
    Metadata,
    /// A `modelStreamErrorException` frame; the stream ends after it.
    Exception { message: String },
}

/// The events of a stream answer, in order, ending with an exception if `fail-after` is set.
/// An invoke stream has its model family's events around the content deltas.
pub fn stream_events(op: Operation, family: Family, plan: &Plan) -> Vec<StreamEvent> {
    let (before, after) = if op.is_converse() {
        (
            vec![StreamEvent::MessageStart],
            vec![
                StreamEvent::BlockStop,
                StreamEvent::MessageStop,
                StreamEvent::Metadata,
            ],
        )
    } else {
        family.stream_frame()
    };
    let mut events = before;
    let mut tokens_before = 0;
    for (i, (text, tokens)) in plan.deltas().into_iter().enumerate() {
        if plan.fail_after == Some(i as u32) {
            break;
        }
        events.push(StreamEvent::Delta {
            text,
            tokens,
            tokens_before,
            index: i as u32,
        });
        tokens_before += tokens;
    }
    if let Some(n) = plan.fail_after {
        events.push(StreamEvent::Exception {
            message: format!("The model stream was interrupted after {n} content events (emulator [[emu:fail-after={n}]])."),
        });
        return events;
    }
    let tool_events = (plan.tool.is_some() && (op.is_converse() || family == Family::Anthropic))
        .then_some([
            StreamEvent::ToolStart,
            StreamEvent::ToolInput,
            StreamEvent::ToolStop,
        ]);
    for (i, e) in after.into_iter().enumerate() {
        let after_text = e == StreamEvent::BlockStop;
        events.push(e);
        if after_text && i == 0 {
            events.extend(tool_events.clone().into_iter().flatten());
        }
    }
    events
}

/// What an encoded event needs besides the plan.
#[derive(Clone, Copy, Debug)]
pub struct StreamContext<'a> {
    pub op: Operation,
    /// The model's family: the shape of an invoke stream's model events.
    pub family: Family,
    pub plan: &'a Plan,
    pub model_id: &'a str,
    pub message_id: &'a str,
    pub seq: u64,
    /// Milliseconds from the request's arrival to now.
    pub latency_ms: u64,
    /// Milliseconds from the request's arrival to the first event.
    pub first_byte_latency_ms: u64,
}

/// Encodes event number `index` of a stream as an EventStream frame.
pub fn encode_event(
    ctx: &StreamContext<'_>,
    index: u64,
    event: &StreamEvent,
) -> Result<Vec<u8>, EncodeError> {
    let big;
    let p = if ctx.plan.pad > 0 {
        big = "p".repeat(ctx.plan.pad);
        big.as_str()
    } else {
        padding(ctx.seq, index)
    };
    if let StreamEvent::Exception { message } = event {
        let payload = json!({ "message": message }).to_string();
        return exception_frame("modelStreamErrorException", payload.as_bytes());
    }
    if ctx.op.is_converse() {
        let (event_type, payload) = match event {
            StreamEvent::MessageStart | StreamEvent::BlockStart => {
                ("messageStart", json!({ "role": "assistant", "p": p }))
            }
            StreamEvent::Delta { text, .. } => (
                "contentBlockDelta",
                json!({ "contentBlockIndex": 0, "delta": { "text": text }, "p": p }),
            ),
            StreamEvent::BlockStop => (
                "contentBlockStop",
                json!({ "contentBlockIndex": 0, "p": p }),
            ),
            StreamEvent::ToolStart => {
                let t = ctx.plan.tool.as_ref();
                (
                    "contentBlockStart",
                    json!({ "contentBlockIndex": 1, "p": p, "start": { "toolUse": {
                        "toolUseId": t.map(|t| t.id.as_str()), "name": t.map(|t| t.name.as_str()) } } }),
                )
            }
            StreamEvent::ToolInput => (
                "contentBlockDelta",
                json!({ "contentBlockIndex": 1, "p": p, "delta": { "toolUse": {
                    "input": ctx.plan.tool.as_ref().map_or("{}", |t| t.input.as_str()) } } }),
            ),
            StreamEvent::ToolStop => (
                "contentBlockStop",
                json!({ "contentBlockIndex": 1, "p": p }),
            ),
            StreamEvent::MessageStop | StreamEvent::MessageDelta => (
                "messageStop",
                json!({ "stopReason": ctx.plan.stop_reason, "p": p }),
            ),
            StreamEvent::Metadata | StreamEvent::Exception { .. } => {
                let mut v = json!({
                    "usage": reported(ctx.plan, converse_usage(&ctx.plan.usage), "outputTokens"),
                    "metrics": { "latencyMs": ctx.latency_ms },
                    "p": p,
                });
                if let Some(g) = ctx.plan.guardrail.as_ref().filter(|g| g.trace) {
                    v["trace"] = g.converse_trace();
                }
                ("metadata", v)
            }
        };
        return event_frame(event_type, payload.to_string().as_bytes());
    }
    let u = &ctx.plan.usage;
    let metrics = reported(
        ctx.plan,
        json!({
            "inputTokenCount": u.input_tokens,
            "outputTokenCount": u.output_tokens,
            "invocationLatency": ctx.latency_ms,
            "firstByteLatency": ctx.first_byte_latency_ms,
            "cacheReadInputTokenCount": u.cache_read_tokens,
            "cacheWriteInputTokenCount": u.cache_write_tokens,
        }),
        "outputTokenCount",
    );
    let last = if ctx.family != Family::Anthropic {
        ctx.family.is_last_event(event)
    } else {
        matches!(event, StreamEvent::MessageStop)
    };
    let mut inner = if ctx.family != Family::Anthropic {
        let mut inner = ctx
            .family
            .stream_event(event, ctx.plan, ctx.model_id, ctx.message_id);
        if last {
            inner["amazon-bedrock-invocationMetrics"] = metrics;
        }
        inner
    } else {
        anthropic_event(ctx, event, metrics)
    };
    if let Some(g) = ctx.plan.guardrail.as_ref().filter(|_| last) {
        g.add_to_invoke(&mut inner);
    }
    let bytes = base64::engine::general_purpose::STANDARD.encode(inner.to_string());
    let payload = json!({ "bytes": bytes, "p": p });
    event_frame("chunk", payload.to_string().as_bytes())
}

/// An Anthropic Messages stream event.
fn anthropic_event(ctx: &StreamContext<'_>, event: &StreamEvent, metrics: Value) -> Value {
    let u = &ctx.plan.usage;
    match event {
        StreamEvent::MessageStart => json!({
            "type": "message_start",
            "message": {
                "id": ctx.message_id,
                "type": "message",
                "role": "assistant",
                "model": ctx.model_id,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": anthropic_usage(u, 1),
            },
        }),
        StreamEvent::BlockStart => json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": { "type": "text", "text": "" },
        }),
        StreamEvent::Delta { text, .. } => json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": { "type": "text_delta", "text": text },
        }),
        StreamEvent::BlockStop => json!({ "type": "content_block_stop", "index": 0 }),
        StreamEvent::ToolStart => {
            let t = ctx.plan.tool.as_ref();
            json!({
                "type": "content_block_start",
                "index": 1,
                "content_block": { "type": "tool_use", "id": t.map(|t| t.id.as_str()),
                                   "name": t.map(|t| t.name.as_str()), "input": {} },
            })
        }
        StreamEvent::ToolInput => json!({
            "type": "content_block_delta",
            "index": 1,
            "delta": { "type": "input_json_delta",
                       "partial_json": ctx.plan.tool.as_ref().map_or("{}", |t| t.input.as_str()) },
        }),
        StreamEvent::ToolStop => json!({ "type": "content_block_stop", "index": 1 }),
        StreamEvent::MessageDelta => json!({
            "type": "message_delta",
            "delta": { "stop_reason": ctx.plan.stop_reason, "stop_sequence": null },
            "usage": reported(ctx.plan, json!({ "output_tokens": u.output_tokens }), "output_tokens"),
        }),
        StreamEvent::MessageStop | StreamEvent::Metadata | StreamEvent::Exception { .. } => json!({
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": metrics,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream_encode::decode_frame;

    fn plan(op: Operation, body: &str) -> Plan {
        let json: Option<Value> = serde_json::from_str(body).ok();
        Plan::new(
            op,
            Family::Anthropic,
            body.as_bytes(),
            json.as_ref(),
            &Directives::parse(body.as_bytes()),
        )
    }

    #[test]
    fn usage_rules() {
        let body = r#"{"messages":[],"inferenceConfig":{"maxTokens":7}}"#;
        let p = plan(Operation::Converse, body);
        assert_eq!(p.usage.input_tokens, (body.len() as u64).div_ceil(4));
        assert_eq!(p.usage.output_tokens, 7);
        assert_eq!(p.events, 7);
        // Anthropic bodies use max_tokens; converse ignores it.
        assert_eq!(
            plan(Operation::Invoke, r#"{"max_tokens":9}"#)
                .usage
                .output_tokens,
            9
        );
        assert_eq!(
            plan(Operation::Converse, r#"{"max_tokens":9}"#)
                .usage
                .output_tokens,
            32
        );
        assert_eq!(plan(Operation::Invoke, "not json").usage.output_tokens, 32);
        let p = plan(
            Operation::Invoke,
            r#"{"max_tokens":9,"x":"[[emu:output=3]][[emu:input=5]][[emu:cache-read=2]]"}"#,
        );
        assert_eq!(
            p.usage,
            Usage {
                input_tokens: 5,
                output_tokens: 3,
                cache_read_tokens: 2,
                cache_write_tokens: 0,
                images: 0,
            }
        );
        assert_eq!(
            plan(Operation::Invoke, r#"{"max_tokens":9999999}"#)
                .usage
                .output_tokens,
            100_000
        );
        assert_eq!(
            plan(Operation::ConverseStream, r#"{"x":"[[emu:output=1000]]"}"#).events,
            64
        );
        assert_eq!(
            plan(Operation::ConverseStream, r#"{"x":"[[emu:output=0]]"}"#).events,
            1
        );
    }

    #[test]
    fn deltas_concatenate_to_the_full_text() {
        let p = plan(
            Operation::ConverseStream,
            r#"{"x":"[[emu:output=10]] [[emu:events=3]]"}"#,
        );
        let deltas = p.deltas();
        assert_eq!(
            deltas.iter().map(|d| d.1).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        assert_eq!(
            deltas.iter().map(|d| d.0.as_str()).collect::<String>(),
            p.full_text()
        );
        assert_eq!(p.full_text(), "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9");
        let p = plan(
            Operation::ConverseStream,
            r#"{"x":"[[emu:output=2]] [[emu:events=4]]"}"#,
        );
        assert_eq!(
            p.deltas().iter().map(|d| d.1).collect::<Vec<_>>(),
            vec![1, 1, 0, 0]
        );
    }

    #[test]
    fn converse_body_shape() {
        let p = plan(
            Operation::Converse,
            r#"{"x":"[[emu:output=2]][[emu:input=3]]"}"#,
        );
        let v: Value = serde_json::from_slice(&converse_body(&p, 12)).unwrap();
        assert_eq!(v["output"]["message"]["content"][0]["text"], "w0 w1");
        assert_eq!(
            v["usage"],
            json!({"inputTokens":3,"outputTokens":2,"totalTokens":5})
        );
        assert_eq!(v["stopReason"], "end_turn");
        assert_eq!(v["metrics"]["latencyMs"], 12);
        let p = plan(
            Operation::Converse,
            r#"{"x":"[[emu:output=2]][[emu:input=3]][[emu:cache-write=5]]"}"#,
        );
        let v: Value = serde_json::from_slice(&converse_body(&p, 12)).unwrap();
        assert_eq!(
            v["usage"],
            json!({"inputTokens":3,"outputTokens":2,"totalTokens":10,"cacheWriteInputTokens":5})
        );
    }

    #[test]
    fn stream_event_lists() {
        let p = plan(
            Operation::ConverseStream,
            r#"{"x":"[[emu:output=4]][[emu:events=2]]"}"#,
        );
        let e = stream_events(Operation::ConverseStream, Family::Anthropic, &p);
        assert_eq!(e.len(), 6);
        assert_eq!(e[0], StreamEvent::MessageStart);
        assert!(matches!(e[5], StreamEvent::Metadata));
        let e = stream_events(Operation::InvokeWithResponseStream, Family::Anthropic, &p);
        assert_eq!(e.len(), 7);
        let p = plan(
            Operation::ConverseStream,
            r#"{"x":"[[emu:output=4]][[emu:events=4]][[emu:fail-after=1]]"}"#,
        );
        let e = stream_events(Operation::ConverseStream, Family::Anthropic, &p);
        assert_eq!(e.len(), 3);
        assert!(matches!(e[2], StreamEvent::Exception { .. }));
        let p = plan(
            Operation::ConverseStream,
            r#"{"x":"[[emu:output=4]][[emu:fail-after=99]]"}"#,
        );
        let e = stream_events(Operation::ConverseStream, Family::Anthropic, &p);
        assert_eq!(
            e.len(),
            6,
            "fail-after beyond the deltas fails after the last one"
        );
    }

    #[test]
    fn invoke_stream_chunks_carry_base64_anthropic_events() {
        let p = plan(
            Operation::InvokeWithResponseStream,
            r#"{"x":"[[emu:output=3]][[emu:input=2]]"}"#,
        );
        let ctx = StreamContext {
            op: Operation::InvokeWithResponseStream,
            family: Family::Anthropic,
            plan: &p,
            model_id: "m",
            message_id: "msg_1",
            seq: 1,
            latency_ms: 5,
            first_byte_latency_ms: 1,
        };
        let events = stream_events(ctx.op, ctx.family, &p);
        let mut inner = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let (frame, _) = decode_frame(&encode_event(&ctx, i as u64, e).unwrap()).unwrap();
            assert_eq!(frame.header(":event-type"), Some("chunk"));
            let outer: Value = serde_json::from_slice(&frame.payload).unwrap();
            assert!(outer["p"].as_str().is_some());
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(outer["bytes"].as_str().unwrap())
                .unwrap();
            inner.push(serde_json::from_slice::<Value>(&bytes).unwrap());
        }
        let types: Vec<&str> = inner.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(inner[0]["message"]["usage"]["input_tokens"], 2);
        assert_eq!(inner[0]["message"]["usage"]["output_tokens"], 1);
        assert_eq!(inner[6]["usage"]["output_tokens"], 3);
        assert_eq!(
            inner[7]["amazon-bedrock-invocationMetrics"]["outputTokenCount"],
            3
        );
        assert_eq!(
            inner[7]["amazon-bedrock-invocationMetrics"]["firstByteLatency"],
            1
        );
    }

    #[test]
    fn reported_output_misreports_the_final_usage_only() {
        let p = plan(
            Operation::Converse,
            r#"{"x":"[[emu:output=2]][[emu:input=3]][[emu:reported-output=-1]]"}"#,
        );
        let v: Value = serde_json::from_slice(&converse_body(&p, 1)).unwrap();
        assert_eq!(v["usage"]["outputTokens"], -1);
        assert_eq!(
            p.usage.output_tokens, 2,
            "what is served (and the ledger) is unchanged"
        );
        assert_eq!(v["output"]["message"]["content"][0]["text"], "w0 w1");
        let p = plan(
            Operation::Invoke,
            r#"{"x":"[[emu:output=2]][[emu:reported-output=none]]"}"#,
        );
        let v: Value =
            serde_json::from_slice(&invoke_body(Family::Anthropic, &p, "m", "id")).unwrap();
        assert!(v["usage"].get("output_tokens").is_none());
        let headers = invoke_headers(&p, 1);
        assert!(headers
            .iter()
            .all(|(n, _)| *n != "x-amzn-bedrock-output-token-count"));
    }

    #[test]
    fn padding_varies() {
        let lens: std::collections::BTreeSet<usize> =
            (0..20).map(|i| padding(3, i).len()).collect();
        assert!(lens.len() > 5);
        assert!(lens.iter().all(|&l| (1..=62).contains(&l)));
    }
}
