//! Translated routes through the whole exchange: the model read from the body decides the
//! allowlist, the operation and the price; the meter reads Bedrock's bytes, the client gets
//! its own dialect.

use base64::Engine as _;

use super::*;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::response::eventstream;
use crate::store::memory::MemoryStore;

const NOVA: &str = "us.amazon.nova-lite-v1:0";

fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "aliases":{{"claude-fast":"{HAIKU}","nova-lite":"{NOVA}"}},
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
                          "limits":{{"max_output_tokens":100}}}},
                        {{"id":"b","sha256":"{}","models":["claude-fast"]}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}},
            "max_request_body_bytes":4096}}"#,
        hex::encode(hash_key("ka")),
        hex::encode(hash_key("kb")),
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn admitted(key: &str, path: &str) -> Box<Exchange> {
    let headers = [
        ("x-api-key", key),
        (
            "anthropic-beta",
            "claude-code-20250219,context-management-2025-06-27",
        ),
    ];
    match admit(&config(), "POST", path, &headers, 1_000) {
        Admission::Forward(ex) => ex,
        _ => panic!("not admitted"),
    }
}

fn send(ex: &mut Exchange, body: &str) -> Result<Outbound, GatewayError> {
    ex.upstream_request(
        &config(),
        &CasCounters(&MemoryStore::default()),
        &mut SigningKeyCache::default(),
        body.as_bytes(),
        SystemTime::UNIX_EPOCH,
    )
}

fn upstream(out: Outbound) -> UpstreamRequest {
    out.upstream().expect("sent upstream")
}

#[test]
fn claude_goes_to_invoke_with_its_output_capped() {
    let mut ex = admitted("ka", "/v1/messages?beta=true");
    let up = upstream(
        send(
            &mut ex,
            r#"{"model":"claude-fast","max_tokens":5000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap(),
    );
    assert_eq!(
        up.path,
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke-with-response-stream"
    );
    assert_eq!(
        (ex.model.as_str(), ex.model_id.as_str()),
        ("claude-fast", HAIKU)
    );
    let body: serde_json::Value = serde_json::from_slice(up.body.as_deref().unwrap()).unwrap();
    // The key's cap of 100 applies to the translated body.
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(body["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(
        body["anthropic_beta"],
        serde_json::json!(["context-management-2025-06-27"])
    );
    assert!(up
        .set_headers
        .contains(&("accept".into(), "application/vnd.amazon.eventstream".into())));
    assert!(up.remove_headers.contains(&"anthropic-beta".to_string()));
    assert_eq!(ex.estimate.output_tokens, 100);
    let record = ex
        .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
        .unwrap();
    assert_eq!(record.dialect, Dialect::Anthropic);
    assert_eq!(record.dropped, ["beta:claude-code-20250219"]);
}

#[test]
fn other_models_go_to_converse() {
    let mut ex = admitted("ka", "/v1/messages");
    let up = upstream(
        send(
            &mut ex,
            r#"{"model":"nova-lite","max_tokens":7,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap(),
    );
    assert_eq!(up.path, "/model/us.amazon.nova-lite-v1%3A0/converse");
    let body: serde_json::Value = serde_json::from_slice(up.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["inferenceConfig"]["maxTokens"], 7);
    assert_eq!(body["messages"][0]["content"][0]["text"], "hi");
}

#[test]
fn the_model_in_the_body_meets_the_allowlist_in_the_clients_dialect() {
    for (model, kind) in [
        ("nova-lite", ErrorKind::ModelNotAllowed),
        ("claude-sonnet-4-5", ErrorKind::UnknownModel),
    ] {
        let mut ex = admitted("kb", "/v1/messages");
        let e = send(
            &mut ex,
            &format!(r#"{{"model":"{model}","max_tokens":1,"messages":[]}}"#),
        )
        .unwrap_err();
        assert_eq!(e.kind, kind);
        let r = e.to_reply(ex.dialect);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "error", "{model}");
        let record = ex
            .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
            .unwrap();
        assert_eq!((record.status, record.forwarded), (kind.status(), false));
    }
}

#[test]
fn token_counts_for_claude_ask_bedrock_and_others_are_estimated_here() {
    let body = r#"{"model":"claude-fast","messages":[{"role":"user","content":"hi"}]}"#;
    let mut ex = admitted("ka", "/v1/messages/count_tokens?beta=true");
    let up = upstream(send(&mut ex, body).unwrap());
    assert_eq!(
        up.path,
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/count-tokens"
    );
    let v: serde_json::Value = serde_json::from_slice(up.body.as_deref().unwrap()).unwrap();
    let inner = base64::engine::general_purpose::STANDARD
        .decode(v["input"]["invokeModel"]["body"].as_str().unwrap())
        .unwrap();
    let inner: serde_json::Value = serde_json::from_slice(&inner).unwrap();
    assert_eq!(inner["max_tokens"], 1);
    assert_eq!(inner["anthropic_version"], "bedrock-2023-05-31");
    // Free: nothing reserved beyond the request itself, nothing billed.
    assert_eq!(ex.estimate, Usage::default());
    ex.on_response_headers(200, [("content-type", "application/json")]);
    let mut out = ex
        .on_response_body(br#"{"inputTokens":12}"#)
        .bytes
        .into_owned();
    out.extend(ex.on_response_end());
    assert_eq!(out, br#"{"input_tokens":12}"#);
    let record = ex
        .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
        .unwrap();
    assert_eq!((record.cost_pico_usd, record.input_tokens), (0, 0));
    assert_eq!(record.operation, Operation::CountTokens);

    let mut ex = admitted("ka", "/v1/messages/count_tokens");
    let nova = body.replace("claude-fast", "nova-lite");
    let Outbound::Reply(r) = send(&mut ex, &nova).unwrap() else {
        panic!("not answered locally")
    };
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["estimated"], true);
    assert_eq!(v["input_tokens"], nova.len().div_ceil(4));
    let record = ex
        .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
        .unwrap();
    assert_eq!((record.status, record.forwarded), (200, false));
    assert_eq!(
        (record.operation, record.cost_pico_usd, record.usage_source),
        (
            Operation::CountTokens,
            0,
            crate::accounting::record::UsageSource::None
        )
    );
}

fn chunk(inner: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
    eventstream::encode(
        &[(":message-type", "event"), (":event-type", "chunk")],
        format!(r#"{{"bytes":"{b64}"}}"#).as_bytes(),
    )
}

#[test]
fn billing_reads_bedrocks_stream_whatever_the_client_gets() {
    let mut ex = admitted("ka", "/v1/messages");
    send(
        &mut ex,
        r#"{"model":"claude-fast","max_tokens":50,"stream":true,"messages":[]}"#,
    )
    .unwrap();
    let head = ex.on_response_headers(
        200,
        [
            ("content-type", "application/vnd.amazon.eventstream"),
            ("content-length", "999"),
        ],
    );
    assert!(head.remove.contains(&"content-length"));
    let stream: Vec<u8> = [
        r#"{"type":"message_start","message":{"usage":{"input_tokens":30,"output_tokens":1,"cache_read_input_tokens":20,"cache_creation_input_tokens":10}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abc"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":30,"outputTokenCount":4,"cacheReadInputTokenCount":20,"cacheWriteInputTokenCount":10}}"#,
    ]
    .iter()
    .flat_map(|e| chunk(e))
    .collect();
    let mut client = Vec::new();
    for piece in stream.chunks(11) {
        let relayed = ex.on_response_body(piece);
        assert_eq!(relayed.verdict, Verdict::Replace);
        client.extend_from_slice(&relayed.bytes);
    }
    client.extend(ex.on_response_end());
    let text = String::from_utf8(client).unwrap();
    assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\",\"amazon-bedrock-invocationMetrics\":{\"inputTokenCount\":30,\"outputTokenCount\":4,\"cacheReadInputTokenCount\":20,\"cacheWriteInputTokenCount\":10}}\n\n"));
    let record = ex
        .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
        .unwrap();
    assert_eq!(
        (
            record.input_tokens,
            record.output_tokens,
            record.cache_read_tokens,
            record.cache_write_tokens
        ),
        (30, 4, 20, 10)
    );
    assert_eq!(
        record.usage_source,
        crate::accounting::record::UsageSource::Reported
    );
}
