//! Bedrock's Converse API as a translation target: the request body a translated dialect
//! writes (serialized, borrowing from the client's body where it can), and the answer and the
//! ConverseStream events it reads back. Shapes follow the `bedrock-runtime` service model
//! (`ConverseRequest`, `ContentBlock`, `ToolConfiguration`, `ConverseStreamOutput`, …).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

// ---- The request ----------------------------------------------------------------------------

/// A Converse (or ConverseStream) request body; the model is in the path.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    pub messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<SystemBlock<'a>>,
    #[serde(skip_serializing_if = "InferenceConfig::is_empty")]
    pub inference_config: InferenceConfig<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<OutputConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<ServiceTier>,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Serialize)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Vec<Block<'a>>,
}

/// A `SystemContentBlock`.
#[derive(Serialize)]
pub struct SystemBlock<'a> {
    pub text: Cow<'a, str>,
}

/// A `ContentBlock` (a union: one member each).
#[derive(Serialize)]
pub enum Block<'a> {
    #[serde(rename = "text")]
    Text(Cow<'a, str>),
    #[serde(rename = "image")]
    Image(Image<'a>),
    #[serde(rename = "toolUse")]
    ToolUse(ToolUse<'a>),
    #[serde(rename = "toolResult")]
    ToolResult(ToolResult<'a>),
    #[serde(rename = "document")]
    Document(Document<'a>),
    /// Where a prompt cache ends.
    #[serde(rename = "cachePoint")]
    CachePoint(CachePoint),
}

/// A `CachePointBlock`: the prompt before it may be cached.
#[derive(Serialize)]
pub struct CachePoint {
    pub r#type: &'static str,
}

/// The only cache point there is.
pub const CACHE_POINT: CachePoint = CachePoint { r#type: "default" };

impl Block<'_> {
    pub fn is_tool_block(&self) -> bool {
        matches!(self, Self::ToolUse(_) | Self::ToolResult(_))
    }
}

/// The `ImageBlock` format of an image's media type: Converse reads png, jpeg, gif and webp.
pub fn image_format(media_type: &str) -> Option<&'static str> {
    match media_type {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

/// An `ImageBlock` with its bytes inline (base64 in JSON, as the service model's blobs are).
#[derive(Serialize)]
pub struct Image<'a> {
    /// `png`, `jpeg`, `gif` or `webp`.
    pub format: &'static str,
    pub source: Bytes<'a>,
}

/// A `DocumentBlock` with its bytes inline.
#[derive(Serialize)]
pub struct Document<'a> {
    /// `pdf`, `txt`, `csv`, `html`, `md`, …
    pub format: &'static str,
    /// Letters, digits, spaces and hyphens; one per document of a request.
    pub name: String,
    pub source: Bytes<'a>,
}

#[derive(Serialize)]
pub struct Bytes<'a> {
    /// Base64.
    pub bytes: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolUse<'a> {
    pub tool_use_id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    /// A JSON object.
    pub input: Cow<'a, RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolResult<'a> {
    pub tool_use_id: Cow<'a, str>,
    /// `ToolResultContentBlock`s: text here.
    pub content: Vec<Block<'a>>,
    /// `error` for a failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Numbers as the client wrote them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<Cow<'a, str>>,
}

impl InferenceConfig<'_> {
    pub fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_empty()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig<'a> {
    pub tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice<'a>>,
}

/// A `Tool` union.
#[derive(Serialize)]
pub enum Tool<'a> {
    #[serde(rename = "toolSpec")]
    Spec(ToolSpec<'a>),
    /// Where a prompt cache of the tools ends.
    #[serde(rename = "cachePoint")]
    CachePoint(CachePoint),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec<'a> {
    pub name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
    pub input_schema: InputSchema<'a>,
}

#[derive(Serialize)]
pub struct InputSchema<'a> {
    /// A JSON Schema object, as the client wrote it.
    pub json: &'a RawValue,
}

#[derive(Serialize)]
pub struct Empty {}

#[derive(Serialize)]
pub enum ToolChoice<'a> {
    #[serde(rename = "auto")]
    Auto(Empty),
    #[serde(rename = "any")]
    Any(Empty),
    #[serde(rename = "tool")]
    Tool { name: Cow<'a, str> },
}

/// `outputConfig`: structured output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputConfig<'a> {
    pub text_format: TextFormat<'a>,
}

#[derive(Serialize)]
pub struct TextFormat<'a> {
    /// `json_schema`.
    pub r#type: &'static str,
    pub structure: Structure<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Structure<'a> {
    pub json_schema: JsonSchema<'a>,
}

#[derive(Serialize)]
pub struct JsonSchema<'a> {
    /// The schema as JSON text (the service model's `String`, not a document).
    pub schema: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
pub struct ServiceTier {
    /// `priority`, `default`, `flex` or `reserved`.
    pub r#type: &'static str,
}

// ---- The answer -----------------------------------------------------------------------------

/// Token counts as Converse reports them: `inputTokens` excludes cached input.
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub cache_write_input_tokens: u64,
}

/// A Converse answer (`ConverseResponse`), what a translation reads of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer<'a> {
    #[serde(borrow)]
    pub output: Output<'a>,
    #[serde(borrow)]
    pub stop_reason: Cow<'a, str>,
    /// Absent or unreadable usage is zero here: billing reads Bedrock's bytes, not this.
    #[serde(default, deserialize_with = "lenient_usage")]
    pub usage: Usage,
}

#[derive(Deserialize)]
pub struct Output<'a> {
    #[serde(borrow)]
    pub message: OutMessage<'a>,
}

#[derive(Deserialize)]
pub struct OutMessage<'a> {
    #[serde(borrow)]
    pub content: Vec<OutBlock<'a>>,
}

/// An answer's `ContentBlock`: the members a translation carries.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutBlock<'a> {
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_use: Option<OutToolUse<'a>>,
    #[serde(borrow, default)]
    pub reasoning_content: Option<OutReasoning<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutToolUse<'a> {
    #[serde(borrow)]
    pub tool_use_id: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub input: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutReasoning<'a> {
    #[serde(borrow, default)]
    pub reasoning_text: Option<ReasoningText<'a>>,
}

#[derive(Deserialize)]
pub struct ReasoningText<'a> {
    #[serde(borrow)]
    pub text: Cow<'a, str>,
}

fn lenient_usage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Usage, D::Error> {
    Ok(serde_json::Value::deserialize(d)
        .ok()
        .and_then(|v| Usage::deserialize(v).ok())
        .unwrap_or_default())
}

// ---- The stream's events --------------------------------------------------------------------

/// `contentBlockStart`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStart<'a> {
    #[serde(default)]
    pub content_block_index: u64,
    #[serde(borrow)]
    pub start: Start<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start<'a> {
    #[serde(borrow, default)]
    pub tool_use: Option<ToolUseStart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolUseStart<'a> {
    #[serde(borrow)]
    pub tool_use_id: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `contentBlockDelta`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDelta<'a> {
    #[serde(default)]
    pub content_block_index: u64,
    #[serde(borrow)]
    pub delta: Delta<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta<'a> {
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_use: Option<ToolUseDelta<'a>>,
    #[serde(borrow, default)]
    pub reasoning_content: Option<ReasoningDelta<'a>>,
}

#[derive(Deserialize)]
pub struct ToolUseDelta<'a> {
    /// A piece of the tool input's JSON text.
    #[serde(borrow)]
    pub input: Cow<'a, str>,
}

#[derive(Deserialize)]
pub struct ReasoningDelta<'a> {
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
}

/// `messageStop`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStop<'a> {
    #[serde(borrow)]
    pub stop_reason: Cow<'a, str>,
}

/// `metadata`.
#[derive(Deserialize)]
pub struct Metadata {
    #[serde(default, deserialize_with = "lenient_usage")]
    pub usage: Usage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_the_service_models_shape() {
        let schema = RawValue::from_string(r#"{"type":"object"}"#.into()).unwrap();
        let temperature = RawValue::from_string("0.5".into()).unwrap();
        let req = Request {
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![
                        Block::Text("hi".into()),
                        Block::Image(Image {
                            format: "png",
                            source: Bytes {
                                bytes: "iVBO".into(),
                            },
                        }),
                        Block::Document(Document {
                            format: "txt",
                            name: "document-2".into(),
                            source: Bytes {
                                bytes: "aGk=".into(),
                            },
                        }),
                        Block::CachePoint(CACHE_POINT),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![Block::ToolUse(ToolUse {
                        tool_use_id: "t1".into(),
                        name: "f".into(),
                        input: Cow::Owned(RawValue::from_string("{}".into()).unwrap()),
                    })],
                },
                Message {
                    role: Role::User,
                    content: vec![Block::ToolResult(ToolResult {
                        tool_use_id: "t1".into(),
                        content: vec![Block::Text("42".into())],
                        status: Some("error"),
                    })],
                },
            ],
            system: vec![SystemBlock { text: "be".into() }],
            inference_config: InferenceConfig {
                max_tokens: Some(5),
                temperature: Some(&temperature),
                top_p: None,
                stop_sequences: vec!["x".into()],
            },
            tool_config: Some(ToolConfig {
                tools: vec![
                    Tool::Spec(ToolSpec {
                        name: "f".into(),
                        description: None,
                        input_schema: InputSchema { json: &schema },
                    }),
                    Tool::CachePoint(CACHE_POINT),
                ],
                tool_choice: Some(ToolChoice::Any(Empty {})),
            }),
            output_config: Some(OutputConfig {
                text_format: TextFormat {
                    r#type: "json_schema",
                    structure: Structure {
                        json_schema: JsonSchema {
                            schema: r#"{"type":"object"}"#,
                            name: Some("n".into()),
                            description: None,
                        },
                    },
                },
            }),
            service_tier: Some(ServiceTier { r#type: "flex" }),
        };
        let v: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "messages": [
                    {"role": "user", "content": [
                        {"text": "hi"}, {"image": {"format": "png", "source": {"bytes": "iVBO"}}},
                        {"document": {"format": "txt", "name": "document-2", "source": {"bytes": "aGk="}}},
                        {"cachePoint": {"type": "default"}}]},
                    {"role": "assistant", "content": [
                        {"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
                    {"role": "user", "content": [
                        {"toolResult": {"toolUseId": "t1", "content": [{"text": "42"}], "status": "error"}}]},
                ],
                "system": [{"text": "be"}],
                "inferenceConfig": {"maxTokens": 5, "temperature": 0.5, "stopSequences": ["x"]},
                "toolConfig": {
                    "tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}},
                              {"cachePoint": {"type": "default"}}],
                    "toolChoice": {"any": {}},
                },
                "outputConfig": {"textFormat": {"type": "json_schema", "structure": {
                    "jsonSchema": {"schema": "{\"type\":\"object\"}", "name": "n"}}}},
                "serviceTier": {"type": "flex"},
            })
        );
        let empty = serde_json::to_string(&Request::default()).unwrap();
        assert_eq!(empty, r#"{"messages":[]}"#);
    }

    #[test]
    fn images_are_the_four_formats_converse_reads() {
        for (media, format) in [
            ("image/png", Some("png")),
            ("image/jpeg", Some("jpeg")),
            ("image/jpg", Some("jpeg")),
            ("image/gif", Some("gif")),
            ("image/webp", Some("webp")),
            ("image/tiff", None),
            ("IMAGE/PNG", None),
            ("", None),
        ] {
            assert_eq!(image_format(media), format, "{media}");
        }
    }

    #[test]
    fn answers_and_events_read_leniently_where_billing_does_not_depend_on_them() {
        let a: Answer = serde_json::from_str(
            r#"{"output":{"message":{"role":"assistant","content":[{"text":"a"},
                {"toolUse":{"toolUseId":"t","name":"f","input":{"x":1}}},
                {"reasoningContent":{"reasoningText":{"text":"hm","signature":"s"}}}]}},
                "stopReason":"tool_use","usage":{"inputTokens":3,"outputTokens":-1},"metrics":{}}"#,
        )
        .unwrap();
        assert_eq!(a.output.message.content.len(), 3);
        assert_eq!(a.usage, Usage::default(), "a negative count reads as none");
        let d: BlockDelta = serde_json::from_str(
            r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"a"}},"p":"x"}"#,
        )
        .unwrap();
        assert_eq!(d.content_block_index, 2);
        assert_eq!(d.delta.tool_use.unwrap().input, "{\"a");
    }
}
