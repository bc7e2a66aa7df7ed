use super::*;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::response::eventstream;
use crate::response::eventstream::Decoder;
use crate::store::memory::MemoryStore;

fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
              "limits":{{"budget":{{"usd":"0.0001","period":"total"}},"cut_off_streams":true}}}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
        hex::encode(hash_key("k"))
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn delta(text: &str) -> Vec<u8> {
    eventstream::encode(
        &[
            (":message-type", "event"),
            (":event-type", "contentBlockDelta"),
            (":content-type", "application/json"),
        ],
        format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}}}}"#).as_bytes(),
    )
}

/// Feeds `body` in `chunk`-byte pieces; returns what the client receives.
fn run(chunk: usize) -> (Vec<u8>, UsageRecord) {
    // $0.0001 buys ~10 input and ~18 output tokens of Haiku 4.5; each delta carries 19 bytes.
    let body: Vec<u8> = (0..40).flat_map(|i| delta(&format!("{i:019}"))).collect();
    run_stream(
        &config(),
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream",
        br#"{"inferenceConfig":{"maxTokens":1000}}"#,
        &body,
        chunk,
    )
}

/// Streams `body` through an exchange admitted for `path`, in `chunk`-byte pieces.
fn run_stream(
    config: &Config,
    path: &str,
    request: &[u8],
    body: &[u8],
    chunk: usize,
) -> (Vec<u8>, UsageRecord) {
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let Admission::Forward(mut ex) =
        admit(config, "POST", path, &[("authorization", "Bearer k")], 0)
    else {
        panic!("not admitted")
    };
    ex.upstream_request(
        config,
        &counters,
        &mut SigningKeyCache::default(),
        request,
        SystemTime::UNIX_EPOCH,
    )
    .unwrap();
    ex.on_response_headers(
        200,
        [("content-type", "application/vnd.amazon.eventstream")],
    );
    let mut received = Vec::new();
    for piece in body.chunks(chunk) {
        received.extend_from_slice(&ex.on_response_body(piece).bytes);
    }
    let record = ex.finish(config, &counters, 1).unwrap();
    (received, record)
}

/// An InvokeWithResponseStream `chunk` event wrapping a model event.
fn invoke_chunk(model_event: &str) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(model_event);
    eventstream::encode(
        &[
            (":message-type", "event"),
            (":event-type", "chunk"),
            (":content-type", "application/json"),
        ],
        format!(r#"{{"bytes":"{b64}","p":"abc"}}"#).as_bytes(),
    )
}

fn events_of(received: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut decoder = Decoder::default();
    decoder
        .push(received, |m| {
            kinds.push(m.exception_type().unwrap_or("event").to_string())
        })
        .unwrap_or_else(|e| panic!("the client got a broken stream: {e}"));
    assert_eq!(decoder.buffered(), 0, "a partial frame reached the client");
    kinds
}

#[test]
fn a_mistral_invoke_stream_is_cut_off_too() {
    // Mistral's chunks carry `outputs[].text`: 19 bytes each. $0.0001 buys ~9 input and
    // ~5 output tokens of Mistral Large (2402).
    let body: Vec<u8> = (0..40)
        .flat_map(|i| {
            invoke_chunk(&format!(
                r#"{{"outputs":[{{"text":"{i:019}","stop_reason":null}}]}}"#
            ))
        })
        .collect();
    for chunk in [1, 13, 100_000] {
        let (received, record) = run_stream(
            &config(),
            "/model/mistral.mistral-large-2402-v1%3A0/invoke-with-response-stream",
            br#"{"prompt":"x","max_tokens":1000}"#,
            &body,
            chunk,
        );
        let kinds = events_of(&received);
        assert_eq!(kinds.last().map(String::as_str), Some(CUT_OFF_EXCEPTION));
        let events = kinds.len() - 1;
        assert!((1..40).contains(&events), "{events} chunks delivered");
        assert_eq!(record.output_tokens, (19 * events as u64).div_ceil(4));
        assert_eq!(record.exception.as_deref(), Some(CUT_OFF_EXCEPTION));
    }
}

#[test]
fn a_stream_the_meter_cannot_read_gets_no_partial_allowance() {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
              "limits":{{"budget":{{"usd":"0.01","period":"total"}},"cut_off_streams":true}}}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
        hex::encode(hash_key("k"))
    );
    let config = Config::parse(json.as_bytes(), &|_| None).unwrap();
    let body = br#"{"prompt":"x","max_tokens":1000}"#;
    let attempt = |path: &str| {
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let Admission::Forward(mut ex) =
            admit(&config, "POST", path, &[("authorization", "Bearer k")], 0)
        else {
            panic!("not admitted")
        };
        let result = ex
            .upstream_request(
                &config,
                &counters,
                &mut SigningKeyCache::default(),
                body,
                SystemTime::UNIX_EPOCH,
            )
            .map(|_| ());
        ex.finish(&config, &counters, 1);
        result
    };
    // The budget covers the input but not the whole estimate: a stream the meter reads is
    // admitted with what remains as its allowance...
    attempt("/model/mistral.mistral-large-2402-v1%3A0/invoke-with-response-stream").unwrap();
    // ...one it cannot read (an application inference profile's opaque ID names no model
    // family) would run unmetered to its end: it must fit whole, and does not.
    let opaque = crate::request::model_id::encode_path_label(
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
    );
    let err = attempt(&format!("/model/{opaque}/invoke-with-response-stream")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BudgetExhausted);
    // ConverseStream is Bedrock's own format whatever the model: metered.
    attempt(&format!("/model/{opaque}/converse-stream")).unwrap();
}

#[test]
fn the_stream_ends_with_one_clean_exception_frame_at_any_chunking() {
    for chunk in [1, 7, 33, 64, 1000, 100_000] {
        let (received, record) = run(chunk);
        let mut kinds = Vec::new();
        let mut decoder = Decoder::default();
        decoder
            .push(&received, |m| {
                kinds.push(m.exception_type().unwrap_or("event").to_string())
            })
            .unwrap_or_else(|e| panic!("chunk {chunk}: the client got a broken stream: {e}"));
        assert_eq!(
            decoder.buffered(),
            0,
            "chunk {chunk}: a partial frame reached the client"
        );
        assert_eq!(
            kinds.last().map(String::as_str),
            Some(CUT_OFF_EXCEPTION),
            "chunk {chunk}"
        );
        let events = kinds.len() - 1;
        assert!(
            (1..40).contains(&events),
            "chunk {chunk}: {events} events delivered"
        );
        assert_eq!(record.exception.as_deref(), Some(CUT_OFF_EXCEPTION));
        // Billed what was delivered: its 19 text bytes a delta, at 4 bytes a token.
        assert_eq!(
            record.output_tokens,
            (19 * events as u64).div_ceil(4),
            "chunk {chunk}"
        );
    }
}

/// A stream whose body ends inside a message must not end cleanly at the client; one that ends
/// between messages, or after the gateway's own terminal frame, ends as it is.
#[test]
fn an_upstream_body_that_ends_inside_a_message_is_flagged() {
    let config = config();
    let path = "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream";
    let flagged = |body: &[u8], budget_cut: bool| {
        let store = MemoryStore::default();
        let counters = CasCounters(&store);
        let Admission::Forward(mut ex) =
            admit(&config, "POST", path, &[("authorization", "Bearer k")], 0)
        else {
            panic!("not admitted")
        };
        let request: &[u8] = if budget_cut {
            br#"{"inferenceConfig":{"maxTokens":1000}}"#
        } else {
            br#"{"inferenceConfig":{"maxTokens":1}}"#
        };
        ex.upstream_request(
            &config,
            &counters,
            &mut SigningKeyCache::default(),
            request,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        ex.on_response_headers(200, []);
        for piece in body.chunks(7) {
            ex.on_response_body(piece);
        }
        ex.upstream_ended_inside_a_message()
    };
    let whole: Vec<u8> = (0..3).flat_map(|i| delta(&format!("{i}"))).collect();
    assert!(!flagged(&whole, false));
    assert!(flagged(&whole[..whole.len() - 5], false));
    assert!(flagged(&whole[..3], false), "inside the prelude");
    // Cut off by the budget: the client got a terminal frame; what follows is dropped.
    let long: Vec<u8> = (0..40).flat_map(|i| delta(&format!("{i:019}"))).collect();
    assert!(!flagged(&long[..long.len() - 5], true));
}
