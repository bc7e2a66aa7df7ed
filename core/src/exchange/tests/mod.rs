//! The exchange from admission to its usage record; each file is one concern.

mod body;
mod cut_off;
mod images;
mod unanswered;

use super::*;
use crate::quota::counters::CasCounters;
use crate::request::auth::hash_key;
use crate::store::memory::MemoryStore;

const HAIKU: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";

fn config() -> Config {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"127.0.0.1:9100",
            "aliases":{{"claude-fast":"{HAIKU}"}},
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"]}},
                        {{"id":"b","sha256":"{}","models":["claude-fast"]}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK","session_token":"T"}},
            "max_request_body_bytes":100}}"#,
        hex::encode(hash_key("key-a")),
        hex::encode(hash_key("key-b")),
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn admit_as(key: &str, path: &str, extra: &[(&str, &str)]) -> Admission {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("x-amz-date", "x"),
        ("x-request-id", "rid-1"),
    ];
    headers.extend_from_slice(extra);
    admit(&config(), "POST", path, &headers, 1_000)
}

fn reply_of(a: Admission) -> (u16, String) {
    match a {
        Admission::Refused { error, .. } => {
            let r = error.to_bedrock_reply();
            let ty = r
                .headers
                .iter()
                .find(|(n, _)| *n == "x-amzn-errortype")
                .map(|(_, v)| v.clone());
            (r.status, ty.unwrap_or_default())
        }
        _ => panic!("expected a reply"),
    }
}

fn forwarded(a: Admission) -> Box<Exchange> {
    match a {
        Admission::Forward(ex) => ex,
        _ => panic!("expected a forward"),
    }
}

#[test]
fn alias_is_resolved_and_request_rewritten() {
    let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse-stream", &[]));
    assert_eq!(
        (ex.key_id.as_str(), ex.model.as_str(), ex.model_id.as_str()),
        ("a", "claude-fast", HAIKU)
    );
    assert_eq!(ex.request_id.as_deref(), Some("rid-1"));
    let up = ex
        .upstream_request(
            &config(),
            &CasCounters(&MemoryStore::default()),
            &mut SigningKeyCache::default(),
            b"{}",
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
    assert_eq!(
        up.path,
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream"
    );
    assert_eq!(up.authority, "127.0.0.1:9100");
    assert_eq!(
        up.remove_headers,
        vec!["authorization".to_string(), "x-amz-date".to_string()]
    );
    let names: Vec<_> = up.set_headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"authorization") && names.contains(&"x-amz-security-token"),
        "{names:?}"
    );
}

#[test]
fn upstream_headers_for_hosts_that_build_the_request() {
    let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse", &[]));
    let up = ex
        .upstream_request(
            &config(),
            &CasCounters(&MemoryStore::default()),
            &mut SigningKeyCache::default(),
            b"{}",
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
    let client = [
        ("Host", "gateway.local"),
        ("authorization", "Bearer key-a"),
        ("x-api-key", "key-a"),
        ("x-amz-date", "old"),
        ("content-type", "application/json"),
        ("x-amzn-bedrock-trace", "ENABLED"),
        ("connection", "keep-alive"),
        ("content-length", "2"),
        ("x-tollgate-test-now-ms", "5"),
        ("x-envoy-retry-on", "5xx"),
        ("cookie", "c=1"),
        ("user-agent", "Boto3/1.40"),
    ];
    let out = up.headers_from(client.map(|(n, v)| (n, v.as_bytes())));
    let names: Vec<_> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"content-type") && names.contains(&"x-amzn-bedrock-trace"),
        "{names:?}"
    );
    assert!(names.contains(&"user-agent"), "{names:?}");
    for gone in [
        "host",
        "x-api-key",
        "connection",
        "content-length",
        "x-tollgate-test-now-ms",
        "x-envoy-retry-on",
        "cookie",
    ] {
        assert!(!names.contains(&gone), "{gone} in {names:?}");
    }
    let auth: Vec<_> = out.iter().filter(|(n, _)| n == "authorization").collect();
    assert_eq!(auth.len(), 1);
    assert!(auth[0].1.starts_with(b"AWS4-HMAC-SHA256"));
    assert_eq!(out.iter().filter(|(n, _)| n == "x-amz-date").count(), 1);
}

#[test]
fn allowlist_covers_an_alias_and_its_model_id() {
    forwarded(admit_as("key-b", "/model/claude-fast/converse", &[]));
    forwarded(admit_as(
        "key-b",
        &format!(
            "/model/{}/invoke",
            crate::request::model_id::encode_path_label(HAIKU)
        ),
        &[],
    ));
    assert_eq!(
        reply_of(admit_as(
            "key-b",
            "/model/amazon.nova-lite-v1%3A0/converse",
            &[]
        )),
        (403, "AccessDeniedException".into())
    );
}

#[test]
fn refusals_in_bedrock_dialect() {
    assert_eq!(
        reply_of(admit_as("nope", "/model/claude-fast/converse", &[])),
        (401, "UnrecognizedClientException".into())
    );
    assert_eq!(
        reply_of(admit_as("key-a", "/model/claude-slow/converse", &[])),
        (400, "ValidationException".into())
    );
    assert_eq!(
        reply_of(admit_as("key-a", "/model/claude-fast/count-tokens", &[])),
        (404, "UnknownOperationException".into())
    );
    assert_eq!(
        reply_of(admit_as("key-a", "/model/%ff/converse", &[])),
        (400, "ValidationException".into())
    );
    let none = admit(&config(), "POST", "/model/claude-fast/converse", &[], 0);
    assert_eq!(reply_of(none), (401, "UnrecognizedClientException".into()));
}

#[test]
fn models_route_lists_what_the_key_may_use() {
    let auth = [("x-api-key", "key-b")];
    let Admission::Reply(r) = admit(&config(), "GET", "/v1/models", &auth, 0) else {
        panic!("expected a reply")
    };
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<_> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-fast", HAIKU]);
}

#[test]
fn usage_route_names_the_callers_key() {
    let auth = [("x-api-key", "key-b")];
    assert!(
        matches!(admit(&config(), "GET", "/usage", &auth, 0), Admission::Usage { key_id, .. } if key_id == "b")
    );
}

#[test]
fn oversized_bodies_are_refused_and_recorded_unbilled() {
    let mut ex = forwarded(admit_as(
        "key-a",
        "/model/claude-fast/converse",
        &[("content-length", "101")],
    ));
    assert_eq!(
        ex.check_declared_body_size().unwrap_err().kind,
        ErrorKind::BodyTooLarge
    );
    let record = ex
        .finish(&config(), &CasCounters(&MemoryStore::default()), 1_050)
        .unwrap();
    assert_eq!(
        (record.status, record.cost_pico_usd, record.latency_ms),
        (413, 0, 50)
    );
    assert!(
        ex.finish(&config(), &CasCounters(&MemoryStore::default()), 1_060)
            .is_none(),
        "one record per exchange"
    );

    let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse", &[]));
    ex.check_body_size(100).unwrap();
    assert!(ex
        .upstream_request(
            &config(),
            &CasCounters(&MemoryStore::default()),
            &mut SigningKeyCache::default(),
            &[b' '; 101],
            SystemTime::UNIX_EPOCH
        )
        .is_err());
}

#[test]
fn a_model_respelt_is_the_same_model_for_allowlists_and_limits() {
    let json = format!(
        r#"{{"region":"us-east-1","upstream_host":"h","aliases":{{"claude-fast":"{HAIKU}"}},
            "api_keys":[{{"id":"a","sha256":"{}","models":["*"],
              "limits":{{"models":{{"claude-fast":{{"requests_per_minute":1}}}}}}}},
              {{"id":"b","sha256":"{}","models":["claude-fast"]}}],
            "credentials":{{"type":"inline","access_key_id":"AK","secret_access_key":"SK"}}}}"#,
        hex::encode(hash_key("key-a")),
        hex::encode(hash_key("key-b")),
    );
    let config = Config::parse(json.as_bytes(), &|_| None).unwrap();
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let send = |key: &str, model: &str| {
        let path = format!("/model/{}/converse", model_id::encode_path_label(model));
        match admit(&config, "POST", &path, &[("x-api-key", key)], 1_000) {
            Admission::Forward(mut ex) => ex
                .upstream_request(
                    &config,
                    &counters,
                    &mut SigningKeyCache::default(),
                    b"{}",
                    SystemTime::UNIX_EPOCH,
                )
                .map(|up| (ex.model_id.clone(), up.path))
                .map_err(|e| e.kind),
            Admission::Refused { error, .. } => Err(error.kind),
            _ => panic!("unexpected admission"),
        }
    };
    let spellings = [
        "US.ANTHROPIC.CLAUDE-HAIKU-4-5-20251001-V1:0".to_string(),
        format!("arn:aws:bedrock:us-east-1:123456789012:inference-profile/{HAIKU}"),
        format!("arn:aws:bedrock:us-east-1:999999999999:inference-profile/{HAIKU}"),
        HAIKU.to_string(),
    ];
    // Key a: one request a minute on this model, however it is spelt.
    let (sent, path) = send("key-a", "claude-fast").unwrap();
    assert_eq!(sent, HAIKU);
    assert!(
        path.starts_with("/model/us.anthropic.claude-haiku"),
        "{path}"
    );
    for model in &spellings {
        assert_eq!(
            send("key-a", model),
            Err(ErrorKind::RequestRateLimited),
            "{model}"
        );
    }
    // Key b may use the model behind claude-fast, however it is spelt, and nothing else.
    for model in &spellings {
        assert_eq!(
            send("key-b", model).map(|(id, _)| id),
            Ok(HAIKU.to_string())
        );
    }
    assert_eq!(
        send(
            "key-b",
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        ),
        Err(ErrorKind::ModelNotAllowed)
    );
    // An ARN of another region cannot be served here.
    assert_eq!(
        send(
            "key-a",
            &format!("arn:aws:bedrock:eu-west-1:1:inference-profile/{HAIKU}")
        ),
        Err(ErrorKind::BadRequest)
    );
}

#[test]
fn compressed_request_bodies_are_refused() {
    assert_eq!(
        reply_of(admit_as(
            "key-a",
            "/model/claude-fast/converse",
            &[("content-encoding", "gzip")]
        )),
        (400, "ValidationException".into())
    );
    forwarded(admit_as(
        "key-a",
        "/model/claude-fast/converse",
        &[("content-encoding", "identity")],
    ));
}

#[test]
fn the_test_clock_is_off_by_default_and_clamped_when_on() {
    let at = |hooks: bool, value: &str| {
        let mut c = config();
        c.test_hooks = hooks;
        let headers = [("x-api-key", "key-a"), (TEST_CLOCK_HEADER, value)];
        match admit(&c, "POST", "/model/claude-fast/converse", &headers, 1_000) {
            Admission::Forward(ex) => ex.quota_now_ms,
            _ => panic!("not admitted"),
        }
    };
    assert_eq!(at(false, "5000"), 1_000);
    assert_eq!(at(true, "1795348800000"), 1_795_348_800_000);
    assert_eq!(at(true, "not a number"), 1_000);
    assert_eq!(at(true, "18446744073709551615"), MAX_TEST_CLOCK_MS);
    assert_eq!(at(true, "0"), 0);
}

#[test]
fn a_cancelled_exchange_after_sending_is_estimated() {
    let mut ex = forwarded(admit_as("key-a", "/model/claude-fast/converse-stream", &[]));
    ex.upstream_request(
        &config(),
        &CasCounters(&MemoryStore::default()),
        &mut SigningKeyCache::default(),
        // 80 bytes of JSON.
        format!(r#"{{"messages":"{}"}}"#, "x".repeat(64)).as_bytes(),
        SystemTime::UNIX_EPOCH,
    )
    .unwrap();
    let record = ex
        .finish(&config(), &CasCounters(&MemoryStore::default()), 2_000)
        .unwrap();
    assert_eq!(record.status, 0);
    assert_eq!(
        record.usage_source,
        crate::accounting::record::UsageSource::Estimated
    );
    assert_eq!(record.input_tokens, 20);
    assert!(record.cost_pico_usd > 0);
}
