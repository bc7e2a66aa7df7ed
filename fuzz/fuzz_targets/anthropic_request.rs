//! Anthropic Messages request translation (`Api::Messages`, `Api::CountTokens`: read, then
//! translate on a resolved model, with any `anthropic-beta` / `anthropic-version` headers).
//!
//! Properties, for any body, headers and model:
//! * a refusal is a 4xx `GatewayError` whose Anthropic reply is
//!   `{"type": "error", "error": {"message"…}}`;
//! * `/v1/messages` on a Claude model becomes InvokeModel (InvokeModelWithResponseStream
//!   exactly when `"stream": true`): one strict JSON object the gateway's body reader accepts,
//!   `anthropic_version` `bedrock-2023-05-31`, no `model` or `stream`, and an
//!   `anthropic_beta` list (if any) of flags the configuration allows only, each once — or,
//!   if a value copied through names a member twice (`system[0]` with `text` twice), a body
//!   that reader refuses with 400, so Bedrock never sees it;
//! * on any other model it becomes Converse / ConverseStream: one strict JSON object with
//!   `messages`, without `model` or `stream`;
//! * a token count is Bedrock's CountTokens (a strict JSON object carrying a complete
//!   InvokeModel body that is one too) or a local 200 answer
//!   `{"input_tokens": n}`; nothing else;
//! * the translation is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::config::Config;
use tollgate_core::dialect::{Api, Dialect, Target, Translation};
use tollgate_core::request::model_family;
use tollgate_core::Operation;
use tollgate_fuzz::{
    check_bedrock_body, check_refusal, translator_config, Input, TRANSLATED_MODELS,
};

const BETAS: [&str; 4] = [
    "interleaved-thinking-2025-05-14",
    "context-1m-2025-08-07,unknown-beta-2099-01-01",
    "",
    "token-efficient-tools-2025-02-19, interleaved-thinking-2025-05-14",
];

/// The translation's outcome, comparable: operation and body, or a reply, or the refusal.
fn outcome(
    config: &Config,
    api: Api,
    body: &[u8],
    model_id: &str,
    headers: &[(String, String)],
) -> Result<(Operation, Vec<u8>), String> {
    let request = api.read(body).map_err(|e| e.message)?;
    let target = Target {
        config,
        model_id,
        headers,
        now_ms: 1_795_348_800_000,
    };
    match request.translate(&target).map_err(|e| e.message)? {
        Translation::Bedrock(b) => Ok((b.operation, b.body)),
        Translation::Reply { reply, operation } => Ok((operation, reply.body)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8();
    let api = if selector & 1 == 0 {
        Api::Messages
    } else {
        Api::CountTokens
    };
    let model_id = TRANSLATED_MODELS[usize::from(selector >> 1) % TRANSLATED_MODELS.len()];
    let beta_choice = input.u8();
    let mut headers = Vec::new();
    if beta_choice & 0x80 != 0 {
        // A header of the fuzzer's own.
        let n = usize::from(input.u8());
        let beta = String::from_utf8_lossy(input.bytes(n)).into_owned();
        headers.push(("anthropic-beta".to_string(), beta));
    } else if let Some(b) = BETAS.get(usize::from(beta_choice) % (BETAS.len() + 1)) {
        headers.push(("anthropic-beta".to_string(), b.to_string()));
    }
    headers.push(("anthropic-version".to_string(), "2023-06-01".to_string()));
    let body = input.rest();
    let config = translator_config();

    let request = match api.read(body) {
        Ok(r) => r,
        Err(e) => return check_refusal(&e, Dialect::Anthropic),
    };
    let target = Target {
        config: &config,
        model_id,
        headers: &headers,
        now_ms: 1_795_348_800_000,
    };
    let translated = match request.translate(&target) {
        Ok(t) => t,
        Err(e) => return check_refusal(&e, Dialect::Anthropic),
    };
    let client: Value =
        serde_json::from_slice(body).expect("an accepted body is JSON to other parsers too");
    let streams = client["stream"] == Value::Bool(true);
    let claude = model_family::is_anthropic(model_id);
    let again = outcome(&config, api, body, model_id, &headers);
    match translated {
        Translation::Reply { reply, operation } => {
            assert_eq!(api, Api::CountTokens, "a message answered locally");
            assert_eq!(operation, Operation::CountTokens);
            assert_eq!(reply.status, 200);
            let v = tollgate_fuzz::strict_json(&reply.body).expect("the count is JSON");
            assert!(
                v["input_tokens"].is_u64(),
                "a count without input_tokens: {v}"
            );
            assert_eq!(again, Ok((operation, reply.body)), "a second count differs");
        }
        Translation::Bedrock(b) => {
            let want = match (api, claude, streams) {
                (Api::CountTokens, _, _) => Operation::CountTokens,
                (_, true, false) => Operation::Invoke,
                (_, true, true) => Operation::InvokeWithResponseStream,
                (_, false, false) => Operation::Converse,
                (_, false, true) => Operation::ConverseStream,
            };
            assert_eq!(b.operation, want, "stream: {}", client["stream"]);
            let Some(doc) = check_bedrock_body(b.operation, &b.body) else {
                return;
            };
            for name in ["model", "stream"] {
                assert!(!doc.contains_key(name), "`{name}` sent to Bedrock");
            }
            if matches!(
                b.operation,
                Operation::Invoke | Operation::InvokeWithResponseStream
            ) {
                assert_eq!(doc["anthropic_version"], "bedrock-2023-05-31");
                if let Some(flags) = doc.get("anthropic_beta") {
                    let flags = flags.as_array().expect("anthropic_beta is a list");
                    for (i, f) in flags.iter().enumerate() {
                        let f = f.as_str().expect("a beta flag is a string");
                        assert!(
                            config.anthropic_betas.iter().any(|a| a == f),
                            "beta `{f}` forwarded, not allowed"
                        );
                        assert!(!flags[..i].contains(&Value::from(f)), "beta `{f}` twice");
                    }
                }
            }
            if b.operation == Operation::CountTokens {
                // CountTokens carries a complete InvokeModel body, base64.
                use base64::Engine as _;
                let inner = doc["input"]["invokeModel"]["body"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .expect("CountTokens carries a base64 InvokeModel body");
                let Some(inner) = check_bedrock_body(Operation::Invoke, &inner) else {
                    return;
                };
                assert_eq!(inner["anthropic_version"], "bedrock-2023-05-31");
                assert!(!inner.contains_key("model") && !inner.contains_key("stream"));
            }
            if matches!(b.operation, Operation::Converse | Operation::ConverseStream) {
                assert!(doc.contains_key("messages"), "Converse without messages");
            }
            assert_eq!(
                again,
                Ok((b.operation, b.body)),
                "a second translation differs"
            );
        }
    }
});
