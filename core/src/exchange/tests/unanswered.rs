//! Exchanges Bedrock ran (or may have run) whose usage never came back are billed the
//! reservation's estimate; the budget keeps exactly what was billed.

use super::*;
use crate::accounting::record::UsageSource;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::response::eventstream;
use crate::store::memory::MemoryStore;

const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
const BODY: &[u8] = br#"{"messages":[],"inferenceConfig":{"maxTokens":100}}"#;
/// The same length, in Anthropic's format (`invoke`).
const INVOKE_BODY: &[u8] = br#"{"messages":[],"max_tokens":100,"system":"abcdefgh"}"#;

fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
              "limits":{{"budget":{{"usd":"10","period":"total"}}}}}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
        hex::encode(hash_key("k"))
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

/// Admits and sends a request on `operation`, lets `end` play the response, finishes.
fn exchange(operation: &str, end: impl FnOnce(&mut Exchange)) -> (UsageRecord, u64) {
    let config = config();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let path = format!("/model/claude-x/{operation}").replace(
        "claude-x",
        &crate::request::model_id::encode_path_label(HAIKU),
    );
    let Admission::Forward(mut ex) =
        admit(&config, "POST", &path, &[("authorization", "Bearer k")], 0)
    else {
        panic!("not admitted")
    };
    let body = if operation.starts_with("invoke") {
        INVOKE_BODY
    } else {
        BODY
    };
    ex.upstream_request(
        &config,
        &counters,
        &mut SigningKeyCache::default(),
        body,
        SystemTime::UNIX_EPOCH,
    )
    .unwrap();
    end(&mut ex);
    let record = ex.finish(&config, &counters, 1).unwrap();
    let spent = counters
        .read(
            &quota::counter_name("a", crate::quota::limits::Scope::Key, "", "spend"),
            0,
        )
        .unwrap();
    (record, u64::try_from(spent).unwrap())
}

fn estimate() -> Usage {
    Usage {
        input_tokens: (BODY.len() as u64).div_ceil(4),
        output_tokens: 100,
        ..Default::default()
    }
}

fn assert_estimate_billed(record: &UsageRecord, spent: u64) {
    assert_eq!(record.usage_source, UsageSource::Estimated);
    assert_eq!(record.usage(), estimate());
    assert_eq!(
        record.cost_pico_usd,
        pricing::quote("us-east-1", HAIKU).cost(&estimate())
    );
    assert_eq!(
        spent, record.cost_pico_usd,
        "the budget keeps what was billed"
    );
}

#[test]
fn a_cancelled_call_is_billed_its_estimate() {
    for operation in ["converse", "converse-stream", "invoke"] {
        let (record, spent) = exchange(operation, |_| {});
        assert_eq!(record.status, 0, "{operation}");
        assert_estimate_billed(&record, spent);
    }
}

#[test]
fn a_host_reply_after_sending_is_billed_its_estimate_unless_nothing_was_reached() {
    let (record, spent) = exchange("converse", |ex| ex.upstream_failed(504, true));
    assert_eq!(record.status, 504);
    assert_estimate_billed(&record, spent);
    // The connection was never made: Bedrock saw nothing.
    let (record, spent) = exchange("converse", |ex| ex.upstream_failed(503, false));
    assert_eq!(
        (
            record.status,
            record.usage_source,
            record.cost_pico_usd,
            spent
        ),
        (503, UsageSource::None, 0, 0)
    );
    // Bedrock's own refusal stays unbilled.
    let (record, spent) = exchange("converse", |ex| {
        ex.on_response_headers(429, [("x-amzn-errortype", "ThrottlingException")]);
        ex.on_response_body(br#"{"message":"slow down"}"#);
    });
    assert_eq!((record.usage_source, spent), (UsageSource::None, 0));
}

#[test]
fn a_non_stream_answer_cut_before_its_usage_is_billed_its_estimate() {
    let (record, spent) = exchange("converse", |ex| {
        ex.on_response_headers(200, [("content-type", "application/json")]);
        ex.on_response_body(br#"{"output":{"message":{"content":[{"text":"w0 w1"#);
    });
    assert_eq!(record.status, 200);
    assert_estimate_billed(&record, spent);
}

#[test]
fn a_stream_cut_mid_way_is_billed_what_it_delivered() {
    let (record, _) = exchange("converse-stream", |ex| {
        ex.on_response_headers(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        ex.on_response_body(&eventstream::encode(
            &[
                (":message-type", "event"),
                (":event-type", "contentBlockDelta"),
                (":content-type", "application/json"),
            ],
            br#"{"contentBlockIndex":0,"delta":{"text":"eight by"}}"#,
        ));
    });
    assert_eq!(record.usage_source, UsageSource::Estimated);
    assert_eq!(
        (record.input_tokens, record.output_tokens),
        (estimate().input_tokens, 2)
    );
}
