//! The meter against every response shape, at every chunking.

use super::*;
use crate::response::eventstream::encode;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

fn event(event_type: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    encode(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        format!(r#"{{"message":"{message}"}}"#).as_bytes(),
    )
}

/// An invoke-stream `chunk` wrapping a model event, with Bedrock's `"p"` padding.
fn chunk(model_event: &str) -> Vec<u8> {
    let b64 = STANDARD.encode(model_event);
    event(
        "chunk",
        &format!(r#"{{"bytes":"{b64}","p":"abcdefghijklmnopqrs"}}"#),
    )
}

const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";

fn meter_with(op: Operation, content_type: &str) -> UsageMeter {
    let mut m = UsageMeter::new(op);
    m.on_response_headers(
        200,
        [("Content-Type", content_type), ("x-amzn-requestid", "abc")],
    );
    m
}

fn run(op: Operation, content_type: &str, chunks: &[&[u8]]) -> Reading {
    let mut m = meter_with(op, content_type);
    for c in chunks {
        m.on_body(c);
    }
    m.finish()
}

fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: read,
        cache_write_tokens: write,
        images: 0,
    }
}

// ---- non-stream --------------------------------------------------------------------

#[test]
fn converse_json_without_cache() {
    let body = br#"{"metrics":{"latencyMs":512},"output":{"message":{"content":[{"text":"Hi there"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":25,"outputTokens":9,"totalTokens":34}}"#;
    let r = run(
        Operation::Converse,
        "application/json",
        &[&body[..10], &body[10..]],
    );
    assert_eq!(r.usage, usage(25, 9, 0, 0));
    assert!(r.complete);
    assert_eq!(r.problem, None);
    assert_eq!((r.events, r.output_text_bytes), (0, 0));
}

#[test]
fn converse_json_with_cache() {
    let body = br#"{"output":{"message":{"content":[{"text":"ok"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":3,"totalTokens":2063,"cacheReadInputTokens":2000,"cacheWriteInputTokens":48,"cacheDetails":[{"ttl":"5m","inputTokens":48}]},"metrics":{"latencyMs":300}}"#;
    let r = run(Operation::Converse, "application/json", &[body]);
    assert_eq!(r.usage, usage(12, 3, 2000, 48));
    assert_eq!(r.usage.total_input(), 2060);
    assert!(r.complete);
}

#[test]
fn anthropic_invoke_json() {
    let body = br#"{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":14,"cache_creation_input_tokens":1024,"cache_read_input_tokens":512,"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},"output_tokens":7,"server_tool_use":null}}"#;
    let mut m = meter_with(Operation::Invoke, "application/json");
    // Headers say something else: the body wins. Neither counts before the body ended.
    m.on_response_headers(
        200,
        [
            ("X-Amzn-Bedrock-Input-Token-Count", "99"),
            ("X-Amzn-Bedrock-Output-Token-Count", "99"),
        ],
    );
    assert_eq!(m.reading().usage, Usage::default());
    assert!(!m.reading().complete);
    m.on_body(body);
    let r = m.finish();
    assert_eq!(r.usage, usage(14, 7, 512, 1024));
    assert!(r.complete);
    assert_eq!(r.problem, None);
}

#[test]
fn nova_invoke_json() {
    let body = br#"{"output":{"message":{"content":[{"text":"Bonjour"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"inputTokens":8,"outputTokens":4,"totalTokens":112,"cacheReadInputTokenCount":100,"cacheWriteInputTokenCount":0}}"#;
    let r = run(Operation::Invoke, "application/json", &[body]);
    assert_eq!(r.usage, usage(8, 4, 100, 0));
    assert!(r.complete);
}

#[test]
fn llama_invoke_json() {
    let body = br#"{"generation":" Paris.","prompt_token_count":17,"generation_token_count":3,"stop_reason":"stop"}"#;
    let r = run(Operation::Invoke, "application/json", &[body]);
    assert_eq!(r.usage, usage(17, 3, 0, 0));
    assert!(r.complete);
}

#[test]
fn headers_fallback_when_body_has_no_usage() {
    // Titan embeddings: no usage object in the body.
    let body = br#"{"embedding":[0.1,-0.2,0.3],"inputTextTokenCount":6}"#;
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(
        200,
        [
            ("content-type", "application/json"),
            ("x-amzn-bedrock-input-token-count", "6"),
            ("X-AMZN-BEDROCK-OUTPUT-TOKEN-COUNT", " 0 "),
            ("x-amzn-bedrock-cache-read-input-token-count", "2"),
            ("x-amzn-Bedrock-Cache-Write-Input-Token-Count", "3"),
            ("x-amzn-bedrock-invocation-latency", "120"),
        ],
    );
    m.on_body(body);
    let r = m.finish();
    assert_eq!(r.usage, usage(6, 0, 2, 3));
    assert!(r.complete);
    assert_eq!(r.problem, None);
}

#[test]
fn headers_fallback_for_non_json_and_invalid_bodies() {
    let headers = [
        ("x-amzn-bedrock-input-token-count", "5"),
        ("x-amzn-bedrock-output-token-count", "1"),
    ];
    // A non-JSON content type: read as JSON all the same, then the headers.
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(200, [("content-type", "image/png")]);
    m.on_response_headers(200, headers);
    m.on_body(b"\x89PNG\r\n");
    let r = m.finish();
    assert_eq!((r.usage, r.complete), (usage(5, 1, 0, 0), true));
    assert!(r.problem.unwrap().starts_with("invalid JSON body"));

    // Invalid JSON: a problem, and the headers.
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(200, headers);
    m.on_body(b"{\"usage\": {\"input_tokens\": 3,");
    let r = m.finish();
    assert_eq!(r.usage, usage(5, 1, 0, 0));
    assert!(r.complete);
    assert!(r.problem.unwrap().starts_with("invalid JSON body"));

    // Unparseable header value: recorded; what the others say is seen, not whole.
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(
        200,
        [
            ("x-amzn-bedrock-input-token-count", "-4"),
            ("x-amzn-bedrock-output-token-count", "2"),
        ],
    );
    let r = m.finish();
    assert_eq!((r.usage, r.complete), (usage(0, 2, 0, 0), false));
    assert_eq!(
        r.problem.as_deref(),
        Some("unparseable x-amzn-bedrock-input-token-count header")
    );
}

#[test]
fn error_bodies_yield_no_usage() {
    let mut m = UsageMeter::new(Operation::Converse);
    m.on_response_headers(
        200,
        [
            ("content-type", "application/json"),
            (
                "x-amzn-errortype",
                "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        ],
    );
    m.on_body(br#"{"message":"The provided model identifier is invalid."}"#);
    let r = m.finish();
    assert_eq!(r.usage, Usage::default());
    assert!(!r.complete);
    assert_eq!(r.exception.as_deref(), Some("ValidationException"));
    assert_eq!(r.problem, None);

    // A stream operation answered with a JSON error before any event.
    let mut m = UsageMeter::new(Operation::ConverseStream);
    m.on_response_headers(429, [("content-type", "application/json")]);
    m.on_body(br#"{"message":"Too many requests, please wait before trying again."}"#);
    let r = m.finish();
    assert_eq!(
        (r.usage, r.complete, r.events, r.problem),
        (Usage::default(), false, 0, None)
    );

    // An empty body is not a problem either.
    let r = run(Operation::Invoke, "application/json", &[]);
    assert_eq!(r, Reading::default());
}

#[test]
fn odd_json_types_lose_a_field_not_the_body() {
    let body = br#"{"usage":{"inputTokens":"12","outputTokens":7,"cacheReadInputTokens":1.5,"cacheWriteInputTokens":null,"input_tokens":{"x":[1,2]}}}"#;
    let r = run(Operation::Converse, "application/json", &[body]);
    assert_eq!(r.usage, usage(12, 7, 0, 0));
    assert!(r.complete);
    assert_eq!(r.problem, None);
    // Not an object at all.
    let r = run(Operation::Converse, "application/json", &[b"[1,2,3]"]);
    assert!(r.problem.is_some() && !r.complete);
}

#[test]
fn deeply_nested_json_does_not_overflow_the_stack() {
    // Past the typed shapes, values are skipped by serde_json's iterative `IgnoredAny`, and
    // serde_json refuses more than 128 levels of real recursion: no stack overflow either way.
    let deep = |inner: &str| format!("{}{inner}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies = [
        deep(""),
        format!(r#"{{"usage":{{"inputTokens":{}}}}}"#, deep("1")),
        format!(r#"{{"usage":{}}}"#, deep("")),
        format!(
            r#"{{"output":{}, "usage":{{"inputTokens":5}}}}"#,
            deep("{}")
        ),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let r = run(Operation::Converse, "application/json", &[body.as_bytes()]);
        let expected = if i == 3 { 5 } else { 0 };
        assert_eq!(r.usage.input_tokens, expected);
        let stream = event("metadata", body);
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        assert_eq!((r.events, r.usage.input_tokens), (1, expected));
    }
}

#[test]
fn nine_mib_body_is_capped() {
    let mut body = br#"{"usage":{"inputTokens":1,"outputTokens":2},"pad":""#.to_vec();
    body.resize(9 * 1024 * 1024, b'x');
    body.extend_from_slice(b"\"}");
    let mut m = UsageMeter::new(Operation::Converse);
    m.on_response_headers(200, [("content-type", "application/json")]);
    for c in body.chunks(64 * 1024) {
        m.on_body(c);
        assert!(m.json.body.len() <= MAX_JSON_BODY);
    }
    assert!(m.json.body.capacity() <= MAX_JSON_BODY);
    let r = m.finish();
    assert!(r.problem.unwrap().contains("cap"));
    assert_eq!(r.usage, Usage::default());
    assert!(!r.complete);

    // With headers, they carry the usage.
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(
        200,
        [
            ("x-amzn-bedrock-input-token-count", "7"),
            ("x-amzn-bedrock-output-token-count", "8"),
        ],
    );
    m.on_body(&body);
    let r = m.finish();
    assert_eq!((r.usage, r.complete), (usage(7, 8, 0, 0), true));
    assert!(r.problem.is_some());
}

// ---- ConverseStream -----------------------------------------------------------------

fn converse_stream() -> Vec<u8> {
    [
        event("messageStart", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO","role":"assistant"}"#),
        event("contentBlockStart", r#"{"contentBlockIndex":0,"p":"abc","start":{}}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Think"}},"p":"abcdef"}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"c2lnbmF0dXJl"}},"p":"ab"}"#),
        event("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abcdefghijklmnopq"}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":"Hello"},"p":"abcdef"}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"text":", w\u00f6rld \"q\"!"},"p":"abcdefghijkl"}"#),
        event("contentBlockStop", r#"{"contentBlockIndex":1,"p":"abcdefghijklmnopq"}"#),
        event("contentBlockStart", r#"{"contentBlockIndex":2,"start":{"toolUse":{"name":"get_weather","toolUseId":"tooluse_1"}},"p":"ab"}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"city\": \"Paris\"}"}},"p":"abc"}"#),
        event("contentBlockStop", r#"{"contentBlockIndex":2,"p":"abcdefghijklmnopq"}"#),
        event("messageStop", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU","stopReason":"tool_use"}"#),
        event("metadata", r#"{"metrics":{"latencyMs":812},"p":"abcdefghijklmnopqrstuvwxy","usage":{"cacheReadInputTokens":300,"cacheWriteInputTokens":0,"inputTokens":42,"outputTokens":31,"totalTokens":373}}"#),
    ]
    .concat()
}

/// "Think" + "Hello" + ", wörld \"q\"!" (unescaped) + `{"city": "Paris"}`.
const CONVERSE_TEXT_BYTES: u64 = 5 + 5 + 13 + 17;

#[test]
fn converse_stream_full() {
    let stream = converse_stream();
    let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
    assert_eq!(
        r,
        Reading {
            usage: usage(42, 31, 300, 0),
            complete: true,
            exception: None,
            output_text_bytes: CONVERSE_TEXT_BYTES,
            events: 13,
            problem: None,
            guardrail: Default::default(),
        }
    );
}

#[test]
fn converse_stream_every_split_gives_the_same_reading() {
    let stream = converse_stream();
    let expected = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(
            run(Operation::ConverseStream, EVENTSTREAM, &[a, b]),
            expected,
            "cut at {cut}"
        );
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(
        run(Operation::ConverseStream, EVENTSTREAM, &bytes),
        expected
    );
}

#[test]
fn converse_stream_reading_mid_stream_and_cut() {
    let stream = converse_stream();
    let mut m = meter_with(Operation::ConverseStream, EVENTSTREAM);
    // Everything up to the end of the first text delta, then half of the next message.
    let mut msgs = 0;
    let mut at = 0;
    while msgs < 6 {
        at += u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        msgs += 1;
    }
    m.on_body(&stream[..at + 20]);
    let r = m.reading();
    assert_eq!((r.events, r.output_text_bytes, r.complete), (6, 10, false));
    assert_eq!(r.usage, Usage::default());
    let r = m.finish();
    assert!(!r.complete);
    assert!(r.problem.unwrap().contains("stream ended inside"));

    // Cut on a message boundary: no problem, still incomplete.
    let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream[..at]]);
    assert_eq!(
        (r.events, r.output_text_bytes, r.complete, r.problem),
        (6, 10, false, None)
    );
}

#[test]
fn converse_stream_exception_mid_stream() {
    let stream = [
        event("messageStart", r#"{"role":"assistant"}"#),
        event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Partial"}}"#,
        ),
        exception("modelStreamErrorException", "Model stream failed"),
        exception("internalServerException", "later"),
    ]
    .concat();
    let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
    assert_eq!(r.exception.as_deref(), Some("modelStreamErrorException"));
    assert_eq!((r.events, r.output_text_bytes, r.complete), (4, 7, false));
    assert_eq!(r.problem, None);

    let err = encode(
        &[
            (":message-type", "error"),
            (":error-code", "InternalFailure"),
            (":error-message", "boom"),
        ],
        b"",
    );
    let r = run(Operation::ConverseStream, EVENTSTREAM, &[&err]);
    assert_eq!(r.exception.as_deref(), Some("InternalFailure"));
}

#[test]
fn corrupt_crc_sets_problem_and_stops() {
    let mut stream = converse_stream();
    let last = stream.len() - 1;
    stream[last] ^= 0xff; // metadata's message CRC
    let mut m = meter_with(Operation::ConverseStream, EVENTSTREAM);
    m.on_body(&stream);
    m.on_body(&converse_stream()); // ignored: the stream cannot resync
    let r = m.finish();
    assert!(r.problem.unwrap().contains("message CRC mismatch"));
    assert_eq!((r.events, r.complete), (12, false));
    assert_eq!(r.output_text_bytes, CONVERSE_TEXT_BYTES);

    let mut stream = converse_stream();
    stream[5] ^= 0x01; // first prelude
    let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
    assert!(r.problem.unwrap().contains("prelude CRC mismatch"));
    assert_eq!(r.events, 0);
}

#[test]
fn invalid_event_json_is_a_problem_but_decoding_continues() {
    let stream = [
        event("contentBlockDelta", r#"{"delta":{"text":"ab"#),
        event("contentBlockDelta", r#"{"delta":{"text":"abc"}}"#),
        event(
            "metadata",
            r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
        ),
    ]
    .concat();
    let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
    assert!(r
        .problem
        .unwrap()
        .starts_with("contentBlockDelta event 1: invalid JSON"));
    assert_eq!(
        (r.usage, r.complete, r.output_text_bytes),
        (usage(1, 2, 0, 0), true, 3)
    );
}

// ---- InvokeWithResponseStream ------------------------------------------------------

fn anthropic_stream(invocation_metrics: bool) -> Vec<u8> {
    let stop = if invocation_metrics {
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":20,"outputTokenCount":25,"invocationLatency":1200,"firstByteLatency":300,"cacheReadInputTokenCount":1000,"cacheWriteInputTokenCount":50}}"#
    } else {
        r#"{"type":"message_stop"}"#
    };
    [
        chunk(r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-3-5-sonnet-20241022","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":20,"cache_creation_input_tokens":50,"cache_read_input_tokens":1000,"output_tokens":1}}}"#),
        chunk(r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#),
        chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm."}}"#),
        chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"RXVn"}}"#),
        chunk(r#"{"type":"content_block_stop","index":0}"#),
        chunk(r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Héllo"}}"#),
        chunk(r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#),
        chunk(r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":10}}"#),
        chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":25}}"#),
        chunk(stop),
    ]
    .concat()
}

/// "Hmm." + "Héllo" + `{"a":1}`.
const ANTHROPIC_TEXT_BYTES: u64 = 4 + 6 + 7;

#[test]
fn invoke_stream_with_invocation_metrics() {
    let stream = anthropic_stream(true);
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
    assert_eq!(
        r,
        Reading {
            usage: usage(20, 25, 1000, 50),
            complete: true,
            exception: None,
            output_text_bytes: ANTHROPIC_TEXT_BYTES,
            events: 10,
            problem: None,
            guardrail: Default::default(),
        }
    );
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(
            run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[a, b]),
            r,
            "cut at {cut}"
        );
    }
}

#[test]
fn invoke_stream_cumulative_delta_replaces() {
    // Two message_delta events, 10 then 25: the output is 25, not 35 (nor 36 with start's 1).
    let stream = anthropic_stream(false);
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
    assert_eq!(r.usage, usage(20, 25, 1000, 50));
    assert!(r.complete, "message_delta usage + message_stop completes");
}

#[test]
fn invoke_stream_metrics_are_authoritative() {
    let stream = [
        chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#),
        chunk(r#"{"type":"message_delta","usage":{"output_tokens":4}}"#),
        chunk(r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":10,"outputTokenCount":5}}"#),
        // Anything after the metrics does not move the final usage.
        chunk(r#"{"type":"message_delta","usage":{"output_tokens":400}}"#),
    ]
    .concat();
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
    assert_eq!((r.usage, r.complete), (usage(10, 5, 0, 0), true));
}

#[test]
fn invoke_stream_newer_message_delta_carries_input_and_cache() {
    let stream = [
        chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"cache_read_input_tokens":0,"output_tokens":1}}}"#),
        chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":3,"cache_creation_input_tokens":7,"cache_read_input_tokens":11,"output_tokens":12,"server_tool_use":{"web_search_requests":1}}}"#),
        chunk(r#"{"type":"message_stop"}"#),
    ]
    .concat();
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
    assert_eq!((r.usage, r.complete), (usage(3, 12, 11, 7), true));
}

#[test]
fn invoke_stream_cut_midway() {
    let stream = anthropic_stream(true);
    let mut m = meter_with(Operation::InvokeWithResponseStream, EVENTSTREAM);
    // First six chunks and a few bytes of the seventh.
    let mut at = 0;
    for _ in 0..6 {
        at += u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
    }
    m.on_body(&stream[..at + 3]);
    let r = m.reading();
    assert_eq!(
        r.usage,
        usage(20, 1, 1000, 50),
        "message_start usage known mid-stream"
    );
    assert_eq!(
        (r.output_text_bytes, r.events, r.complete),
        (4 + 6, 6, false)
    );
    let r = m.finish();
    assert!(!r.complete);
    assert!(r.problem.is_some());
}

#[test]
fn invoke_stream_exceptions() {
    let stream = [
        chunk(r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#),
        chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abc"}}"#),
        exception("modelTimeoutException", "Model has timed out"),
    ]
    .concat();
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
    assert_eq!(r.exception.as_deref(), Some("modelTimeoutException"));
    assert_eq!(
        (r.usage, r.complete, r.output_text_bytes, r.events),
        (usage(5, 1, 0, 0), false, 3, 3)
    );

    // Anthropic's own error event inside a chunk.
    let stream =
        chunk(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
    assert_eq!(r.exception.as_deref(), Some("overloaded_error"));
}

#[test]
fn invoke_stream_llama_and_nova() {
    let llama = [
        chunk(r#"{"generation":"Hel","prompt_token_count":12,"generation_token_count":1,"stop_reason":null}"#),
        chunk(r#"{"generation":"lo","prompt_token_count":null,"generation_token_count":2,"stop_reason":null}"#),
        chunk(r#"{"generation":"","prompt_token_count":null,"generation_token_count":3,"stop_reason":"stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":3,"invocationLatency":200,"firstByteLatency":90}}"#),
    ]
    .concat();
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&llama]);
    assert_eq!(
        (r.usage, r.complete, r.output_text_bytes),
        (usage(12, 3, 0, 0), true, 5)
    );

    let nova = [
        chunk(r#"{"messageStart":{"role":"assistant"}}"#),
        chunk(r#"{"contentBlockDelta":{"delta":{"text":"Salut"},"contentBlockIndex":0}}"#),
        chunk(r#"{"metadata":{"usage":{"inputTokens":4,"outputTokens":2}},"amazon-bedrock-invocationMetrics":{"inputTokenCount":4,"outputTokenCount":2,"invocationLatency":1,"firstByteLatency":1,"cacheReadInputTokenCount":0,"cacheWriteInputTokenCount":0}}"#),
    ]
    .concat();
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&nova]);
    assert_eq!(
        (r.usage, r.complete, r.output_text_bytes),
        (usage(4, 2, 0, 0), true, 5)
    );
}

// ---- InvokeWithResponseStream, every model family ------------------------------------

/// `amazon-bedrock-invocationMetrics`, as Bedrock adds it to a stream's last chunk.
fn metrics(input: u64, output: u64) -> String {
    format!(
        r#""amazon-bedrock-invocationMetrics":{{"inputTokenCount":{input},"outputTokenCount":{output},"invocationLatency":420,"firstByteLatency":120}}"#
    )
}

/// One model family's invoke stream: its model events (each becomes one `chunk`), the bytes
/// of generated text they carry, and the final usage (from the invocation metrics).
struct FamilyStream {
    family: &'static str,
    events: Vec<String>,
    text_bytes: u64,
    usage: Usage,
}

/// Every family Bedrock serves on InvokeModelWithResponseStream, in its own chunk shape
/// (the model providers' native formats, as the Bedrock user guide's per-model inference
/// parameters describe them).
fn family_streams() -> Vec<FamilyStream> {
    let s = |family, events: &[&str], text_bytes, input, output| FamilyStream {
        family,
        events: events.iter().map(|e| e.to_string()).collect(),
        text_bytes,
        usage: usage(input, output, 0, 0),
    };
    let m = metrics;
    vec![
        s(
            "mistral (7B, Mixtral, Large 2402, Small)",
            &[
                r#"{"outputs":[{"text":" Bon","stop_reason":null}]}"#,
                r#"{"outputs":[{"text":"jour","stop_reason":null}]}"#,
                &format!(
                    r#"{{"outputs":[{{"text":"!","stop_reason":"stop"}}],{}}}"#,
                    m(12, 3)
                ),
            ],
            4 + 4 + 1,
            12,
            3,
        ),
        s(
            "mistral large 2 (2407), pixtral: chat message chunks",
            &[
                r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"message":{"role":"assistant","content":"Bon"},"stop_reason":null}]}"#,
                &format!(
                    r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"jour"}},"stop_reason":"stop"}}],{}}}"#,
                    m(8, 2)
                ),
            ],
            3 + 4,
            8,
            2,
        ),
        s(
            "amazon titan text",
            &[
                r#"{"outputText":"Hel","index":0,"totalOutputTextTokenCount":1,"completionReason":null,"inputTextTokenCount":5}"#,
                &format!(
                    r#"{{"outputText":"lo!","index":0,"totalOutputTextTokenCount":2,"completionReason":"FINISH","inputTextTokenCount":null,{}}}"#,
                    m(5, 2)
                ),
            ],
            3 + 3,
            5,
            2,
        ),
        s(
            "cohere command r / r+",
            &[
                r#"{"is_finished":false,"event_type":"stream-start","generation_id":"g-1"}"#,
                r#"{"is_finished":false,"event_type":"text-generation","text":"Hi"}"#,
                r#"{"is_finished":false,"event_type":"text-generation","text":" there"}"#,
                &format!(
                    r#"{{"is_finished":true,"event_type":"stream-end","response":{{"response_id":"r-1","text":"Hi there","generation_id":"g-1","finish_reason":"COMPLETE"}},"finish_reason":"COMPLETE",{}}}"#,
                    m(9, 2)
                ),
            ],
            2 + 6,
            9,
            2,
        ),
        s(
            "cohere command (legacy)",
            &[
                r#"{"text":" Hi","is_finished":false,"index":0}"#,
                r#"{"generations":[{"text":" you","index":0}]}"#,
                &format!(
                    r#"{{"is_finished":true,"finish_reason":"COMPLETE",{}}}"#,
                    m(4, 2)
                ),
            ],
            3 + 4,
            4,
            2,
        ),
        s(
            "meta llama 2/3/4",
            &[
                r#"{"generation":"Hel","prompt_token_count":12,"generation_token_count":1,"stop_reason":null}"#,
                r#"{"generation":"lo","prompt_token_count":null,"generation_token_count":2,"stop_reason":null}"#,
                &format!(
                    r#"{{"generation":"","prompt_token_count":null,"generation_token_count":3,"stop_reason":"stop",{}}}"#,
                    m(12, 3)
                ),
            ],
            3 + 2,
            12,
            3,
        ),
        s(
            "ai21 jamba",
            &[
                r#"{"id":"chat-1","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#,
                r#"{"id":"chat-1","choices":[{"index":0,"delta":{"content":"Shalom"},"finish_reason":null}]}"#,
                &format!(
                    r#"{{"id":"chat-1","choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}},{}}}"#,
                    m(10, 2)
                ),
            ],
            6,
            10,
            2,
        ),
        s(
            "openai gpt-oss, deepseek v3, writer palmyra, qwen: chat completion chunks",
            &[
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"openai.gpt-oss-20b-1:0","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"Think."},"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"reasoning":"Hm","content":"Hi"},"finish_reason":null}]}"#,
                &format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"call_1","type":"function","function":{{"name":"f","arguments":"{{\"a\":1}}"}}}}]}},"finish_reason":"tool_calls"}}],{}}}"#,
                    m(7, 6)
                ),
            ],
            6 + 2 + 2 + 7,
            7,
            6,
        ),
        s(
            "deepseek r1: text completion choices",
            &[
                r#"{"choices":[{"text":"<think>","stop_reason":null}]}"#,
                &format!(
                    r#"{{"choices":[{{"text":"Hi","stop_reason":"stop"}}],{}}}"#,
                    m(3, 4)
                ),
            ],
            7 + 2,
            3,
            4,
        ),
        s(
            "anthropic text completions (claude v2, instant)",
            &[
                r#"{"completion":" Hello","stop_reason":null,"stop":null}"#,
                &format!(
                    r#"{{"completion":"!","stop_reason":"stop_sequence","stop":"\n\nHuman:",{}}}"#,
                    m(6, 2)
                ),
            ],
            6 + 1,
            6,
            2,
        ),
        s(
            "amazon nova",
            &[
                r#"{"messageStart":{"role":"assistant"}}"#,
                r#"{"contentBlockDelta":{"delta":{"text":"Salut"},"contentBlockIndex":0}}"#,
                r#"{"contentBlockStop":{"contentBlockIndex":0}}"#,
                r#"{"messageStop":{"stopReason":"end_turn"}}"#,
                &format!(
                    r#"{{"metadata":{{"usage":{{"inputTokens":4,"outputTokens":2}}}},{}}}"#,
                    m(4, 2)
                ),
            ],
            5,
            4,
            2,
        ),
        s(
            "a shape no family uses: its text values are counted",
            &[
                r#"{"mystery":{"text":"words"},"n":[1,"ab"]}"#,
                &format!(r#"{{"done":true,{}}}"#, m(2, 2)),
            ],
            5 + 2,
            2,
            2,
        ),
    ]
}

#[test]
fn invoke_stream_every_family_meters_text_at_every_split() {
    for f in family_streams() {
        let stream: Vec<u8> = f.events.iter().flat_map(|e| chunk(e)).collect();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert_eq!(r.output_text_bytes, f.text_bytes, "{}", f.family);
        assert_eq!((r.usage, r.complete), (f.usage, true), "{}", f.family);
        assert_eq!(r.events, f.events.len() as u64, "{}", f.family);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[a, b]),
                r,
                "{}: cut at {cut}",
                f.family
            );
        }
    }
}

#[test]
fn invoke_stream_every_family_is_billed_for_text_before_the_metrics() {
    // A client that cancels before the last chunk (the one with the invocation metrics):
    // the generated text seen so far is what an estimate bills.
    for f in family_streams() {
        let (last, rest) = f.events.split_last().unwrap();
        let stream: Vec<u8> = rest.iter().flat_map(|e| chunk(e)).collect();
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&stream]);
        assert!(!r.complete, "{}", f.family);
        let last_text = run(
            Operation::InvokeWithResponseStream,
            EVENTSTREAM,
            &[&chunk(last)],
        )
        .output_text_bytes;
        assert_eq!(
            r.output_text_bytes,
            f.text_bytes - last_text,
            "{}",
            f.family
        );
        assert!(r.output_text_bytes > 0, "{}: no text metered", f.family);
        let (billed, _) =
            crate::accounting::record::billable(200, true, &r, 100, &Default::default());
        assert!(billed.output_tokens > 0, "{}: billed no output", f.family);
    }
}

#[test]
fn invoke_stream_running_counts_of_titan_and_openai_usage() {
    // Titan reports its input and a running output count in every chunk.
    let titan = chunk(
        r#"{"outputText":"Hel","index":0,"totalOutputTextTokenCount":7,"completionReason":null,"inputTextTokenCount":5}"#,
    );
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&titan]);
    assert_eq!((r.usage, r.complete), (usage(5, 7, 0, 0), false));
    // A chat-completion chunk's `usage` (prompt / completion tokens).
    let usage_chunk = chunk(
        r#"{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}}"#,
    );
    let r = run(
        Operation::InvokeWithResponseStream,
        EVENTSTREAM,
        &[&usage_chunk],
    );
    assert_eq!(r.usage, usage(11, 4, 0, 0));
}

#[test]
fn invoke_stream_chunk_that_is_not_json_counts_as_text() {
    let r = run(
        Operation::InvokeWithResponseStream,
        EVENTSTREAM,
        &[&chunk("plain words")],
    );
    assert_eq!(r.output_text_bytes, 11);
    assert!(r.problem.is_some());
}

#[test]
fn invoke_stream_bad_chunks_never_panic() {
    let cases: Vec<Vec<u8>> = vec![
        event("chunk", r#"{"bytes":"!!!not base64!!!"}"#),
        event("chunk", r#"{"bytes":42}"#),
        event("chunk", r#"{"p":"no bytes"}"#),
        event("chunk", "not json at all"),
        chunk("not json inside"),
        chunk(r#"{"type":7}"#),
        chunk(r#"{"type":"message_delta","usage":"nope"}"#),
        event(
            "chunk",
            &format!(r#"{{"bytes":"{}"}}"#, STANDARD.encode([0xff, 0xfe, 0x00])),
        ),
    ];
    for case in cases {
        let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&case]);
        assert_eq!(r.events, 1);
        assert!(r.problem.is_some(), "{:?}", String::from_utf8_lossy(&case));
        assert!(!r.complete);
    }
    // Unpadded base64 is accepted; escaped slashes in the JSON string too.
    let raw = r#"{"type":"message_delta","usage":{"output_tokens":63}}"#;
    let b64 = STANDARD
        .encode(raw)
        .trim_end_matches('=')
        .replace('/', "\\/");
    let r = run(
        Operation::InvokeWithResponseStream,
        EVENTSTREAM,
        &[&event("chunk", &format!(r#"{{"bytes":"{b64}"}}"#))],
    );
    assert_eq!((r.usage.output_tokens, r.problem), (63, None));
}

// ---- what decides how a response is read ----------------------------------------------

#[test]
fn a_non_stream_operation_is_metered_as_json_whatever_its_content_type() {
    let body = br#"{"usage":{"inputTokens":5,"outputTokens":3}}"#;
    for ct in [EVENTSTREAM, "text/plain", "image/png", "application/json"] {
        for op in [Operation::Converse, Operation::Invoke] {
            let mut m = UsageMeter::new(op);
            m.on_response_headers(200, [("content-type", ct)]);
            m.on_body(body);
            let r = m.finish();
            assert_eq!(
                (r.usage, r.complete),
                (usage(5, 3, 0, 0), true),
                "{op:?} {ct}"
            );
        }
    }
}

#[test]
fn a_stream_operation_answered_2xx_is_metered_as_a_stream_whatever_its_content_type() {
    let stream = converse_stream();
    let expected = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
    for ct in ["application/json", "text/plain"] {
        let mut m = UsageMeter::new(Operation::ConverseStream);
        m.on_response_headers(200, [("content-type", ct)]);
        m.on_body(&stream);
        assert_eq!(m.finish(), expected, "{ct}");
    }
    // Refused: the body is Bedrock's JSON error, whatever the content type says. Nothing
    // in it is billed, and it is not a broken stream.
    let mut m = UsageMeter::new(Operation::ConverseStream);
    m.on_response_headers(
        400,
        [
            ("content-type", EVENTSTREAM),
            (
                "x-amzn-errortype",
                "ValidationException:http://internal.amazon.com/",
            ),
        ],
    );
    m.on_body(br#"{"message":"Malformed input request"}"#);
    let r = m.finish();
    assert_eq!(
        (r.events, r.problem, r.exception.as_deref()),
        (0, None, Some("ValidationException"))
    );
}

#[test]
fn a_final_usage_without_a_valid_output_count_does_not_complete_the_reading() {
    for usage_json in [
        r#"{"inputTokens":7,"outputTokens":-1}"#,
        r#"{"inputTokens":7}"#,
        r#"{"inputTokens":7,"outputTokens":"many"}"#,
        r#"{"inputTokens":7,"outputTokens":1.5}"#,
        r#"{"inputTokens":7,"outputTokens":null}"#,
    ] {
        let stream = [
            event("contentBlockDelta", r#"{"delta":{"text":"twelve bytes"}}"#),
            event("metadata", &format!(r#"{{"usage":{usage_json}}}"#)),
        ]
        .concat();
        let r = run(Operation::ConverseStream, EVENTSTREAM, &[&stream]);
        assert!(!r.complete, "{usage_json}");
        assert_eq!(r.usage.input_tokens, 7, "{usage_json}");
        assert!(r.problem.is_some(), "{usage_json}");
        // Billed from what was seen: never zero output for a response with text.
        let (billed, source) =
            crate::accounting::record::billable(200, true, &r, 100, &Default::default());
        assert_eq!(
            (source, billed.input_tokens, billed.output_tokens),
            (crate::accounting::record::UsageSource::Estimated, 7, 3),
            "{usage_json}"
        );
    }
    // A Converse body, an Anthropic body, invocation metrics: the same rule.
    let r = run(
        Operation::Converse,
        "application/json",
        &[br#"{"usage":{"inputTokens":5,"outputTokens":-3}}"#],
    );
    assert!(!r.complete);
    let r = run(
        Operation::Invoke,
        "application/json",
        &[br#"{"usage":{"input_tokens":5}}"#],
    );
    assert!(!r.complete);
    let s =
        chunk(r#"{"generation":"abcd","amazon-bedrock-invocationMetrics":{"inputTokenCount":4}}"#);
    let r = run(Operation::InvokeWithResponseStream, EVENTSTREAM, &[&s]);
    assert_eq!((r.complete, r.output_text_bytes), (false, 4));
    // Token-count headers: a missing output count is an embedding's (none generated), an
    // unparseable one is not.
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(200, [("x-amzn-bedrock-input-token-count", "6")]);
    let r = m.finish();
    assert_eq!((r.usage, r.complete), (usage(6, 0, 0, 0), true));
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(
        200,
        [
            ("x-amzn-bedrock-input-token-count", "6"),
            ("x-amzn-bedrock-output-token-count", "-2"),
        ],
    );
    assert!(!m.finish().complete);
}

/// Every reading is at least the one before it: usage, text, events, completeness. The
/// cut-off and the hosts read the meter mid-response; a later reading that bills less
/// would let a stream spend what an earlier check refused.
#[test]
fn readings_never_decrease() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut pool: Vec<Vec<u8>> = family_streams()
        .iter()
        .flat_map(|f| f.events.iter().map(|e| chunk(e)).collect::<Vec<_>>())
        .collect();
    let valid_invoke = pool.len();
    for round in 0..400u64 {
        let n = |next: &mut dyn FnMut() -> u64| next() % 50;
        // Events reporting counts in any order, as a confused (or hostile) upstream might.
        pool.truncate(valid_invoke);
        pool.push(chunk(&format!(
            r#"{{"type":"message_delta","usage":{{"output_tokens":{}}}}}"#,
            n(&mut next)
        )));
        pool.push(chunk(&format!(
            r#"{{"type":"message_start","message":{{"usage":{{"input_tokens":{},"output_tokens":1,"cache_read_input_tokens":{}}}}}}}"#,
            n(&mut next),
            n(&mut next)
        )));
        pool.push(chunk(&format!(
            r#"{{"generation":"x","prompt_token_count":{},"generation_token_count":{}}}"#,
            n(&mut next),
            n(&mut next)
        )));
        pool.push(chunk(&format!(
            r#"{{"type":"message_stop",{}}}"#,
            metrics(n(&mut next), n(&mut next))
        )));
        pool.push(chunk(&format!(
            r#"{{"outputText":"y","totalOutputTextTokenCount":{},"inputTextTokenCount":{}}}"#,
            n(&mut next),
            n(&mut next)
        )));
        let op = if round % 5 == 0 {
            Operation::ConverseStream
        } else {
            Operation::InvokeWithResponseStream
        };
        let stream: Vec<u8> = if op == Operation::ConverseStream {
            let mut v = converse_stream();
            v.extend(event(
                "metadata",
                &format!(
                    r#"{{"usage":{{"inputTokens":{},"outputTokens":{}}}}}"#,
                    n(&mut next),
                    n(&mut next)
                ),
            ));
            v
        } else {
            (0..1 + next() % 12)
                .flat_map(|_| pool[(next() % pool.len() as u64) as usize].clone())
                .collect()
        };
        let mut m = meter_with(op, EVENTSTREAM);
        let mut prev = m.reading();
        let mut rest = &stream[..];
        let check = |r: Reading, prev: &mut Reading| {
            let (a, b) = (&prev.usage, &r.usage);
            assert!(
                b.input_tokens >= a.input_tokens
                    && b.output_tokens >= a.output_tokens
                    && b.cache_read_tokens >= a.cache_read_tokens
                    && b.cache_write_tokens >= a.cache_write_tokens,
                "round {round}: usage went from {a:?} to {b:?}"
            );
            assert!(
                r.output_text_bytes >= prev.output_text_bytes,
                "round {round}"
            );
            assert!(r.events >= prev.events, "round {round}");
            assert!(r.complete || !prev.complete, "round {round}");
            *prev = r;
        };
        while !rest.is_empty() {
            let k = ((next() % 61) as usize + 1).min(rest.len());
            let (c, tail) = rest.split_at(k);
            m.on_body(c);
            check(m.reading(), &mut prev);
            rest = tail;
        }
        check(m.finish(), &mut prev);
    }

    // A non-stream response: token-count headers first, the body's usage at the end.
    let mut m = UsageMeter::new(Operation::Invoke);
    m.on_response_headers(
        200,
        [
            ("x-amzn-bedrock-input-token-count", "99"),
            ("x-amzn-bedrock-output-token-count", "99"),
        ],
    );
    let before = m.reading();
    m.on_body(br#"{"usage":{"input_tokens":14,"output_tokens":7}}"#);
    let after = m.finish();
    assert!(
        after.usage.input_tokens >= before.usage.input_tokens,
        "{before:?} then {after:?}"
    );
}

#[test]
fn garbage_bodies_never_panic() {
    for op in [
        Operation::Converse,
        Operation::ConverseStream,
        Operation::Invoke,
        Operation::InvokeWithResponseStream,
    ] {
        let r = run(op, EVENTSTREAM, &[b"<html>502 Bad Gateway</html>"]);
        assert!(r.problem.is_some());
        let r = run(op, "application/json", &[b"\x00\x01\x02garbage"]);
        assert!(r.problem.is_some());
        let mut m = UsageMeter::new(op); // no headers at all
        m.on_body(b"\x00\x00\x00\x10");
        let _ = m.reading();
        let _ = m.finish();
        m.on_body(b"after finish is ignored");
        assert_eq!(m.finish(), m.reading());
    }
}

/// Each count of `after` is at least `before`'s: a reading never goes down.
fn assert_never_lower(before: &Reading, after: &Reading) {
    let (b, a) = (&before.usage, &after.usage);
    assert!(
        a.input_tokens >= b.input_tokens
            && a.output_tokens >= b.output_tokens
            && a.cache_read_tokens >= b.cache_read_tokens
            && a.cache_write_tokens >= b.cache_write_tokens
            && a.images >= b.images
            && after.output_text_bytes >= before.output_text_bytes
            && after.events >= before.events
            && (after.complete || !before.complete),
        "{before:?} then {after:?}"
    );
}

/// Noise, valid streams with flipped bits, and JSON-ish noise inside valid frames (so it
/// reaches every family's event parser), cut at random: usage never decreases from one
/// chunk to the next nor at the end, and the final reading is the same as for the uncut
/// body. (`make fuzz` runs the same properties for longer, on every family's shapes.)
#[test]
fn usage_never_decreases_and_does_not_depend_on_the_chunking() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const NOISE: &[u8] = br#"{}[]":,0123456789-eE.tfnul\ abc_usage_tokens_delta_text"#;
    fn noise(next: &mut impl FnMut() -> u64) -> String {
        let n = next() % 200;
        (0..n)
            .map(|_| char::from(NOISE[(next() % NOISE.len() as u64) as usize]))
            .collect()
    }
    let ops = [
        Operation::Converse,
        Operation::ConverseStream,
        Operation::Invoke,
        Operation::InvokeWithResponseStream,
    ];
    let types = [EVENTSTREAM, "application/json", "text/plain", ""];
    let valid = [converse_stream(), anthropic_stream(true)];
    let mut grew = 0;
    for round in 0..800u64 {
        let op = ops[(next() % 4) as usize];
        let bytes: Vec<u8> = match round % 4 {
            0 => (0..next() % 2000).map(|_| next() as u8).collect(),
            // Valid streams with a few flipped bits get past the CRC checks sometimes.
            1 => {
                let mut v = valid[(next() % 2) as usize].clone();
                for _ in 0..next() % 3 {
                    let i = (next() as usize) % v.len();
                    v[i] ^= 1 << (next() % 8);
                }
                v
            }
            // JSON-ish noise as a body...
            2 => noise(&mut next).into_bytes(),
            // ...and inside valid frames, so it reaches the event parsers.
            _ => {
                let mut v = Vec::new();
                for _ in 0..next() % 6 {
                    let kind = ["contentBlockDelta", "metadata", "chunk"][(next() % 3) as usize];
                    v.extend(match next() % 3 {
                        0 => chunk(&noise(&mut next)),
                        1 => event(kind, &format!(r#"{{"bytes":"{}"}}"#, noise(&mut next))),
                        _ => event(kind, &noise(&mut next)),
                    });
                }
                v
            }
        };
        let ct = types[(next() % 4) as usize];
        let new_meter = || {
            let mut m = UsageMeter::new(op);
            if !ct.is_empty() {
                m.on_response_headers(200, [("content-type", ct)]);
            }
            m
        };
        let mut m = new_meter();
        let mut last = m.reading();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = ((next() % 97) as usize + 1).min(rest.len());
            let (c, tail) = rest.split_at(n);
            m.on_body(c);
            let now = m.reading();
            assert_never_lower(&last, &now);
            last = now;
            rest = tail;
        }
        let r = m.finish();
        assert_never_lower(&last, &r);
        let mut whole = new_meter();
        whole.on_body(&bytes);
        assert_eq!(
            whole.finish(),
            r,
            "round {round}: the reading depends on the chunking"
        );
        grew += usize::from(r.usage != Usage::default() || r.output_text_bytes > 0);
    }
    // The properties were exercised on readings that moved, not only on empty ones.
    assert!(grew > 50, "{grew}");
}

// ---- guardrails --------------------------------------------------------------------

/// A guardrail assessment as Bedrock's trace carries it: its policies and its own usage.
fn assessment(content_units: u64, topic_units: u64) -> String {
    format!(
        r#"{{"contentPolicy":{{"filters":[{{"type":"VIOLENCE","confidence":"NONE","action":"NONE"}}]}},
            "invocationMetrics":{{"guardrailProcessingLatency":81,
              "usage":{{"topicPolicyUnits":{topic_units},"contentPolicyUnits":{content_units},
                        "wordPolicyUnits":{content_units},"sensitiveInformationPolicyUnits":0,
                        "sensitiveInformationPolicyFreeUnits":0,"contextualGroundingPolicyUnits":0,
                        "automatedReasoningPolicies":3}},
              "guardrailCoverage":{{"textCharacters":{{"guarded":12,"total":12}}}}}}}}"#
    )
}

fn units(r: &Reading) -> Vec<(&'static str, u64)> {
    r.guardrail.units().into_iter().collect()
}

#[test]
fn converse_guardrail_units_from_every_assessment() {
    let body = format!(
        r#"{{"output":{{"message":{{"role":"assistant","content":[{{"text":"Sorry"}}]}}}},
            "stopReason":"guardrail_intervened",
            "usage":{{"inputTokens":0,"outputTokens":0,"totalTokens":0}},
            "trace":{{"guardrail":{{"inputAssessment":{{"gr1":{}}},
                                  "outputAssessments":{{"gr1":[{},{}]}}}}}}}}"#,
        assessment(2, 1),
        assessment(1, 1),
        assessment(3, 0)
    );
    let r = run(Operation::Converse, "application/json", &[body.as_bytes()]);
    assert!(r.complete);
    assert_eq!(r.usage, usage(0, 0, 0, 0));
    assert!(r.guardrail.assessed && r.guardrail.intervened);
    assert_eq!(
        units(&r),
        [
            ("contentPolicyUnits", 6),
            ("topicPolicyUnits", 2),
            ("wordPolicyUnits", 6)
        ]
    );
    // No trace: nothing assessed, nothing intervened.
    let r = run(
        Operation::Converse,
        "application/json",
        &[br#"{"stopReason":"end_turn","usage":{"inputTokens":1,"outputTokens":1}}"#],
    );
    assert_eq!(r.guardrail, Default::default());
}

#[test]
fn invoke_guardrail_trace_and_action() {
    let body = format!(
        r#"{{"content":[{{"type":"text","text":"hi"}}],"usage":{{"input_tokens":5,"output_tokens":2}},
            "amazon-bedrock-guardrailAction":"NONE",
            "amazon-bedrock-trace":{{"guardrail":{{"input":{{"gr1":{}}},"outputs":[{{"gr1":{}}}]}}}}}}"#,
        assessment(1, 1),
        assessment(1, 0)
    );
    let r = run(Operation::Invoke, "application/json", &[body.as_bytes()]);
    assert_eq!(r.usage, usage(5, 2, 0, 0));
    assert!(r.guardrail.assessed && !r.guardrail.intervened);
    assert_eq!(r.guardrail.units()["contentPolicyUnits"], 2);
    let r = run(
        Operation::Invoke,
        "application/json",
        &[br#"{"usage":{"input_tokens":5,"output_tokens":0},"amazon-bedrock-guardrailAction":"INTERVENED"}"#],
    );
    assert!(r.guardrail.intervened && !r.guardrail.assessed);
}

#[test]
fn streamed_guardrail_units() {
    let mut body = event("messageStart", r#"{"role":"assistant"}"#);
    body.extend(event(
        "contentBlockDelta",
        r#"{"contentBlockIndex":0,"delta":{"text":"Sorry, blocked."}}"#,
    ));
    body.extend(event(
        "messageStop",
        r#"{"stopReason":"guardrail_intervened"}"#,
    ));
    body.extend(event(
        "metadata",
        &format!(
            r#"{{"usage":{{"inputTokens":0,"outputTokens":0,"totalTokens":0}},"metrics":{{"latencyMs":9}},
                "trace":{{"guardrail":{{"inputAssessment":{{"gr1":{}}}}}}}}}"#,
            assessment(4, 4)
        ),
    ));
    for split in [1, 7, body.len()] {
        let chunks: Vec<&[u8]> = body.chunks(split).collect();
        let r = run(Operation::ConverseStream, EVENTSTREAM, &chunks);
        assert!(r.complete && r.guardrail.intervened, "{split}");
        assert_eq!(r.guardrail.units()["topicPolicyUnits"], 4);
    }
    // An invoke stream's last chunk carries the trace with the invocation metrics.
    let last = format!(
        r#"{{"type":"message_stop","amazon-bedrock-invocationMetrics":{{"inputTokenCount":3,"outputTokenCount":1}},
            "amazon-bedrock-guardrailAction":"INTERVENED",
            "amazon-bedrock-trace":{{"guardrail":{{"input":{{"gr1":{}}}}}}}}}"#,
        assessment(2, 0)
    );
    let r = run(
        Operation::InvokeWithResponseStream,
        EVENTSTREAM,
        &[&chunk(&last)],
    );
    assert!(r.complete && r.guardrail.intervened);
    assert_eq!(r.guardrail.units()["contentPolicyUnits"], 2);
}
