//! Messages on every other model (Nova, Llama, Mistral…): Converse and ConverseStream,
//! translated both ways. Text, system prompts, images, documents, tools, tool results, prompt
//! cache points, stop reasons and usage have their Converse counterparts; Claude-only content
//! (thinking blocks, server tools) does not.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{bad, betas, member, sse, MessagesRequest, Target, Translation, ENVELOPE};
use crate::dialect::answer::{decode, read_whole, Answer, Frames, Stream};
use crate::dialect::converse::{
    self, image_format, Block, Bytes, Document, Empty, Image, InputSchema, Tool, ToolChoice,
    ToolConfig, ToolResult, ToolSpec, ToolUse, CACHE_POINT,
};
use crate::dialect::refusal::exception_kind;
use crate::dialect::{
    array, json_members, request_id, string, BedrockRequest, Members, ResponseHead, Translator,
};
use crate::error::GatewayError;
use crate::request::operation::Operation;
use crate::response::eventstream::{Decoder, Message};

// ---- The request ----------------------------------------------------------------------------

/// The Converse body of a Messages request. Its turns' roles and its numbers go as the
/// client wrote them (Bedrock judges them); the blocks are Converse's shared shapes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest<'a> {
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    inference_config: InferenceConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: Cow<'a, str>,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a RawValue>,
}

fn object<'a>(raw: &'a RawValue, what: &str) -> Result<Members<'a>, GatewayError> {
    json_members(raw.get().as_bytes()).map_err(|_| bad(format!("`{what}` must be an object")))
}

fn required<'a>(m: &Members<'a>, name: &str, of: &str) -> Result<&'a RawValue, GatewayError> {
    member(m, name).ok_or_else(|| bad(format!("`{of}.{name}` is required")))
}

fn is_string(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

/// What content the translation could not carry, said once each.
struct Notes<'n>(&'n mut Vec<String>);

impl Notes<'_> {
    fn add(&mut self, note: String) {
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}

/// Anthropic content (a string, or a list of blocks) as Converse blocks.
fn content<'a>(
    raw: &'a RawValue,
    what: &str,
    notes: &mut Notes<'_>,
) -> Result<Vec<Block<'a>>, GatewayError> {
    if is_string(raw) {
        return Ok(vec![Block::Text(string(raw, what)?)]);
    }
    let mut out = Vec::new();
    for (i, block) in array(raw, what)?.into_iter().enumerate() {
        let at = format!("{what}[{i}]");
        let b = object(block, &at)?;
        let kind = string(required(&b, "type", &at)?, &format!("{at}.type"))?;
        match kind.as_ref() {
            "text" => out.push(Block::Text(string(
                required(&b, "text", &at)?,
                &format!("{at}.text"),
            )?)),
            "image" => out.push(Block::Image(image(&b, &at)?)),
            "document" => out.push(Block::Document(document(&b, &at, i)?)),
            "tool_use" => out.push(Block::ToolUse(ToolUse {
                tool_use_id: string(required(&b, "id", &at)?, &format!("{at}.id"))?,
                name: string(required(&b, "name", &at)?, &format!("{at}.name"))?,
                input: Cow::Borrowed(required(&b, "input", &at)?),
            })),
            "tool_result" => {
                let result = match member(&b, "content") {
                    None => vec![Block::Text(Cow::Borrowed(""))],
                    Some(c) => content(c, &format!("{at}.content"), notes)?,
                };
                let is_error = member(&b, "is_error").is_some_and(|v| v.get() == "true");
                out.push(Block::ToolResult(ToolResult {
                    tool_use_id: string(
                        required(&b, "tool_use_id", &at)?,
                        &format!("{at}.tool_use_id"),
                    )?,
                    content: result,
                    status: is_error.then_some("error"),
                }));
            }
            // Claude's reasoning, signed for Claude: no other model can take it back.
            "thinking" | "redacted_thinking" => {
                notes.add(format!("block:{kind}"));
                continue;
            }
            other => {
                return Err(bad(format!(
                    "`{at}`: content blocks of type `{other}` are served for Claude models only"
                )))
            }
        }
        if member(&b, "cache_control").is_some() {
            out.push(Block::CachePoint(CACHE_POINT));
        }
    }
    Ok(out)
}

/// The base64 source of an image or document block: (media type, data).
fn base64_source<'a>(
    b: &Members<'a>,
    at: &str,
) -> Result<(Cow<'a, str>, Cow<'a, str>), GatewayError> {
    let source = object(required(b, "source", at)?, &format!("{at}.source"))?;
    let kind = string(
        required(&source, "type", &format!("{at}.source"))?,
        &format!("{at}.source.type"),
    )?;
    let media = member(&source, "media_type")
        .map(|m| string(m, &format!("{at}.source.media_type")))
        .transpose()?
        .unwrap_or_default();
    let data = || {
        string(
            required(&source, "data", &format!("{at}.source"))?,
            &format!("{at}.source.data"),
        )
    };
    match kind.as_ref() {
        "base64" => Ok((media, data()?)),
        // Plain text documents: Converse takes them as bytes.
        "text" => {
            let text = data()?;
            Ok((
                Cow::Borrowed("text/plain"),
                Cow::Owned(base64::engine::general_purpose::STANDARD.encode(text.as_bytes())),
            ))
        }
        other => Err(bad(format!(
            "`{at}.source`: `{other}` sources are not supported here; send the content as base64"
        ))),
    }
}

fn image<'a>(b: &Members<'a>, at: &str) -> Result<Image<'a>, GatewayError> {
    let (media, data) = base64_source(b, at)?;
    let format = image_format(&media).ok_or_else(|| {
        bad(format!(
            "`{at}.source.media_type` `{media}`: images are png, jpeg, gif or webp"
        ))
    })?;
    Ok(Image {
        format,
        source: Bytes { bytes: data },
    })
}

fn document<'a>(b: &Members<'a>, at: &str, i: usize) -> Result<Document<'a>, GatewayError> {
    let (media, data) = base64_source(b, at)?;
    let format = match media.as_ref() {
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "text/html" => "html",
        "text/markdown" => "md",
        other => {
            return Err(bad(format!(
                "`{at}.source.media_type` `{other}` is not a document type Converse reads"
            )))
        }
    };
    Ok(Document {
        format,
        // Converse needs a name per document, of letters, digits, spaces and hyphens.
        name: format!("document-{i}"),
        source: Bytes { bytes: data },
    })
}

fn tools(raw: &RawValue) -> Result<Vec<Tool<'_>>, GatewayError> {
    let mut out = Vec::new();
    for (i, tool) in array(raw, "tools")?.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        let t = object(tool, &at)?;
        if let Some(kind) = member(&t, "type") {
            let kind = string(kind, &format!("{at}.type"))?;
            if kind != "custom" {
                return Err(bad(format!(
                    "`{at}`: `{kind}` is one of Anthropic's own tools, served for Claude models only"
                )));
            }
        }
        out.push(Tool::Spec(ToolSpec {
            name: string(required(&t, "name", &at)?, &format!("{at}.name"))?,
            description: member(&t, "description")
                .map(|d| string(d, &format!("{at}.description")))
                .transpose()?,
            input_schema: InputSchema {
                json: required(&t, "input_schema", &at)?,
            },
        }));
        if member(&t, "cache_control").is_some() {
            out.push(Tool::CachePoint(CACHE_POINT));
        }
    }
    Ok(out)
}

fn tool_choice<'a>(
    raw: &'a RawValue,
    notes: &mut Notes<'_>,
) -> Result<Option<ToolChoice<'a>>, GatewayError> {
    let c = object(raw, "tool_choice")?;
    let kind = string(required(&c, "type", "tool_choice")?, "tool_choice.type")?;
    Ok(match kind.as_ref() {
        "auto" => Some(ToolChoice::Auto(Empty {})),
        "any" => Some(ToolChoice::Any(Empty {})),
        "tool" => Some(ToolChoice::Tool {
            name: string(required(&c, "name", "tool_choice")?, "tool_choice.name")?,
        }),
        // Converse has no "none": the model may still call a tool.
        "none" => {
            notes.add("field:tool_choice".into());
            None
        }
        other => return Err(bad(format!("`tool_choice.type` `{other}` is unknown"))),
    })
}

/// The Converse body for `req`; what it could not carry goes to `dropped`.
fn body(req: &MessagesRequest<'_>, dropped: &mut Vec<String>) -> Result<Vec<u8>, GatewayError> {
    let mut notes = Notes(dropped);
    let mut messages = Vec::new();
    let mut system = Vec::new();
    let mut inference = InferenceConfig {
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop_sequences: None,
    };
    let mut tool_list = None;
    let mut choice = None;
    for (name, raw) in &req.members {
        match name.as_ref() {
            "model" | "stream" => {}
            "messages" => {
                for (i, m) in array(raw, "messages")?.into_iter().enumerate() {
                    let at = format!("messages[{i}]");
                    let m = object(m, &at)?;
                    messages.push(Turn {
                        role: string(required(&m, "role", &at)?, &format!("{at}.role"))?,
                        content: content(
                            required(&m, "content", &at)?,
                            &format!("{at}.content"),
                            &mut notes,
                        )?,
                    });
                }
            }
            "system" => system = content(raw, "system", &mut notes)?,
            "max_tokens" => inference.max_tokens = Some(*raw),
            "temperature" => inference.temperature = Some(*raw),
            "top_p" => inference.top_p = Some(*raw),
            "stop_sequences" => inference.stop_sequences = Some(*raw),
            "tools" => tool_list = Some(tools(raw)?),
            "tool_choice" => choice = tool_choice(raw, &mut notes)?,
            // Claude's own (thinking, metadata, beta fields), and sampling Converse lacks.
            other => notes.add(format!("field:{other}")),
        }
    }
    let tool_config = tool_list.filter(|t| !t.is_empty()).map(|tools| ToolConfig {
        tools,
        tool_choice: choice,
    });
    let request = ConverseRequest {
        messages,
        system,
        inference_config: inference,
        tool_config,
    };
    serde_json::to_vec(&request)
        .map_err(|e| bad(format!("the request could not be translated: {e}")))
}

pub(super) fn translate(
    req: &MessagesRequest<'_>,
    target: &Target<'_>,
) -> Result<Translation, GatewayError> {
    let mut dropped = Vec::new();
    // Beta flags mean nothing to other models: each is noted as left out.
    betas::forwarded(target.header("anthropic-beta"), &[], &[], &mut dropped);
    let body = body(req, &mut dropped)?;
    let operation = if req.stream {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    let response = ConverseResponse::new(req.model.clone(), req.stream);
    Ok(BedrockRequest::json(
        operation,
        body,
        Box::new(response),
        dropped,
    ))
}

// ---- The answer -----------------------------------------------------------------------------

/// A Converse (or ConverseStream) answer for an Anthropic client.
pub(crate) struct ConverseResponse {
    /// The model as the client named it: Anthropic answers carry it.
    model: String,
    stream: bool,
    id: String,
    answer: Answer<Box<Events>>,
}

impl ConverseResponse {
    pub(crate) fn new(model: String, stream: bool) -> Self {
        Self {
            model,
            stream,
            id: String::new(),
            answer: Answer::Pass,
        }
    }
}

impl Translator for ConverseResponse {
    fn head(&mut self, status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        self.id = format!("msg_bdrk_{}", request_id(headers).replace('-', ""));
        if let Some(head) = self.answer.refuse(&ENVELOPE, status, headers) {
            return head;
        }
        if !self.stream {
            return self.answer.hold();
        }
        self.answer = Answer::Stream(Box::new(Events::new(&self.model, &self.id)));
        sse::head()
    }

    fn body<'a>(&mut self, bedrock: &'a [u8]) -> Cow<'a, [u8]> {
        self.answer.body(bedrock)
    }

    fn end(&mut self) -> Vec<u8> {
        let (model, id) = (&self.model, &self.id);
        self.answer.end(|buf| message(buf, model, id))
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

/// Anthropic's usage object.
#[derive(Serialize)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl From<converse::Usage> for Usage {
    fn from(u: converse::Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_creation_input_tokens: u.cache_write_input_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
        }
    }
}

/// Converse's stop reason as Anthropic's.
fn stop_reason(converse: &str) -> &str {
    match converse {
        "guardrail_intervened" | "content_filtered" => "refusal",
        other => other,
    }
}

/// The whole Converse answer as an Anthropic message.
fn message(buf: &[u8], model: &str, id: &str) -> Vec<u8> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Whole {
        output: Output,
        stop_reason: String,
        #[serde(default)]
        usage: converse::Usage,
    }
    #[derive(Deserialize)]
    struct Output {
        message: OutMessage,
    }
    #[derive(Deserialize)]
    struct OutMessage {
        content: Vec<OutBlock>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OutBlock {
        text: Option<String>,
        tool_use: Option<OutToolUse>,
        reasoning_content: Option<Reasoning>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OutToolUse {
        tool_use_id: String,
        name: String,
        input: Box<RawValue>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Reasoning {
        reasoning_text: Option<ReasoningText>,
    }
    #[derive(Deserialize)]
    struct ReasoningText {
        text: String,
        signature: Option<String>,
    }
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Content {
        Text {
            text: String,
        },
        ToolUse {
            id: String,
            name: String,
            input: Box<RawValue>,
        },
        Thinking {
            thinking: String,
            signature: String,
        },
    }
    #[derive(Serialize)]
    struct Message<'a> {
        id: &'a str,
        r#type: &'static str,
        role: &'static str,
        model: &'a str,
        content: Vec<Content>,
        stop_reason: &'a str,
        stop_sequence: Option<()>,
        usage: Usage,
    }
    let answer: Whole = match read_whole(buf) {
        Ok(a) => a,
        Err(why) => return super::error_body("api_error", &why),
    };
    let content = answer
        .output
        .message
        .content
        .into_iter()
        .filter_map(|b| {
            if let Some(t) = b.tool_use {
                return Some(Content::ToolUse {
                    id: t.tool_use_id,
                    name: t.name,
                    input: t.input,
                });
            }
            if let Some(r) = b.reasoning_content.and_then(|r| r.reasoning_text) {
                return Some(Content::Thinking {
                    thinking: r.text,
                    signature: r.signature.unwrap_or_default(),
                });
            }
            b.text.map(|text| Content::Text { text })
        })
        .collect();
    serde_json::to_vec(&Message {
        id,
        r#type: "message",
        role: "assistant",
        model,
        content,
        stop_reason: stop_reason(&answer.stop_reason),
        stop_sequence: None,
        usage: answer.usage.into(),
    })
    .unwrap_or_default()
}

/// What kind of block an index holds, once started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    ToolUse,
}

/// A ConverseStream body becoming Anthropic server-sent events: `messageStart` →
/// `message_start`; the blocks' starts, deltas and stops (a text block has no start in
/// Converse: its first delta opens it); `messageStop`'s stop reason is held until `metadata`
/// brings the usage, then both go out as `message_delta` and `message_stop`.
pub(crate) struct Events {
    decoder: Decoder,
    model: String,
    id: String,
    started: bool,
    blocks: Vec<(u64, Kind)>,
    stop_reason: Option<String>,
    ended: bool,
}

impl Stream for Events {
    fn push(&mut self, bedrock: &[u8]) -> Vec<u8> {
        decode(self, bedrock)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        match self.stop_reason.take() {
            // The usage never came: the stream still ends as Anthropic's do.
            Some(reason) => self.stop(&mut out, &reason, converse::Usage::default()),
            None => sse::error(
                &mut out,
                "api_error",
                "the model's stream ended before its end of message",
            ),
        }
        self.ended = true;
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

    fn unreadable(&mut self, out: &mut Vec<u8>, why: &str) {
        sse::error(out, "api_error", why);
        self.ended = true;
    }

    fn event(&mut self, m: Message<'_>, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if let Some(kind) = exception_kind(&m) {
            super::invoke::stream_exception(out, kind, m.payload);
            self.ended = true;
            return;
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Payload {
            content_block_index: Option<u64>,
            start: Option<Start>,
            delta: Option<Delta>,
            stop_reason: Option<String>,
            usage: Option<converse::Usage>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Start {
            tool_use: Option<StartTool>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct StartTool {
            tool_use_id: String,
            name: String,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Delta {
            text: Option<String>,
            tool_use: Option<ToolInput>,
            reasoning_content: Option<ReasoningDelta>,
        }
        #[derive(Deserialize)]
        struct ToolInput {
            input: String,
        }
        #[derive(Deserialize, Default)]
        struct ReasoningDelta {
            text: Option<String>,
            signature: Option<String>,
        }
        let p: Payload = serde_json::from_slice(m.payload).unwrap_or_default();
        let index = p.content_block_index.unwrap_or(0);
        let delta = |out: &mut Vec<u8>, d: serde_json::Value| {
            sse::json_event(
                out,
                "content_block_delta",
                &serde_json::json!({"type": "content_block_delta", "index": index, "delta": d}),
            );
        };
        match m.event_type() {
            Some("messageStart") => self.message_start(out),
            Some("contentBlockStart") => {
                self.message_start(out);
                if let Some(tool) = p.start.and_then(|s| s.tool_use) {
                    self.blocks.push((index, Kind::ToolUse));
                    sse::json_event(
                        out,
                        "content_block_start",
                        &serde_json::json!({
                            "type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": tool.tool_use_id,
                                              "name": tool.name, "input": {}},
                        }),
                    );
                }
            }
            Some("contentBlockDelta") => {
                self.message_start(out);
                let Some(d) = p.delta else { return };
                if let Some(text) = d.text {
                    self.open(out, index, Kind::Text);
                    delta(out, serde_json::json!({"type": "text_delta", "text": text}));
                } else if let Some(tool) = d.tool_use {
                    self.open(out, index, Kind::ToolUse);
                    delta(
                        out,
                        serde_json::json!({"type": "input_json_delta", "partial_json": tool.input}),
                    );
                } else if let Some(r) = d.reasoning_content {
                    self.open(out, index, Kind::Thinking);
                    if let Some(text) = r.text {
                        delta(
                            out,
                            serde_json::json!({"type": "thinking_delta", "thinking": text}),
                        );
                    }
                    if let Some(signature) = r.signature {
                        delta(
                            out,
                            serde_json::json!({"type": "signature_delta", "signature": signature}),
                        );
                    }
                }
            }
            Some("contentBlockStop") => {
                self.message_start(out);
                self.open(out, index, Kind::Text);
                sse::json_event(
                    out,
                    "content_block_stop",
                    &serde_json::json!({"type": "content_block_stop", "index": index}),
                );
            }
            Some("messageStop") => {
                self.message_start(out);
                self.stop_reason = Some(p.stop_reason.unwrap_or_else(|| "end_turn".into()));
            }
            Some("metadata") => {
                self.message_start(out);
                let reason = self.stop_reason.take().unwrap_or_else(|| "end_turn".into());
                self.stop(out, &reason, p.usage.unwrap_or_default());
            }
            _ => {}
        }
    }
}

impl Events {
    fn new(model: &str, id: &str) -> Self {
        Self {
            decoder: Decoder::default(),
            model: model.to_string(),
            id: id.to_string(),
            started: false,
            blocks: Vec::new(),
            stop_reason: None,
            ended: false,
        }
    }

    fn message_start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        sse::json_event(
            out,
            "message_start",
            &serde_json::json!({
                "type": "message_start",
                "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            }),
        );
    }

    /// Opens block `index` as `kind` unless it is open.
    fn open(&mut self, out: &mut Vec<u8>, index: u64, kind: Kind) {
        if self.blocks.iter().any(|(i, _)| *i == index) {
            return;
        }
        self.blocks.push((index, kind));
        let block = match kind {
            Kind::Text => serde_json::json!({"type": "text", "text": ""}),
            Kind::Thinking => {
                serde_json::json!({"type": "thinking", "thinking": "", "signature": ""})
            }
            // Tool blocks are opened by their own start event (`tool_start`).
            Kind::ToolUse => return,
        };
        sse::json_event(
            out,
            "content_block_start",
            &serde_json::json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
    }

    fn stop(&mut self, out: &mut Vec<u8>, reason: &str, usage: converse::Usage) {
        sse::json_event(
            out,
            "message_delta",
            &serde_json::json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(reason), "stop_sequence": null},
                "usage": Usage::from(usage),
            }),
        );
        sse::json_event(
            out,
            "message_stop",
            &serde_json::json!({"type": "message_stop"}),
        );
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::read;
    use super::*;
    use crate::response::eventstream::encode;
    use serde_json::json;

    fn translate_body(
        body: serde_json::Value,
    ) -> Result<(serde_json::Value, Vec<String>), GatewayError> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let req = read(&bytes, false).unwrap();
        let mut dropped = Vec::new();
        let out = super::body(&req, &mut dropped)?;
        Ok((serde_json::from_slice(&out).unwrap(), dropped))
    }

    #[test]
    fn messages_become_converse() {
        let (v, dropped) = translate_body(json!({
            "model": "nova-lite", "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
            "stop_sequences": ["END"], "metadata": {"user_id": "u"},
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is in it?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "x"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "found", "is_error": true}]},
                {"role": "user", "content": "plain"},
            ],
            "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "tool", "name": "look"},
        }))
        .unwrap();
        assert_eq!(
            v["system"],
            json!([{"text": "be brief"}, {"cachePoint": {"type": "default"}}])
        );
        assert_eq!(
            v["inferenceConfig"],
            json!({"maxTokens": 64, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]})
        );
        let m = &v["messages"];
        assert_eq!(m[0]["content"][0], json!({"text": "what is in it?"}));
        assert_eq!(
            m[0]["content"][1],
            json!({"image": {"format": "png", "source": {"bytes": "iVBORw0K"}}})
        );
        assert_eq!(
            m[0]["content"][2],
            json!({"document": {"format": "txt", "name": "document-2", "source": {"bytes": "aGk="}}})
        );
        assert_eq!(
            m[1]["content"],
            json!([{"toolUse": {"toolUseId": "t1", "name": "look", "input": {"q": "x"}}}])
        );
        assert_eq!(
            m[2]["content"],
            json!([{"toolResult": {"toolUseId": "t1", "content": [{"text": "found"}], "status": "error"}}])
        );
        assert_eq!(
            m[3],
            json!({"role": "user", "content": [{"text": "plain"}]})
        );
        assert_eq!(
            v["toolConfig"],
            json!({"tools": [
                {"toolSpec": {"name": "look", "description": "d", "inputSchema": {"json": {"type": "object"}}}},
                {"cachePoint": {"type": "default"}}],
                "toolChoice": {"tool": {"name": "look"}}})
        );
        // (json! sorts the members: the body's order.)
        assert_eq!(dropped, ["block:thinking", "field:metadata", "field:top_k"]);
    }

    #[test]
    fn what_converse_cannot_take_is_refused() {
        for (body, why) in [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://x"}}]}]}),
                "sources are not supported",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "x"}}]}]}),
                "png, jpeg, gif or webp",
            ),
            (
                json!({"model": "m", "messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]}),
                "Claude models only",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "server_tool_use"}]}]}),
                "Claude models only",
            ),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "`messages[0].role` is required",
            ),
        ] {
            let e = translate_body(body).err().unwrap();
            assert!(e.message.contains(why), "{}", e.message);
        }
    }

    #[test]
    fn an_answer_becomes_a_message() {
        let mut t = ConverseResponse::new("nova-lite".into(), false);
        let head = t.head(
            200,
            &[("x-amzn-requestid", "ab-cd"), ("content-length", "9")],
        );
        assert!(head.remove.contains(&"content-length"));
        let answer = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "hello"},
                {"toolUse": {"toolUseId": "t9", "name": "look", "input": {"q": 1}}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 3, "totalTokens": 20,
                      "cacheReadInputTokens": 4, "cacheWriteInputTokens": 3},
        })
        .to_string();
        let (a, b) = answer.as_bytes().split_at(17);
        let mut out = t.body(a).into_owned();
        out.extend_from_slice(&t.body(b));
        assert!(out.is_empty(), "held until the end");
        let v: serde_json::Value = serde_json::from_slice(&t.end()).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "msg_bdrk_abcd", "type": "message", "role": "assistant", "model": "nova-lite",
                "content": [{"type": "text", "text": "hello"},
                            {"type": "tool_use", "id": "t9", "name": "look", "input": {"q": 1}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 3,
                          "cache_creation_input_tokens": 3, "cache_read_input_tokens": 4},
            })
        );
    }

    fn frame(kind: &str, payload: serde_json::Value) -> Vec<u8> {
        encode(
            &[
                (":message-type", "event"),
                (":event-type", kind),
                (":content-type", "application/json"),
            ],
            payload.to_string().as_bytes(),
        )
    }

    fn stream() -> Vec<u8> {
        [
            frame("messageStart", json!({"role": "assistant", "p": "ab"})),
            frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "hé"}}),
            ),
            frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "llo"}}),
            ),
            frame("contentBlockStop", json!({"contentBlockIndex": 0})),
            frame(
                "contentBlockStart",
                json!({"contentBlockIndex": 1,
                  "start": {"toolUse": {"toolUseId": "t1", "name": "look"}}}),
            ),
            frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"q\":"}}}),
            ),
            frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
            ),
            frame("contentBlockStop", json!({"contentBlockIndex": 1})),
            frame("messageStop", json!({"stopReason": "tool_use"})),
            frame(
                "metadata",
                json!({"usage": {"inputTokens": 7, "outputTokens": 5, "totalTokens": 12},
                                     "metrics": {"latencyMs": 3}}),
            ),
        ]
        .concat()
    }

    fn run(stream: &[u8], at: usize) -> Vec<serde_json::Value> {
        let mut t = ConverseResponse::new("nova-lite".into(), true);
        let head = t.head(200, &[("x-amzn-requestid", "r1")]);
        assert!(head
            .set
            .contains(&("content-type", "text/event-stream".into())));
        let mut out = Vec::new();
        for piece in [&stream[..at], &stream[at..]] {
            out.extend_from_slice(&t.body(piece));
        }
        out.extend_from_slice(&t.end());
        let text = String::from_utf8(out).unwrap();
        text.split_terminator("\n\n")
            .map(|e| {
                let (event, data) = e.split_once('\n').unwrap();
                let v: serde_json::Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(event.strip_prefix("event: ").unwrap(), v["type"]);
                v
            })
            .collect()
    }

    /// Found by `fuzz/translate_stream`: a stream cut off after its `message_stop` got an
    /// error event after it.
    #[test]
    fn a_cut_off_after_the_end_adds_nothing() {
        let mut t = ConverseResponse::new("nova-lite".into(), true);
        t.head(200, &[]);
        let out = String::from_utf8(t.body(&stream()).into_owned()).unwrap();
        assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert_eq!(
            String::from_utf8(t.cut_off("budget gone")).unwrap(),
            "",
            "an event after message_stop"
        );
    }

    #[test]
    fn a_stream_becomes_events_at_every_split() {
        let s = stream();
        let want = run(&s, 0);
        let types: Vec<&str> = want.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(want[0]["message"]["id"], "msg_bdrk_r1");
        assert_eq!(want[0]["message"]["model"], "nova-lite");
        assert_eq!(
            want[1]["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(
            want[2]["delta"],
            json!({"type": "text_delta", "text": "hé"})
        );
        assert_eq!(
            want[5]["content_block"],
            json!({"type": "tool_use", "id": "t1", "name": "look", "input": {}})
        );
        assert_eq!(
            want[6]["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"q\":"})
        );
        assert_eq!(want[9]["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            want[9]["usage"],
            json!({"input_tokens": 7, "output_tokens": 5,
                   "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
        );
        for at in 1..=s.len() {
            assert_eq!(run(&s, at), want, "split at {at}");
        }
    }

    #[test]
    fn streams_that_fail_or_stop_early() {
        let s = stream();
        // An exception after the first text delta.
        let cut = frame("messageStart", json!({"role": "assistant", "p": "ab"})).len()
            + frame(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "hé"}}),
            )
            .len();
        let mut failed = s[..cut].to_vec();
        failed.extend(encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        let events = run(&failed, 5);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "error");
        assert_eq!(
            last["error"],
            json!({"type": "rate_limit_error", "message": "slow down"})
        );
        // Ended after messageStop, before metadata: it still stops cleanly.
        let no_metadata = &s[..s.len() - frame("metadata", json!({"usage": {"inputTokens": 7, "outputTokens": 5, "totalTokens": 12}, "metrics": {"latencyMs": 3}})).len()];
        let events = run(no_metadata, 9);
        assert_eq!(events.last().unwrap()["type"], "message_stop");
        // Ended mid-message: an error, not a silent end.
        let events = run(&s[..cut], 3);
        assert_eq!(events.last().unwrap()["error"]["type"], "api_error");
    }
}
