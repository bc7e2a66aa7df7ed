use super::*;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::store::memory::MemoryStore;

const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

/// A key capped at 50 output tokens, and one with a budget only.
fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "api_keys":[{{"id":"capped","sha256":"{}","models":["*"],"limits":{{"max_output_tokens":50}}}},
                        {{"id":"budget","sha256":"{}","models":["*"],
                          "limits":{{"budget":{{"usd":"100","period":"monthly"}}}}}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}},
            "max_request_body_bytes":1048576}}"#,
        hex::encode(hash_key("capped")),
        hex::encode(hash_key("budget")),
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

/// What reaches Bedrock for `body` sent with `key` to `op` on `model`: the body sent, or
/// the refusal.
fn send(key: &str, model: &str, op: &str, body: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let config = config();
    let store = MemoryStore::default();
    let path = format!("/model/{}/{op}", model_id::encode_path_label(model));
    let Admission::Forward(mut ex) = admit(&config, "POST", &path, &[("x-api-key", key)], 0) else {
        panic!("not admitted")
    };
    ex.upstream_request(
        &config,
        &CasCounters(&store),
        &mut SigningKeyCache::default(),
        body,
        SystemTime::UNIX_EPOCH,
    )
    .map(|up| up.body.unwrap_or_else(|| body.to_vec()))
    .map_err(|e| e.kind)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn bodies_json_parsers_disagree_on_are_refused() {
    let bom = [
        &b"\xef\xbb\xbf"[..],
        br#"{"inferenceConfig":{"maxTokens":5000}}"#,
    ]
    .concat();
    let cases: [&[u8]; 8] = [
        &bom,
        br#"{"inferenceConfig":{"maxTokens":5000}} {"x":1}"#,
        br#"{"inferenceConfig":{"maxTokens":5000}}garbage"#,
        br#"{"inferenceConfig":{"maxTokens":10},"inferenceConfig":{"maxTokens":5000}}"#,
        br#"{"inferenceConfig":{"maxTokens":10,"maxTokens":5000}}"#,
        br#"{"inferenceConfig":{"maxTokens":5000},"messages":[{"role":"user","content":[{"text":"\ud800"}]}]}"#,
        br#"{"inferenceConfig":{"maxTokens":5000},"m":{"a":1,"\u0061":2}}"#,
        b"[1,2]",
    ];
    for key in ["capped", "budget"] {
        for body in cases {
            assert_eq!(
                send(key, HAIKU, "converse", body),
                Err(ErrorKind::BadRequest),
                "{key}: {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[test]
fn every_field_that_sets_the_output_limit_is_clamped() {
    let out = send(
        "capped",
        HAIKU,
        "converse",
        br#"{"inferenceConfig":{"maxTokens":5000},"additionalModelRequestFields":{"max_tokens":9000,"max_completion_tokens":9000,"inferenceConfig":{"max_new_tokens":9000}}}"#,
    )
    .unwrap();
    let v = json(&out);
    assert_eq!(v["inferenceConfig"]["maxTokens"], 50);
    let extra = &v["additionalModelRequestFields"];
    assert_eq!(extra["max_tokens"], 50);
    assert_eq!(extra["max_completion_tokens"], 50);
    assert_eq!(extra["inferenceConfig"]["max_new_tokens"], 50);

    // Anthropic on invoke with both spellings; OpenAI-style max_completion_tokens.
    let out = send(
        "capped",
        HAIKU,
        "invoke",
        br#"{"max_tokens":10,"max_completion_tokens":9000,"messages":[]}"#,
    )
    .unwrap();
    let v = json(&out);
    assert_eq!(
        (v["max_tokens"].clone(), v["max_completion_tokens"].clone()),
        (10.into(), 50.into())
    );
    let out = send(
        "capped",
        "openai.gpt-oss-120b-1:0",
        "invoke",
        br#"{"max_completion_tokens":9000,"messages":[]}"#,
    )
    .unwrap();
    assert_eq!(json(&out)["max_completion_tokens"], 50);
}

#[test]
fn a_service_tier_is_priced_and_unpriced_options_refused() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let run = |model: &str, headers: &[(&str, &str)], body: &[u8]| {
        let path = format!("/model/{}/converse", model_id::encode_path_label(model));
        let mut all = vec![("x-api-key", "budget")];
        all.extend_from_slice(headers);
        let Admission::Forward(mut ex) = admit(&config, "POST", &path, &all, 0) else {
            panic!("not admitted")
        };
        let sent = ex.upstream_request(
            &config,
            &counters,
            &mut SigningKeyCache::default(),
            body,
            SystemTime::UNIX_EPOCH,
        );
        ex.on_response_headers(200, [("content-type", "application/json")]);
        ex.on_response_body(
            br#"{"usage":{"inputTokens":1000,"outputTokens":100,"totalTokens":1100}}"#,
        );
        (
            sent.map(|_| ()).map_err(|e| e.kind),
            ex.finish(&config, &counters, 1),
        )
    };
    let nova = "amazon.nova-pro-v1:0";
    let (sent, record) = run(nova, &[], br#"{"serviceTier":{"type":"priority"}}"#);
    assert_eq!(sent, Ok(()));
    let record = record.unwrap();
    // litellm priority: 1.4E-6 input, 5.6E-6 output per token.
    assert_eq!(record.service_tier, ServiceTier::Priority);
    assert_eq!(record.cost_pico_usd, 1000 * 1_400_000 + 100 * 5_600_000);
    let (_, flex) = run(nova, &[("x-amzn-bedrock-service-tier", "flex")], b"{}");
    assert_eq!(
        flex.unwrap().cost_pico_usd,
        1000 * 400_000 + 100 * 1_600_000
    );
    // No priority price for Haiku, and the key does not allow unpriced options.
    let (sent, record) = run(HAIKU, &[("x-amzn-bedrock-service-tier", "priority")], b"{}");
    assert_eq!(sent, Err(ErrorKind::BadRequest));
    assert_eq!(record.unwrap().cost_pico_usd, 0);
    let (sent, _) = run(
        HAIKU,
        &[],
        br#"{"guardrailConfig":{"guardrailIdentifier":"g"}}"#,
    );
    assert_eq!(sent, Err(ErrorKind::BadRequest));
}

#[test]
fn a_body_within_the_cap_passes_byte_for_byte() {
    let body = br#"{ "messages" : [], "inferenceConfig" : { "maxTokens" : 10 } }"#;
    assert_eq!(
        send("capped", HAIKU, "converse", body).unwrap(),
        body.to_vec()
    );
    assert_eq!(
        send("budget", HAIKU, "converse", body).unwrap(),
        body.to_vec()
    );
}
