//! OpenAI Chat Completions request translation (`Api::ChatCompletions`: read, then translate
//! to Converse on a resolved model).
//!
//! Properties, for any body and model:
//! * a refusal is a 4xx `GatewayError` whose OpenAI reply is `{"error": {"message"…}}`;
//! * otherwise the request becomes Converse (or ConverseStream exactly when `"stream": true`),
//!   never a local reply, with a body that is one strict JSON object (no member twice at any
//!   depth, nothing after it) that the gateway's own body reader accepts, with `messages` and
//!   without the client's `model` or `stream` — or, if a value copied through names a member
//!   twice, a body that reader refuses with 400 (so Bedrock never sees it);
//! * the translation is deterministic: reading and translating again gives the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::dialect::{Api, Dialect, Target, Translation};
use tollgate_core::Operation;
use tollgate_fuzz::{
    check_bedrock_body, check_refusal, translator_config, Input, TRANSLATED_MODELS,
};

fn translate(body: &[u8], model_id: &str) -> Result<(Operation, Vec<u8>), String> {
    let config = translator_config();
    let request = Api::ChatCompletions.read(body).map_err(|e| e.message)?;
    let target = Target {
        config: &config,
        model_id,
        headers: &[],
        now_ms: 1_795_348_800_000,
    };
    match request.translate(&target).map_err(|e| e.message)? {
        Translation::Bedrock(b) => Ok((b.operation, b.body)),
        Translation::Reply { .. } => panic!("a chat completion answered locally"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let model_id = TRANSLATED_MODELS[usize::from(input.u8()) % TRANSLATED_MODELS.len()];
    let body = input.rest();
    let config = translator_config();

    let request = match Api::ChatCompletions.read(body) {
        Ok(r) => r,
        Err(e) => return check_refusal(&e, Dialect::OpenAi),
    };
    let target = Target {
        config: &config,
        model_id,
        headers: &[],
        now_ms: 1_795_348_800_000,
    };
    let b = match request.translate(&target) {
        Ok(Translation::Bedrock(b)) => b,
        Ok(Translation::Reply { .. }) => panic!("a chat completion answered locally"),
        Err(e) => return check_refusal(&e, Dialect::OpenAi),
    };
    let client: serde_json::Value =
        serde_json::from_slice(body).expect("an accepted body is JSON to other parsers too");
    let streams = client["stream"] == serde_json::Value::Bool(true);
    let want = if streams {
        Operation::ConverseStream
    } else {
        Operation::Converse
    };
    assert_eq!(b.operation, want, "stream: {}", client["stream"]);
    let Some(doc) = check_bedrock_body(b.operation, &b.body) else {
        return;
    };
    assert!(doc.contains_key("messages"), "Converse without messages");
    for name in ["model", "stream", "modelId"] {
        assert!(!doc.contains_key(name), "`{name}` sent to Converse");
    }
    assert_eq!(
        translate(body, model_id),
        Ok((b.operation, b.body.clone())),
        "a second translation differs"
    );
});
