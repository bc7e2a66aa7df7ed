//! `POST /v1/chat/completions` through the whole exchange: the body names the model, Converse
//! carries it, the meter bills Bedrock's bytes, the client gets OpenAI's shapes.

use super::*;
use crate::accounting::record::UsageSource;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::response::eventstream;
use crate::store::memory::MemoryStore;

fn config(limits: &str) -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h",
            "aliases":{{"claude-fast":"{HAIKU}"}},
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],"limits":{limits}}},
                        {{"id":"b","sha256":"{}","models":["claude-fast"]}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}},
            "max_request_body_bytes":4096}}"#,
        hex::encode(hash_key("ka")),
        hex::encode(hash_key("kb")),
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn admitted(config: &Config, key: &str) -> Box<Exchange> {
    let auth = format!("Bearer {key}");
    match admit(
        config,
        "POST",
        "/v1/chat/completions",
        &[("authorization", auth.as_str())],
        1_000,
    ) {
        Admission::Forward(ex) => ex,
        _ => panic!("not admitted"),
    }
}

fn event(kind: &str, payload: &str) -> Vec<u8> {
    eventstream::encode(
        &[
            (":message-type", "event"),
            (":event-type", kind),
            (":content-type", "application/json"),
        ],
        payload.as_bytes(),
    )
}

fn delta(text: &str) -> Vec<u8> {
    event(
        "contentBlockDelta",
        &format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}}}}"#),
    )
}

#[test]
fn a_streamed_chat_completion_is_converse_stream_billed_from_bedrocks_bytes() {
    let config = config(r#"{"max_output_tokens":100}"#);
    let store = MemoryStore::default();
    let mut ex = admitted(&config, "ka");
    assert_eq!(ex.dialect, Dialect::OpenAi);
    let up = ex
        .upstream_request(
            &config,
            &CasCounters(&store),
            &mut SigningKeyCache::default(),
            br#"{"model":"claude-fast","max_tokens":5000,"stream":true,
                "stream_options":{"include_usage":true},
                "messages":[{"role":"user","content":"hi"}]}"#,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        )
        .unwrap()
        .upstream()
        .unwrap();
    assert_eq!(
        up.path,
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream"
    );
    assert_eq!(
        (ex.model.as_str(), ex.model_id.as_str()),
        ("claude-fast", HAIKU)
    );
    let body: serde_json::Value = serde_json::from_slice(up.body.as_deref().unwrap()).unwrap();
    // The key's output cap applies to the translated body.
    assert_eq!(body["inferenceConfig"]["maxTokens"], 100);
    assert_eq!(body["messages"][0]["content"][0]["text"], "hi");
    assert!(up
        .set_headers
        .contains(&("accept".into(), "application/vnd.amazon.eventstream".into())));
    assert_eq!(ex.estimate.output_tokens, 100);

    let head = ex.on_response_headers(
        200,
        [
            ("content-type", "application/vnd.amazon.eventstream"),
            ("x-amzn-requestid", "rid-7"),
        ],
    );
    assert!(head
        .set
        .contains(&("content-type", "text/event-stream".into())));
    let stream = [
        event("messageStart", r#"{"role":"assistant"}"#),
        delta("Hello"),
        delta(" there"),
        event("contentBlockStop", r#"{"contentBlockIndex":0}"#),
        event("messageStop", r#"{"stopReason":"end_turn"}"#),
        event(
            "metadata",
            r#"{"usage":{"inputTokens":12,"outputTokens":2,"totalTokens":19,"cacheReadInputTokens":5},"metrics":{"latencyMs":3}}"#,
        ),
    ]
    .concat();
    let mut client = Vec::new();
    for piece in stream.chunks(13) {
        let relayed = ex.on_response_body(piece);
        assert_ne!(relayed.verdict, Verdict::Pass);
        client.extend_from_slice(&relayed.bytes);
    }
    client.extend(ex.on_response_end());
    let text = String::from_utf8(client).unwrap();
    assert!(
        text.starts_with(
            "data: {\"id\":\"chatcmpl-rid-7\",\"object\":\"chat.completion.chunk\",\
             \"created\":1700000000,\"model\":\"claude-fast\",\"choices\":[{\"index\":0,\
             \"delta\":{\"role\":\"assistant\",\"content\":\"\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("\"delta\":{\"content\":\" there\"}"),
        "{text}"
    );
    assert!(text.ends_with(
        ",\"choices\":[],\"usage\":{\"prompt_tokens\":17,\"completion_tokens\":2,\
         \"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":5}}}\n\ndata: [DONE]\n\n"
    ));
    let record = ex.finish(&config, &CasCounters(&store), 2_000).unwrap();
    assert_eq!(record.dialect, Dialect::OpenAi);
    assert_eq!(record.operation, Operation::ConverseStream);
    assert_eq!(record.usage_source, UsageSource::Reported);
    assert_eq!(
        (
            record.input_tokens,
            record.output_tokens,
            record.cache_read_tokens
        ),
        (12, 2, 5)
    );
}

#[test]
fn refusals_before_and_after_the_model_is_known_are_openai_errors() {
    let config = config("{}");
    for (key, body, status, code) in [
        (
            "kb",
            r#"{"model":"us.amazon.nova-lite-v1:0","messages":[{"role":"user","content":"x"}]}"#,
            403,
            "model_not_allowed",
        ),
        (
            "ka",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#,
            400,
            "unknown_model",
        ),
        (
            "ka",
            r#"{"model":"claude-fast","n":3,"messages":[{"role":"user","content":"x"}]}"#,
            400,
            "bad_request",
        ),
    ] {
        let mut ex = admitted(&config, key);
        let e = ex
            .upstream_request(
                &config,
                &CasCounters(&MemoryStore::default()),
                &mut SigningKeyCache::default(),
                body.as_bytes(),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap_err();
        let r = e.to_reply(ex.dialect);
        assert_eq!(r.status, status, "{body}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{body}");
        let record = ex
            .finish(&config, &CasCounters(&MemoryStore::default()), 2_000)
            .unwrap();
        assert_eq!((record.status, record.forwarded), (status, false));
        assert_eq!(record.cost_pico_usd, 0);
    }
}

#[test]
fn a_budget_cut_off_ends_the_chat_stream_with_an_openai_error() {
    // $0.0001 buys ~10 input and ~18 output tokens of Haiku 4.5; each delta carries 19 bytes.
    let config = config(r#"{"budget":{"usd":"0.0001","period":"total"},"cut_off_streams":true}"#);
    let store = MemoryStore::default();
    let mut ex = admitted(&config, "ka");
    ex.upstream_request(
        &config,
        &CasCounters(&store),
        &mut SigningKeyCache::default(),
        br#"{"model":"claude-fast","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"x"}]}"#,
        SystemTime::UNIX_EPOCH,
    )
    .unwrap();
    ex.on_response_headers(
        200,
        [("content-type", "application/vnd.amazon.eventstream")],
    );
    let body: Vec<u8> = std::iter::once(event("messageStart", r#"{"role":"assistant"}"#))
        .chain((0..40).map(|i| delta(&format!("{i:019}"))))
        .flatten()
        .collect();
    let mut client = Vec::new();
    let mut ended = false;
    for piece in body.chunks(50) {
        let relayed = ex.on_response_body(piece);
        client.extend_from_slice(&relayed.bytes);
        if matches!(relayed.verdict, Verdict::End { .. }) {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stream was not cut off");
    assert!(ex.on_response_end().is_empty());
    let text = String::from_utf8(client).unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let v: serde_json::Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "budget_exhausted");
    assert_eq!(
        v["error"]["message"],
        crate::response::relay::CUT_OFF_MESSAGE
    );
    let deltas = text.matches("\"content\":\"0").count();
    assert!((1..40).contains(&deltas), "{deltas} deltas before the cut");
    let record = ex.finish(&config, &CasCounters(&store), 2_000).unwrap();
    assert_eq!(record.exception.as_deref(), Some(CUT_OFF_EXCEPTION));
}
