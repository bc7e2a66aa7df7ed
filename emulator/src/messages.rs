//! What Bedrock checks in a conversation, and the tool call an answer makes.
//!
//! - Claude on InvokeModel takes the Messages API with Bedrock's differences (AWS "Anthropic
//!   Claude Messages API: request and response"): `anthropic_version: "bedrock-2023-05-31"` is
//!   required, a member it does not know is refused ("Extra inputs are not permitted": `model`,
//!   `stream`…), so is a beta flag it does not know ("invalid beta flag") and a beta-bound
//!   member whose flag is missing.
//! - In both shapes (Anthropic's blocks, Converse's), images must be base64 of a known format,
//!   and each tool result must answer a tool call of the previous assistant turn; Converse
//!   also needs `toolConfig` once tool blocks appear.
//! - `[[emu:tool=NAME]]` makes the answer call tool NAME of the request's tools, unless the
//!   latest message carries tool results: those are recorded, and the answer is text.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::directives::Directives;
use crate::responses::Operation;

/// The beta flags Bedrock documents for Claude on InvokeModel (the same list as Tollgate's
/// default `anthropic_betas`).
pub const KNOWN_BETAS: &[&str] = &[
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
    "compact-2026-01-12",
];

/// Members of Anthropic's Messages API that Bedrock refuses in a Claude body ("Extra inputs are
/// not permitted"): the model and the streaming switch (path and operation say them), and the
/// Anthropic-only request options.
const REFUSED_MEMBERS: &[&str] = &[
    "model",
    "stream",
    "service_tier",
    "container",
    "mcp_servers",
];

/// Members Bedrock takes only with a beta flag, and the flag.
const BETA_MEMBERS: &[(&str, &str)] = &[
    ("context_management", "context-management-2025-06-27"),
    ("output_config", "effort-2025-11-24"),
];

/// A tool call an answer makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The input, as compact JSON.
    pub input: String,
}

/// What the request's conversation holds, for the answer and the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    pub tool_call: Option<ToolCall>,
    /// The text of the tool results in the latest message.
    pub tool_results: Vec<String>,
    /// Images in the request (all turns).
    pub images: u64,
}

/// Bedrock's refusal: 400 `ValidationException` with this message.
pub type Refused = String;

/// Is `model_id` one of Anthropic's (Claude)?
pub fn is_claude(model_id: &str) -> bool {
    let id = model_id.rsplit('/').next().unwrap_or(model_id);
    id.starts_with("anthropic.")
        || id
            .split_once('.')
            .is_some_and(|(_, r)| r.starts_with("anthropic."))
}

/// Checks a request body of `op` on `model_id` as Bedrock would, and reads its conversation.
pub fn check(
    op: Operation,
    model_id: &str,
    body: &Value,
    directives: &Directives,
    seq: u64,
) -> Result<Conversation, Refused> {
    let converse = op.is_converse();
    if !converse && !is_claude(model_id) {
        // Other families' native formats: nothing checked here.
        return Ok(Conversation::default());
    }
    if !converse {
        check_claude_members(body)?;
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut conversation = Conversation::default();
    let mut previous_calls: Vec<String> = Vec::new();
    let mut tool_blocks = false;
    let last = messages.len().saturating_sub(1);
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let blocks = blocks_of(m.get("content"));
        let mut calls = Vec::new();
        for b in &blocks {
            match block(b, converse) {
                Block::Image(ok) => {
                    ok?;
                    conversation.images += 1;
                }
                Block::ToolCall(id) => {
                    tool_blocks = true;
                    calls.push(id);
                }
                Block::ToolResult(id, text) => {
                    tool_blocks = true;
                    if role != "user" || !previous_calls.contains(&id) {
                        return Err(format!(
                            "messages.{i}: unexpected tool result for `{id}`: each tool result \
                             must answer a tool call of the previous assistant turn"
                        ));
                    }
                    if i == last {
                        conversation.tool_results.push(text);
                    }
                }
                Block::Other => {}
            }
        }
        previous_calls = if role == "assistant" {
            calls
        } else {
            Vec::new()
        };
    }
    let tools = tool_names(body, converse);
    if converse && tool_blocks && tools.is_none() {
        return Err(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
                .into(),
        );
    }
    if let (Some(name), true) = (&directives.tool, conversation.tool_results.is_empty()) {
        let Some((_, schema)) = tools
            .unwrap_or_default()
            .into_iter()
            .find(|(n, _)| n == name)
        else {
            return Err(format!("the request has no tool `{name}` to call"));
        };
        conversation.tool_call = Some(ToolCall {
            id: format!("toolu_emu{seq:012}"),
            name: name.clone(),
            input: input_for(&schema).to_string(),
        });
    }
    Ok(conversation)
}

fn check_claude_members(body: &Value) -> Result<(), Refused> {
    let Some(obj) = body.as_object() else {
        return Err("Malformed input request: the body must be a JSON object".into());
    };
    if obj.get("anthropic_version").and_then(Value::as_str) != Some("bedrock-2023-05-31") {
        return Err(
            "Malformed input request: #: required key [anthropic_version] with value bedrock-2023-05-31 not found"
                .into(),
        );
    }
    let betas: Vec<&str> = match obj.get("anthropic_beta") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Err("anthropic_beta: Input should be a valid list".into()),
    };
    if let Some(bad) = betas.iter().find(|b| !KNOWN_BETAS.contains(b)) {
        return Err(format!("invalid beta flag: {bad}"));
    }
    for name in obj.keys() {
        let needs_flag = BETA_MEMBERS
            .iter()
            .any(|(n, flag)| n == name && !betas.contains(flag));
        if needs_flag || REFUSED_MEMBERS.contains(&name.as_str()) {
            return Err(format!("{name}: Extra inputs are not permitted"));
        }
    }
    if obj.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err("Malformed input request: #: required key [max_tokens] not found".into());
    }
    Ok(())
}

enum Block {
    /// An image, and whether it is valid.
    Image(Result<(), Refused>),
    ToolCall(String),
    /// A tool result: the call it answers, its text.
    ToolResult(String, String),
    Other,
}

fn blocks_of(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    }
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn valid_base64(data: &str) -> bool {
    !data.is_empty()
        && base64::engine::general_purpose::STANDARD
            .decode(data)
            .is_ok()
}

fn block(b: &Value, converse: bool) -> Block {
    if converse {
        if let Some(image) = b.get("image") {
            let format = str_at(image, &["format"]);
            let ok = if !["png", "jpeg", "gif", "webp"].contains(&format) {
                Err(format!("image format `{format}` is not supported"))
            } else if !valid_base64(str_at(image, &["source", "bytes"])) {
                Err("the image's bytes are not valid base64".into())
            } else {
                Ok(())
            };
            return Block::Image(ok);
        }
        if let Some(t) = b.get("toolUse") {
            return Block::ToolCall(str_at(t, &["toolUseId"]).to_string());
        }
        if let Some(t) = b.get("toolResult") {
            return Block::ToolResult(
                str_at(t, &["toolUseId"]).to_string(),
                text_of(t.get("content")),
            );
        }
        return Block::Other;
    }
    match str_at(b, &["type"]) {
        "image" => {
            let media = str_at(b, &["source", "media_type"]);
            let ok = if str_at(b, &["source", "type"]) != "base64" {
                Err("image source type must be base64".into())
            } else if !["image/png", "image/jpeg", "image/gif", "image/webp"].contains(&media) {
                Err(format!("image media type `{media}` is not supported"))
            } else if !valid_base64(str_at(b, &["source", "data"])) {
                Err("the image's data is not valid base64".into())
            } else {
                Ok(())
            };
            Block::Image(ok)
        }
        "tool_use" => Block::ToolCall(str_at(b, &["id"]).to_string()),
        "tool_result" => Block::ToolResult(
            str_at(b, &["tool_use_id"]).to_string(),
            text_of(b.get("content")),
        ),
        _ => Block::Other,
    }
}

/// The request's tools, (name, input schema); `None` without a tool list.
fn tool_names(body: &Value, converse: bool) -> Option<Vec<(String, Value)>> {
    let list = if converse {
        body.get("toolConfig")?.get("tools")?.as_array()?
    } else {
        body.get("tools")?.as_array()?
    };
    Some(
        list.iter()
            .filter_map(|t| {
                let (name, schema) = if converse {
                    let spec = t.get("toolSpec")?;
                    (spec.get("name")?, spec.get("inputSchema")?.get("json")?)
                } else {
                    (t.get("name")?, t.get("input_schema")?)
                };
                Some((name.as_str()?.to_string(), schema.clone()))
            })
            .collect(),
    )
}

/// An input that satisfies the schema's required properties: `"emu"` for a string, 1 for a
/// number, `true` for a boolean, an empty object or list otherwise.
fn input_for(schema: &Value) -> Value {
    let mut input = Map::new();
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for name in required.iter().filter_map(Value::as_str) {
        let kind = schema
            .get("properties")
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string");
        let value = match kind {
            "integer" | "number" => json!(1),
            "boolean" => json!(true),
            "array" => json!([]),
            "object" => json!({}),
            _ => json!("emu"),
        };
        input.insert(name.to_string(), value);
    }
    Value::Object(input)
}

/// The answer to a CountTokens request (`{"input": {"invokeModel": {"body": <base64>}}}` or
/// `{"input": {"converse": {…}}}`): the input tokens, or Bedrock's refusal. Only Claude models
/// can be counted; the count is `[[emu:input=N]]` of the counted body, else its length / 4.
pub fn count_tokens(model_id: &str, body: &Value) -> Result<u64, Refused> {
    if !is_claude(model_id) {
        return Err("The provided model doesn't support counting tokens.".into());
    }
    let input = body.get("input");
    let counted: Vec<u8> = if let Some(invoke) = input.and_then(|i| i.get("invokeModel")) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(str_at(invoke, &["body"]))
            .map_err(|_| "input.invokeModel.body must be base64".to_string())?;
        let inner: Value = serde_json::from_slice(&bytes)
            .map_err(|_| "input.invokeModel.body is not a JSON body".to_string())?;
        check(
            Operation::Invoke,
            model_id,
            &inner,
            &Directives::default(),
            0,
        )?;
        bytes
    } else if let Some(converse) = input.and_then(|i| i.get("converse")) {
        converse.to_string().into_bytes()
    } else {
        return Err("input must hold invokeModel or converse".into());
    };
    let d = Directives::parse(&counted);
    Ok(d.input
        .unwrap_or_else(|| (counted.len() as u64).div_ceil(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

    fn claude(extra: Value) -> Value {
        let mut body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        body
    }

    fn refused(op: Operation, body: Value) -> String {
        check(op, HAIKU, &body, &Directives::default(), 1).unwrap_err()
    }

    #[test]
    fn claude_bodies_are_checked_as_bedrock_does() {
        assert!(check(
            Operation::Invoke,
            HAIKU,
            &claude(json!({})),
            &Directives::default(),
            1
        )
        .is_ok());
        let mut no_version = claude(json!({}));
        no_version
            .as_object_mut()
            .unwrap()
            .remove("anthropic_version");
        assert!(refused(Operation::Invoke, no_version).contains("anthropic_version"));
        for (extra, why) in [
            (
                json!({"model": "m"}),
                "model: Extra inputs are not permitted",
            ),
            (
                json!({"stream": true}),
                "stream: Extra inputs are not permitted",
            ),
            (
                json!({"anthropic_beta": ["claude-code-20250219"]}),
                "invalid beta flag",
            ),
            (
                json!({"context_management": {}}),
                "context_management: Extra inputs",
            ),
        ] {
            assert!(
                refused(Operation::Invoke, claude(extra.clone())).contains(why),
                "{extra}"
            );
        }
        let ok = claude(json!({"anthropic_beta": ["context-management-2025-06-27"],
                               "context_management": {}}));
        assert!(check(Operation::Invoke, HAIKU, &ok, &Directives::default(), 1).is_ok());
        // Other families' native bodies are their own.
        assert!(check(
            Operation::Invoke,
            "meta.llama3-8b-instruct-v1:0",
            &json!({"prompt": "x"}),
            &Directives::default(),
            1
        )
        .is_ok());
    }

    #[test]
    fn tool_calls_and_results() {
        let d = Directives::parse(b"[[emu:tool=look]]");
        let tools = json!([{"name": "look", "input_schema": {"type": "object",
            "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q", "n"]}}]);
        let c = check(
            Operation::Invoke,
            HAIKU,
            &claude(json!({"tools": tools})),
            &d,
            7,
        )
        .unwrap();
        assert_eq!(
            c.tool_call,
            Some(ToolCall {
                id: "toolu_emu000000000007".into(),
                name: "look".into(),
                input: r#"{"n":1,"q":"emu"}"#.into()
            })
        );
        let round_trip = claude(json!({"tools": tools, "messages": [
            {"role": "user", "content": "go [[emu:tool=look]]"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]}]}));
        let c = check(Operation::Invoke, HAIKU, &round_trip, &d, 8).unwrap();
        assert_eq!(
            (c.tool_call, c.tool_results),
            (None, vec!["42".to_string()])
        );
        let orphan = claude(json!({"messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "x"}]}]}));
        assert!(refused(Operation::Invoke, orphan).contains("unexpected tool result"));
        let converse = json!({"messages": [
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "look", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "ok"}]}}]}]});
        assert!(refused(Operation::Converse, converse.clone()).contains("toolConfig"));
        let mut with_config = converse;
        with_config["toolConfig"] =
            json!({"tools": [{"toolSpec": {"name": "look", "inputSchema": {"json": {}}}}]});
        let c = check(
            Operation::Converse,
            "us.amazon.nova-lite-v1:0",
            &with_config,
            &Directives::default(),
            1,
        )
        .unwrap();
        assert_eq!(c.tool_results, ["ok"]);
        let missing = check(Operation::Converse, "m", &json!({"messages": []}), &d, 1).unwrap_err();
        assert!(missing.contains("no tool `look`"));
    }

    #[test]
    fn images_must_be_base64_of_a_known_format() {
        let img = |media: &str, data: &str| {
            claude(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}]}]}))
        };
        let c = check(
            Operation::Invoke,
            HAIKU,
            &img("image/png", "iVBORw0KGgo="),
            &Directives::default(),
            1,
        )
        .unwrap();
        assert_eq!(c.images, 1);
        assert!(
            refused(Operation::Invoke, img("image/tiff", "iVBORw0KGgo=")).contains("media type")
        );
        assert!(refused(Operation::Invoke, img("image/png", "%%%")).contains("base64"));
        let converse = json!({"messages": [{"role": "user", "content": [
            {"image": {"format": "bmp", "source": {"bytes": "iVBORw0KGgo="}}}]}]});
        assert!(refused(Operation::Converse, converse).contains("format"));
    }

    #[test]
    fn token_counts() {
        let inner = claude(json!({})).to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&inner);
        let body = json!({"input": {"invokeModel": {"body": b64}}});
        assert_eq!(
            count_tokens(HAIKU, &body),
            Ok((inner.len() as u64).div_ceil(4))
        );
        let inner = claude(json!({"system": "[[emu:input=77]]"})).to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&inner);
        assert_eq!(
            count_tokens(HAIKU, &json!({"input": {"invokeModel": {"body": b64}}})),
            Ok(77)
        );
        assert!(count_tokens("us.amazon.nova-lite-v1:0", &body)
            .unwrap_err()
            .contains("doesn't support"));
        let bad = base64::engine::general_purpose::STANDARD.encode(r#"{"model":"x"}"#);
        assert!(count_tokens(HAIKU, &json!({"input": {"invokeModel": {"body": bad}}})).is_err());
    }
}
