//! Chat Completions ↔ Converse: requests, answers, and streams split at every byte.

use serde_json::{json, Value};

use super::request::read;
use super::response::ChatResponse;
use super::*;
use crate::config::Config;
use crate::dialect::refusal::Refusal;
use crate::dialect::{Target, Translation, Translator};
use crate::error::ErrorKind;
use crate::request::auth::hash_key;
use crate::request::operation::Operation;
use crate::response::eventstream;

const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","api_keys":[{{"id":"a","sha256":"{}","models":["*"]}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
        hex::encode(hash_key("k")),
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

/// The Bedrock request `body` translates to on `model_id`.
fn translated_on(
    body: &Value,
    model_id: &str,
) -> Result<crate::dialect::BedrockRequest, GatewayError> {
    let text = body.to_string();
    let req = read(text.as_bytes())?;
    let config = config();
    let target = Target {
        config: &config,
        model_id,
        headers: &[],
        now_ms: 1_700_000_000_123,
    };
    match req.translate(&target)? {
        Translation::Bedrock(b) => Ok(b),
        Translation::Reply { .. } => panic!("a local reply"),
    }
}

fn converse_of(body: Value) -> Value {
    let b = translated_on(&body, HAIKU).unwrap();
    serde_json::from_slice(&b.body).unwrap()
}

fn refusal(body: Value) -> String {
    let e = translated_on(&body, HAIKU).err().expect("refused");
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    assert_eq!(e.to_openai_reply().status, 400);
    e.message
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

// ---- Errors ---------------------------------------------------------------------------------

#[test]
fn the_envelope_and_the_statuses_the_sdk_maps() {
    for (kind, status, ty) in [
        (ErrorKind::BadRequest, 400, "invalid_request_error"),
        (ErrorKind::MissingKey, 401, "authentication_error"),
        (ErrorKind::ModelNotAllowed, 403, "permission_error"),
        (ErrorKind::NotFound, 404, "not_found_error"),
        (ErrorKind::BodyTooLarge, 413, "invalid_request_error"),
        (ErrorKind::BudgetExhausted, 429, "rate_limit_error"),
        (ErrorKind::Internal, 500, "api_error"),
        (ErrorKind::StateUnavailable, 503, "api_error"),
    ] {
        let r = GatewayError::new(kind, "why")
            .retry_after(7)
            .to_openai_reply();
        assert_eq!(r.status, status, "{kind:?}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "why", "type": ty, "param": null, "code": kind.name()}})
        );
        assert!(r.headers.contains(&("retry-after", "7".into())));
        assert!(r
            .headers
            .contains(&("content-type", "application/json".into())));
    }
}

#[test]
fn bedrock_errors_in_openais_words() {
    for (kind, status, want) in [
        ("ValidationException", 400, (400, "invalid_request_error")),
        (
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            429,
            (429, "rate_limit_error"),
        ),
        ("throttlingException", 0, (429, "rate_limit_error")),
        (
            "ServiceQuotaExceededException",
            400,
            (429, "rate_limit_error"),
        ),
        ("ServiceUnavailableException", 503, (503, "api_error")),
        ("ModelNotReadyException", 429, (503, "api_error")),
        ("AccessDeniedException", 403, (403, "permission_error")),
        ("ResourceNotFoundException", 404, (404, "not_found_error")),
        ("ModelTimeoutException", 408, (504, "api_error")),
        ("ModelErrorException", 424, (500, "api_error")),
        ("modelStreamErrorException", 0, (500, "api_error")),
        ("internalServerException", 0, (500, "api_error")),
        ("UnrecognizedClientException", 403, (500, "api_error")),
        ("ExpiredTokenException", 403, (500, "api_error")),
        ("", 413, (413, "invalid_request_error")),
        ("", 200, (500, "api_error")),
    ] {
        assert_eq!(from_bedrock(kind, status), want, "{kind} {status}");
    }
}

#[test]
fn a_refusal_keeps_bedrocks_message_and_class() {
    let (mut r, head) = Refusal::new(
        &ENVELOPE,
        408,
        &[
            (
                "x-amzn-errortype",
                "ModelTimeoutException:http://internal.amazon.com/",
            ),
            ("content-length", "30"),
        ],
    );
    assert_eq!(head.status, Some(504));
    assert!(head.remove.contains(&"content-length"));
    r.push(br#"{"message":"Model has "#);
    r.push(br#"timed out"}"#);
    let v: Value = serde_json::from_slice(&r.finish()).unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "Model has timed out", "type": "api_error", "param": null,
                         "code": "ModelTimeoutException"}})
    );
    let (mut r, head) = Refusal::new(&ENVELOPE, 400, &[]);
    assert_eq!(head.status, None);
    r.push(b"not json");
    let v: Value = serde_json::from_slice(&r.finish()).unwrap();
    assert_eq!(
        v["error"]["message"],
        "Bedrock answered 400 without an error type"
    );
    assert_eq!(v["error"]["code"], "upstream_error");
}

// ---- The request ----------------------------------------------------------------------------

#[test]
fn a_conversation_with_tools_images_and_options() {
    let png = "iVBORw0KGgo=";
    let body = json!({
        "model": "claude-fast",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}"), "detail": "low"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\": 2}"}},
                {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}},
            ], "refusal": null, "annotations": [], "audio": null},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "ok"}]},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "So?", "name": "sam"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "look", "description": "Looks closer",
             "parameters": {"type": "object", "properties": {"zoom": {"type": "integer"}}}, "strict": true}},
            {"type": "function", "function": {"name": "noop", "description": ""}},
        ],
        "tool_choice": "required",
        "max_completion_tokens": 300,
        "temperature": 0.25,
        "top_p": 1,
        "stop": "END",
        "n": 1,
        "stream": true,
        "stream_options": {"include_usage": true},
        "service_tier": "flex",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}, "strict": true}},
    });
    let b = translated_on(&body, HAIKU).unwrap();
    assert_eq!(b.operation, Operation::ConverseStream);
    assert!(b
        .headers
        .contains(&("accept", "application/vnd.amazon.eventstream".into())));
    assert!(b.dropped.is_empty(), "{:?}", b.dropped);
    let v: Value = serde_json::from_slice(&b.body).unwrap();
    assert_eq!(
        v,
        json!({
            "messages": [
                {"role": "user", "content": [
                    {"text": "What is in this image?"},
                    {"image": {"format": "png", "source": {"bytes": png}}},
                ]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "call_1", "name": "look", "input": {"zoom": 2}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "noop", "input": {}}},
                ]},
                // The tool results and the user's next words are one user turn.
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "a cat"}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"text": "ok"}]}},
                    {"text": "So?"},
                ]},
            ],
            "system": [{"text": "Be brief."}, {"text": "Answer in French."}],
            "inferenceConfig": {"maxTokens": 300, "temperature": 0.25, "topP": 1, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [
                    {"toolSpec": {"name": "look", "description": "Looks closer", "inputSchema": {"json":
                        {"type": "object", "properties": {"zoom": {"type": "integer"}}}}}},
                    {"toolSpec": {"name": "noop", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
                ],
                "toolChoice": {"any": {}},
            },
            "outputConfig": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
                "schema": "{\"type\":\"object\"}", "name": "answer"}}}},
            "serviceTier": {"type": "flex"},
        })
    );
}

#[test]
fn the_simplest_request_and_its_operation() {
    let b = translated_on(&chat(json!({})), HAIKU).unwrap();
    assert_eq!(b.operation, Operation::Converse);
    assert!(b.headers.contains(&("accept", "application/json".into())));
    assert!(b
        .headers
        .contains(&("content-type", "application/json".into())));
    let v: Value = serde_json::from_slice(&b.body).unwrap();
    assert_eq!(
        v,
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    );
}

#[test]
fn output_limits_stops_and_choices() {
    let v = converse_of(chat(json!({"max_tokens": 9})));
    assert_eq!(v["inferenceConfig"], json!({"maxTokens": 9}));
    let v = converse_of(chat(json!({"max_tokens": 9, "max_completion_tokens": 9})));
    assert_eq!(v["inferenceConfig"], json!({"maxTokens": 9}));
    let v = converse_of(chat(json!({"stop": ["a", "b"], "temperature": null})));
    assert_eq!(v["inferenceConfig"], json!({"stopSequences": ["a", "b"]}));
    for (choice, want) in [
        (json!("auto"), json!({"auto": {}})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"tool": {"name": "f"}}),
        ),
    ] {
        let v = converse_of(chat(json!({
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": choice})));
        assert_eq!(v["toolConfig"]["toolChoice"], want);
    }
    // `none` without tool calls in the conversation: no tools at all.
    let v = converse_of(chat(json!({
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"})));
    assert!(v.get("toolConfig").is_none(), "{v}");
    let v = converse_of(chat(
        json!({"tools": [], "tool_choice": "auto", "service_tier": "auto"}),
    ));
    assert_eq!(
        v,
        json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    );
    let v = converse_of(chat(
        json!({"service_tier": "priority", "response_format": {"type": "text"}}),
    ));
    assert_eq!(v["serviceTier"], json!({"type": "priority"}));
    assert!(v.get("outputConfig").is_none());
}

#[test]
fn ignored_parameters_are_noted_for_the_record() {
    let b = translated_on(
        &chat(
            json!({"user": "u1", "seed": 4, "metadata": {"a": "b"}, "store": false,
                     "parallel_tool_calls": true, "prompt_cache_key": "k", "logprobs": false,
                     "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
                     "modalities": ["text"], "top_logprobs": null}),
        ),
        HAIKU,
    )
    .unwrap();
    assert_eq!(
        b.dropped,
        // In the body's order (json! sorts its keys).
        [
            "field:metadata",
            "field:prompt_cache_key",
            "field:seed",
            "field:user"
        ]
    );
    let b = translated_on(
        &chat(json!({"store": true, "parallel_tool_calls": false})),
        HAIKU,
    )
    .unwrap();
    assert_eq!(b.dropped, ["field:parallel_tool_calls", "field:store"]);
}

#[test]
fn what_converse_cannot_honour_is_refused_by_name() {
    for (extra, names) in [
        (json!({"n": 2}), "`n`"),
        (json!({"logprobs": true}), "`logprobs`"),
        (json!({"top_logprobs": 3}), "`top_logprobs`"),
        (json!({"logit_bias": {"50256": -100}}), "`logit_bias`"),
        (json!({"presence_penalty": 0.5}), "`presence_penalty`"),
        (json!({"frequency_penalty": -1}), "`frequency_penalty`"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "`response_format`",
        ),
        (json!({"reasoning_effort": "low"}), "`reasoning_effort`"),
        (json!({"verbosity": "low"}), "`verbosity`"),
        (json!({"modalities": ["text", "audio"]}), "`modalities`"),
        (json!({"audio": {"voice": "alloy"}}), "`audio`"),
        (json!({"prediction": {"type": "content"}}), "`prediction`"),
        (json!({"web_search_options": {}}), "`web_search_options`"),
        (json!({"functions": [{"name": "f"}]}), "`functions`"),
        (json!({"function_call": "auto"}), "`function_call`"),
        (json!({"service_tier": "scale"}), "`service_tier`"),
        (
            json!({"top_k": 5}),
            "`top_k` is not a Chat Completions parameter",
        ),
        (
            json!({"top_k": null}),
            "`top_k` is not a Chat Completions parameter",
        ),
        (
            json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
            "`tools[0]`",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}),
            "`tool_choice`",
        ),
        (
            json!({"tool_choice": "required"}),
            "`tool_choice` needs `tools`",
        ),
    ] {
        let why = refusal(chat(extra.clone()));
        assert!(why.contains(names), "{extra}: {why}");
    }
    let why = refusal(chat(json!({"max_tokens": 5, "max_completion_tokens": 6})));
    assert!(
        why.contains("`max_tokens` and `max_completion_tokens`"),
        "{why}"
    );
    // tool_choice `none` cannot be honoured once the conversation has tool calls.
    let why = refusal(json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "1"},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "none",
    }));
    assert!(why.contains("`tool_choice`"), "{why}");
}

#[test]
fn malformed_messages_are_named_by_their_path() {
    let with = |messages: Value| json!({"model": "m", "messages": messages});
    for (body, want) in [
        (json!({"messages": []}), "`model` is required"),
        (json!({"model": "m"}), "`messages` is required"),
        (json!({"model": 5, "messages": []}), "`model` must be a string"),
        (with(json!([])), "`messages` must not be empty"),
        (with(json!({})), "`messages` must be an array"),
        (with(json!([{"content": "x"}])), "`messages[0]`: missing field `role`"),
        (with(json!([{"role": "robot", "content": "x"}])), "`messages[0].role` `robot` is unknown"),
        (with(json!([{"role": "user"}])), "`messages[0].content` is required"),
        (
            with(json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])),
            "`messages[0].content[0]`",
        ),
        (
            with(json!([{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "https://example.com/cat.png"}}]}])),
            "`messages[0].content[0].image_url.url` cannot be honoured on Bedrock: the gateway fetches no URLs",
        ),
        (
            with(json!([{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}])),
            "`image/tiff` images are not served",
        ),
        (
            with(json!([{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "data:image/png,rawbytes"}}]}])),
            "must be base64",
        ),
        (
            with(json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}])),
            "`messages[1].tool_calls[0].function.arguments` must be a JSON object",
        ),
        (
            with(json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}])),
            "`messages[1].tool_calls[0].function.arguments` must be a JSON object",
        ),
        (with(json!([{"role": "tool", "content": "x"}])), "`messages[0].tool_call_id` is required"),
        (with(json!([{"role": "function", "name": "f", "content": "x"}])), "`messages[0].role`"),
        (
            with(json!([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}])),
            "`messages[0].content[0]`: this message takes text parts, not `image_url`",
        ),
    ] {
        let text = body.to_string();
        let e = read(text.as_bytes()).err().expect("refused");
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains(want), "{body}: {}", e.message);
        assert!(!e.message.contains("line 1"), "{}", e.message);
    }
    for body in [
        &b"{\"model\":\"m\",\"model\":\"n\",\"messages\":[]}"[..],
        b"[]",
        b"{} x",
    ] {
        assert_eq!(read(body).err().unwrap().kind, ErrorKind::BadRequest);
    }
}

#[test]
fn an_escaped_data_url_and_blank_assistant_text() {
    // JSON may escape `/` in base64: the bytes are unescaped, whatever the spelling.
    let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url",
        "image_url":{"url":"data:image/JPG;base64,ab\/c"}}]},
        {"role":"assistant","content":"","tool_calls":[{"id":"c","type":"function",
        "function":{"name":"f","arguments":"{}"}}]},
        {"role":"assistant","content":[{"type":"refusal","refusal":"no"}]},
        {"role":"system","content":""}]}"#;
    let req = read(body.as_bytes()).unwrap();
    let v = req_converse(&req);
    assert_eq!(
        v["messages"][0]["content"][0],
        json!({"image": {"format": "jpeg", "source": {"bytes": "ab/c"}}})
    );
    assert_eq!(
        v["messages"][1]["content"],
        json!([{"toolUse": {"toolUseId": "c", "name": "f", "input": {}}}, {"text": "no"}])
    );
    assert!(
        v.get("system").is_none(),
        "an empty system text is left out"
    );
}

fn req_converse(req: &super::request::ChatRequest<'_>) -> Value {
    let config = config();
    let target = Target {
        config: &config,
        model_id: HAIKU,
        headers: &[],
        now_ms: 0,
    };
    match req.translate(&target).unwrap() {
        Translation::Bedrock(b) => serde_json::from_slice(&b.body).unwrap(),
        Translation::Reply { .. } => unreachable!(),
    }
}

#[test]
fn image_models_are_not_chat_models() {
    let e = translated_on(&chat(json!({})), "stability.sd3-5-large-v1:0")
        .err()
        .unwrap();
    assert!(e.message.contains("image model"), "{}", e.message);
}

// ---- The answer -----------------------------------------------------------------------------

fn response(stream: bool, include_usage: bool) -> ChatResponse {
    ChatResponse::new("claude-fast", 1_700_000_000, stream, include_usage)
}

const REQUEST_ID: (&str, &str) = ("x-amzn-RequestId", "4b1e-9");

fn converse_answer() -> Vec<u8> {
    json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Let me see.", "signature": "sig"}}},
            {"text": "Calling \"look\"…"},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "look", "input": {"zoom": 2}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "noop", "input": {}}},
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 20, "totalTokens": 45,
                  "cacheReadInputTokens": 7, "cacheWriteInputTokens": 8},
        "metrics": {"latencyMs": 12},
    })
    .to_string()
    .into_bytes()
}

#[test]
fn a_converse_answer_is_a_chat_completion() {
    let mut t = response(false, false);
    let head = t.head(
        200,
        &[
            REQUEST_ID,
            ("content-length", "400"),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(head.status, None);
    assert_eq!(head.remove, ["content-length"]);
    let answer = converse_answer();
    assert!(t.body(&answer).is_empty(), "held until whole");
    let v: Value = serde_json::from_slice(&t.end()).unwrap();
    assert_eq!(
        v,
        json!({
            "id": "chatcmpl-4b1e-9",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "claude-fast",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Calling \"look\"…",
                    "refusal": null,
                    "tool_calls": [
                        {"id": "tooluse_1", "type": "function",
                         "function": {"name": "look", "arguments": "{\"zoom\":2}"}},
                        {"id": "tooluse_2", "type": "function",
                         "function": {"name": "noop", "arguments": "{}"}},
                    ],
                    "reasoning_content": "Let me see.",
                },
                "logprobs": null,
                "finish_reason": "tool_calls",
            }],
            "usage": {"prompt_tokens": 25, "completion_tokens": 20, "total_tokens": 45,
                      "prompt_tokens_details": {"cached_tokens": 7}},
        })
    );
}

#[test]
fn finish_reasons() {
    for (stop, want) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("something_new", "stop"),
    ] {
        assert_eq!(super::response::finish_reason(stop), want);
    }
}

#[test]
fn an_answer_split_at_every_byte_is_the_same_completion() {
    let answer = converse_answer();
    let whole = {
        let mut t = response(false, false);
        t.head(200, &[REQUEST_ID]);
        t.body(&answer);
        t.end()
    };
    for cut in 0..=answer.len() {
        let mut t = response(false, false);
        t.head(200, &[REQUEST_ID]);
        let (a, b) = answer.split_at(cut);
        let mut out = t.body(a).into_owned();
        out.extend_from_slice(&t.body(b));
        out.extend_from_slice(&t.end());
        assert_eq!(out, whole, "cut at {cut}");
    }
}

#[test]
fn a_text_answer_and_an_unreadable_one() {
    let mut t = response(false, false);
    t.head(200, &[]);
    t.body(br#"{"output":{"message":{"role":"assistant","content":[{"text":"a"},{"text":"b"}]}},"stopReason":"max_tokens","usage":{"inputTokens":1,"outputTokens":2,"totalTokens":3}}"#);
    let v: Value = serde_json::from_slice(&t.end()).unwrap();
    assert_eq!(v["id"], "chatcmpl-");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "ab", "refusal": null})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let mut t = response(false, false);
    t.head(200, &[]);
    t.body(b"{\"output\":");
    let v: Value = serde_json::from_slice(&t.end()).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
}

#[test]
fn a_refused_request_gets_an_openai_error_in_either_mode() {
    for stream in [false, true] {
        let mut t = response(stream, true);
        let head = t.head(
            429,
            &[
                ("x-amzn-errortype", "ThrottlingException"),
                ("content-length", "40"),
            ],
        );
        assert_eq!(head.status, None);
        assert!(head
            .set
            .contains(&("content-type", "application/json".into())));
        assert!(head.remove.contains(&"x-amzn-errortype"));
        assert!(t.body(br#"{"message":"Too many requests"}"#).is_empty());
        let v: Value = serde_json::from_slice(&t.end()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Too many requests", "type": "rate_limit_error",
                             "param": null, "code": "ThrottlingException"}})
        );
    }
}

// ---- The stream -----------------------------------------------------------------------------

fn event(kind: &str, payload: Value) -> Vec<u8> {
    eventstream::encode(
        &[
            (":message-type", "event"),
            (":event-type", kind),
            (":content-type", "application/json"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    eventstream::encode(
        &[
            (":message-type", "exception"),
            (":exception-type", kind),
            (":content-type", "application/json"),
        ],
        json!({"message": message}).to_string().as_bytes(),
    )
}

/// A ConverseStream with text, reasoning and two tool calls, as its frames.
fn converse_stream() -> Vec<Vec<u8>> {
    vec![
        event("messageStart", json!({"role": "assistant", "p": "abc"})),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0,
            "delta": {"reasoningContent": {"text": "Hm."}}, "p": "a"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0,
            "delta": {"reasoningContent": {"signature": "sig"}}, "p": "a"}),
        ),
        event(
            "contentBlockStop",
            json!({"contentBlockIndex": 0, "p": "a"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"text": "Hel"}, "p": "ab"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"text": "lo \"w\"\n"}, "p": "a"}),
        ),
        event(
            "contentBlockStop",
            json!({"contentBlockIndex": 1, "p": "a"}),
        ),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 2,
            "start": {"toolUse": {"toolUseId": "tooluse_A", "name": "look"}}, "p": "a"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 2,
            "delta": {"toolUse": {"input": "{\"zo"}}, "p": "a"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 2,
            "delta": {"toolUse": {"input": "om\": 2}"}}, "p": "a"}),
        ),
        event(
            "contentBlockStop",
            json!({"contentBlockIndex": 2, "p": "a"}),
        ),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 3,
            "start": {"toolUse": {"toolUseId": "tooluse_B", "name": "noop"}}, "p": "a"}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 3,
            "delta": {"toolUse": {"input": ""}}, "p": "a"}),
        ),
        event(
            "contentBlockStop",
            json!({"contentBlockIndex": 3, "p": "a"}),
        ),
        event(
            "messageStop",
            json!({"stopReason": "tool_use", "p": "abcd"}),
        ),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 10, "outputTokens": 20,
            "totalTokens": 33, "cacheReadInputTokens": 3}, "metrics": {"latencyMs": 5}, "p": "a"}),
        ),
    ]
}

/// Everything a stream translator writes for `pieces`, then its end.
fn run(t: &mut ChatResponse, pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&t.body(p));
    }
    out.extend_from_slice(&t.end());
    out
}

fn streaming(include_usage: bool) -> ChatResponse {
    let mut t = response(true, include_usage);
    let head = t.head(
        200,
        &[
            REQUEST_ID,
            ("content-type", "application/vnd.amazon.eventstream"),
        ],
    );
    assert!(head
        .set
        .contains(&("content-type", "text/event-stream".into())));
    assert_eq!(head.remove, ["content-length"]);
    t
}

/// The `data:` lines of an SSE body, as JSON (or the literal `[DONE]`).
fn events(sse: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(sse).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an event: {e:?}"));
            assert!(!data.contains('\n'));
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

#[test]
fn a_converse_stream_is_chat_completion_chunks() {
    let frames = converse_stream();
    let body = frames.concat();
    let out = run(&mut streaming(true), &[&body]);
    let events = events(&out);
    let common = |v: &Value| {
        assert_eq!(v["id"], "chatcmpl-4b1e-9");
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["created"], 1_700_000_000);
        assert_eq!(v["model"], "claude-fast");
    };
    let deltas: Vec<Value> = events
        .iter()
        .filter(|v| {
            v.get("choices")
                .is_some_and(|c| c.as_array().is_some_and(|c| !c.is_empty()))
        })
        .map(|v| {
            common(v);
            assert_eq!(v["usage"], Value::Null);
            assert!(
                v.get("usage").is_some(),
                "every chunk says `usage: null` when it is asked for"
            );
            assert_eq!(v["choices"][0]["index"], 0);
            json!([v["choices"][0]["delta"], v["choices"][0]["finish_reason"]])
        })
        .collect();
    assert_eq!(
        deltas,
        [
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"reasoning_content": "Hm."}, null]),
            json!([{"content": "Hel"}, null]),
            json!([{"content": "lo \"w\"\n"}, null]),
            json!([{"tool_calls": [{"index": 0, "id": "tooluse_A", "type": "function",
                                    "function": {"name": "look", "arguments": ""}}]}, null]),
            json!([{"tool_calls": [{"index": 0, "function": {"arguments": "{\"zo"}}]}, null]),
            json!([{"tool_calls": [{"index": 0, "function": {"arguments": "om\": 2}"}}]}, null]),
            json!([{"tool_calls": [{"index": 1, "id": "tooluse_B", "type": "function",
                                    "function": {"name": "noop", "arguments": ""}}]}, null]),
            json!([{"tool_calls": [{"index": 1, "function": {"arguments": ""}}]}, null]),
            json!([{}, "tool_calls"]),
        ]
    );
    let n = events.len();
    let usage = &events[n - 2];
    common(usage);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 13, "completion_tokens": 20, "total_tokens": 33,
               "prompt_tokens_details": {"cached_tokens": 3}})
    );
    assert_eq!(events[n - 1], "[DONE]");
    assert_eq!(n, deltas.len() + 2);
}

#[test]
fn without_include_usage_no_usage_anywhere() {
    let out = run(&mut streaming(false), &[&converse_stream().concat()]);
    let events = events(&out);
    assert!(
        events.iter().all(|v| v.get("usage").is_none()),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[test]
fn a_stream_split_at_every_byte_is_the_same_stream() {
    let body = converse_stream().concat();
    for include_usage in [false, true] {
        let whole = run(&mut streaming(include_usage), &[&body]);
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(
                run(&mut streaming(include_usage), &[a, b]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&mut streaming(include_usage), &bytes), whole);
    }
}

#[test]
fn each_event_goes_out_as_its_frame_completes() {
    // Nothing is held back: once a frame's last byte is in, its chunk is out; before, none.
    let frames = converse_stream();
    let mut t = streaming(true);
    let mut written = 0;
    for (i, frame) in frames.iter().enumerate() {
        let (most, last) = frame.split_at(frame.len() - 1);
        assert!(t.body(most).is_empty(), "frame {i} is incomplete");
        let out = t.body(last);
        let kinds = events(&out);
        written += kinds.len();
        let expected = match i {
            0 => 1,                   // role
            2 | 3 | 6 | 10 | 13 => 0, // signature, block stops
            15 => 2,                  // usage, [DONE]
            _ => 1,
        };
        assert_eq!(kinds.len(), expected, "frame {i}: {kinds:?}");
    }
    assert_eq!(written, 12);
    assert!(t.end().is_empty());
}

#[test]
fn a_stream_exception_ends_the_stream_with_an_error_event() {
    let frames = converse_stream();
    let mut body = frames[..5].concat();
    body.extend_from_slice(&exception(
        "modelStreamErrorException",
        "The model stumbled.",
    ));
    body.extend_from_slice(&frames[5]);
    let events = events(&run(&mut streaming(false), &[&body]));
    assert_eq!(
        events.last().unwrap(),
        &json!({"error": {"message": "The model stumbled.", "type": "api_error", "param": null,
                          "code": "modelStreamErrorException"}})
    );
    assert_eq!(events.len(), 4, "nothing after the error: {events:?}");
    let body = [
        frames[0].clone(),
        exception("throttlingException", "slow down"),
    ]
    .concat();
    let events = events_of(&body);
    assert_eq!(events.last().unwrap()["error"]["type"], "rate_limit_error");
}

fn events_of(body: &[u8]) -> Vec<Value> {
    events(&run(&mut streaming(false), &[body]))
}

#[test]
fn a_stream_that_stops_short() {
    let frames = converse_stream();
    // Cut inside a message: an error at the end, never a `[DONE]`.
    let short = events_of(&frames[..5].concat());
    assert_eq!(
        short.last().unwrap()["error"]["message"],
        "the model's stream ended before its end of message"
    );
    // The message ended but the usage never came: done, without usage.
    let unmetered = events(&run(&mut streaming(true), &[&frames[..15].concat()]));
    assert_eq!(unmetered.last().unwrap(), "[DONE]");
    assert!(unmetered
        .iter()
        .all(|v| v.get("choices").is_none_or(|c| c != &json!([]))));
    // A torn frame after the message stop is an error too.
    let mut body = frames[..15].concat();
    body.extend_from_slice(&frames[15][..10]);
    assert!(events_of(&body).last().unwrap().get("error").is_some());
    // Bytes that are not EventStream.
    let garbage = events_of(b"\0\0\0\x05garbage-garbage");
    assert_eq!(garbage.len(), 1);
    assert!(garbage[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("could not be read"));
}

#[test]
fn a_cut_off_stream_ends_with_the_budget_error() {
    let frames = converse_stream();
    let mut t = streaming(true);
    let mut out = t.body(&frames[..5].concat()).into_owned();
    out.extend_from_slice(&t.cut_off("budget gone"));
    let events = events(&out);
    assert_eq!(
        events.last().unwrap(),
        &json!({"error": {"message": "budget gone", "type": "rate_limit_error", "param": null,
                          "code": "budget_exhausted"}})
    );
    assert!(t.body(&frames[5]).is_empty(), "nothing after the cut");
}

/// Found by `fuzz/translate_stream`: bytes that are not EventStream after the metadata, in the
/// same piece, put an error event after `[DONE]` (and only when they came in that piece).
#[test]
fn nothing_follows_done_whatever_follows_the_stream() {
    let frames = converse_stream();
    let mut body = frames.concat();
    body.extend_from_slice(b"\0\0\0\x20not an eventstream frame at all!");
    let whole = run(&mut streaming(true), &[&body]);
    let events = events(&whole);
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let split_at = frames.concat().len();
    let split = run(
        &mut streaming(true),
        &[&body[..split_at], &body[split_at..]],
    );
    assert_eq!(whole, split);
}

#[test]
fn nothing_follows_the_end_of_a_stream_not_even_an_unreadable_frame() {
    let frames = converse_stream();
    // Garbage in the same piece as the stream's last frame: a prelude whose CRC is wrong.
    let garbage = [0u8, 0, 0, 16, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0];
    let mut body = frames.concat();
    body.extend_from_slice(&garbage);
    let done = events_of(&body);
    assert_eq!(done.last().unwrap(), &json!("[DONE]"), "{done:?}");
    let mut body = frames[..5].concat();
    body.extend_from_slice(&exception("throttlingException", "slow down"));
    body.extend_from_slice(&garbage);
    let failed = events_of(&body);
    assert_eq!(
        failed.last().unwrap()["error"]["message"],
        "slow down",
        "{failed:?}"
    );
}
