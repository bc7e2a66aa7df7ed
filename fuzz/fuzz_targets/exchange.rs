//! One whole exchange through core, as a host drives it (`exchange::admit`,
//! `Exchange::upstream_request`, `on_response_headers`, `on_response_body`, `end`) against
//! an in-memory store with Envoy shared data's semantics: any request body, model and output
//! cap, any upstream status and response body (framed as in the `meter` target) cut anywhere,
//! for a key with a total budget that cuts streams off.
//!
//! Properties:
//! * the reservation is settled exactly: afterwards the key has no request in flight, its
//!   budget holds exactly the record's cost (nothing when nothing went upstream), and its
//!   totals hold the request once at that cost (a refusal not at all);
//! * the response reaches the client byte for byte, unless the budget cuts it off: then the
//!   client gets a prefix of it that ends at a frame boundary, plus one terminal
//!   `throttlingException` frame, and nothing after it — a stream that decodes cleanly;
//! * a stream body that ends inside a message is flagged for the host to break the client's
//!   response (`upstream_ended_inside_a_message`), and no other.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::accounting::totals::CasTotals;
use tollgate_core::config::Config;
use tollgate_core::dialect::bedrock::CUT_OFF_EXCEPTION;
use tollgate_core::endpoints;
use tollgate_core::exchange::{self, Admission, Outbound, Verdict};
use tollgate_core::quota::counters::CasCounters;
use tollgate_core::request::auth::hash_key;
use tollgate_core::request::model_id;
use tollgate_core::response::eventstream::Decoder;
use tollgate_core::store::memory::MemoryStore;
use tollgate_core::upstream::signing::SigningKeyCache;
use tollgate_fuzz::{chunks, response_body, Input, OPERATIONS};

const KEY: &str = "tg-fuzz-key";
const NOW_MS: u64 = 1_795_348_800_000;
const MODELS: [&str; 7] = [
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "meta.llama3-8b-instruct-v1:0",
    "amazon.titan-text-express-v1",
    "us.amazon.nova-lite-v1:0",
    "mistral.mistral-large-2402-v1:0",
    "us.example.unpriced-model-v1:0",
    "amazon.nova-canvas-v1:0",
];
const STATUSES: [u16; 6] = [200, 200, 200, 400, 429, 503];

fn config(budget_micro_usd: u16, cap: Option<u16>) -> Config {
    let hash: String = hash_key(KEY).iter().map(|b| format!("{b:02x}")).collect();
    let cap = cap.map_or(String::new(), |c| format!(r#","max_output_tokens":{c}"#));
    let doc = format!(
        r#"{{"region":"us-east-1","upstream_host":"127.0.0.1:9100",
            "api_keys":[{{"id":"k","sha256":"{hash}","models":["*"],
              "limits":{{"budget":{{"usd":"0.{budget_micro_usd:06}","period":"total"}},
                         "max_concurrent_requests":2,"requests_per_minute":1000,
                         "cut_off_streams":true{cap}}}}}],
            "credentials":{{"type":"inline","access_key_id":"AKID","secret_access_key":"fuzz-secret"}}}}"#
    );
    Config::parse(doc.as_bytes(), &|_| None).expect("the fuzz configuration is valid")
}

fn request_body(kind: u8, max_tokens: u16, input: &mut Input<'_>) -> Vec<u8> {
    match kind % 3 {
        0 => format!(
            r#"{{"messages":[{{"role":"user","content":[{{"text":"hi"}}]}}],"inferenceConfig":{{"maxTokens":{max_tokens}}}}}"#
        )
        .into_bytes(),
        1 => format!(
            r#"{{"anthropic_version":"bedrock-2023-05-31","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
        .into_bytes(),
        _ => {
            let n = usize::from(input.u16());
            input.bytes(n).to_vec()
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let op = OPERATIONS[usize::from(input.u8()) % 4];
    let model = MODELS[usize::from(input.u8()) % MODELS.len()];
    let budget = input.u16();
    let cap_bits = input.u16();
    let cap = (cap_bits & 1 == 1).then_some((cap_bits >> 1).max(1));
    let status = STATUSES[usize::from(input.u8()) % STATUSES.len()];
    let (body_kind, max_tokens) = (input.u8(), input.u16());
    let body = request_body(body_kind, max_tokens, &mut input);
    let cut_seed = input.bytes(8).to_vec();
    let upstream_body = response_body(&mut input);

    let config = config(budget, cap);
    let store = MemoryStore::default();
    let counters = CasCounters(&store);
    let path = format!(
        "/model/{}/{}",
        model_id::encode_path_label(model),
        op.path_segment()
    );
    let auth = format!("Bearer {KEY}");
    let len = body.len().to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    let Admission::Forward(mut ex) = exchange::admit(&config, "POST", &path, &headers, NOW_MS)
    else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(NOW_MS);
    let forwarded = ex.check_declared_body_size().is_ok()
        && ex
            .upstream_request(
                &config,
                &counters,
                &mut SigningKeyCache::default(),
                &body,
                now,
            )
            .is_ok_and(|out| matches!(out, Outbound::Upstream(_)));

    let mut to_client = Vec::new();
    let mut cut_at = None;
    if forwarded {
        ex.on_response_headers(
            status,
            [("content-type", "application/vnd.amazon.eventstream")],
        );
        let mut sent = 0;
        let mut resets = 0;
        for piece in chunks(&upstream_body, &cut_seed, 300) {
            let relayed = ex.on_response_body(piece);
            match relayed.verdict {
                Verdict::Pass => {
                    assert!(cut_at.is_none(), "bytes passed after the end");
                    assert_eq!(&relayed.bytes[..], piece);
                    to_client.extend_from_slice(piece);
                }
                // Bedrock's dialect passes Bedrock's answer unchanged.
                Verdict::Replace => panic!("the Bedrock dialect replaced a chunk"),
                Verdict::End { reset_upstream } => {
                    if cut_at.is_none() {
                        cut_at = Some(to_client.len());
                        to_client.extend_from_slice(&relayed.bytes);
                    } else {
                        assert!(relayed.bytes.is_empty(), "bytes after the end");
                    }
                    resets += usize::from(reset_upstream);
                }
            }
            sent += piece.len();
        }
        assert!(resets <= 1, "the upstream reset {resets} times");
        assert_eq!(sent, upstream_body.len());
    }
    if forwarded && cut_at.is_none() {
        // A body that ends inside a message is flagged, so the host breaks the client's
        // response instead of ending it cleanly; any other end is not.
        let mut dec = Decoder::new();
        let decoded = dec.push(&upstream_body, |_| {}).is_ok();
        let expected =
            op.is_stream() && (200..300).contains(&status) && decoded && dec.buffered() > 0;
        assert_eq!(ex.upstream_ended_inside_a_message(), expected);
    }
    let totals = CasTotals(&store);
    let record = ex
        .end(&config, &counters, &totals, NOW_MS + 1)
        .expect("the first end makes the record")
        .record()
        .clone();
    assert!(ex.end(&config, &counters, &totals, NOW_MS + 2).is_none());
    assert_eq!(record.forwarded, forwarded);
    if !forwarded {
        assert_eq!(
            record.cost_pico_usd, 0,
            "billed a request that never went upstream"
        );
    }

    match cut_at {
        None => assert!(
            !forwarded || to_client == upstream_body,
            "the response was altered"
        ),
        Some(_) => {
            // What the client got decodes cleanly and ends with the terminal frame.
            let mut dec = Decoder::new();
            let mut last = None;
            let mut ends = Vec::new();
            dec.push_with_ends(&to_client, |m, end| {
                last = m.exception_type().map(str::to_string);
                ends.push(end);
            })
            .expect("the cut stream decodes");
            assert_eq!(dec.buffered(), 0, "the cut stream ends inside a frame");
            assert_eq!(last.as_deref(), Some(CUT_OFF_EXCEPTION));
            // Everything before the terminal frame is the upstream's, unchanged.
            let before = ends.len().checked_sub(2).map_or(0, |i| ends[i]);
            assert_eq!(&to_client[..before], &upstream_body[..before]);
            assert_eq!(record.exception.as_deref(), Some(CUT_OFF_EXCEPTION));
        }
    }

    // The reservation became the bill, and the slot is free.
    let reply = endpoints::usage(
        &totals,
        &counters,
        &config.api_keys[0],
        NOW_MS + 3,
        config.lease,
    );
    assert_eq!(reply.status, 200);
    let usage: Value = serde_json::from_slice(&reply.body).expect("usage is JSON");
    assert_eq!(
        usage["concurrent_requests"]["used"], 0,
        "a slot was not freed: {usage}"
    );
    assert_eq!(
        usage["budget"]["spent_pico_usd"].as_u64(),
        Some(record.cost_pico_usd),
        "budget spent differs from the record: {usage} vs {record:?}"
    );
    // The totals hold the request once, at the record's cost (a refusal is not counted).
    assert_eq!(usage["requests"].as_u64(), Some(u64::from(forwarded)));
    assert_eq!(
        usage["cost_pico_usd"].as_u64(),
        Some(record.cost_pico_usd),
        "totals differ from the record: {usage} vs {record:?}"
    );
});
