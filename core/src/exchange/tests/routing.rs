//! Aliases of several targets: the plan, fallbacks, what is reserved and billed; a key's
//! guardrail on every attempt.

use super::*;
use crate::accounting::metrics::{self, Labels, Metric};
use crate::accounting::record::UsageSource;
use crate::quota::limits::Scope;
use crate::request::auth::hash_key;
use crate::routing::attempts::Reason;
use crate::store::memory::MemoryStore;

const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
const SONNET: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const NOVA: &str = "us.amazon.nova-lite-v1:0";
/// A context window of 8192 tokens in litellm's data.
const LLAMA3_8B: &str = "meta.llama3-8b-instruct-v1:0";
const NOW: u64 = 1_795_383_600_000;

fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "aliases":{{
              "chain":["{HAIKU}","{SONNET}","{NOVA}"],
              "split":[{{"model":"{HAIKU}","weight":3}},{{"model":"{NOVA}","weight":1}}],
              "long":["{LLAMA3_8B}","{HAIKU}"],
              "one":["{HAIKU}"]}},
            "api_keys":[
              {{"id":"a","sha256":"{}","models":["*"],
                "limits":{{"budget":{{"usd":"100","period":"total"}},
                  "models":{{"chain":{{"max_output_tokens":500}},"{NOVA}":{{"max_output_tokens":50}}}}}}}},
              {{"id":"b","sha256":"{}","models":["chain"]}},
              {{"id":"g","sha256":"{}","models":["*"],
                "guardrail":{{"identifier":"gr1","version":"3"}}}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}},
            "max_request_body_bytes":1000000}}"#,
        hex::encode(hash_key("key-a")),
        hex::encode(hash_key("key-b")),
        hex::encode(hash_key("key-g")),
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn admitted(config: &Config, key: &str, model: &str, op: &str, rid: &str) -> Box<Exchange> {
    let path = format!("/model/{model}/{op}");
    let headers = [("x-api-key", key), ("x-request-id", rid)];
    match admit(config, "POST", &path, &headers, NOW) {
        Admission::Forward(ex) => ex,
        Admission::Refused { error, .. } => panic!("refused: {error:?}"),
        _ => panic!("not forwarded"),
    }
}

fn send(
    config: &Config,
    counters: &dyn Counters,
    ex: &mut Exchange,
    body: &[u8],
) -> UpstreamRequest {
    ex.upstream_request(
        config,
        counters,
        &mut SigningKeyCache::default(),
        body,
        SystemTime::UNIX_EPOCH,
    )
    .unwrap()
    .upstream()
    .expect("a request for Bedrock")
}

fn fall_back(config: &Config, ex: &mut Exchange, status: Option<u16>) -> Option<UpstreamRequest> {
    ex.fall_back(
        config,
        status,
        &mut SigningKeyCache::default(),
        SystemTime::UNIX_EPOCH,
        None,
    )
    .map(Result::unwrap)
}

fn target_of(up: &UpstreamRequest) -> String {
    let label = up.path.split('/').nth(2).unwrap();
    model_id::decode_path_label(label).unwrap()
}

fn converse_answer(ex: &mut Exchange, input: u64, output: u64) {
    ex.on_response_headers(200, [("content-type", "application/json")]);
    let body = format!(r#"{{"usage":{{"inputTokens":{input},"outputTokens":{output}}}}}"#);
    ex.on_response_body(body.as_bytes());
}

fn spent(counters: &dyn Counters) -> i64 {
    counters
        .read(&quota::counter_name("a", Scope::Key, "", "spend"), 0)
        .unwrap()
}

const BODY: &[u8] = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":300}}"#;

#[test]
fn a_chain_falls_back_and_bills_only_the_target_that_answered() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let mut ex = admitted(&config, "key-a", "chain", "converse", "r1");
    let first = send(&config, &counters, &mut ex, BODY);
    assert_eq!(target_of(&first), HAIKU);
    // Reserved once, at the dearest target: Sonnet, for the 300 tokens asked.
    let input = crate::accounting::record::estimate_tokens(BODY.len() as u64);
    let sonnet = pricing::quote("us-east-1", SONNET);
    let dearest = sonnet.cost(&Usage {
        input_tokens: input,
        output_tokens: 300,
        ..Usage::default()
    });
    assert_eq!(spent(&counters), i64::try_from(dearest).unwrap());

    // Haiku throttles: Sonnet is next, with its own path and signature.
    let second = fall_back(&config, &mut ex, Some(429)).expect("a fallback");
    assert_eq!(target_of(&second), SONNET);
    assert_ne!(first.set_headers, second.set_headers);
    assert_eq!(ex.model_id, SONNET);
    // Sonnet fails with a 503: Nova, clamped to its own cap (50 < the 300 asked).
    let third = fall_back(&config, &mut ex, Some(503)).expect("a fallback");
    assert_eq!(target_of(&third), NOVA);
    let body: serde_json::Value = serde_json::from_slice(third.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["inferenceConfig"]["maxTokens"], 50);
    // Nova answers: no fallback, billed at Nova's price.
    assert!(fall_back(&config, &mut ex, Some(200)).is_none());
    converse_answer(&mut ex, 10, 5);
    let ending = ex
        .end(
            &config,
            &counters,
            &crate::accounting::totals::CasTotals(&store),
            NOW,
        )
        .unwrap();
    let record = ending.record();
    assert_eq!(
        (record.model.as_str(), record.model_id.as_str()),
        ("chain", NOVA)
    );
    let nova = pricing::quote("us-east-1", NOVA);
    let cost = nova.cost(&Usage {
        input_tokens: 10,
        output_tokens: 5,
        ..Usage::default()
    });
    assert_eq!(record.cost_pico_usd, cost);
    assert_eq!(spent(&counters), i64::try_from(cost).unwrap(), "settled");
    let attempts: Vec<_> = record
        .attempts
        .iter()
        .map(|a| (a.model_id.as_str(), a.status, a.fallback))
        .collect();
    assert_eq!(
        attempts,
        [
            (HAIKU, 429, Some(Reason::Throttled)),
            (SONNET, 503, Some(Reason::ServerError)),
            (NOVA, 200, None)
        ]
    );
    let json = record.log_line();
    assert!(
        json.contains(r#""attempts":[{"model_id":"us.anthropic.claude-haiku"#),
        "{json}"
    );
    let fallbacks: Vec<_> = metrics::record_updates(record, Labels::of(record), 0)
        .into_iter()
        .filter(|u| u.metric == Metric::Fallbacks)
        .map(|u| u.labels().map(|(_, v)| v.to_string()).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        fallbacks,
        [["a", "chain", "throttled"], ["a", "chain", "server_error"]]
    );
}

#[test]
fn no_fallback_on_a_refusal_or_past_the_last_target() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let mut ex = admitted(&config, "key-a", "chain", "converse-stream", "r2");
    send(&config, &counters, &mut ex, BODY);
    assert!(
        fall_back(&config, &mut ex, Some(400)).is_none(),
        "a 400 is the answer"
    );
    ex.on_response_headers(400, [("x-amzn-errortype", "ValidationException")]);
    let record = ex.finish(&config, &counters, NOW).unwrap();
    assert_eq!(record.attempts.len(), 1);
    assert_eq!((record.model_id.as_str(), record.status), (HAIKU, 400));
    let mut ex = admitted(&config, "key-a", "chain", "converse-stream", "r3");
    send(&config, &counters, &mut ex, BODY);
    assert!(fall_back(&config, &mut ex, None).is_some(), "no response");
    assert!(fall_back(&config, &mut ex, Some(502)).is_some());
    assert!(
        fall_back(&config, &mut ex, Some(429)).is_none(),
        "none left"
    );
    // The last target's throttle is the answer: passed on, billed nothing.
    ex.on_response_headers(429, [("x-amzn-errortype", "ThrottlingException")]);
    let record = ex.finish(&config, &counters, NOW).unwrap();
    assert_eq!((record.status, record.cost_pico_usd), (429, 0));
    assert_eq!(record.usage_source, UsageSource::None);
    let statuses: Vec<_> = record.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [0, 502, 429]);
    assert_eq!(record.attempts[0].fallback, Some(Reason::Connection));
    assert_eq!(spent(&counters), 0, "the reservation is released");
}

#[test]
fn a_weighted_split_picks_by_request_id_and_falls_back_in_list_order() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let mut firsts = std::collections::BTreeMap::new();
    for i in 0..400 {
        let rid = format!("split-{i}");
        let mut ex = admitted(&config, "key-a", "split", "converse", &rid);
        let up = send(&config, &counters, &mut ex, BODY);
        let first = target_of(&up);
        // The same request ID always lands on the same target.
        let mut again = admitted(&config, "key-a", "split", "converse", &rid);
        assert_eq!(
            target_of(&send(&config, &counters, &mut again, BODY)),
            first
        );
        let next = target_of(&fall_back(&config, &mut ex, Some(429)).unwrap());
        assert_ne!(next, first, "the other target is the fallback");
        *firsts.entry(first).or_insert(0) += 1;
    }
    // 3:1 within a loose tolerance.
    let haiku = firsts[HAIKU];
    assert!((260..=340).contains(&haiku), "{firsts:?}");
}

#[test]
fn a_target_whose_window_the_request_does_not_fit_is_not_called() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    // ~10k tokens by size: past Llama 3 8B's 8192.
    let text = "x".repeat(40_000);
    let body = format!(r#"{{"messages":[{{"role":"user","content":[{{"text":"{text}"}}]}}]}}"#);
    let mut ex = admitted(&config, "key-a", "long", "converse", "r4");
    let up = send(&config, &counters, &mut ex, body.as_bytes());
    assert_eq!(target_of(&up), HAIKU);
    assert!(
        fall_back(&config, &mut ex, Some(429)).is_none(),
        "nothing after"
    );
    let record = ex.finish(&config, &counters, NOW).unwrap();
    assert_eq!(record.skipped.len(), 1);
    assert_eq!(
        (
            record.skipped[0].model_id.as_str(),
            record.skipped[0].reason
        ),
        (LLAMA3_8B, Reason::ContextWindow)
    );
    // A small request goes to Llama first.
    let mut ex = admitted(&config, "key-a", "long", "converse", "r5");
    assert_eq!(
        target_of(&send(&config, &counters, &mut ex, BODY)),
        LLAMA3_8B
    );
}

#[test]
fn a_chain_is_its_own_model_for_allowlists() {
    let config = config();
    let path = |m: &str| format!("/model/{}/converse", model_id::encode_path_label(m));
    let refused = |model: &str| {
        matches!(
            admit(
                &config,
                "POST",
                &path(model),
                &[("x-api-key", "key-b")],
                NOW
            ),
            Admission::Refused { .. }
        )
    };
    assert!(!refused("chain"));
    assert!(refused(HAIKU), "a target is not the chain");
    assert!(refused("one"));
    // A list of one is a plain alias: its model is the model.
    let mut ex = admitted(&config, "key-a", "one", "converse", "r6");
    assert_eq!(ex.model_id, HAIKU);
    let store = MemoryStore::default();
    send(&config, &CasCounters(&store), &mut ex, BODY);
    assert!(ex.fallbacks().is_none());
    let record = ex.finish(&config, &CasCounters(&store), NOW).unwrap();
    assert!(record.attempts.is_empty());
}

#[test]
fn envoy_reads_the_attempts_its_upstream_filter_logged() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let mut ex = admitted(&config, "key-a", "chain", "converse", "r7");
    send(&config, &counters, &mut ex, BODY);
    let fb = ex.fallbacks().expect("three targets");
    assert_eq!(fb.retries, 2);
    let plan = crate::routing::plan::Plan::decode(&fb.plan).unwrap();
    let caps: Vec<_> = plan
        .targets
        .iter()
        .map(|t| (t.model_id.as_str(), t.max_output_tokens))
        .collect();
    assert_eq!(
        caps,
        [(HAIKU, Some(500)), (SONNET, Some(500)), (NOVA, Some(50))]
    );
    // Attempt 1 was sent as the client wrote it (300 is within Haiku's cap).
    assert!(fb.body.is_none());
    // Junk or a target outside the plan leaves the exchange's own log.
    ex.sync_attempts("0:-,7:200");
    assert_eq!(ex.model_id, HAIKU);
    ex.sync_attempts("0:503,1:-,2:200");
    assert_eq!(ex.model_id, NOVA);
    converse_answer(&mut ex, 1, 1);
    let record = ex.finish(&config, &counters, NOW).unwrap();
    let statuses: Vec<_> = record.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [503, 0, 200]);
    assert_eq!(record.model_id, NOVA);
}

#[test]
fn attempt_one_clamped_for_its_target_hands_the_others_the_prepared_body() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let body = br#"{"messages":[],"inferenceConfig":{"maxTokens":900}}"#;
    let mut ex = admitted(&config, "key-a", "chain", "converse", "r8");
    let up = send(&config, &counters, &mut ex, body);
    let sent: serde_json::Value = serde_json::from_slice(up.body.as_deref().unwrap()).unwrap();
    assert_eq!(sent["inferenceConfig"]["maxTokens"], 500);
    let fb = ex.fallbacks().unwrap();
    assert_eq!(fb.body, Some(&body[..]));
}

#[test]
fn a_keys_guardrail_goes_on_every_attempt_and_replaces_the_clients() {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let theirs = br#"{"messages":[],"guardrailConfig":{"guardrailIdentifier":"mine","guardrailVersion":"1"}}"#;
    let mut ex = admitted(&config, "key-g", "chain", "converse", "r9");
    let up = send(&config, &counters, &mut ex, theirs);
    let ours =
        serde_json::json!({"guardrailIdentifier":"gr1","guardrailVersion":"3","trace":"enabled"});
    for up in [up, fall_back(&config, &mut ex, Some(429)).unwrap()] {
        let sent: serde_json::Value = serde_json::from_slice(up.body.as_deref().unwrap()).unwrap();
        assert_eq!(sent["guardrailConfig"], ours);
    }
    // Invoke: the key's headers, set on every attempt; the client's removed.
    let headers = [
        ("x-api-key", "key-g"),
        ("x-amzn-bedrock-guardrailidentifier", "mine"),
        ("x-amzn-bedrock-trace", "DISABLED"),
    ];
    let Admission::Forward(mut ex) = admit(&config, "POST", "/model/chain/invoke", &headers, NOW)
    else {
        panic!()
    };
    let up = send(
        &config,
        &counters,
        &mut ex,
        br#"{"messages":[],"max_tokens":10}"#,
    );
    for up in [up, fall_back(&config, &mut ex, Some(500)).unwrap()] {
        let set: Vec<_> = up
            .set_headers
            .iter()
            .filter(|(n, _)| n.starts_with("x-amzn-bedrock"))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            set,
            [
                ("x-amzn-bedrock-guardrailidentifier", "gr1"),
                ("x-amzn-bedrock-guardrailversion", "3"),
                ("x-amzn-bedrock-trace", "ENABLED")
            ]
        );
    }
    // Units the trace reports are billed on top of the tokens.
    ex.on_response_headers(200, [("content-type", "application/json")]);
    ex.on_response_body(
        br#"{"usage":{"input_tokens":4,"output_tokens":2},"amazon-bedrock-guardrailAction":"INTERVENED",
            "amazon-bedrock-trace":{"guardrail":{"input":{"gr1":{"invocationMetrics":{"usage":{"contentPolicyUnits":2}}}}}}}"#,
    );
    let record = ex.finish(&config, &counters, NOW).unwrap();
    let g = record.guardrail.clone().unwrap();
    assert_eq!((g.identifier.as_deref(), g.intervened), (Some("gr1"), true));
    assert_eq!(g.cost_pico_usd, 2 * 150_000_000);
    let tokens = pricing::quote("us-east-1", SONNET).cost(&Usage {
        input_tokens: 4,
        output_tokens: 2,
        ..Usage::default()
    });
    assert_eq!(record.cost_pico_usd, tokens + g.cost_pico_usd);
    // The client's own guardrail is no unpriced option when the key brings one.
    assert!(record.unpriced_options.is_empty());
}
