//! Token usage read off Bedrock responses.
//!
//! The meter only observes copies of the response bytes; it never delays or alters them, and it
//! never fails: anything it cannot make sense of is recorded in [`Reading::problem`].
//!
//! - Converse and Invoke bodies are JSON. Up to [`MAX_JSON_BODY`] bytes are copied and parsed
//!   at [`UsageMeter::finish`]; if the body has no usage (or is too large or malformed) the
//!   `x-amzn-bedrock-*-token-count` response headers are used.
//! - ConverseStream and InvokeWithResponseStream bodies are AWS EventStream. Events are decoded
//!   as they arrive, so [`UsageMeter::reading`] is current mid-stream; only the payloads that
//!   carry usage or generated text are parsed.

use core::fmt;
use core::marker::PhantomData;
use std::borrow::Cow;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::eventstream::{Decoder, Message};
use crate::{Operation, Usage};

/// Largest non-stream body copied for parsing; past it the headers are the only source.
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// Scratch capacity kept for base64-decoded chunks between events.
const RETAINED_SCRATCH: usize = 256 * 1024;

/// What the meter knows about a response so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Best knowledge so far.
    pub usage: Usage,
    /// The response's own final usage was seen: a JSON body's usage (or, failing that, the
    /// token-count headers), ConverseStream `metadata`, or InvokeWithResponseStream
    /// `amazon-bedrock-invocationMetrics` / Anthropic `message_delta` usage followed by
    /// `message_stop`.
    pub complete: bool,
    /// The first EventStream `:exception-type` (or `:error-code`), an Anthropic stream `error`
    /// event's type, or the `x-amzn-errortype` response header's type.
    pub exception: Option<String>,
    /// UTF-8 bytes of generated text (text, reasoning, tool-input JSON) seen in stream deltas.
    pub output_text_bytes: u64,
    /// EventStream messages seen, exceptions included.
    pub events: u64,
    /// The first thing that went wrong: bad frames, CRC errors, malformed JSON, body over cap.
    pub problem: Option<String>,
}

impl Reading {
    fn note_problem(&mut self, problem: impl FnOnce() -> String) {
        if self.problem.is_none() {
            self.problem = Some(problem());
        }
    }

    fn note_exception(&mut self, exception: &str) {
        if self.exception.is_none() {
            self.exception = Some(exception.to_owned());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Buffer (capped) and parse at the end.
    Json,
    /// Decode EventStream as it arrives.
    Stream,
}

impl Mode {
    /// The operation and the status decide, never the response's content type: a non-stream
    /// answer is JSON (whatever it claims, it is read as such, and its headers are the
    /// fallback); a stream operation's 2xx answer is EventStream; its refusal, sent before
    /// any event, is Bedrock's JSON error. `status` is `None` when no head was seen.
    fn of(op: Operation, status: Option<u16>) -> Self {
        let refused = status.is_some_and(|s| !(200..300).contains(&s));
        if op.is_stream() && !refused {
            Self::Stream
        } else {
            Self::Json
        }
    }
}

/// The `x-amzn-bedrock-*-token-count` response headers (InvokeModel).
#[derive(Clone, Copy, Debug, Default)]
struct HeaderCounts {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    /// Some count header did not parse (negative, not a number).
    unparseable: bool,
}

impl HeaderCounts {
    /// What the headers say, and whether that is the response's whole usage: an input count,
    /// and an output count unless none is sent (embeddings generate none); nothing unparseable.
    fn usage(&self) -> Option<(Usage, bool)> {
        if self.input.is_none()
            && self.output.is_none()
            && self.cache_read.is_none()
            && self.cache_write.is_none()
        {
            return None;
        }
        let usage = Usage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            cache_read_tokens: self.cache_read.unwrap_or(0),
            cache_write_tokens: self.cache_write.unwrap_or(0),
            images: 0,
        };
        Some((usage, self.input.is_some() && !self.unparseable))
    }
}

/// Extracts token usage from one response. See the module docs.
#[derive(Debug)]
pub struct UsageMeter {
    op: Operation,
    /// Fixed by the content-type header, or by the operation at the first body byte.
    mode: Option<Mode>,
    headers: HeaderCounts,
    reading: Reading,
    body: Vec<u8>,
    body_over_cap: bool,
    decoder: Decoder,
    stream: StreamState,
    finished: bool,
}

impl UsageMeter {
    pub fn new(op: Operation) -> Self {
        Self {
            op,
            mode: None,
            headers: HeaderCounts::default(),
            reading: Reading::default(),
            body: Vec::new(),
            body_over_cap: false,
            decoder: Decoder::new(),
            stream: StreamState::new(op),
            finished: false,
        }
    }

    /// The response's status and headers: `x-amzn-errortype` and InvokeModel's
    /// `x-amzn-bedrock-{input,output,cache-read-input,cache-write-input}-token-count` (names
    /// case-insensitive). The token counts are used for non-stream responses only, when the
    /// body has ended (see [`UsageMeter::finish`]).
    pub fn on_response_headers<'a>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let op = self.op;
        self.mode.get_or_insert_with(|| Mode::of(op, Some(status)));
        for (name, value) in headers {
            let slot = if name.eq_ignore_ascii_case("x-amzn-errortype") {
                // "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                let kind = value.split(':').next().unwrap_or("").trim();
                if !kind.is_empty() {
                    self.reading.note_exception(kind);
                }
                continue;
            } else if name.eq_ignore_ascii_case("x-amzn-bedrock-input-token-count") {
                &mut self.headers.input
            } else if name.eq_ignore_ascii_case("x-amzn-bedrock-output-token-count") {
                &mut self.headers.output
            } else if name.eq_ignore_ascii_case("x-amzn-bedrock-cache-read-input-token-count") {
                &mut self.headers.cache_read
            } else if name.eq_ignore_ascii_case("x-amzn-bedrock-cache-write-input-token-count") {
                &mut self.headers.cache_write
            } else {
                continue;
            };
            match value.trim().parse::<u64>() {
                Ok(n) => *slot = Some(n),
                Err(_) => {
                    self.headers.unparseable = true;
                    self.reading.note_problem(|| {
                        format!("unparseable {} header", name.to_ascii_lowercase())
                    });
                }
            }
        }
    }

    /// A copy of the next body chunk.
    pub fn on_body(&mut self, chunk: &[u8]) {
        self.on_body_until(chunk, |_| false);
    }

    /// Like [`UsageMeter::on_body`], checking `stop` after each EventStream message. At the
    /// first message after which it holds, metering stops (later messages are not counted:
    /// they will not be delivered) and the offset just past that message in `chunk` is
    /// returned — a clean frame boundary to end the stream at.
    pub fn on_body_until(
        &mut self,
        chunk: &[u8],
        mut stop: impl FnMut(&Reading) -> bool,
    ) -> Option<usize> {
        if self.finished || chunk.is_empty() {
            return None;
        }
        let op = self.op;
        match *self.mode.get_or_insert_with(|| Mode::of(op, None)) {
            Mode::Json => {
                if self.body_over_cap {
                    return None;
                }
                if self.body.len().saturating_add(chunk.len()) > MAX_JSON_BODY {
                    self.body_over_cap = true;
                    self.body = Vec::new();
                    self.reading.note_problem(|| {
                        format!("body over the {MAX_JSON_BODY}-byte cap; usage from headers only")
                    });
                    return None;
                }
                self.body.extend_from_slice(chunk);
                None
            }
            Mode::Stream => {
                if self.decoder.error().is_some() {
                    return None;
                }
                let Self {
                    decoder,
                    stream,
                    reading,
                    ..
                } = self;
                let mut stopped_at = None;
                let pushed = decoder.push_with_ends(chunk, |m, end| {
                    if stopped_at.is_none() {
                        stream.on_message(m, reading);
                        if stop(reading) {
                            stopped_at = Some(end);
                        }
                    }
                });
                if let Err(err) = pushed {
                    reading.note_problem(|| format!("eventstream: {err}"));
                }
                if stopped_at.is_some() {
                    // Nothing after this message will reach the client.
                    self.finished = true;
                }
                stopped_at
            }
        }
    }

    /// A streamed body holds the start of an EventStream message it has not finished: if the
    /// body ends now, it ends inside a message (a cut stream, not a whole one).
    pub fn inside_a_message(&self) -> bool {
        self.mode == Some(Mode::Stream) && self.decoder.buffered() > 0
    }

    /// What is known so far; callable at any time.
    #[must_use]
    pub fn reading(&self) -> Reading {
        self.reading.clone()
    }

    /// The body has ended: parses a buffered JSON body, flags a stream cut inside a message.
    /// Later calls return the same reading; later body chunks are ignored.
    pub fn finish(&mut self) -> Reading {
        if !self.finished {
            self.finished = true;
            self.settle();
        }
        self.reading.clone()
    }

    fn settle(&mut self) {
        let op = self.op;
        match self.mode.unwrap_or_else(|| Mode::of(op, None)) {
            Mode::Stream => {
                let buffered = self.decoder.buffered();
                if buffered > 0 {
                    self.reading.note_problem(|| {
                        format!(
                            "stream ended inside an eventstream message ({buffered} bytes held)"
                        )
                    });
                }
            }
            Mode::Json => {
                let body = std::mem::take(&mut self.body);
                let from_body = if body.is_empty() {
                    None
                } else {
                    match serde_json::from_slice::<JsonBody>(&body) {
                        Ok(parsed) => parsed.usage(),
                        Err(err) => {
                            self.reading
                                .note_problem(|| format!("invalid JSON body: {err}"));
                            None
                        }
                    }
                };
                let from_headers = self.headers.usage();
                // The body's own usage, else the headers'; failing both, what either said.
                let complete = [from_body, from_headers]
                    .into_iter()
                    .flatten()
                    .find(|&(_, complete)| complete);
                if let Some((usage, _)) = complete {
                    self.reading.usage = usage;
                    self.reading.complete = true;
                } else {
                    for (usage, _) in [from_body, from_headers].into_iter().flatten() {
                        raise(&mut self.reading.usage, &usage);
                    }
                    if from_body.is_some() || from_headers.is_some() {
                        self.reading.note_problem(|| {
                            "usage without valid input and output token counts".to_string()
                        });
                    }
                }
            }
        }
    }
}

/// Per-event state of a streamed response.
#[derive(Debug)]
struct StreamState {
    op: Operation,
    /// Base64-decoded `chunk` bytes, reused between events.
    scratch: Vec<u8>,
    /// `amazon-bedrock-invocationMetrics` seen: usage is final, later model usage is ignored.
    metrics_seen: bool,
    /// Anthropic `message_delta` usage seen; `message_stop` after it completes the reading.
    delta_usage_seen: bool,
    /// Some event reported the input count.
    input_reported: bool,
}

impl StreamState {
    fn new(op: Operation) -> Self {
        Self {
            op,
            scratch: Vec::new(),
            metrics_seen: false,
            delta_usage_seen: false,
            input_reported: false,
        }
    }

    fn on_message(&mut self, m: Message<'_>, r: &mut Reading) {
        r.events = r.events.saturating_add(1);
        let index = r.events;
        match m.message_type_bytes() {
            Some(b"exception") => {
                r.note_exception(m.exception_type().unwrap_or("exception"));
                return;
            }
            Some(b"error") => {
                r.note_exception(m.error_code().unwrap_or("error"));
                return;
            }
            _ => {}
        }
        let Some(event) = m.event_type_bytes() else {
            return;
        };
        match (self.op, event) {
            (Operation::ConverseStream, b"contentBlockDelta") => {
                match serde_json::from_slice::<DeltaEvent>(m.payload) {
                    Ok(e) => {
                        r.output_text_bytes = r.output_text_bytes.saturating_add(e.delta.bytes())
                    }
                    Err(err) => r.note_problem(|| bad_json("contentBlockDelta", index, &err)),
                }
            }
            (Operation::ConverseStream, b"metadata") => {
                match serde_json::from_slice::<MetadataEvent>(m.payload) {
                    Ok(e) => {
                        if let Some(usage) = e.usage.filter(UsageFields::any) {
                            usage.apply(&mut r.usage);
                            if usage.is_whole() {
                                r.complete = true;
                            } else {
                                r.note_problem(|| incomplete_usage("metadata", index));
                            }
                        }
                    }
                    Err(err) => r.note_problem(|| bad_json("metadata", index, &err)),
                }
            }
            (Operation::InvokeWithResponseStream, b"chunk") => self.on_chunk(m.payload, index, r),
            _ => {}
        }
    }

    /// An InvokeWithResponseStream `chunk`: `{"bytes":"<base64 model event>","p":"…"}`.
    fn on_chunk(&mut self, payload: &[u8], index: u64, r: &mut Reading) {
        let part = match serde_json::from_slice::<PayloadPart<'_>>(payload) {
            Ok(part) => part,
            Err(err) => return r.note_problem(|| bad_json("chunk", index, &err)),
        };
        let Some(b64) = part.bytes else {
            return r.note_problem(|| format!("chunk event {index} without bytes"));
        };
        self.scratch.clear();
        if let Err(err) = BASE64.decode_vec(b64.as_bytes(), &mut self.scratch) {
            return r.note_problem(|| format!("chunk event {index}: invalid base64: {err}"));
        }
        match serde_json::from_slice::<ModelEvent>(&self.scratch) {
            Ok(e) if e.is_known_shape() => self.on_model_event(e, index, r),
            // A shape no family uses: what it says cannot be billed from, but its text can.
            Ok(_) => add_text(r, text_bytes_of(&self.scratch)),
            Err(err) => {
                r.note_problem(|| bad_json("chunk bytes", index, &err));
                add_text(r, text_bytes_of(&self.scratch));
            }
        }
        if self.scratch.capacity() > RETAINED_SCRATCH {
            self.scratch = Vec::new();
        }
    }

    /// A model's own stream event, in its family's shape (see [`ModelEvent`]).
    fn on_model_event(&mut self, e: ModelEvent, index: u64, r: &mut Reading) {
        add_text(r, e.text_bytes());

        if let Some(error) = &e.error {
            r.note_exception(error.kind.as_deref().unwrap_or("error"));
        } else if e.kind == Some(Kind::Error) {
            r.note_exception("error");
        }

        if !self.metrics_seen {
            // Anthropic message_start; message_delta (cumulative output) and a chat
            // completion's usage; Nova's metadata.
            let reported = [
                e.message.and_then(|m| m.usage),
                e.usage,
                e.metadata.and_then(|m| m.usage),
            ];
            for usage in reported.into_iter().flatten() {
                usage.apply(&mut r.usage);
                self.input_reported |= usage.input().is_some();
            }
            if e.kind == Some(Kind::MessageDelta) && e.usage.is_some_and(|u| u.output().is_some()) {
                self.delta_usage_seen = true;
            }
            // Running counts: Llama's prompt and generation counts, Titan's input and output.
            let input = e.prompt_token_count.0.or(e.input_text_token_count.0);
            let output = (e.generation_token_count.0).or(e.total_output_text_token_count.0);
            if let Some(n) = input {
                r.usage.input_tokens = r.usage.input_tokens.max(n);
                self.input_reported = true;
            }
            if let Some(n) = output {
                r.usage.output_tokens = r.usage.output_tokens.max(n);
            }
        }
        if e.kind == Some(Kind::MessageStop) && self.delta_usage_seen && self.input_reported {
            r.complete = true;
        }
        if let Some(metrics) = e.metrics.filter(UsageFields::any) {
            metrics.apply(&mut r.usage);
            if metrics.is_whole() {
                r.complete = true;
                self.metrics_seen = true;
            } else {
                r.note_problem(|| incomplete_usage("invocation metrics of chunk", index));
            }
        }
    }
}

fn add_text(r: &mut Reading, bytes: u64) {
    r.output_text_bytes = r.output_text_bytes.saturating_add(bytes);
}

/// The bytes of generated text in a model event of unknown shape: the UTF-8 length of every
/// string value in it (keys excluded), or, if it is not JSON, its whole length. An over-count
/// of a few bytes of framing is the safe direction; a stream whose text counts for nothing
/// could never be cut off, and a cancelled one would be billed no output.
fn text_bytes_of(event: &[u8]) -> u64 {
    serde_json::from_slice::<StringBytes>(event)
        .map(|s| s.0)
        .unwrap_or_else(|_| u64::try_from(event.len()).unwrap_or(u64::MAX))
}

fn incomplete_usage(event: &str, index: u64) -> String {
    format!("{event} event {index}: usage without valid input and output token counts")
}

/// Raises each count of `usage` to `to`'s, never lowering one: readings only grow.
fn raise(usage: &mut Usage, to: &Usage) {
    usage.input_tokens = usage.input_tokens.max(to.input_tokens);
    usage.output_tokens = usage.output_tokens.max(to.output_tokens);
    usage.cache_read_tokens = usage.cache_read_tokens.max(to.cache_read_tokens);
    usage.cache_write_tokens = usage.cache_write_tokens.max(to.cache_write_tokens);
    usage.images = usage.images.max(to.images);
}

fn bad_json(event: &str, index: u64, err: &serde_json::Error) -> String {
    format!("{event} event {index}: invalid JSON: {err}")
}

/// Standard alphabet; padding optional (Bedrock pads, but nothing is lost by not insisting).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Wire shapes. Every struct ignores unknown fields and defaults missing ones; counts and text
// lengths accept any JSON value, so a surprising type loses that field, not the whole event.

/// Usage under every name Bedrock and its models use. Input counts exclude cached tokens.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
struct UsageFields {
    // Converse, Nova (and its invoke bodies), Converse-stream `metadata`.
    #[serde(rename = "inputTokens")]
    input_tokens_camel: Count,
    #[serde(rename = "outputTokens")]
    output_tokens_camel: Count,
    #[serde(rename = "cacheReadInputTokens")]
    cache_read_input_tokens_camel: Count,
    #[serde(rename = "cacheWriteInputTokens")]
    cache_write_input_tokens_camel: Count,
    // Nova invoke bodies and `amazon-bedrock-invocationMetrics`.
    #[serde(rename = "cacheReadInputTokenCount")]
    cache_read_input_token_count: Count,
    #[serde(rename = "cacheWriteInputTokenCount")]
    cache_write_input_token_count: Count,
    // `amazon-bedrock-invocationMetrics`.
    #[serde(rename = "inputTokenCount")]
    input_token_count: Count,
    #[serde(rename = "outputTokenCount")]
    output_token_count: Count,
    // Anthropic Messages.
    input_tokens: Count,
    output_tokens: Count,
    cache_read_input_tokens: Count,
    cache_creation_input_tokens: Count,
    // Chat completions (OpenAI-style models).
    prompt_tokens: Count,
    completion_tokens: Count,
}

impl UsageFields {
    fn input(&self) -> Option<u64> {
        (self.input_tokens_camel.0)
            .or(self.input_token_count.0)
            .or(self.input_tokens.0)
            .or(self.prompt_tokens.0)
    }

    fn output(&self) -> Option<u64> {
        (self.output_tokens_camel.0)
            .or(self.output_token_count.0)
            .or(self.output_tokens.0)
            .or(self.completion_tokens.0)
    }

    fn cache_read(&self) -> Option<u64> {
        (self.cache_read_input_tokens_camel.0)
            .or(self.cache_read_input_token_count.0)
            .or(self.cache_read_input_tokens.0)
    }

    fn cache_write(&self) -> Option<u64> {
        (self.cache_write_input_tokens_camel.0)
            .or(self.cache_write_input_token_count.0)
            .or(self.cache_creation_input_tokens.0)
    }

    fn any(&self) -> bool {
        self.input().is_some()
            || self.output().is_some()
            || self.cache_read().is_some()
            || self.cache_write().is_some()
    }

    /// A final usage to bill from: valid input and output counts (a negative, fractional or
    /// missing output count is not "zero output").
    fn is_whole(&self) -> bool {
        self.input().is_some() && self.output().is_some()
    }

    /// Raises the counts to the ones present here (counts are cumulative: a reading never
    /// goes down); absent ones keep what was known.
    fn apply(&self, usage: &mut Usage) {
        raise(usage, &self.to_usage());
    }

    fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self.input().unwrap_or(0),
            output_tokens: self.output().unwrap_or(0),
            cache_read_tokens: self.cache_read().unwrap_or(0),
            cache_write_tokens: self.cache_write().unwrap_or(0),
            images: 0,
        }
    }
}

/// A non-stream body: Converse, Anthropic, Nova (`usage`) or Llama (top-level counts); an
/// image model's images.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct JsonBody {
    usage: Option<UsageFields>,
    prompt_token_count: Count,
    generation_token_count: Count,
    /// Titan Image Generator, Nova Canvas, Stability's image services.
    images: Option<Items>,
    /// Stability SDXL.
    artifacts: Option<Items>,
}

impl JsonBody {
    /// The body's usage, and whether it is whole (see [`UsageFields::is_whole`]); an image
    /// model's answer is whole with its images counted.
    fn usage(&self) -> Option<(Usage, bool)> {
        let images = [self.images, self.artifacts]
            .into_iter()
            .flatten()
            .map(|n| n.0)
            .reduce(u64::saturating_add);
        if let Some(images) = images {
            let tokens = self.usage.map(UsageFields::to_usage).unwrap_or_default();
            return Some((Usage { images, ..tokens }, true));
        }
        if let Some(usage) = self.usage.filter(UsageFields::any) {
            return Some((usage.to_usage(), usage.is_whole()));
        }
        let (input, output) = (self.prompt_token_count.0, self.generation_token_count.0);
        if input.is_none() && output.is_none() {
            return None;
        }
        let usage = Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            ..Usage::default()
        };
        Some((usage, input.is_some() && output.is_some()))
    }
}

/// Generated text in a delta: Converse `text` / `reasoningContent.text` / `toolUse.input`,
/// Anthropic `text` / `thinking` / `partial_json`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Delta {
    text: TextLen,
    thinking: TextLen,
    partial_json: TextLen,
    #[serde(rename = "reasoningContent")]
    reasoning_content: TextField,
    #[serde(rename = "toolUse")]
    tool_use: InputField,
}

impl Delta {
    fn bytes(&self) -> u64 {
        (self.text.0)
            .saturating_add(self.thinking.0)
            .saturating_add(self.partial_json.0)
            .saturating_add(self.reasoning_content.text.0)
            .saturating_add(self.tool_use.input.0)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TextField {
    text: TextLen,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InputField {
    input: TextLen,
}

/// Converse-stream `contentBlockDelta` (and Nova invoke-stream `contentBlockDelta`'s value).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeltaEvent {
    delta: Delta,
}

/// Converse-stream `metadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetadataEvent {
    usage: Option<UsageFields>,
}

/// Invoke-stream `chunk` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PayloadPart<'a> {
    #[serde(borrow)]
    bytes: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    MessageDelta,
    MessageStop,
    Error,
    #[default]
    #[serde(other)]
    Other,
}

/// A model event inside an invoke-stream chunk: the model provider's own stream format. Every
/// field is optional; an event with none of them is an unknown shape (see [`text_bytes_of`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ModelEvent {
    // Anthropic Messages.
    #[serde(rename = "type")]
    kind: Option<Kind>,
    /// `message_start`.
    message: Option<UsageHolder>,
    /// `message_delta` (cumulative output); also a chat completion's final `usage`.
    usage: Option<UsageFields>,
    /// `content_block_delta`.
    delta: Option<Delta>,
    /// `error`.
    error: Option<ErrorInfo>,
    /// Anthropic text completions (Claude v2, Instant).
    completion: Option<TextLen>,
    /// Bedrock's own, on the last chunk of every family.
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<UsageFields>,
    // Meta Llama: text, prompt count (first chunk), cumulative generation count.
    generation: Option<TextLen>,
    prompt_token_count: Count,
    generation_token_count: Count,
    // Amazon Titan text: text, input count, cumulative output count.
    #[serde(rename = "outputText")]
    output_text: Option<TextLen>,
    #[serde(rename = "inputTextTokenCount")]
    input_text_token_count: Count,
    #[serde(rename = "totalOutputTextTokenCount")]
    total_output_text_token_count: Count,
    /// Mistral (7B, Mixtral, Large 2402, Small): `outputs[].text`.
    outputs: Option<TextSum<TextItem>>,
    /// Chat completions (AI21 Jamba, OpenAI gpt-oss, DeepSeek, Writer, Qwen, Mistral Large 2
    /// and the other OpenAI-style models): `choices[].delta` / `.message` / `.text`.
    choices: Option<TextSum<Choice>>,
    // Cohere: Command R `text-generation` events and Command's chunks carry `text`;
    // `generations[].text` in Command's other shape.
    text: Option<TextLen>,
    generations: Option<TextSum<TextItem>>,
    event_type: Option<IgnoredAny>,
    is_finished: Option<IgnoredAny>,
    // Amazon Nova.
    #[serde(rename = "contentBlockDelta")]
    content_block_delta: Option<DeltaEvent>,
    #[serde(rename = "messageStart")]
    message_start: Option<IgnoredAny>,
    #[serde(rename = "contentBlockStart")]
    content_block_start: Option<IgnoredAny>,
    #[serde(rename = "contentBlockStop")]
    content_block_stop: Option<IgnoredAny>,
    #[serde(rename = "messageStop")]
    message_stop: Option<IgnoredAny>,
    metadata: Option<MetadataEvent>,
}

impl ModelEvent {
    /// Generated text in this event, whatever its family.
    fn text_bytes(&self) -> u64 {
        let len = |t: &Option<TextLen>| t.map_or(0, |t| t.0);
        let sum = |t: &Option<TextSum<TextItem>>| t.as_ref().map_or(0, |t| t.0);
        [
            self.delta.as_ref().map_or(0, Delta::bytes),
            len(&self.completion),
            len(&self.generation),
            len(&self.output_text),
            sum(&self.outputs),
            self.choices.as_ref().map_or(0, |c| c.0),
            len(&self.text),
            sum(&self.generations),
            self.content_block_delta
                .as_ref()
                .map_or(0, |d| d.delta.bytes()),
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }

    /// Some family's field is present.
    fn is_known_shape(&self) -> bool {
        self.kind.is_some()
            || self.message.is_some()
            || self.usage.is_some()
            || self.delta.is_some()
            || self.error.is_some()
            || self.completion.is_some()
            || self.metrics.is_some()
            || self.generation.is_some()
            || self.prompt_token_count.0.is_some()
            || self.generation_token_count.0.is_some()
            || self.output_text.is_some()
            || self.input_text_token_count.0.is_some()
            || self.total_output_text_token_count.0.is_some()
            || self.outputs.is_some()
            || self.choices.is_some()
            || self.text.is_some()
            || self.generations.is_some()
            || self.event_type.is_some()
            || self.is_finished.is_some()
            || self.content_block_delta.is_some()
            || self.message_start.is_some()
            || self.content_block_start.is_some()
            || self.content_block_stop.is_some()
            || self.message_stop.is_some()
            || self.metadata.is_some()
    }
}

/// Text items with a `text` (Mistral `outputs[]`, Cohere `generations[]`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TextItem {
    text: TextLen,
}

/// One of a chat completion's `choices`: a stream chunk's `delta`, Mistral Large 2's `message`,
/// or a text completion's `text` (DeepSeek R1).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Choice {
    delta: ChatMessage,
    message: ChatMessage,
    text: TextLen,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChatMessage {
    content: TextLen,
    reasoning_content: TextLen,
    reasoning: TextLen,
    tool_calls: TextSum<ToolCall>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ToolCall {
    function: FunctionCall,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FunctionCall {
    arguments: TextLen,
}

/// Something that carries generated text.
trait Text {
    fn bytes(&self) -> u64;
}

impl Text for TextItem {
    fn bytes(&self) -> u64 {
        self.text.0
    }
}

impl Text for ChatMessage {
    fn bytes(&self) -> u64 {
        (self.content.0)
            .saturating_add(self.reasoning_content.0)
            .saturating_add(self.reasoning.0)
            .saturating_add(self.tool_calls.0)
    }
}

impl Text for Choice {
    fn bytes(&self) -> u64 {
        self.delta
            .bytes()
            .saturating_add(self.message.bytes())
            .saturating_add(self.text.0)
    }
}

impl Text for ToolCall {
    fn bytes(&self) -> u64 {
        self.function.arguments.0
    }
}

/// The text of every item of an array, summed as it is read; anything else is 0.
#[derive(Debug)]
struct TextSum<T>(u64, PhantomData<T>);

impl<T> Default for TextSum<T> {
    fn default() -> Self {
        Self(0, PhantomData)
    }
}

impl<'de, T: Deserialize<'de> + Text> Deserialize<'de> for TextSum<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Text> Visitor<'de> for Items<T> {
            type Value = u64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
                let mut sum = 0u64;
                while let Some(item) = seq.next_element::<T>()? {
                    sum = sum.saturating_add(item.bytes());
                }
                Ok(sum)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(0)
            }

            fn visit_str<E>(self, _: &str) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_unit<E>(self) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(Items::<T>(PhantomData))
            .map(|n| TextSum(n, PhantomData))
    }
}

/// The number of items of an array (each skipped unread); anything else is 0.
#[derive(Clone, Copy, Debug, Default)]
struct Items(u64);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = u64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(n)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(0)
            }

            fn visit_str<E>(self, _: &str) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(Count).map(Items)
    }
}

/// The UTF-8 length of every string value in a JSON document, keys excluded.
struct StringBytes(u64);

impl<'de> Deserialize<'de> for StringBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Strings;
        impl<'de> Visitor<'de> for Strings {
            type Value = u64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_str<E>(self, v: &str) -> Result<u64, E> {
                Ok(u64::try_from(v.len()).unwrap_or(u64::MAX))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
                let mut sum = 0u64;
                while let Some(StringBytes(n)) = seq.next_element()? {
                    sum = sum.saturating_add(n);
                }
                Ok(sum)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
                let mut sum = 0u64;
                while let Some((IgnoredAny, StringBytes(n))) = map.next_entry()? {
                    sum = sum.saturating_add(n);
                }
                Ok(sum)
            }

            fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
                Ok(0)
            }

            fn visit_unit<E>(self) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(Strings).map(StringBytes)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsageHolder {
    usage: Option<UsageFields>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorInfo {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// A token count: a non-negative integer (or a numeric string); anything else is "absent".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count(Option<u64>);

/// The UTF-8 length of a string value; anything else is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TextLen(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(|s| Count(s.count))
    }
}

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
            .map(|s| TextLen(s.text_len))
    }
}

#[derive(Default)]
struct Scalar {
    count: Option<u64>,
    text_len: u64,
}

/// Accepts any JSON value without allocating; only integers and strings carry information.
struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar {
            count: Some(v),
            text_len: 0,
        })
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar {
            count: u64::try_from(v).ok(),
            text_len: 0,
        })
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar {
            count: v.trim().parse().ok(),
            text_len: u64::try_from(v.len()).unwrap_or(u64::MAX),
        })
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::encode;
    use base64::engine::general_purpose::STANDARD;

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

    fn exception(kind: &str, message: &str) -> Vec<u8> {
        encode(
            &[
                (":exception-type", kind),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            format!(r#"{{"message":"{message}"}}"#).as_bytes(),
        )
    }

    /// An invoke-stream `chunk` wrapping a model event, with Bedrock's `"p"` padding.
    fn chunk(model_event: &str) -> Vec<u8> {
        let b64 = STANDARD.encode(model_event);
        event(
            "chunk",
            &format!(r#"{{"bytes":"{b64}","p":"abcdefghijklmnopqrs"}}"#),
        )
    }

    const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";

    fn meter_with(op: Operation, content_type: &str) -> UsageMeter {
        let mut m = UsageMeter::new(op);
        m.on_response_headers(
            200,
            [("Content-Type", content_type), ("x-amzn-requestid", "abc")],
        );
        m
    }

    fn run(op: Operation, content_type: &str, chunks: &[&[u8]]) -> Reading {
        let mut m = meter_with(op, content_type);
        for c in chunks {
            m.on_body(c);
        }
        m.finish()
    }

    fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
            images: 0,
        }
    }

    // ---- non-stream --------------------------------------------------------------------

    #[test]
    fn converse_json_without_cache() {
        let body = br#"{"metrics":{"latencyMs":512},"output":{"message":{"content":[{"text":"Hi there"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":25,"outputTokens":9,"totalTokens":34}}"#;
        let r = run(
            Operation::Converse,
            "application/json",
            &[&body[..10], &body[10..]],
        );
        assert_eq!(r.usage, usage(25, 9, 0, 0));
        assert!(r.complete);
        assert_eq!(r.problem, None);
        assert_eq!((r.events, r.output_text_bytes), (0, 0));
    }

    #[test]
    fn converse_json_with_cache() {
        let body = br#"{"output":{"message":{"content":[{"text":"ok"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":3,"totalTokens":2063,"cacheReadInputTokens":2000,"cacheWriteInputTokens":48,"cacheDetails":[{"ttl":"5m","inputTokens":48}]},"metrics":{"latencyMs":300}}"#;
        let r = run(Operation::Converse, "application/json", &[body]);
        assert_eq!(r.usage, usage(12, 3, 2000, 48));
        assert_eq!(r.usage.total_input(), 2060);
        assert!(r.complete);
    }

    #[test]
    fn anthropic_invoke_json() {
        let body = br#"{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":14,"cache_creation_input_tokens":1024,"cache_read_input_tokens":512,"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},"output_tokens":7,"server_tool_use":null}}"#;
        let mut m = meter_with(Operation::Invoke, "application/json");
        // Headers say something else: the body wins. Neither counts before the body ended.
        m.on_response_headers(
            200,
            [
                ("X-Amzn-Bedrock-Input-Token-Count", "99"),
                ("X-Amzn-Bedrock-Output-Token-Count", "99"),
            ],
        );
        assert_eq!(m.reading().usage, Usage::default());
        assert!(!m.reading().complete);
        m.on_body(body);
        let r = m.finish();
        assert_eq!(r.usage, usage(14, 7, 512, 1024));
        assert!(r.complete);
        assert_eq!(r.problem, None);
    }

    #[test]
    fn nova_invoke_json() {
        let body = br#"{"output":{"message":{"content":[{"text":"Bonjour"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":8,"outputTokens":4,"totalTokens":112,"cacheReadInputTokenCount":100,"cacheWriteInputTokenCount":0}}"#;
        let r = run(Operation::Invoke, "application/json", &[body]);
        assert_eq!(r.usage, usage(8, 4, 100, 0));
        assert!(r.complete);
    }

    #[test]
    fn llama_invoke_json() {
        let body = br#"{"generation":" Paris.","prompt_token_count":17,"generation_token_count":3,"stop_reason":"stop"}"#;
        let r = run(Operation::Invoke, "application/json", &[body]);
        assert_eq!(r.usage, usage(17, 3, 0, 0));
        assert!(r.complete);
    }

    #[test]
    fn headers_fallback_when_body_has_no_usage() {
        // Titan embeddings: no usage object in the body.
        let body = br#"{"embedding":[0.1,-0.2,0.3],"inputTextTokenCount":6}"#;
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(
            200,
            [
                ("content-type", "application/json"),
                ("x-amzn-bedrock-input-token-count", "6"),
                ("X-AMZN-BEDROCK-OUTPUT-TOKEN-COUNT", " 0 "),
                ("x-amzn-bedrock-cache-read-input-token-count", "2"),
                ("x-amzn-Bedrock-Cache-Write-Input-Token-Count", "3"),
                ("x-amzn-bedrock-invocation-latency", "120"),
            ],
        );
        m.on_body(body);
        let r = m.finish();
        assert_eq!(r.usage, usage(6, 0, 2, 3));
        assert!(r.complete);
        assert_eq!(r.problem, None);
    }

    #[test]
    fn headers_fallback_for_non_json_and_invalid_bodies() {
        let headers = [
            ("x-amzn-bedrock-input-token-count", "5"),
            ("x-amzn-bedrock-output-token-count", "1"),
        ];
        // A non-JSON content type: read as JSON all the same, then the headers.
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(200, [("content-type", "image/png")]);
        m.on_response_headers(200, headers);
        m.on_body(b"\x89PNG\r\n");
        let r = m.finish();
        assert_eq!((r.usage, r.complete), (usage(5, 1, 0, 0), true));
        assert!(r.problem.unwrap().starts_with("invalid JSON body"));

        // Invalid JSON: a problem, and the headers.
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(200, headers);
        m.on_body(b"{\"usage\": {\"input_tokens\": 3,");
        let r = m.finish();
        assert_eq!(r.usage, usage(5, 1, 0, 0));
        assert!(r.complete);
        assert!(r.problem.unwrap().starts_with("invalid JSON body"));

        // Unparseable header value: recorded; what the others say is seen, not whole.
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(
            200,
            [
                ("x-amzn-bedrock-input-token-count", "-4"),
                ("x-amzn-bedrock-output-token-count", "2"),
            ],
        );
        let r = m.finish();
        assert_eq!((r.usage, r.complete), (usage(0, 2, 0, 0), false));
        assert_eq!(
            r.problem.as_deref(),
            Some("unparseable x-amzn-bedrock-input-token-count header")
        );
    }

    #[test]
    fn error_bodies_yield_no_usage() {
        let mut m = UsageMeter::new(Operation::Converse);
        m.on_response_headers(
            200,
            [
                ("content-type", "application/json"),
                (
                    "x-amzn-errortype",
                    "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                ),
            ],
        );
        m.on_body(br#"{"message":"The provided model identifier is invalid."}"#);
        let r = m.finish();
        assert_eq!(r.usage, Usage::default());
        assert!(!r.complete);
        assert_eq!(r.exception.as_deref(), Some("ValidationException"));
        assert_eq!(r.problem, None);

        // A stream operation answered with a JSON error before any event.
        let mut m = UsageMeter::new(Operation::ConverseStream);
        m.on_response_headers(429, [("content-type", "application/json")]);
        m.on_body(br#"{"message":"Too many requests, please wait before trying again."}"#);
        let r = m.finish();
        assert_eq!(
            (r.usage, r.complete, r.events, r.problem),
            (Usage::default(), false, 0, None)
        );

        // An empty body is not a problem either.
        let r = run(Operation::Invoke, "application/json", &[]);
        assert_eq!(r, Reading::default());
    }

    #[test]
    fn odd_json_types_lose_a_field_not_the_body() {
        let body = br#"{"usage":{"inputTokens":"12","outputTokens":7,"cacheReadInputTokens":1.5,"cacheWriteInputTokens":null,"input_tokens":{"x":[1,2]}}}"#;
        let r = run(Operation::Converse, "application/json", &[body]);
        assert_eq!(r.usage, usage(12, 7, 0, 0));
        assert!(r.complete);
        assert_eq!(r.problem, None);
        // Not an object at all.
        let r = run(Operation::Converse, "application/json", &[b"[1,2,3]"]);
        assert!(r.problem.is_some() && !r.complete);
    }

    #[test]
    fn deeply_nested_json_does_not_overflow_the_stack() {
        // Past the typed shapes, values are skipped by serde_json's iterative `IgnoredAny`, and
        // serde_json refuses more than 128 levels of real recursion: no stack overflow either way.
        let deep = |inner: &str| format!("{}{inner}{}", "[".repeat(100_000), "]".repeat(100_000));
        let bodies = [
            deep(""),
            format!(r#"{{"usage":{{"inputTokens":{}}}}}"#, deep("1")),
            format!(r#"{{"usage":{}}}"#, deep("")),
            format!(
                r#"{{"output":{}, "usage":{{"inputTokens":5}}}}"#,
                deep("{}")
            ),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let r = run(Operation::Converse, "application/json", &[body.as_bytes()]);
            let expected = if i == 3 { 5 } else { 0 };
            assert_eq!(r.usage.input_tokens, expected);
            let stream = event("metadata", body);
            let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
            assert_eq!((r.events, r.usage.input_tokens), (1, expected));
        }
    }

    #[test]
    fn nine_mib_body_is_capped() {
        let mut body = br#"{"usage":{"inputTokens":1,"outputTokens":2},"pad":""#.to_vec();
        body.resize(9 * 1024 * 1024, b'x');
        body.extend_from_slice(b"\"}");
        let mut m = UsageMeter::new(Operation::Converse);
        m.on_response_headers(200, [("content-type", "application/json")]);
        for c in body.chunks(64 * 1024) {
            m.on_body(c);
            assert!(m.body.len() <= MAX_JSON_BODY);
        }
        assert!(m.body.capacity() <= MAX_JSON_BODY);
        let r = m.finish();
        assert!(r.problem.unwrap().contains("cap"));
        assert_eq!(r.usage, Usage::default());
        assert!(!r.complete);

        // With headers, they carry the usage.
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(
            200,
            [
                ("x-amzn-bedrock-input-token-count", "7"),
                ("x-amzn-bedrock-output-token-count", "8"),
            ],
        );
        m.on_body(&body);
        let r = m.finish();
        assert_eq!((r.usage, r.complete), (usage(7, 8, 0, 0), true));
        assert!(r.problem.is_some());
    }

    // ---- ConverseStream -----------------------------------------------------------------

    fn converse_stream() -> Vec<u8> {
        [
            event("messageStart", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO","role":"assistant"}"#),
            event("contentBlockStart", r#"{"contentBlockIndex":0,"p":"abc","start":{}}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Think"}},"p":"abcdef"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"c2lnbmF0dXJl"}},"p":"ab"}"#),
            event("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopq"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"Hello"},"p":"abcdef"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":", w\u00f6rld \"q\"!"},"p":"abcdefghijkl"}"#),
            event("contentBlockStop", r#"{"contentBlockIndex":1,"p":"abcdefghijklmnopq"}"#),
            event("contentBlockStart", r#"{"contentBlockIndex":2,"start":{"toolUse":{"name":"get_weather","toolUseId":"tooluse_1"}},"p":"ab"}"#),
            event("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"city\": \"Paris\"}"}},"p":"abc"}"#),
            event("contentBlockStop", r#"{"contentBlockIndex":2,"p":"abcdefghijklmnopq"}"#),
            event("messageStop", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU","stopReason":"tool_use"}"#),
            event("metadata", r#"{"metrics":{"latencyMs":812},"p":"abcdefghijklmnopqrstuvwxy","usage":{"cacheReadInputTokens":300,"cacheWriteInputTokens":0,"inputTokens":42,"outputTokens":31,"totalTokens":373}}"#),
        ]
        .concat()
    }

    /// "Think" + "Hello" + ", wörld \"q\"!" (unescaped) + `{"city": "Paris"}`.
    const CONVERSE_TEXT_BYTES: u64 = 5 + 5 + 13 + 17;

    #[test]
    fn converse_stream_full() {
        let stream = converse_stream();
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(
            r,
            Reading {
                usage: usage(42, 31, 300, 0),
                complete: true,
                exception: None,
                output_text_bytes: CONVERSE_TEXT_BYTES,
                events: 13,
                problem: None,
            }
        );
    }

    #[test]
    fn converse_stream_every_split_gives_the_same_reading() {
        let stream = converse_stream();
        let expected = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                run(Operation::ConverseStream, EVENTSTREAM, &[a, b]),
                expected,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            run(Operation::ConverseStream, EVENTSTREAM, &bytes),
            expected
        );
    }

    #[test]
    fn converse_stream_reading_mid_stream_and_cut() {
        let stream = converse_stream();
        let mut m = meter_with(Operation::ConverseStream, EVENTSTREAM);
        // Everything up to the end of the first text delta, then half of the next message.
        let mut msgs = 0;
        let mut at = 0;
        while msgs < 6 {
            at += u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
            msgs += 1;
        }
        m.on_body(&stream[..at + 20]);
        let r = m.reading();
        assert_eq!((r.events, r.output_text_bytes, r.complete), (6, 10, false));
        assert_eq!(r.usage, Usage::default());
        let r = m.finish();
        assert!(!r.complete);
        assert!(r.problem.unwrap().contains("stream ended inside"));

        // Cut on a message boundary: no problem, still incomplete.
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream[..at]]);
        assert_eq!(
            (r.events, r.output_text_bytes, r.complete, r.problem),
            (6, 10, false, None)
        );
    }

    #[test]
    fn converse_stream_exception_mid_stream() {
        let stream = [
            event("messageStart", r#"{"role":"assistant"}"#),
            event(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"Partial"}}"#,
            ),
            exception("modelStreamErrorException", "Model stream failed"),
            exception("internalServerException", "later"),
        ]
        .concat();
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(r.exception.as_deref(), Some("modelStreamErrorException"));
        assert_eq!((r.events, r.output_text_bytes, r.complete), (4, 7, false));
        assert_eq!(r.problem, None);

        let err = encode(
            &[
                (":message-type", "error"),
                (":error-code", "InternalFailure"),
                (":error-message", "boom"),
            ],
            b"",
        );
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&err]);
        assert_eq!(r.exception.as_deref(), Some("InternalFailure"));
    }

    #[test]
    fn corrupt_crc_sets_problem_and_stops() {
        let mut stream = converse_stream();
        let last = stream.len() - 1;
        stream[last] ^= 0xff; // metadata's message CRC
        let mut m = meter_with(Operation::ConverseStream, EVENTSTREAM);
        m.on_body(&stream);
        m.on_body(&converse_stream()); // ignored: the stream cannot resync
        let r = m.finish();
        assert!(r.problem.unwrap().contains("message CRC mismatch"));
        assert_eq!((r.events, r.complete), (12, false));
        assert_eq!(r.output_text_bytes, CONVERSE_TEXT_BYTES);

        let mut stream = converse_stream();
        stream[5] ^= 0x01; // first prelude
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        assert!(r.problem.unwrap().contains("prelude CRC mismatch"));
        assert_eq!(r.events, 0);
    }

    #[test]
    fn invalid_event_json_is_a_problem_but_decoding_continues() {
        let stream = [
            event("contentBlockDelta", r#"{"delta":{"text":"ab"#),
            event("contentBlockDelta", r#"{"delta":{"text":"abc"}}"#),
            event(
                "metadata",
                r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
            ),
        ]
        .concat();
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        assert!(r
            .problem
            .unwrap()
            .starts_with("contentBlockDelta event 1: invalid JSON"));
        assert_eq!(
            (r.usage, r.complete, r.output_text_bytes),
            (usage(1, 2, 0, 0), true, 3)
        );
    }

    // ---- InvokeWithResponseStream ------------------------------------------------------

    fn anthropic_stream(invocation_metrics: bool) -> Vec<u8> {
        let stop = if invocation_metrics {
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":20,"outputTokenCount":25,"invocationLatency":1200,"firstByteLatency":300,"cacheReadInputTokenCount":1000,"cacheWriteInputTokenCount":50}}"#
        } else {
            r#"{"type":"message_stop"}"#
        };
        [
            chunk(r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-3-5-sonnet-20241022","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":20,"cache_creation_input_tokens":50,"cache_read_input_tokens":1000,"output_tokens":1}}}"#),
            chunk(r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#),
            chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm."}}"#),
            chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"RXVn"}}"#),
            chunk(r#"{"type":"content_block_stop","index":0}"#),
            chunk(r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Héllo"}}"#),
            chunk(r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#),
            chunk(r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10}}"#),
            chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":25}}"#),
            chunk(stop),
        ]
        .concat()
    }

    /// "Hmm." + "Héllo" + `{"a":1}`.
    const ANTHROPIC_TEXT_BYTES: u64 = 4 + 6 + 7;

    #[test]
    fn invoke_stream_with_invocation_metrics() {
        let stream = anthropic_stream(true);
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(
            r,
            Reading {
                usage: usage(20, 25, 1000, 50),
                complete: true,
                exception: None,
                output_text_bytes: ANTHROPIC_TEXT_BYTES,
                events: 10,
                problem: None,
            }
        );
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[a, b]),
                r,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn invoke_stream_cumulative_delta_replaces() {
        // Two message_delta events, 10 then 25: the output is 25, not 35 (nor 36 with start's 1).
        let stream = anthropic_stream(false);
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(r.usage, usage(20, 25, 1000, 50));
        assert!(r.complete, "message_delta usage + message_stop completes");
    }

    #[test]
    fn invoke_stream_metrics_are_authoritative() {
        let stream = [
            chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#),
            chunk(r#"{"type":"message_delta","usage":{"output_tokens":4}}"#),
            chunk(r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":10,"outputTokenCount":5}}"#),
            // Anything after the metrics does not move the final usage.
            chunk(r#"{"type":"message_delta","usage":{"output_tokens":400}}"#),
        ]
        .concat();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!((r.usage, r.complete), (usage(10, 5, 0, 0), true));
    }

    #[test]
    fn invoke_stream_newer_message_delta_carries_input_and_cache() {
        let stream = [
            chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"cache_read_input_tokens":0,"output_tokens":1}}}"#),
            chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":3,"cache_creation_input_tokens":7,"cache_read_input_tokens":11,"output_tokens":12,"server_tool_use":{"web_search_requests":1}}}"#),
            chunk(r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!((r.usage, r.complete), (usage(3, 12, 11, 7), true));
    }

    #[test]
    fn invoke_stream_cut_midway() {
        let stream = anthropic_stream(true);
        let mut m = meter_with(Operation::InvokeWithResponseStream, EVENTSTREAM);
        // First six chunks and a few bytes of the seventh.
        let mut at = 0;
        for _ in 0..6 {
            at += u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        }
        m.on_body(&stream[..at + 3]);
        let r = m.reading();
        assert_eq!(
            r.usage,
            usage(20, 1, 1000, 50),
            "message_start usage known mid-stream"
        );
        assert_eq!(
            (r.output_text_bytes, r.events, r.complete),
            (4 + 6, 6, false)
        );
        let r = m.finish();
        assert!(!r.complete);
        assert!(r.problem.is_some());
    }

    #[test]
    fn invoke_stream_exceptions() {
        let stream = [
            chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#),
            chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abc"}}"#),
            exception("modelTimeoutException", "Model has timed out"),
        ]
        .concat();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(r.exception.as_deref(), Some("modelTimeoutException"));
        assert_eq!(
            (r.usage, r.complete, r.output_text_bytes, r.events),
            (usage(5, 1, 0, 0), false, 3, 3)
        );

        // Anthropic's own error event inside a chunk.
        let stream =
            chunk(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(r.exception.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn invoke_stream_llama_and_nova() {
        let llama = [
            chunk(r#"{"generation":"Hel","prompt_token_count":12,"generation_token_count":1,"stop_reason":null}"#),
            chunk(r#"{"generation":"lo","prompt_token_count":null,"generation_token_count":2,"stop_reason":null}"#),
            chunk(r#"{"generation":"","prompt_token_count":null,"generation_token_count":3,"stop_reason":"stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":3,"invocationLatency":200,"firstByteLatency":90}}"#),
        ]
        .concat();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&llama]);
        assert_eq!(
            (r.usage, r.complete, r.output_text_bytes),
            (usage(12, 3, 0, 0), true, 5)
        );

        let nova = [
            chunk(r#"{"messageStart":{"role":"assistant"}}"#),
            chunk(r#"{"contentBlockDelta":{"delta":{"text":"Salut"},"contentBlockIndex":0}}"#),
            chunk(r#"{"metadata":{"usage":{"inputTokens":4,"outputTokens":2}},"amazon-bedrock-invocationMetrics":{"inputTokenCount":4,"outputTokenCount":2,"invocationLatency":1,"firstByteLatency":1,"cacheReadInputTokenCount":0,"cacheWriteInputTokenCount":0}}"#),
        ]
        .concat();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&nova]);
        assert_eq!(
            (r.usage, r.complete, r.output_text_bytes),
            (usage(4, 2, 0, 0), true, 5)
        );
    }

    // ---- InvokeWithResponseStream, every model family ------------------------------------

    /// `amazon-bedrock-invocationMetrics`, as Bedrock adds it to a stream's last chunk.
    fn metrics(input: u64, output: u64) -> String {
        format!(
            r#""amazon-bedrock-invocationMetrics":{{"inputTokenCount":{input},"outputTokenCount":{output},"invocationLatency":420,"firstByteLatency":120}}"#
        )
    }

    /// One model family's invoke stream: its model events (each becomes one `chunk`), the bytes
    /// of generated text they carry, and the final usage (from the invocation metrics).
    struct FamilyStream {
        family: &'static str,
        events: Vec<String>,
        text_bytes: u64,
        usage: Usage,
    }

    /// Every family Bedrock serves on InvokeModelWithResponseStream, in its own chunk shape
    /// (the model providers' native formats, as the Bedrock user guide's per-model inference
    /// parameters describe them).
    fn family_streams() -> Vec<FamilyStream> {
        let s = |family, events: &[&str], text_bytes, input, output| FamilyStream {
            family,
            events: events.iter().map(|e| e.to_string()).collect(),
            text_bytes,
            usage: usage(input, output, 0, 0),
        };
        let m = metrics;
        vec![
            s(
                "mistral (7B, Mixtral, Large 2402, Small)",
                &[
                    r#"{"outputs":[{"text":" Bon","stop_reason":null}]}"#,
                    r#"{"outputs":[{"text":"jour","stop_reason":null}]}"#,
                    &format!(
                        r#"{{"outputs":[{{"text":"!","stop_reason":"stop"}}],{}}}"#,
                        m(12, 3)
                    ),
                ],
                4 + 4 + 1,
                12,
                3,
            ),
            s(
                "mistral large 2 (2407), pixtral: chat message chunks",
                &[
                    r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"message":{"role":"assistant","content":"Bon"},"stop_reason":null}]}"#,
                    &format!(
                        r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"jour"}},"stop_reason":"stop"}}],{}}}"#,
                        m(8, 2)
                    ),
                ],
                3 + 4,
                8,
                2,
            ),
            s(
                "amazon titan text",
                &[
                    r#"{"outputText":"Hel","index":0,"totalOutputTextTokenCount":1,"completionReason":null,"inputTextTokenCount":5}"#,
                    &format!(
                        r#"{{"outputText":"lo!","index":0,"totalOutputTextTokenCount":2,"completionReason":"FINISH","inputTextTokenCount":null,{}}}"#,
                        m(5, 2)
                    ),
                ],
                3 + 3,
                5,
                2,
            ),
            s(
                "cohere command r / r+",
                &[
                    r#"{"is_finished":false,"event_type":"stream-start","generation_id":"g-1"}"#,
                    r#"{"is_finished":false,"event_type":"text-generation","text":"Hi"}"#,
                    r#"{"is_finished":false,"event_type":"text-generation","text":" there"}"#,
                    &format!(
                        r#"{{"is_finished":true,"event_type":"stream-end","response":{{"response_id":"r-1","text":"Hi there","generation_id":"g-1","finish_reason":"COMPLETE"}},"finish_reason":"COMPLETE",{}}}"#,
                        m(9, 2)
                    ),
                ],
                2 + 6,
                9,
                2,
            ),
            s(
                "cohere command (legacy)",
                &[
                    r#"{"text":" Hi","is_finished":false,"index":0}"#,
                    r#"{"generations":[{"text":" you","index":0}]}"#,
                    &format!(
                        r#"{{"is_finished":true,"finish_reason":"COMPLETE",{}}}"#,
                        m(4, 2)
                    ),
                ],
                3 + 4,
                4,
                2,
            ),
            s(
                "meta llama 2/3/4",
                &[
                    r#"{"generation":"Hel","prompt_token_count":12,"generation_token_count":1,"stop_reason":null}"#,
                    r#"{"generation":"lo","prompt_token_count":null,"generation_token_count":2,"stop_reason":null}"#,
                    &format!(
                        r#"{{"generation":"","prompt_token_count":null,"generation_token_count":3,"stop_reason":"stop",{}}}"#,
                        m(12, 3)
                    ),
                ],
                3 + 2,
                12,
                3,
            ),
            s(
                "ai21 jamba",
                &[
                    r#"{"id":"chat-1","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#,
                    r#"{"id":"chat-1","choices":[{"index":0,"delta":{"content":"Shalom"},"finish_reason":null}]}"#,
                    &format!(
                        r#"{{"id":"chat-1","choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}},{}}}"#,
                        m(10, 2)
                    ),
                ],
                6,
                10,
                2,
            ),
            s(
                "openai gpt-oss, deepseek v3, writer palmyra, qwen: chat completion chunks",
                &[
                    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"openai.gpt-oss-20b-1:0","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"Think."},"finish_reason":null}]}"#,
                    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"reasoning":"Hm","content":"Hi"},"finish_reason":null}]}"#,
                    &format!(
                        r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"call_1","type":"function","function":{{"name":"f","arguments":"{{\"a\":1}}"}}}}]}},"finish_reason":"tool_calls"}}],{}}}"#,
                        m(7, 6)
                    ),
                ],
                6 + 2 + 2 + 7,
                7,
                6,
            ),
            s(
                "deepseek r1: text completion choices",
                &[
                    r#"{"choices":[{"text":"<think>","stop_reason":null}]}"#,
                    &format!(
                        r#"{{"choices":[{{"text":"Hi","stop_reason":"stop"}}],{}}}"#,
                        m(3, 4)
                    ),
                ],
                7 + 2,
                3,
                4,
            ),
            s(
                "anthropic text completions (claude v2, instant)",
                &[
                    r#"{"completion":" Hello","stop_reason":null,"stop":null}"#,
                    &format!(
                        r#"{{"completion":"!","stop_reason":"stop_sequence","stop":"\n\nHuman:",{}}}"#,
                        m(6, 2)
                    ),
                ],
                6 + 1,
                6,
                2,
            ),
            s(
                "amazon nova",
                &[
                    r#"{"messageStart":{"role":"assistant"}}"#,
                    r#"{"contentBlockDelta":{"delta":{"text":"Salut"},"contentBlockIndex":0}}"#,
                    r#"{"contentBlockStop":{"contentBlockIndex":0}}"#,
                    r#"{"messageStop":{"stopReason":"end_turn"}}"#,
                    &format!(
                        r#"{{"metadata":{{"usage":{{"inputTokens":4,"outputTokens":2}}}},{}}}"#,
                        m(4, 2)
                    ),
                ],
                5,
                4,
                2,
            ),
            s(
                "a shape no family uses: its text values are counted",
                &[
                    r#"{"mystery":{"text":"words"},"n":[1,"ab"]}"#,
                    &format!(r#"{{"done":true,{}}}"#, m(2, 2)),
                ],
                5 + 2,
                2,
                2,
            ),
        ]
    }

    #[test]
    fn invoke_stream_every_family_meters_text_at_every_split() {
        for f in family_streams() {
            let stream: Vec<u8> = f.events.iter().flat_map(|e| chunk(e)).collect();
            let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
            assert_eq!(r.output_text_bytes, f.text_bytes, "{}", f.family);
            assert_eq!((r.usage, r.complete), (f.usage, true), "{}", f.family);
            assert_eq!(r.events, f.events.len() as u64, "{}", f.family);
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                assert_eq!(
                    run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[a, b]),
                    r,
                    "{}: cut at {cut}",
                    f.family
                );
            }
        }
    }

    #[test]
    fn invoke_stream_every_family_is_billed_for_text_before_the_metrics() {
        // A client that cancels before the last chunk (the one with the invocation metrics):
        // the generated text seen so far is what an estimate bills.
        for f in family_streams() {
            let (last, rest) = f.events.split_last().unwrap();
            let stream: Vec<u8> = rest.iter().flat_map(|e| chunk(e)).collect();
            let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
            assert!(!r.complete, "{}", f.family);
            let last_text = run(
                Operation::InvokeWithResponseStream,
                EVENTSTREAM,
                &[&chunk(last)],
            )
            .output_text_bytes;
            assert_eq!(
                r.output_text_bytes,
                f.text_bytes - last_text,
                "{}",
                f.family
            );
            assert!(r.output_text_bytes > 0, "{}: no text metered", f.family);
            let (billed, _) = crate::record::billable(200, true, &r, 100, &Default::default());
            assert!(billed.output_tokens > 0, "{}: billed no output", f.family);
        }
    }

    #[test]
    fn invoke_stream_running_counts_of_titan_and_openai_usage() {
        // Titan reports its input and a running output count in every chunk.
        let titan = chunk(
            r#"{"outputText":"Hel","index":0,"totalOutputTextTokenCount":7,"completionReason":null,"inputTextTokenCount":5}"#,
        );
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&titan]);
        assert_eq!((r.usage, r.complete), (usage(5, 7, 0, 0), false));
        // A chat-completion chunk's `usage` (prompt / completion tokens).
        let usage_chunk = chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}}"#,
        );
        let r = run(
            Operation::InvokeWithResponseStream,
            EVENTSTREAM,
            &[&usage_chunk],
        );
        assert_eq!(r.usage, usage(11, 4, 0, 0));
    }

    #[test]
    fn invoke_stream_chunk_that_is_not_json_counts_as_text() {
        let r = run(
            Operation::InvokeWithResponseStream,
            EVENTSTREAM,
            &[&chunk("plain words")],
        );
        assert_eq!(r.output_text_bytes, 11);
        assert!(r.problem.is_some());
    }

    #[test]
    fn invoke_stream_bad_chunks_never_panic() {
        let cases: Vec<Vec<u8>> = vec![
            event("chunk", r#"{"bytes":"!!!not base64!!!"}"#),
            event("chunk", r#"{"bytes":42}"#),
            event("chunk", r#"{"p":"no bytes"}"#),
            event("chunk", "not json at all"),
            chunk("not json inside"),
            chunk(r#"{"type":7}"#),
            chunk(r#"{"type":"message_delta","usage":"nope"}"#),
            event(
                "chunk",
                &format!(r#"{{"bytes":"{}"}}"#, STANDARD.encode([0xff, 0xfe, 0x00])),
            ),
        ];
        for case in cases {
            let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&case]);
            assert_eq!(r.events, 1);
            assert!(r.problem.is_some(), "{:?}", String::from_utf8_lossy(&case));
            assert!(!r.complete);
        }
        // Unpadded base64 is accepted; escaped slashes in the JSON string too.
        let raw = r#"{"type":"message_delta","usage":{"output_tokens":63}}"#;
        let b64 = STANDARD
            .encode(raw)
            .trim_end_matches('=')
            .replace('/', "\\/");
        let r = run(
            Operation::InvokeWithResponseStream,
            EVENTSTREAM,
            &[&event("chunk", &format!(r#"{{"bytes":"{b64}"}}"#))],
        );
        assert_eq!((r.usage.output_tokens, r.problem), (63, None));
    }

    // ---- what decides how a response is read ----------------------------------------------

    #[test]
    fn a_non_stream_operation_is_metered_as_json_whatever_its_content_type() {
        let body = br#"{"usage":{"inputTokens":5,"outputTokens":3}}"#;
        for ct in [EVENTSTREAM, "text/plain", "image/png", "application/json"] {
            for op in [Operation::Converse, Operation::Invoke] {
                let mut m = UsageMeter::new(op);
                m.on_response_headers(200, [("content-type", ct)]);
                m.on_body(body);
                let r = m.finish();
                assert_eq!(
                    (r.usage, r.complete),
                    (usage(5, 3, 0, 0), true),
                    "{op:?} {ct}"
                );
            }
        }
    }

    #[test]
    fn a_stream_operation_answered_2xx_is_metered_as_a_stream_whatever_its_content_type() {
        let stream = converse_stream();
        let expected = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        for ct in ["application/json", "text/plain"] {
            let mut m = UsageMeter::new(Operation::ConverseStream);
            m.on_response_headers(200, [("content-type", ct)]);
            m.on_body(&stream);
            assert_eq!(m.finish(), expected, "{ct}");
        }
        // Refused: the body is Bedrock's JSON error, whatever the content type says. Nothing
        // in it is billed, and it is not a broken stream.
        let mut m = UsageMeter::new(Operation::ConverseStream);
        m.on_response_headers(
            400,
            [
                ("content-type", EVENTSTREAM),
                (
                    "x-amzn-errortype",
                    "ValidationException:http://internal.amazon.com/",
                ),
            ],
        );
        m.on_body(br#"{"message":"Malformed input request"}"#);
        let r = m.finish();
        assert_eq!(
            (r.events, r.problem, r.exception.as_deref()),
            (0, None, Some("ValidationException"))
        );
    }

    #[test]
    fn a_final_usage_without_a_valid_output_count_does_not_complete_the_reading() {
        for usage_json in [
            r#"{"inputTokens":7,"outputTokens":-1}"#,
            r#"{"inputTokens":7}"#,
            r#"{"inputTokens":7,"outputTokens":"many"}"#,
            r#"{"inputTokens":7,"outputTokens":1.5}"#,
            r#"{"inputTokens":7,"outputTokens":null}"#,
        ] {
            let stream = [
                event("contentBlockDelta", r#"{"delta":{"text":"twelve bytes"}}"#),
                event("metadata", &format!(r#"{{"usage":{usage_json}}}"#)),
            ]
            .concat();
            let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
            assert!(!r.complete, "{usage_json}");
            assert_eq!(r.usage.input_tokens, 7, "{usage_json}");
            assert!(r.problem.is_some(), "{usage_json}");
            // Billed from what was seen: never zero output for a response with text.
            let (billed, source) = crate::record::billable(200, true, &r, 100, &Default::default());
            assert_eq!(
                (source, billed.input_tokens, billed.output_tokens),
                (crate::record::UsageSource::Estimated, 7, 3),
                "{usage_json}"
            );
        }
        // A Converse body, an Anthropic body, invocation metrics: the same rule.
        let r = run(
            Operation::Converse,
            "application/json",
            &[br#"{"usage":{"inputTokens":5,"outputTokens":-3}}"#],
        );
        assert!(!r.complete);
        let r = run(
            Operation::Invoke,
            "application/json",
            &[br#"{"usage":{"input_tokens":5}}"#],
        );
        assert!(!r.complete);
        let s = chunk(
            r#"{"generation":"abcd","amazon-bedrock-invocationMetrics":{"inputTokenCount":4}}"#,
        );
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&s]);
        assert_eq!((r.complete, r.output_text_bytes), (false, 4));
        // Token-count headers: a missing output count is an embedding's (none generated), an
        // unparseable one is not.
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(200, [("x-amzn-bedrock-input-token-count", "6")]);
        let r = m.finish();
        assert_eq!((r.usage, r.complete), (usage(6, 0, 0, 0), true));
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(
            200,
            [
                ("x-amzn-bedrock-input-token-count", "6"),
                ("x-amzn-bedrock-output-token-count", "-2"),
            ],
        );
        assert!(!m.finish().complete);
    }

    /// Every reading is at least the one before it: usage, text, events, completeness. The
    /// cut-off and the hosts read the meter mid-response; a later reading that bills less
    /// would let a stream spend what an earlier check refused.
    #[test]
    fn readings_never_decrease() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut pool: Vec<Vec<u8>> = family_streams()
            .iter()
            .flat_map(|f| f.events.iter().map(|e| chunk(e)).collect::<Vec<_>>())
            .collect();
        let valid_invoke = pool.len();
        for round in 0..400u64 {
            let n = |next: &mut dyn FnMut() -> u64| next() % 50;
            // Events reporting counts in any order, as a confused (or hostile) upstream might.
            pool.truncate(valid_invoke);
            pool.push(chunk(&format!(
                r#"{{"type":"message_delta","usage":{{"output_tokens":{}}}}}"#,
                n(&mut next)
            )));
            pool.push(chunk(&format!(
                r#"{{"type":"message_start","message":{{"usage":{{"input_tokens":{},"output_tokens":1,"cache_read_input_tokens":{}}}}}}}"#,
                n(&mut next),
                n(&mut next)
            )));
            pool.push(chunk(&format!(
                r#"{{"generation":"x","prompt_token_count":{},"generation_token_count":{}}}"#,
                n(&mut next),
                n(&mut next)
            )));
            pool.push(chunk(&format!(
                r#"{{"type":"message_stop",{}}}"#,
                metrics(n(&mut next), n(&mut next))
            )));
            pool.push(chunk(&format!(
                r#"{{"outputText":"y","totalOutputTextTokenCount":{},"inputTextTokenCount":{}}}"#,
                n(&mut next),
                n(&mut next)
            )));
            let op = if round % 5 == 0 {
                Operation::ConverseStream
            } else {
                Operation::InvokeWithResponseStream
            };
            let stream: Vec<u8> = if op == Operation::ConverseStream {
                let mut v = converse_stream();
                v.extend(event(
                    "metadata",
                    &format!(
                        r#"{{"usage":{{"inputTokens":{},"outputTokens":{}}}}}"#,
                        n(&mut next),
                        n(&mut next)
                    ),
                ));
                v
            } else {
                (0..1 + next() % 12)
                    .flat_map(|_| pool[(next() % pool.len() as u64) as usize].clone())
                    .collect()
            };
            let mut m = meter_with(op, EVENTSTREAM);
            let mut prev = m.reading();
            let mut rest = &stream[..];
            let check = |r: Reading, prev: &mut Reading| {
                let (a, b) = (&prev.usage, &r.usage);
                assert!(
                    b.input_tokens >= a.input_tokens
                        && b.output_tokens >= a.output_tokens
                        && b.cache_read_tokens >= a.cache_read_tokens
                        && b.cache_write_tokens >= a.cache_write_tokens,
                    "round {round}: usage went from {a:?} to {b:?}"
                );
                assert!(
                    r.output_text_bytes >= prev.output_text_bytes,
                    "round {round}"
                );
                assert!(r.events >= prev.events, "round {round}");
                assert!(r.complete || !prev.complete, "round {round}");
                *prev = r;
            };
            while !rest.is_empty() {
                let k = ((next() % 61) as usize + 1).min(rest.len());
                let (c, tail) = rest.split_at(k);
                m.on_body(c);
                check(m.reading(), &mut prev);
                rest = tail;
            }
            check(m.finish(), &mut prev);
        }

        // A non-stream response: token-count headers first, the body's usage at the end.
        let mut m = UsageMeter::new(Operation::Invoke);
        m.on_response_headers(
            200,
            [
                ("x-amzn-bedrock-input-token-count", "99"),
                ("x-amzn-bedrock-output-token-count", "99"),
            ],
        );
        let before = m.reading();
        m.on_body(br#"{"usage":{"input_tokens":14,"output_tokens":7}}"#);
        let after = m.finish();
        assert!(
            after.usage.input_tokens >= before.usage.input_tokens,
            "{before:?} then {after:?}"
        );
    }

    #[test]
    fn garbage_bodies_never_panic() {
        for op in [
            Operation::Converse,
            Operation::ConverseStream,
            Operation::Invoke,
            Operation::InvokeWithResponseStream,
        ] {
            let r = run(op, EVENTSTREAM, &[b"<html>502 Bad Gateway</html>"]);
            assert!(r.problem.is_some());
            let r = run(op, "application/json", &[b"\x00\x01\x02garbage"]);
            assert!(r.problem.is_some());
            let mut m = UsageMeter::new(op); // no headers at all
            m.on_body(b"\x00\x00\x00\x10");
            let _ = m.reading();
            let _ = m.finish();
            m.on_body(b"after finish is ignored");
            assert_eq!(m.finish(), m.reading());
        }
    }

    /// Each count of `after` is at least `before`'s: a reading never goes down.
    fn assert_never_lower(before: &Reading, after: &Reading) {
        let (b, a) = (&before.usage, &after.usage);
        assert!(
            a.input_tokens >= b.input_tokens
                && a.output_tokens >= b.output_tokens
                && a.cache_read_tokens >= b.cache_read_tokens
                && a.cache_write_tokens >= b.cache_write_tokens
                && a.images >= b.images
                && after.output_text_bytes >= before.output_text_bytes
                && after.events >= before.events
                && (after.complete || !before.complete),
            "{before:?} then {after:?}"
        );
    }

    /// Noise, valid streams with flipped bits, and JSON-ish noise inside valid frames (so it
    /// reaches every family's event parser), cut at random: usage never decreases from one
    /// chunk to the next nor at the end, and the final reading is the same as for the uncut
    /// body. (`make fuzz` runs the same properties for longer, on every family's shapes.)
    #[test]
    fn usage_never_decreases_and_does_not_depend_on_the_chunking() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const NOISE: &[u8] = br#"{}[]":,0123456789-eE.tfnul\ abc_usage_tokens_delta_text"#;
        fn noise(next: &mut impl FnMut() -> u64) -> String {
            let n = next() % 200;
            (0..n)
                .map(|_| char::from(NOISE[(next() % NOISE.len() as u64) as usize]))
                .collect()
        }
        let ops = [
            Operation::Converse,
            Operation::ConverseStream,
            Operation::Invoke,
            Operation::InvokeWithResponseStream,
        ];
        let types = [EVENTSTREAM, "application/json", "text/plain", ""];
        let valid = [converse_stream(), anthropic_stream(true)];
        let mut grew = 0;
        for round in 0..800u64 {
            let op = ops[(next() % 4) as usize];
            let bytes: Vec<u8> = match round % 4 {
                0 => (0..next() % 2000).map(|_| next() as u8).collect(),
                // Valid streams with a few flipped bits get past the CRC checks sometimes.
                1 => {
                    let mut v = valid[(next() % 2) as usize].clone();
                    for _ in 0..next() % 3 {
                        let i = (next() as usize) % v.len();
                        v[i] ^= 1 << (next() % 8);
                    }
                    v
                }
                // JSON-ish noise as a body...
                2 => noise(&mut next).into_bytes(),
                // ...and inside valid frames, so it reaches the event parsers.
                _ => {
                    let mut v = Vec::new();
                    for _ in 0..next() % 6 {
                        let kind =
                            ["contentBlockDelta", "metadata", "chunk"][(next() % 3) as usize];
                        v.extend(match next() % 3 {
                            0 => chunk(&noise(&mut next)),
                            1 => event(kind, &format!(r#"{{"bytes":"{}"}}"#, noise(&mut next))),
                            _ => event(kind, &noise(&mut next)),
                        });
                    }
                    v
                }
            };
            let ct = types[(next() % 4) as usize];
            let new_meter = || {
                let mut m = UsageMeter::new(op);
                if !ct.is_empty() {
                    m.on_response_headers(200, [("content-type", ct)]);
                }
                m
            };
            let mut m = new_meter();
            let mut last = m.reading();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = ((next() % 97) as usize + 1).min(rest.len());
                let (c, tail) = rest.split_at(n);
                m.on_body(c);
                let now = m.reading();
                assert_never_lower(&last, &now);
                last = now;
                rest = tail;
            }
            let r = m.finish();
            assert_never_lower(&last, &r);
            let mut whole = new_meter();
            whole.on_body(&bytes);
            assert_eq!(
                whole.finish(),
                r,
                "round {round}: the reading depends on the chunking"
            );
            grew += usize::from(r.usage != Usage::default() || r.output_text_bytes > 0);
        }
        // The properties were exercised on readings that moved, not only on empty ones.
        assert!(grew > 50, "{grew}");
    }
}
