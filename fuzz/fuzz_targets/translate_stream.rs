//! The response translators: Bedrock's answer (Converse JSON, ConverseStream, InvokeModel
//! Anthropic JSON and stream, refusals) into OpenAI `chat.completion` / chunk SSE and
//! Anthropic Messages / SSE, fed valid and mutated bodies in any chunking.
//!
//! Properties, for any route, status and body:
//! * chunking changes nothing: the body whole and the body cut anywhere give the same bytes
//!   to the client (translators hold what they cannot translate yet);
//! * a refusal (non-2xx) becomes one JSON error object in the client's dialect;
//! * a 2xx stream is well-formed server-sent events — each an optional `event:` line (Anthropic:
//!   always, naming the data's own `type`) and one `data:` line of JSON (or OpenAI's
//!   `[DONE]`), nothing injected between them — that ends, once Bedrock's body has ended, with
//!   exactly one terminal event (OpenAI: `[DONE]` or an error; Anthropic: `message_stop` or
//!   `error`) and nothing after it;
//! * the usage the client is told never decreases along a stream (each counter, when
//!   reported), and OpenAI reports none unless `stream_options.include_usage` asked;
//! * a 2xx whole answer is one JSON object (Anthropic on InvokeModel: Bedrock's bytes as
//!   they came);
//! * a stream the gateway cuts off (budget) is the uncut stream's beginning and then one
//!   terminal event: the cut's error, or the stream's own end if that came first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::dialect::{Api, Translation, Translator};
use tollgate_core::Operation;
use tollgate_fuzz::{chunks, sse_events, strict_json, translator_body, translator_config, Input};

const STATUSES: [u16; 8] = [200, 200, 200, 200, 400, 429, 503, 500];
const ERROR_TYPES: [&str; 4] = [
    "ThrottlingException",
    "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    "ServiceUnavailableException",
    "",
];

/// The client's routes: (API, model ID).
const ROUTES: [(Api, &str); 3] = [
    (
        Api::ChatCompletions,
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    ),
    (Api::Messages, "us.anthropic.claude-haiku-4-5-20251001-v1:0"),
    (Api::Messages, "us.amazon.nova-lite-v1:0"),
];

fn translator(
    api: Api,
    model_id: &str,
    stream: bool,
    usage: bool,
) -> (Operation, Box<dyn Translator>) {
    let body = match api {
        Api::ChatCompletions => format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}{}}}"#,
            if stream && usage {
                r#","stream_options":{"include_usage":true}"#
            } else {
                ""
            }
        ),
        _ => format!(
            r#"{{"model":"m","max_tokens":100,"messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
        ),
    };
    let config = translator_config();
    let request = api.read(body.as_bytes()).expect("the fixed request reads");
    let target = tollgate_core::dialect::Target {
        config: &config,
        model_id,
        headers: &[],
        now_ms: 1_795_348_800_000,
    };
    match request.translate(&target) {
        Ok(Translation::Bedrock(b)) => (b.operation, b.response),
        _ => panic!("the fixed request translates"),
    }
}

/// Runs `body` through a fresh translator in `pieces`; with `cut_after`, the gateway ends the
/// stream itself after that many pieces.
fn run(
    route: (Api, &str),
    stream: bool,
    usage: bool,
    status: u16,
    headers: &[(&str, &str)],
    pieces: &[&[u8]],
    cut_after: Option<usize>,
) -> Vec<u8> {
    let (_, mut t) = translator(route.0, route.1, stream, usage);
    let _ = t.head(status, headers);
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if cut_after == Some(i) {
            out.extend(t.cut_off("the key's budget is spent"));
            return out;
        }
        out.extend_from_slice(&t.body(piece));
    }
    if cut_after.is_some() {
        out.extend(t.cut_off("the key's budget is spent"));
        return out;
    }
    out.extend(t.end());
    out
}

/// Whether event `data` (JSON) ends the client's stream, and checks each event's shape.
fn is_terminal(api: Api, event: Option<&str>, data: &str) -> bool {
    if api == Api::ChatCompletions {
        assert_eq!(event, None, "an OpenAI stream with event names");
        if data == "[DONE]" {
            return true;
        }
        let v =
            strict_json(data.as_bytes()).unwrap_or_else(|e| panic!("data not JSON ({e}): {data}"));
        assert!(v.is_object(), "data not an object: {data}");
        return v.get("error").is_some();
    }
    let v = strict_json(data.as_bytes()).unwrap_or_else(|e| panic!("data not JSON ({e}): {data}"));
    let ty = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("an event without a type: {data}"));
    assert_eq!(
        event,
        Some(ty),
        "the event's name is not its data's type: {data}"
    );
    matches!(ty, "message_stop" | "error")
}

/// The usage objects of one event's data.
fn usages(data: &str) -> Vec<Value> {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Vec::new();
    };
    [&v["usage"], &v["message"]["usage"]]
        .into_iter()
        .filter(|u| u.is_object())
        .cloned()
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8();
    let route = ROUTES[usize::from(selector) % ROUTES.len()];
    let stream = selector & 0x10 != 0;
    let include_usage = selector & 0x20 != 0;
    let cut = selector & 0x40 != 0;
    let status = STATUSES[usize::from(input.u8()) % STATUSES.len()];
    let error_type = ERROR_TYPES[usize::from(input.u8()) % ERROR_TYPES.len()];
    let cut_seed = input.bytes(8).to_vec();
    let body = translator_body(&mut input);

    let content_type = if stream {
        "application/vnd.amazon.eventstream"
    } else {
        "application/json"
    };
    let mut headers = vec![
        ("content-type", content_type),
        ("x-amzn-requestid", "0a1b2c3d-fuzz"),
    ];
    if !error_type.is_empty() && !(200..300).contains(&status) {
        headers.push(("x-amzn-errortype", error_type));
    }
    let (operation, _) = translator(route.0, route.1, stream, include_usage);
    assert_eq!(operation.is_stream(), stream);

    let whole = run(
        route,
        stream,
        include_usage,
        status,
        &headers,
        &[&body],
        None,
    );
    let pieces = chunks(&body, &cut_seed, 64);
    let cut_up = run(
        route,
        stream,
        include_usage,
        status,
        &headers,
        &pieces,
        None,
    );
    assert!(
        whole == cut_up,
        "chunking changed the answer:\nwhole: {}\ncut:   {}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&cut_up)
    );

    if !(200..300).contains(&status) {
        let v = strict_json(&whole).expect("a refusal is JSON");
        assert!(
            v["error"]["message"].is_string(),
            "a refusal without a message: {v}"
        );
        if route.0 == Api::Messages {
            assert_eq!(v["type"], "error");
        }
        return;
    }
    if !stream {
        if route.0 == Api::Messages && route.1.contains("anthropic.") {
            assert_eq!(whole, body, "InvokeModel's answer was changed");
        } else {
            let v = strict_json(&whole).unwrap_or_else(|e| {
                panic!(
                    "the answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&whole)
                )
            });
            assert!(v.is_object());
        }
        return;
    }

    let check_stream = |out: &[u8]| {
        let events = sse_events(out).unwrap_or_else(|e| {
            panic!(
                "not SSE: {e} ({:?} on {}): {}",
                route.0,
                route.1,
                String::from_utf8_lossy(out)
            )
        });
        let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
        let converse_source = !(route.0 == Api::Messages && route.1.contains("anthropic."));
        for (i, e) in events.iter().enumerate() {
            let terminal = is_terminal(route.0, e.event.as_deref(), &e.data);
            let last = i + 1 == events.len();
            assert_eq!(
                terminal,
                last,
                "terminal event not last (or last not terminal): {e:?} in {}",
                String::from_utf8_lossy(out)
            );
            if route.0 == Api::ChatCompletions && !include_usage {
                let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                assert!(v.get("usage").is_none(), "usage not asked for: {}", e.data);
            }
            // Usage Tollgate writes itself (Converse streams translated) never decreases.
            // Claude's own events on InvokeModel pass through as Bedrock sent them.
            if converse_source {
                for u in usages(&e.data) {
                    for (name, n) in u.as_object().into_iter().flatten() {
                        let Some(n) = n.as_u64() else { continue };
                        let before = seen.insert(name.clone(), n).unwrap_or(0);
                        assert!(n >= before, "usage `{name}` went from {before} to {n}");
                    }
                }
            }
        }
        assert!(!events.is_empty(), "a stream that ended without a word");
    };
    check_stream(&whole);
    if cut && !pieces.is_empty() {
        let at = usize::from(cut_seed.first().copied().unwrap_or(0)) % (pieces.len() + 1);
        let out = run(
            route,
            stream,
            include_usage,
            status,
            &headers,
            &pieces,
            Some(at),
        );
        // One terminal event, last: the cut's error, or the stream's own end if it came first
        // (then nothing follows it). Before the error, the client got what the uncut stream
        // began with.
        let events = sse_events(&out).unwrap_or_else(|e| panic!("a cut stream is not SSE: {e}"));
        let terminals: Vec<bool> = events
            .iter()
            .map(|e| is_terminal(route.0, e.event.as_deref(), &e.data))
            .collect();
        assert_eq!(
            terminals.iter().filter(|&&t| t).count(),
            1,
            "a cut stream's terminal events: {}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(
            terminals.last(),
            Some(&true),
            "a cut stream's last event is not its end"
        );
        let last = events.last().expect("a cut stream says why");
        let last_len = last.event.as_ref().map_or(0, |n| n.len() + 8) + last.data.len() + 8;
        let before = if last.data.contains("budget") {
            out.len() - last_len
        } else {
            out.len()
        };
        assert!(
            whole.starts_with(&out[..before]),
            "a cut stream differs from the uncut one before the cut"
        );
    }
});
