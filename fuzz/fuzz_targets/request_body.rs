//! The request-body reader and the output cap (`request_body::scan`, `RequestBody::output_limit`).
//!
//! Properties, for any body, operation, model and cap:
//! * a body the reader accepts is one JSON object any other parser reads too;
//! * with a cap, every member that can set the output limit (README "Limits": Converse's
//!   `inferenceConfig` and `additionalModelRequestFields` and objects directly inside it; on
//!   invoke the top level and objects directly inside it), found here by an independent walk of
//!   the body as sent, is a non-negative integer at most the cap; Converse always names one;
//!   the reservation (`max_output_tokens`) covers every one of them;
//! * the body as sent is accepted again and a second clamp changes nothing (idempotent);
//! * without a cap the body is sent as it came;
//! * a CountTokens body is never rewritten and reserves no output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::request::body as request_body;
use tollgate_core::Operation;
use tollgate_fuzz::{Input, OPERATIONS};

/// Bedrock's four operations, and CountTokens (the Anthropic dialect's token count).
const OPERATIONS_AND_COUNT: [Operation; 5] = [
    OPERATIONS[0],
    OPERATIONS[1],
    OPERATIONS[2],
    OPERATIONS[3],
    Operation::CountTokens,
];

/// The README's list of members that set the output limit.
const LIMIT_NAMES: &[&str] = &[
    "maxTokens",
    "max_tokens",
    "max_completion_tokens",
    "max_tokens_to_sample",
    "max_gen_len",
    "max_new_tokens",
    "maxTokenCount",
    "max_output_tokens",
    "maxOutputTokens",
];

const MODELS: [&str; 5] = [
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "meta.llama3-8b-instruct-v1:0",
    "amazon.titan-text-express-v1",
    "us.amazon.nova-lite-v1:0",
    "mistral.mistral-large-2402-v1:0",
];

/// Every limit member of `doc` that the README says is clamped: (path, value).
fn limits(doc: &Value, op: Operation) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Some(top) = doc.as_object() else {
        return out;
    };
    let named = |obj: &serde_json::Map<String, Value>, at: &str, out: &mut Vec<(String, Value)>| {
        for (k, v) in obj {
            if LIMIT_NAMES.contains(&k.as_str()) {
                out.push((format!("{at}.{k}"), v.clone()));
            }
        }
    };
    // An object's limit members, and those of the objects directly inside it.
    let two_levels =
        |obj: &serde_json::Map<String, Value>, at: &str, out: &mut Vec<(String, Value)>| {
            named(obj, at, out);
            for (k, v) in obj {
                if let Some(inner) = v.as_object() {
                    named(inner, &format!("{at}.{k}"), out);
                }
            }
        };
    match op {
        Operation::Converse | Operation::ConverseStream => {
            if let Some(ic) = top.get("inferenceConfig").and_then(Value::as_object) {
                named(ic, "inferenceConfig", &mut out);
            }
            if let Some(extra) = top
                .get("additionalModelRequestFields")
                .and_then(Value::as_object)
            {
                two_levels(extra, "additionalModelRequestFields", &mut out);
            }
        }
        Operation::Invoke | Operation::InvokeWithResponseStream => two_levels(top, "", &mut out),
        // Not a model's request: nothing in it sets an output limit.
        Operation::CountTokens => {}
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let op = OPERATIONS_AND_COUNT[usize::from(input.u8()) % OPERATIONS_AND_COUNT.len()];
    let model = MODELS[usize::from(input.u8()) % MODELS.len()];
    let cap_bytes = input.u32();
    // Caps from 0 up, and none.
    let cap = (cap_bytes & 1 == 1).then_some(u64::from(cap_bytes >> 1));
    let body = input.rest();

    // Reading the images a request asks for never fails.
    assert!(tollgate_core::request::images::requested(body) >= 1);

    let Ok(read) = request_body::scan(body, op) else {
        return;
    };
    let doc: Value =
        serde_json::from_slice(body).expect("an accepted body is JSON to other parsers too");
    assert!(doc.is_object(), "an accepted body is a JSON object");

    let limit = read.output_limit(body, model, cap);
    if op == Operation::CountTokens {
        assert_eq!(limit.rewritten, None, "a token count's body was rewritten");
        assert_eq!(
            limit.max_output_tokens, None,
            "a token count reserved output"
        );
        return;
    }
    let Some(cap) = cap else {
        assert_eq!(
            limit.rewritten, None,
            "without a cap the body is sent as it came"
        );
        return;
    };
    let sent = limit.rewritten.as_deref().unwrap_or(body);
    let sent_doc: Value = serde_json::from_slice(sent).expect("the clamped body is JSON");
    let found = limits(&sent_doc, op);
    for (at, v) in &found {
        let n = v
            .as_u64()
            .unwrap_or_else(|| panic!("{at} = {v} is not a non-negative integer after the cap"));
        assert!(n <= cap, "{at} = {n} is over the cap {cap}");
        let reserved = limit
            .max_output_tokens
            .unwrap_or_else(|| panic!("{at} = {n} but nothing reserved"));
        assert!(n <= reserved, "{at} = {n} but only {reserved} reserved");
    }
    if matches!(op, Operation::Converse | Operation::ConverseStream) {
        assert!(
            found
                .iter()
                .any(|(at, _)| at == "inferenceConfig.maxTokens"),
            "Converse names no maxTokens after the cap"
        );
    }
    assert!(limit.max_output_tokens.is_none_or(|m| m <= cap));

    let again = request_body::scan(sent, op).expect("the clamped body is accepted again");
    let second = again.output_limit(sent, model, Some(cap));
    assert_eq!(second.rewritten, None, "a second clamp changed the body");
});
