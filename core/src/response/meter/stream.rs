//! The EventStream reader: a ConverseStream or InvokeWithResponseStream answer is decoded as it
//! arrives, message by message. ConverseStream events are Bedrock's own; an invoke stream's
//! `chunk` events carry the model family's own stream format, base64-encoded.

use core::fmt;
use core::marker::PhantomData;
use std::borrow::Cow;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::wire::{Count, TextLen, Trace, UsageFields, Word};
use super::Reading;
use crate::response::eventstream::{Decoder, Message};
use crate::Operation;

/// A streamed response so far: the decoder's carry-over and the per-event state.
#[derive(Debug)]
pub(super) struct StreamReader {
    decoder: Decoder,
    state: StreamState,
}

impl StreamReader {
    pub(super) fn new(op: Operation) -> Self {
        Self {
            decoder: Decoder::new(),
            state: StreamState::new(op),
        }
    }

    /// Decodes `chunk`, checking `stop` after each message; returns the offset just past the
    /// first message after which it holds (later messages are not read).
    pub(super) fn on_body_until(
        &mut self,
        chunk: &[u8],
        reading: &mut Reading,
        mut stop: impl FnMut(&Reading) -> bool,
    ) -> Option<usize> {
        if self.decoder.error().is_some() {
            return None;
        }
        let Self { decoder, state } = self;
        let mut stopped_at = None;
        let pushed = decoder.push_with_ends(chunk, |m, end| {
            if stopped_at.is_none() {
                state.on_message(m, reading);
                if stop(reading) {
                    stopped_at = Some(end);
                }
            }
        });
        if let Err(err) = pushed {
            reading.note_problem(|| format!("eventstream: {err}"));
        }
        stopped_at
    }

    /// Bytes of a message begun but not finished.
    pub(super) fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// The body has ended: a message cut short is a problem worth recording.
    pub(super) fn finish(&self, reading: &mut Reading) {
        let buffered = self.decoder.buffered();
        if buffered > 0 {
            reading.note_problem(|| {
                format!("stream ended inside an eventstream message ({buffered} bytes held)")
            });
        }
    }
}

/// Scratch capacity kept for base64-decoded chunks between events.
const RETAINED_SCRATCH: usize = 256 * 1024;

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
            (Operation::ConverseStream, b"messageStop") => {
                if let Ok(e) = serde_json::from_slice::<MessageStopEvent>(m.payload) {
                    if e.stop_reason.says_intervened() {
                        r.guardrail.intervened = true;
                    }
                }
            }
            (Operation::ConverseStream, b"metadata") => {
                match serde_json::from_slice::<MetadataEvent>(m.payload) {
                    Ok(e) => {
                        if let Some(units) = e.trace.and_then(|t| t.guardrail) {
                            r.guardrail.raise(&units.0);
                        }
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
        if let Some(units) = e.bedrock_trace.as_ref().and_then(|t| t.guardrail) {
            r.guardrail.raise(&units.0);
        }
        if e.guardrail_action.says_intervened() {
            r.guardrail.intervened = true;
        }

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

fn bad_json(event: &str, index: u64, err: &serde_json::Error) -> String {
    format!("{event} event {index}: invalid JSON: {err}")
}

/// Standard alphabet; padding optional (Bedrock pads, but nothing is lost by not insisting).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

/// Converse-stream `metadata` (also Nova's invoke-stream `metadata`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetadataEvent {
    usage: Option<UsageFields>,
    trace: Option<Trace>,
}

/// Converse-stream `messageStop`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MessageStopEvent {
    #[serde(rename = "stopReason")]
    stop_reason: Word,
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
    /// Bedrock's own, on the last chunk of a request with a guardrail.
    #[serde(rename = "amazon-bedrock-trace")]
    bedrock_trace: Option<Trace>,
    #[serde(rename = "amazon-bedrock-guardrailAction")]
    guardrail_action: Word,
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
            || self.bedrock_trace.is_some()
            || self.guardrail_action.0.is_some()
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
