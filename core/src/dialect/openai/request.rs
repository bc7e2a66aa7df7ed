//! A Chat Completions request as a Converse body.
//!
//! | Chat Completions | Converse |
//! |---|---|
//! | `system` / `developer` messages (wherever they are) | `system`, in order |
//! | `user` messages: text, `image_url` data URLs | `user` turns: `text`, `image` blocks |
//! | `assistant` messages: text, `tool_calls` | `assistant` turns: `text`, `toolUse` blocks |
//! | `tool` messages | `toolResult` blocks in a `user` turn |
//! | `tools` (functions), `tool_choice` | `toolConfig` (`toolSpec`s, `toolChoice` `auto` / `any` / `tool`) |
//! | `max_completion_tokens` (or `max_tokens`), `temperature`, `top_p`, `stop` | `inferenceConfig` |
//! | `response_format` `json_schema` | `outputConfig.textFormat` |
//! | `service_tier` `flex` / `priority` | `serviceTier` (priced by the gateway as on Converse) |
//!
//! Consecutive turns of one role are merged: Converse wants user and assistant to alternate,
//! and a run of `tool` messages (with the user text after them) is one user turn.
//!
//! Refused with 400 naming the parameter, since Converse cannot honour them: `n` other than
//! 1, `logprobs`, `top_logprobs`, a non-empty `logit_bias`, non-zero `presence_penalty` or
//! `frequency_penalty`, `response_format` `json_object`, `reasoning_effort`, `verbosity`,
//! `audio` and `modalities` other than text, `prediction`, `web_search_options`, the
//! deprecated `functions` / `function_call`, `tool_choice` `none` in a conversation that has
//! tool calls, images by URL (the gateway fetches nothing), audio and file parts, and any
//! parameter the API does not have.
//!
//! Ignored, since they change nothing Bedrock generates or bills (listed in the usage record's
//! `dropped` when set): `user`, `seed`, `metadata`, `store`, `parallel_tool_calls`,
//! `prompt_cache_key`, `prompt_cache_retention`, `safety_identifier`, `stream_options.
//! include_obfuscation`, an image's `detail`, a function's `strict`, a message's `name`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::bad;
use super::response::ChatResponse;
use crate::dialect::converse::{
    self, Block, Empty, Image, InputSchema, JsonSchema, Message, OutputConfig, Role, ServiceTier,
    Structure, SystemBlock, TextFormat, Tool, ToolChoice, ToolConfig, ToolResult, ToolSpec,
    ToolUse,
};
use crate::dialect::{
    array, json_members, string, BedrockRequest, ClientRequest, Str, Target, Translation,
};
use crate::error::GatewayError;
use crate::request::model_family;
use crate::request::operation::Operation;

/// A function without `parameters` takes none.
const NO_PARAMETERS: &str = r#"{"type":"object","properties":{}}"#;

/// A `/v1/chat/completions` request, read and translated as far as it can be before its
/// model is resolved.
pub(crate) struct ChatRequest<'a> {
    model: Cow<'a, str>,
    stream: bool,
    include_usage: bool,
    converse: converse::Request<'a>,
    /// Parameters set but ignored (`field:<name>`), for the usage record.
    dropped: Vec<String>,
}

/// Reads the body: every parameter checked, the Converse body built.
pub(super) fn read<'a>(body: &'a [u8]) -> Result<ChatRequest<'a>, GatewayError> {
    let members = json_members(body)?;
    let mut req = ChatRequest {
        model: Cow::Borrowed(""),
        stream: false,
        include_usage: false,
        converse: converse::Request::default(),
        dropped: Vec::new(),
    };
    let mut model = None;
    let mut messages = None;
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    let mut stream_options = None;
    let mut tools = None;
    let mut choice = None;
    for (name, raw) in &members {
        let raw: &'a RawValue = raw;
        let name = name.as_ref();
        if raw.get() == "null" {
            // Every parameter is optional: null is its default.
            if !is_parameter(name) {
                return Err(unknown(name));
            }
            continue;
        }
        match name {
            "model" => model = Some(string(raw, "model")?),
            "messages" => messages = Some(raw),
            "stream" => req.stream = boolean(raw, "stream")?,
            "stream_options" => stream_options = Some(raw),
            "max_tokens" => max_tokens = Some(count(raw, "max_tokens")?),
            "max_completion_tokens" => {
                max_completion_tokens = Some(count(raw, "max_completion_tokens")?)
            }
            "temperature" => req.converse.inference_config.temperature = Some(number(raw, name)?),
            "top_p" => req.converse.inference_config.top_p = Some(number(raw, name)?),
            "stop" => req.converse.inference_config.stop_sequences = stop(raw)?,
            "tools" => tools = Some(raw),
            "tool_choice" => choice = Some(raw),
            "response_format" => req.converse.output_config = response_format(raw)?,
            "service_tier" => req.converse.service_tier = service_tier(raw)?,
            "n" => {
                if count(raw, "n")? != 1 {
                    return Err(cannot("n", "Converse generates one choice per request"));
                }
            }
            "logprobs" => {
                if boolean(raw, "logprobs")? {
                    return Err(cannot("logprobs", "Converse returns no log probabilities"));
                }
            }
            "top_logprobs" => {
                return Err(cannot(
                    "top_logprobs",
                    "Converse returns no log probabilities",
                ))
            }
            "logit_bias" => {
                if !is_empty_object(raw) {
                    return Err(cannot("logit_bias", "Converse takes no token biases"));
                }
            }
            "presence_penalty" | "frequency_penalty" => {
                if number(raw, name)?.get().parse::<f64>().ok() != Some(0.0) {
                    return Err(cannot(name, "Converse has no repetition penalties"));
                }
            }
            "modalities" => {
                let list: Vec<Cow<'_, str>> = serde_json::from_str(raw.get())
                    .map_err(|_| bad("`modalities` must be an array of strings"))?;
                if list.iter().any(|m| m != "text") {
                    return Err(cannot("modalities", "Converse answers with text only"));
                }
            }
            "reasoning_effort" | "verbosity" | "audio" | "prediction" | "web_search_options" => {
                return Err(cannot(name, "Converse has no such option"))
            }
            "functions" | "function_call" => {
                return Err(cannot(
                    name,
                    "the deprecated function-calling parameters are not served; use `tools` \
                     and `tool_choice`",
                ))
            }
            "store" if raw.get() == "false" => {}
            "parallel_tool_calls" if raw.get() == "true" => {}
            "user"
            | "seed"
            | "metadata"
            | "store"
            | "parallel_tool_calls"
            | "prompt_cache_key"
            | "prompt_cache_retention"
            | "safety_identifier" => req.dropped.push(format!("field:{name}")),
            other => return Err(unknown(other)),
        }
    }
    req.model = model.ok_or_else(|| bad("`model` is required"))?;
    let messages = messages.ok_or_else(|| bad("`messages` is required"))?;
    (req.converse.messages, req.converse.system) = turns(messages)?;
    req.converse.inference_config.max_tokens = match (max_tokens, max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                "`max_tokens` and `max_completion_tokens` disagree: set one of them",
            ))
        }
        (a, b) => b.or(a),
    };
    if let Some(raw) = stream_options {
        #[derive(Deserialize)]
        struct StreamOptions {
            #[serde(default)]
            include_usage: Option<bool>,
        }
        let options: StreamOptions = serde_json::from_str(raw.get())
            .map_err(|e| bad(format!("`stream_options`: {}", why(&e))))?;
        req.include_usage = req.stream && options.include_usage == Some(true);
    }
    let has_tool_blocks = req
        .converse
        .messages
        .iter()
        .any(|m| m.content.iter().any(Block::is_tool_block));
    req.converse.tool_config = tool_config(tools, choice, has_tool_blocks)?;
    Ok(req)
}

impl ClientRequest for ChatRequest<'_> {
    fn model(&self) -> &str {
        &self.model
    }

    fn translate(&self, target: &Target<'_>) -> Result<Translation, GatewayError> {
        if model_family::makes_images(target.model_id) {
            return Err(bad(format!(
                "`{}` is an image model; chat completions need a text model",
                self.model
            )));
        }
        let body = serde_json::to_vec(&self.converse)
            .map_err(|e| bad(format!("the request could not be translated: {e}")))?;
        let operation = if self.stream {
            Operation::ConverseStream
        } else {
            Operation::Converse
        };
        let response = ChatResponse::new(
            &self.model,
            target.now_ms / 1000,
            self.stream,
            self.include_usage,
        );
        Ok(BedrockRequest::json(
            operation,
            body,
            Box::new(response),
            self.dropped.clone(),
        ))
    }
}

// ---- Parameters -----------------------------------------------------------------------------

/// Every top-level parameter of the API (a null one is its default, whatever it is).
fn is_parameter(name: &str) -> bool {
    matches!(
        name,
        "model"
            | "messages"
            | "stream"
            | "stream_options"
            | "max_tokens"
            | "max_completion_tokens"
            | "temperature"
            | "top_p"
            | "stop"
            | "tools"
            | "tool_choice"
            | "response_format"
            | "service_tier"
            | "n"
            | "logprobs"
            | "top_logprobs"
            | "logit_bias"
            | "presence_penalty"
            | "frequency_penalty"
            | "modalities"
            | "reasoning_effort"
            | "verbosity"
            | "audio"
            | "prediction"
            | "web_search_options"
            | "functions"
            | "function_call"
            | "user"
            | "seed"
            | "metadata"
            | "store"
            | "parallel_tool_calls"
            | "prompt_cache_key"
            | "prompt_cache_retention"
            | "safety_identifier"
    )
}

fn unknown(name: &str) -> GatewayError {
    bad(format!(
        "`{name}` is not a Chat Completions parameter this gateway knows"
    ))
}

/// A parameter Converse cannot honour.
fn cannot(name: &str, why: &str) -> GatewayError {
    bad(format!("`{name}` cannot be honoured on Bedrock: {why}"))
}

/// A serde error without its position (which counts from a member, not the body).
fn why(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text.get(..at).unwrap_or(&text).to_string(),
        None => text,
    }
}

fn boolean(raw: &RawValue, what: &str) -> Result<bool, GatewayError> {
    serde_json::from_str(raw.get()).map_err(|_| bad(format!("`{what}` must be a boolean")))
}

fn count(raw: &RawValue, what: &str) -> Result<u64, GatewayError> {
    serde_json::from_str(raw.get())
        .map_err(|_| bad(format!("`{what}` must be a non-negative integer")))
}

/// A number, kept as the client wrote it.
fn number<'a>(raw: &'a RawValue, what: &str) -> Result<&'a RawValue, GatewayError> {
    match raw.get().bytes().next() {
        Some(b'-' | b'0'..=b'9') => Ok(raw),
        _ => Err(bad(format!("`{what}` must be a number"))),
    }
}

fn is_empty_object(raw: &RawValue) -> bool {
    json_members(raw.get().as_bytes()).is_ok_and(|m| m.is_empty())
}

fn stop(raw: &RawValue) -> Result<Vec<Cow<'_, str>>, GatewayError> {
    if raw.get().starts_with('"') {
        return Ok(vec![string(raw, "stop")?]);
    }
    let list: Vec<Str<'_>> = serde_json::from_str(raw.get())
        .map_err(|_| bad("`stop` must be a string or an array of strings"))?;
    Ok(list.into_iter().map(|s| s.0).collect())
}

fn response_format(raw: &RawValue) -> Result<Option<OutputConfig<'_>>, GatewayError> {
    #[derive(Deserialize)]
    struct Format<'a> {
        #[serde(borrow)]
        r#type: Cow<'a, str>,
        #[serde(borrow, default)]
        json_schema: Option<Schema<'a>>,
    }
    #[derive(Deserialize)]
    struct Schema<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        description: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        schema: Option<&'a RawValue>,
    }
    let format: Format<'_> = serde_json::from_str(raw.get())
        .map_err(|e| bad(format!("`response_format`: {}", why(&e))))?;
    match format.r#type.as_ref() {
        "text" => Ok(None),
        "json_schema" => {
            let spec = format
                .json_schema
                .ok_or_else(|| bad("`response_format.json_schema` is required"))?;
            let schema = spec
                .schema
                .filter(|s| s.get().starts_with('{'))
                .ok_or_else(|| bad("`response_format.json_schema.schema` must be an object"))?;
            Ok(Some(OutputConfig {
                text_format: TextFormat {
                    r#type: "json_schema",
                    structure: Structure {
                        json_schema: JsonSchema {
                            schema: schema.get(),
                            name: spec.name,
                            description: spec.description.filter(|d| !d.is_empty()),
                        },
                    },
                },
            }))
        }
        "json_object" => Err(cannot(
            "response_format",
            "Converse has no schema-less JSON mode; use `json_schema`",
        )),
        other => Err(bad(format!("`response_format.type` `{other}` is unknown"))),
    }
}

fn service_tier(raw: &RawValue) -> Result<Option<ServiceTier>, GatewayError> {
    match string(raw, "service_tier")?.as_ref() {
        "auto" | "default" => Ok(None),
        "flex" => Ok(Some(ServiceTier { r#type: "flex" })),
        "priority" => Ok(Some(ServiceTier { r#type: "priority" })),
        other => Err(cannot(
            "service_tier",
            &format!("Bedrock has no `{other}` tier (`auto`, `default`, `flex`, `priority`)"),
        )),
    }
}

// ---- Tools ----------------------------------------------------------------------------------

fn tool_config<'a>(
    tools: Option<&'a RawValue>,
    choice: Option<&'a RawValue>,
    has_tool_blocks: bool,
) -> Result<Option<ToolConfig<'a>>, GatewayError> {
    let tools = match tools {
        Some(raw) => tool_list(raw)?,
        None => Vec::new(),
    };
    let choice = match choice {
        None => None,
        Some(raw) => Some(tool_choice(raw)?),
    };
    match choice {
        Some(Choice::None) if has_tool_blocks && !tools.is_empty() => Err(cannot(
            "tool_choice",
            "Converse has no `none` choice, and a conversation with tool calls must declare \
             its tools, which the model may then call",
        )),
        Some(Choice::None) => Ok(None),
        _ if tools.is_empty() => match choice {
            Some(Choice::Auto) | None => Ok(None),
            Some(_) => Err(bad("`tool_choice` needs `tools`")),
        },
        _ => Ok(Some(ToolConfig {
            tools,
            tool_choice: match choice {
                None | Some(Choice::None) => None,
                Some(Choice::Auto) => Some(ToolChoice::Auto(Empty {})),
                Some(Choice::Required) => Some(ToolChoice::Any(Empty {})),
                Some(Choice::Function(name)) => Some(ToolChoice::Tool { name }),
            },
        })),
    }
}

enum Choice<'a> {
    None,
    Auto,
    Required,
    Function(Cow<'a, str>),
}

fn tool_choice(raw: &RawValue) -> Result<Choice<'_>, GatewayError> {
    if raw.get().starts_with('"') {
        return match string(raw, "tool_choice")?.as_ref() {
            "none" => Ok(Choice::None),
            "auto" => Ok(Choice::Auto),
            "required" => Ok(Choice::Required),
            other => Err(bad(format!("`tool_choice` `{other}` is unknown"))),
        };
    }
    let named: InTool<'_> =
        serde_json::from_str(raw.get()).map_err(|e| bad(format!("`tool_choice`: {}", why(&e))))?;
    match (named.r#type.as_ref(), named.function) {
        ("function", Some(f)) => Ok(Choice::Function(f.name)),
        ("function", None) => Err(bad("`tool_choice.function` is required")),
        (other, _) => Err(cannot(
            "tool_choice",
            &format!("`{other}` choices are not served; name one function or say `required`"),
        )),
    }
}

/// A tool, or a tool choice that names one: `{"type": "function", "function": {"name", …}}`.
#[derive(Deserialize)]
struct InTool<'a> {
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    #[serde(borrow, default)]
    function: Option<InFunction<'a>>,
}

#[derive(Deserialize)]
struct InFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

fn tool_list(raw: &RawValue) -> Result<Vec<Tool<'_>>, GatewayError> {
    let mut out = Vec::new();
    for (i, tool) in array(raw, "tools")?.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        let tool: InTool<'_> =
            serde_json::from_str(tool.get()).map_err(|e| bad(format!("`{at}`: {}", why(&e))))?;
        if tool.r#type != "function" {
            return Err(cannot(
                &at,
                &format!("only `function` tools are served, not `{}`", tool.r#type),
            ));
        }
        let f = tool
            .function
            .ok_or_else(|| bad(format!("`{at}.function` is required")))?;
        let json = match f.parameters {
            None => no_parameters(),
            Some(p) if p.get() == "null" => no_parameters(),
            Some(p) if p.get().starts_with('{') => p,
            Some(_) => return Err(bad(format!("`{at}.function.parameters` must be an object"))),
        };
        out.push(Tool::Spec(ToolSpec {
            name: f.name,
            // Converse's description may not be empty.
            description: f.description.filter(|d| !d.is_empty()),
            input_schema: InputSchema { json },
        }));
    }
    Ok(out)
}

fn no_parameters() -> &'static RawValue {
    // Valid JSON, so this never fails; a missing schema is the same to Bedrock either way.
    serde_json::from_str(NO_PARAMETERS).unwrap_or(RawValue::NULL)
}

// ---- Messages -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct InMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<InToolCall<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct InToolCall<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    r#type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<InFunctionCall<'a>>,
}

#[derive(Deserialize)]
struct InFunctionCall<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct InPart<'a> {
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<InImageUrl<'a>>,
}

#[derive(Deserialize)]
struct InImageUrl<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
}

type Turns<'a> = (Vec<Message<'a>>, Vec<SystemBlock<'a>>);

fn turns(raw: &RawValue) -> Result<Turns<'_>, GatewayError> {
    let list = array(raw, "messages")?;
    if list.is_empty() {
        return Err(bad("`messages` must not be empty"));
    }
    let mut turns: Vec<Message<'_>> = Vec::new();
    let mut system = Vec::new();
    for (i, m) in list.into_iter().enumerate() {
        let at = format!("messages[{i}]");
        let m: InMessage<'_> =
            serde_json::from_str(m.get()).map_err(|e| bad(format!("`{at}`: {}", why(&e))))?;
        let (role, content) = match m.role.as_ref() {
            "system" | "developer" => {
                // Converse's system blocks may not be empty.
                let parts = text_parts(m.content, &at, false)?;
                system.extend(
                    parts
                        .into_iter()
                        .filter(|t| !t.is_empty())
                        .map(|text| SystemBlock { text }),
                );
                continue;
            }
            "user" => (Role::User, user_content(m.content, &at)?),
            "assistant" => (Role::Assistant, assistant_content(m, &at)?),
            "tool" => {
                let id = m
                    .tool_call_id
                    .ok_or_else(|| bad(format!("`{at}.tool_call_id` is required")))?;
                let content = text_parts(m.content, &at, false)?
                    .into_iter()
                    .map(Block::Text)
                    .collect();
                (
                    Role::User,
                    vec![Block::ToolResult(ToolResult {
                        tool_use_id: id,
                        content,
                        status: None,
                    })],
                )
            }
            "function" => {
                return Err(cannot(
                    &format!("{at}.role"),
                    "`function` messages are deprecated and not served; use `tool` messages",
                ))
            }
            other => return Err(bad(format!("`{at}.role` `{other}` is unknown"))),
        };
        match turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => turns.push(Message { role, content }),
        }
    }
    Ok((turns, system))
}

/// The text of a message that may hold only text: a string or text parts (an assistant's
/// refusals too, when `refusals`).
fn text_parts<'a>(
    content: Option<&'a RawValue>,
    at: &str,
    refusals: bool,
) -> Result<Vec<Cow<'a, str>>, GatewayError> {
    let Some(raw) = content else {
        return Ok(Vec::new());
    };
    if raw.get().starts_with('"') {
        return Ok(vec![string(raw, &format!("{at}.content"))?]);
    }
    let mut out = Vec::new();
    for (j, part) in parts(raw, at)?.into_iter().enumerate() {
        match (part.r#type.as_ref(), part.text, part.refusal) {
            ("text", Some(text), _) => out.push(text),
            ("refusal", _, Some(text)) if refusals => out.push(text),
            ("text", None, _) => return Err(bad(format!("`{at}.content[{j}].text` is required"))),
            (other, _, _) => {
                return Err(bad(format!(
                    "`{at}.content[{j}]`: this message takes text parts, not `{other}`"
                )))
            }
        }
    }
    Ok(out)
}

fn parts<'a>(raw: &'a RawValue, at: &str) -> Result<Vec<InPart<'a>>, GatewayError> {
    let list = array(raw, &format!("{at}.content"))?;
    list.into_iter()
        .enumerate()
        .map(|(j, p)| {
            serde_json::from_str(p.get())
                .map_err(|e| bad(format!("`{at}.content[{j}]`: {}", why(&e))))
        })
        .collect()
}

fn user_content<'a>(
    content: Option<&'a RawValue>,
    at: &str,
) -> Result<Vec<Block<'a>>, GatewayError> {
    let raw = content.ok_or_else(|| bad(format!("`{at}.content` is required")))?;
    if raw.get().starts_with('"') {
        return Ok(vec![Block::Text(string(raw, &format!("{at}.content"))?)]);
    }
    let mut out = Vec::new();
    for (j, part) in parts(raw, at)?.into_iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        match part.r#type.as_ref() {
            "text" => out.push(Block::Text(
                part.text
                    .ok_or_else(|| bad(format!("`{here}.text` is required")))?,
            )),
            "image_url" => {
                let url = part
                    .image_url
                    .ok_or_else(|| bad(format!("`{here}.image_url` is required")))?
                    .url;
                out.push(Block::Image(data_url_image(url, &here)?));
            }
            "input_audio" | "file" => {
                return Err(cannot(
                    &here,
                    &format!(
                        "`{}` parts are not served; send text and images",
                        part.r#type
                    ),
                ))
            }
            other => return Err(bad(format!("`{here}.type` `{other}` is unknown"))),
        }
    }
    Ok(out)
}

/// An image given as a `data:` URL: Converse takes its base64 bytes as they are.
fn data_url_image<'a>(url: Cow<'a, str>, at: &str) -> Result<Image<'a>, GatewayError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(cannot(
            &format!("{at}.image_url.url"),
            "the gateway fetches no URLs; send the image inline as a `data:image/…;base64,` URL",
        ));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad(format!("`{at}.image_url.url` is not a data URL")))?;
    let mut params = meta.split(';');
    let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(bad(format!(
            "`{at}.image_url.url` must be base64 (`data:image/png;base64,…`)"
        )));
    }
    let format = converse::image_format(&media).ok_or_else(|| {
        bad(format!(
            "`{at}.image_url.url`: `{media}` images are not served: png, jpeg, gif or webp"
        ))
    })?;
    let start = url.len() - data.len();
    let bytes = match url {
        Cow::Borrowed(s) => Cow::Borrowed(s.get(start..).unwrap_or_default()),
        Cow::Owned(s) => Cow::Owned(s.get(start..).unwrap_or_default().to_string()),
    };
    Ok(Image {
        format,
        source: converse::Bytes { bytes },
    })
}

fn assistant_content<'a>(m: InMessage<'a>, at: &str) -> Result<Vec<Block<'a>>, GatewayError> {
    let mut out: Vec<Block<'a>> = text_parts(m.content, at, true)?
        .into_iter()
        .map(Block::Text)
        .collect();
    for (j, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
        let here = format!("{at}.tool_calls[{j}]");
        if let Some(kind) = call.r#type.as_deref().filter(|k| *k != "function") {
            return Err(cannot(
                &here,
                &format!("only `function` tool calls are served, not `{kind}`"),
            ));
        }
        let f = call
            .function
            .ok_or_else(|| bad(format!("`{here}.function` is required")))?;
        out.push(Block::ToolUse(ToolUse {
            tool_use_id: call.id,
            name: f.name,
            input: Cow::Owned(arguments(f.arguments.as_deref().unwrap_or(""), &here)?),
        }));
    }
    // Converse refuses blank text blocks; an assistant turn of tool calls often has one.
    if out
        .iter()
        .any(|b| !matches!(b, Block::Text(t) if t.is_empty()))
    {
        out.retain(|b| !matches!(b, Block::Text(t) if t.is_empty()));
    }
    Ok(out)
}

/// A tool call's `arguments` (JSON text) as the tool use's input object.
fn arguments(text: &str, at: &str) -> Result<Box<RawValue>, GatewayError> {
    let text = text.trim();
    let text = if text.is_empty() { "{}" } else { text };
    let not_object = || {
        bad(format!(
            "`{at}.function.arguments` must be a JSON object in a string"
        ))
    };
    if !text.starts_with('{') {
        return Err(not_object());
    }
    RawValue::from_string(text.to_string()).map_err(|_| not_object())
}
