//! The emulator over real sockets: an in-process server on port 0, a raw HTTP/1.1 client (so
//! the chunk boundaries of a stream are observable), and hand-signed requests.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tollgate_emulator::eventstream_encode::{decode_all, decode_frame, Frame};
use tollgate_emulator::server::{Config, Emulator};
use tollgate_emulator::sigv4_verify::{sign, Credentials};

const MODEL: &str = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
const MODEL_LABEL: &str = "us.anthropic.claude-haiku-4-5-20251001-v1%3A0";
const REGION: &str = "us-east-1";

fn creds() -> Credentials {
    Credentials {
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret/TEST+key".into(),
        session_token: None,
    }
}

async fn start(bearer: Option<&str>) -> SocketAddr {
    start_with(creds(), bearer).await
}

async fn start_with(creds: Credentials, bearer: Option<&str>) -> SocketAddr {
    let mut config = Config::new(REGION, creds);
    config.bearer_token = bearer.map(str::to_string);
    let running = Emulator::new(config)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    running.addr
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The HTTP chunks, for a chunked body.
    chunks: Option<Vec<Vec<u8>>>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let head_end = find(raw, b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if !chunked {
        return RawResponse {
            status,
            headers,
            body: rest.to_vec(),
            chunks: None,
        };
    }
    let mut chunks = Vec::new();
    for _ in 0..1_000_000 {
        let line_end = find(rest, b"\r\n").expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                .unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        chunks.push(rest[..size].to_vec());
        assert_eq!(&rest[size..size + 2], b"\r\n");
        rest = &rest[size + 2..];
    }
    let body = chunks.concat();
    RawResponse {
        status,
        headers,
        body,
        chunks: Some(chunks),
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    parse_response(&raw)
}

fn signed_headers(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    creds: &Credentials,
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("host".to_string(), addr.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "application/json".to_string()),
    ];
    let added = sign(
        "POST",
        path,
        "",
        &headers,
        body,
        creds,
        REGION,
        "bedrock",
        SystemTime::now(),
    );
    headers.extend(added);
    headers
}

async fn call(addr: SocketAddr, op: &str, body: &Value) -> RawResponse {
    let path = format!("/model/{MODEL_LABEL}/{op}");
    let body = body.to_string().into_bytes();
    raw_request(
        addr,
        "POST",
        &path,
        &signed_headers(addr, &path, &body, &creds()),
        &body,
    )
    .await
}

async fn ledger(addr: SocketAddr) -> Vec<Value> {
    let r = raw_request(
        addr,
        "GET",
        "/_emulator/ledger",
        &[("host".into(), addr.to_string())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    r.json().as_array().unwrap().clone()
}

fn converse_body(text: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 20},
    })
}

#[tokio::test]
async fn converse_answer_and_ledger_entry() {
    let addr = start(None).await;
    let body = converse_body("hello [[emu:output=5]] [[emu:cache-read=7]]");
    let raw_body = body.to_string();
    let r = call(addr, "converse", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-amzn-requestid").is_some());
    let v = r.json();
    let input = (raw_body.len() as u64).div_ceil(4);
    assert_eq!(v["output"]["message"]["role"], "assistant");
    assert_eq!(
        v["output"]["message"]["content"][0]["text"],
        "w0 w1 w2 w3 w4"
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": input, "outputTokens": 5, "totalTokens": input + 5 + 7, "cacheReadInputTokens": 7})
    );
    assert!(v["metrics"]["latencyMs"].is_u64());

    let entries = ledger(addr).await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["seq"], 1);
    assert_eq!(e["operation"], "converse");
    assert_eq!(e["raw_path"], format!("/model/{MODEL_LABEL}/converse"));
    assert_eq!(e["model_id"], MODEL);
    assert_eq!(e["auth"], "sigv4");
    assert_eq!(e["signature_valid"], true);
    assert_eq!(e["error"], Value::Null);
    assert_eq!(e["status"], 200);
    assert_eq!(
        e["body_sha256"],
        hex::encode(Sha256::digest(raw_body.as_bytes()))
    );
    assert_eq!(
        e["usage"],
        json!({"input_tokens": input, "output_tokens": 5, "cache_read_tokens": 7, "cache_write_tokens": 0})
    );
    assert_eq!(e["output_text"], "w0 w1 w2 w3 w4");
    assert_eq!(e["stream"], false);
    assert_eq!(e["directives"], json!(["output=5", "cache-read=7"]));
    let headers = e["headers"].as_array().unwrap();
    assert!(headers
        .iter()
        .any(|h| h[0] == "host" && h[1] == addr.to_string()));
    assert!(headers.iter().any(|h| h[0] == "authorization"));
    assert!(e["received_at_ms"].as_u64().unwrap() <= e["completed_at_ms"].as_u64().unwrap());

    // Reset clears; numbering goes on.
    let r = raw_request(
        addr,
        "POST",
        "/_emulator/reset",
        &[("host".into(), addr.to_string())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(ledger(addr).await.is_empty());
    call(addr, "converse", &converse_body("again")).await;
    let entries = ledger(addr).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["seq"], 2);
    assert_eq!(
        entries[0]["usage"]["output_tokens"], 20,
        "maxTokens when no directive"
    );
}

fn check_frames_are_cut_oddly(chunks: &[Vec<u8>], frames_len: &[usize]) {
    assert!(
        chunks.len() >= 5,
        "expected several chunks, got {}",
        chunks.len()
    );
    // Frame boundaries (cumulative offsets) vs chunk boundaries.
    let mut frame_ends = Vec::new();
    let mut at = 0;
    for l in frames_len {
        at += l;
        frame_ends.push(at);
    }
    let mut chunk_ends = Vec::new();
    let mut at = 0;
    for c in chunks {
        at += c.len();
        chunk_ends.push(at);
    }
    let straddles = frame_ends.iter().any(|e| !chunk_ends.contains(e));
    assert!(straddles, "some frame should end inside a chunk");
    let mut starts = vec![0];
    starts.extend_from_slice(&chunk_ends);
    let shares = starts
        .windows(2)
        .any(|w| frame_ends.iter().filter(|&&e| e > w[0] && e < w[1]).count() >= 2);
    assert!(shares, "some chunk should hold the ends of two frames");
}

fn frame_json(f: &Frame) -> Value {
    serde_json::from_slice(&f.payload).unwrap()
}

#[tokio::test]
async fn converse_stream_arrives_in_odd_chunks_that_decode_to_the_frames() {
    let addr = start(None).await;
    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=12]] [[emu:events=5]] [[emu:input=9]]"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let chunks = r.chunks.as_ref().expect("a chunked body");
    let frames = decode_all(&r.body).expect("the concatenated chunks decode");
    let types: Vec<&str> = frames
        .iter()
        .map(|f| f.header(":event-type").unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    for f in &frames {
        assert_eq!(f.header(":message-type"), Some("event"));
        assert_eq!(f.header(":content-type"), Some("application/json"));
        assert!(frame_json(f)["p"].is_string(), "padding on every event");
    }
    let mut lens = Vec::new();
    let mut rest = &r.body[..];
    while !rest.is_empty() {
        let (_, used) = decode_frame(rest).unwrap();
        lens.push(used);
        rest = &rest[used..];
    }
    check_frames_are_cut_oddly(chunks, &lens);

    assert_eq!(frame_json(&frames[0])["role"], "assistant");
    let text: String = frames[1..6]
        .iter()
        .map(|f| frame_json(f)["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11");
    assert_eq!(frame_json(&frames[7])["stopReason"], "end_turn");
    let meta = frame_json(&frames[8]);
    assert_eq!(
        meta["usage"],
        json!({"inputTokens": 9, "outputTokens": 12, "totalTokens": 21})
    );
    assert!(meta["metrics"]["latencyMs"].is_u64());

    let e = &ledger(addr).await[0];
    assert_eq!(e["operation"], "converse-stream");
    assert_eq!(e["stream"], true);
    assert_eq!(e["stream_completed"], true);
    assert_eq!(e["client_disconnected"], false);
    assert_eq!(e["stream_events_sent"], 9);
    assert_eq!(e["content_events_sent"], 5);
    assert_eq!(e["output_tokens_sent"], 12);
    assert_eq!(e["output_text"], text);
    assert_eq!(e["event_sent_at_ms"].as_array().unwrap().len(), 9);
    assert!(e["first_event_at_ms"].as_u64().unwrap() <= e["last_event_at_ms"].as_u64().unwrap());
}

#[tokio::test]
async fn invoke_and_invoke_stream_speak_anthropic() {
    let addr = start(None).await;
    let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi [[emu:cache-write=3]]"}]});
    let r = call(addr, "invoke", &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let input = (body.to_string().len() as u64).div_ceil(4);
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "w0 w1 w2 w3"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(
        v["usage"],
        json!({"input_tokens": input, "output_tokens": 4, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 0})
    );
    assert_eq!(
        r.header("x-amzn-bedrock-input-token-count"),
        Some(input.to_string().as_str())
    );
    assert_eq!(r.header("x-amzn-bedrock-output-token-count"), Some("4"));
    assert!(r.header("x-amzn-bedrock-invocation-latency").is_some());

    let r = call(addr, "invoke-with-response-stream", &body).await;
    assert_eq!(r.status, 200);
    let frames = decode_all(&r.body).unwrap();
    let events: Vec<Value> = frames
        .iter()
        .map(|f| {
            assert_eq!(f.header(":event-type"), Some("chunk"));
            let outer = frame_json(f);
            assert!(outer["p"].is_string());
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(outer["bytes"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[0]["message"]["usage"],
        json!({"input_tokens": input, "output_tokens": 1, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 0})
    );
    assert_eq!(events[7]["usage"]["output_tokens"], 4);
    assert_eq!(events[7]["delta"]["stop_reason"], "end_turn");
    let m = &events[8]["amazon-bedrock-invocationMetrics"];
    assert_eq!(m["inputTokenCount"], input);
    assert_eq!(m["outputTokenCount"], 4);
    assert_eq!(m["cacheWriteInputTokenCount"], 3);
    assert_eq!(m["cacheReadInputTokenCount"], 0);
    assert!(m["invocationLatency"].is_u64() && m["firstByteLatency"].is_u64());
    let entries = ledger(addr).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["operation"], "invoke-with-response-stream");
    assert_eq!(entries[1]["output_tokens_sent"], 4);
}

#[tokio::test]
async fn bad_signature_missing_auth_and_unknown_key_are_403() {
    let addr = start(None).await;
    let path = format!("/model/{MODEL_LABEL}/converse");
    let body = converse_body("x").to_string().into_bytes();

    // Signed over one body, sent with another.
    let headers = signed_headers(addr, &path, b"{\"other\":1}", &creds());
    let r = raw_request(addr, "POST", &path, &headers, &body).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("InvalidSignatureException")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["message"].as_str().unwrap().starts_with(
        "The request signature we calculated does not match the signature you provided."
    ));

    // Wrong secret.
    let mut wrong = creds();
    wrong.secret_access_key = "nope".into();
    let r = raw_request(
        addr,
        "POST",
        &path,
        &signed_headers(addr, &path, &body, &wrong),
        &body,
    )
    .await;
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("InvalidSignatureException")
    );

    // Unknown access key.
    let mut other = creds();
    other.access_key_id = "AKIDOTHER".into();
    let r = raw_request(
        addr,
        "POST",
        &path,
        &signed_headers(addr, &path, &body, &other),
        &body,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("UnrecognizedClientException")
    );

    // No Authorization at all.
    let r = raw_request(
        addr,
        "POST",
        &path,
        &[("host".into(), addr.to_string())],
        &body,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("MissingAuthenticationTokenException")
    );

    // A bearer token when none is configured.
    let r = raw_request(
        addr,
        "POST",
        &path,
        &[
            ("host".into(), addr.to_string()),
            ("authorization".into(), "Bearer k".into()),
        ],
        &body,
    )
    .await;
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("UnrecognizedClientException")
    );

    let entries = ledger(addr).await;
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["signature_valid"], false);
    assert_eq!(entries[0]["status"], 403);
    assert!(entries[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("InvalidSignatureException: The request signature"));
    assert!(entries[0]["error"].as_str().unwrap().contains(&format!(
        "/model/{}/converse",
        MODEL_LABEL.replace('%', "%25")
    )));
    assert_eq!(entries[0]["usage"], Value::Null);
    assert_eq!(entries[2]["error_type"], "UnrecognizedClientException");
    assert_eq!(entries[3]["auth"], "none");
    assert_eq!(entries[4]["auth"], "bearer");
}

#[tokio::test]
async fn session_tokens_and_bearer_tokens() {
    let mut with_token = creds();
    with_token.session_token = Some("SESSION/TOKEN==".into());
    let addr = start_with(with_token.clone(), Some("ABSKbedrock-api-key")).await;
    let path = format!("/model/{MODEL_LABEL}/converse");
    let body = converse_body("[[emu:output=1]]").to_string().into_bytes();

    let r = raw_request(
        addr,
        "POST",
        &path,
        &signed_headers(addr, &path, &body, &with_token),
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = raw_request(
        addr,
        "POST",
        &path,
        &signed_headers(addr, &path, &body, &creds()),
        &body,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("UnrecognizedClientException")
    );

    let bearer = |t: &str| {
        vec![
            ("host".to_string(), addr.to_string()),
            ("authorization".to_string(), format!("Bearer {t}")),
        ]
    };
    let r = raw_request(addr, "POST", &path, &bearer("ABSKbedrock-api-key"), &body).await;
    assert_eq!(r.status, 200);
    let r = raw_request(addr, "POST", &path, &bearer("wrong"), &body).await;
    assert_eq!(r.status, 403);
    let entries = ledger(addr).await;
    let auth: Vec<(&str, bool)> = entries
        .iter()
        .map(|e| {
            (
                e["auth"].as_str().unwrap(),
                e["signature_valid"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        auth,
        [
            ("sigv4", true),
            ("sigv4", false),
            ("bearer", true),
            ("bearer", false)
        ]
    );
}

#[tokio::test]
async fn throttle_error_and_unknown_operation() {
    let addr = start(None).await;
    let r = call(addr, "converse", &converse_body("[[emu:throttle]]")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-amzn-errortype"), Some("ThrottlingException"));
    assert_eq!(
        r.json(),
        json!({"message": "Too many requests, please wait before trying again."})
    );

    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:error=500:InternalServerException]]"),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("InternalServerException")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = call(
        addr,
        "converse",
        &converse_body("[[emu:error=400:ValidationException]]"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-amzn-errortype"), Some("ValidationException"));

    let r = call(addr, "converse-streamx", &converse_body("x")).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("UnknownOperationException")
    );

    let path = format!("/model/{MODEL_LABEL}/invoke");
    let r = raw_request(
        addr,
        "POST",
        &path,
        &signed_headers(addr, &path, b"not json", &creds()),
        b"not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-amzn-errortype"), Some("ValidationException"));

    let entries = ledger(addr).await;
    let statuses: Vec<u64> = entries
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 500, 400, 404, 400]);
    assert_eq!(entries[0]["error_type"], "ThrottlingException");
    assert_eq!(entries[0]["signature_valid"], true);
    assert_eq!(entries[3]["operation"], Value::Null);
}

#[tokio::test]
async fn fail_after_ends_the_stream_with_an_exception() {
    let addr = start(None).await;
    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=6]] [[emu:events=3]] [[emu:fail-after=2]]"),
    )
    .await;
    assert_eq!(r.status, 200);
    let frames = decode_all(&r.body).unwrap();
    assert_eq!(frames.len(), 4, "messageStart, 2 deltas, the exception");
    let last = &frames[3];
    assert_eq!(last.header(":message-type"), Some("exception"));
    assert_eq!(
        last.header(":exception-type"),
        Some("modelStreamErrorException")
    );
    assert_eq!(last.header(":content-type"), Some("application/json"));
    assert!(frame_json(last)["message"].is_string());

    let r = call(
        addr,
        "invoke-with-response-stream",
        &json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3,
                "messages": [{"role": "user", "content": "[[emu:fail-after=0]]"}]}),
    )
    .await;
    let frames = decode_all(&r.body).unwrap();
    assert_eq!(
        frames.len(),
        3,
        "message_start, content_block_start, the exception"
    );
    assert_eq!(frames[2].header(":message-type"), Some("exception"));

    let entries = ledger(addr).await;
    assert_eq!(entries[0]["stream_completed"], false);
    assert_eq!(entries[0]["client_disconnected"], false);
    assert_eq!(entries[0]["content_events_sent"], 2);
    assert_eq!(entries[0]["output_tokens_sent"], 4);
    assert_eq!(entries[0]["output_text"], "w0 w1 w2 w3");
    assert_eq!(
        entries[0]["usage"]["output_tokens"], 6,
        "what the stream would have reported"
    );
    assert_eq!(entries[0]["error_type"], "modelStreamErrorException");
    assert_eq!(entries[1]["output_tokens_sent"], 0);
}

#[tokio::test]
async fn slow_streams_pace_events_and_disconnects_are_recorded() {
    let addr = start(None).await;
    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=3]] [[emu:slow=40]]"),
    )
    .await;
    assert_eq!(decode_all(&r.body).unwrap().len(), 7);
    let e = &ledger(addr).await[0];
    let times: Vec<u64> = e["event_sent_at_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(times.len(), 7);
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= 30, "events paced by slow: {times:?}");
    }

    // A client that reads the first bytes and hangs up.
    let path = format!("/model/{MODEL_LABEL}/converse-stream");
    let body = converse_body("[[emu:output=50]] [[emu:events=50]] [[emu:slow=20]]")
        .to_string()
        .into_bytes();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\n");
    for (n, v) in signed_headers(addr, &path, &body, &creds()) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(n > 0);
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(stream);

    let mut entry = None;
    for _ in 0..100 {
        let entries = ledger(addr).await;
        if entries.len() == 2 {
            entry = Some(entries[1].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = entry.expect("the cut stream is recorded");
    assert_eq!(e["client_disconnected"], true);
    assert_eq!(e["stream_completed"], false);
    assert!(e["content_events_sent"].as_u64().unwrap() < 50);
    assert_eq!(e["output_tokens_sent"], e["content_events_sent"]);
    assert_eq!(e["usage"]["output_tokens"], 50);
}

#[tokio::test]
async fn ledger_is_exact_under_concurrency() {
    let addr = start(None).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let op = if i % 2 == 0 {
                    "converse"
                } else {
                    "converse-stream"
                };
                let r = call(
                    addr,
                    op,
                    &converse_body(&format!("request {i} [[emu:output={}]]", i % 7 + 1)),
                )
                .await;
                assert_eq!(r.status, 200);
                (
                    i,
                    hex::encode(Sha256::digest(
                        converse_body(&format!("request {i} [[emu:output={}]]", i % 7 + 1))
                            .to_string(),
                    )),
                )
            })
        })
        .collect();
    let mut hashes = Vec::new();
    for t in tasks {
        hashes.push(t.await.unwrap());
    }
    let entries = ledger(addr).await;
    assert_eq!(entries.len(), 200);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    for (i, hash) in hashes {
        let e = entries
            .iter()
            .find(|e| e["body_sha256"] == hash)
            .expect("each request recorded");
        assert_eq!(e["usage"]["output_tokens"], i % 7 + 1);
        if i % 2 == 1 {
            assert_eq!(e["stream_completed"], true);
            assert_eq!(e["output_tokens_sent"], i % 7 + 1);
        }
    }
}

#[tokio::test]
async fn the_binary_prints_its_port_and_serves() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--region",
            REGION,
            "--access-key-id",
            "AKIDTEST",
            "--secret-access-key",
            "secret/TEST+key",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .parse()
        .unwrap();
    let r = raw_request(
        addr,
        "GET",
        "/_emulator/health",
        &[("host".into(), addr.to_string())],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(addr, "converse", &converse_body("[[emu:output=2]]")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["output"]["message"]["content"][0]["text"], "w0 w1");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_client_that_gives_up_on_a_slow_answer_is_recorded() {
    let addr = start(None).await;
    let path = format!("/model/{MODEL_LABEL}/converse");
    let body = converse_body("[[emu:output=3]] [[emu:slow=3000]]")
        .to_string()
        .into_bytes();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\n");
    for (n, v) in signed_headers(addr, &path, &body, &creds()) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);

    let mut found = None;
    for _ in 0..100 {
        if let Some(e) = ledger(addr).await.first() {
            found = Some(e.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = found.expect("the abandoned request is recorded");
    assert_eq!(e["status"], 499);
    assert_eq!(e["client_disconnected"], true);
    assert_eq!(e["signature_valid"], true);
    assert_eq!(e["usage"]["output_tokens"], 3);
    assert!(e["completed_at_ms"].as_u64().unwrap() - e["received_at_ms"].as_u64().unwrap() < 2500);
}

#[tokio::test]
async fn hang_up_closes_the_connection_without_an_answer() {
    let addr = start(None).await;
    let path = format!("/model/{MODEL_LABEL}/converse");
    let body = converse_body("[[emu:hang-up]]").to_string().into_bytes();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\n");
    for (n, v) in signed_headers(addr, &path, &body, &creds()) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the connection closes");
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    let entries = ledger(addr).await;
    let entry = entries.last().unwrap();
    assert_eq!(entry["status"], 0);
    assert_eq!(entry["error_type"], "HangUp");
    assert_eq!(entry["signature_valid"], true);
}

/// One request whose response may be cut off: the raw bytes read until the server closes.
async fn call_raw(addr: SocketAddr, op: &str, body: &Value) -> Vec<u8> {
    let path = format!("/model/{MODEL_LABEL}/{op}");
    let body = body.to_string().into_bytes();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\n");
    for (n, v) in signed_headers(addr, &path, &body, &creds()) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    raw
}

#[tokio::test]
async fn reset_after_aborts_the_body_mid_way() {
    let addr = start(None).await;
    let raw = call_raw(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=6]] [[emu:events=6]] [[emu:reset-after=2]]"),
    )
    .await;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(
        !raw.ends_with(b"0\r\n\r\n"),
        "a reset body has no clean chunked end"
    );
    let raw = call_raw(
        addr,
        "converse",
        &converse_body("[[emu:output=6]] [[emu:reset-after=10]]"),
    )
    .await;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(!raw.ends_with(b"0\r\n\r\n"));
    let entries = ledger(addr).await;
    assert_eq!(entries[0]["error_type"], "Reset");
    assert_eq!(entries[0]["content_events_sent"], 2);
    assert_eq!(entries[0]["stream_completed"], false);
    assert_eq!(entries[1]["error_type"], "Reset");
}

#[tokio::test]
async fn corrupt_crc_and_truncate_break_one_frame() {
    let addr = start(None).await;
    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=4]] [[emu:events=4]] [[emu:corrupt-crc=2]]"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(decode_all(&r.body).is_err(), "frame 2's CRC is wrong");
    let first_two: usize = (0..2)
        .scan(&r.body[..], |rest, _| {
            let (_, used) = decode_frame(rest).unwrap();
            *rest = &rest[used..];
            Some(used)
        })
        .sum();
    assert!(decode_frame(&r.body[first_two..]).is_err());
    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=4]] [[emu:events=4]] [[emu:truncate=3]]"),
    )
    .await;
    assert_eq!(r.status, 200, "the body ends cleanly, inside a frame");
    assert!(decode_all(&r.body).is_err());
    let entries = ledger(addr).await;
    assert_eq!(entries[0]["error_type"], "CorruptCrc");
    assert_eq!(entries[1]["error_type"], "TruncatedFrame");
    assert_eq!(entries[1]["content_events_sent"], 2);
}

#[tokio::test]
async fn pad_and_trickle() {
    let addr = start(None).await;
    let r = call(
        addr,
        "converse",
        &converse_body("[[emu:output=3]] [[emu:pad=100000]]"),
    )
    .await;
    let v = r.json();
    assert_eq!(v["p"].as_str().unwrap().len(), 100_000);
    assert_eq!(v["usage"]["outputTokens"], 3);
    let r = call(
        addr,
        "converse-stream",
        &converse_body("[[emu:output=2]] [[emu:events=2]] [[emu:pad=300000]] [[emu:trickle=0]]"),
    )
    .await;
    let frames = decode_all(&r.body).unwrap();
    assert!(frames.iter().all(|f| f.payload.len() > 300_000));
    let r = call(
        addr,
        "converse",
        &converse_body("[[emu:output=2]] [[emu:trickle=1]]"),
    )
    .await;
    assert_eq!(r.json()["usage"]["outputTokens"], 2);
    assert!(r.chunks.unwrap().iter().all(|c| c.len() == 1));
}

/// Rotating credentials: the sets the endpoints hand out are accepted while valid (and the
/// ledger says which set signed), refused once expired or before they are issued; the static
/// credentials still work; an outage makes every credentials path answer 503.
#[tokio::test]
async fn rotating_credentials_are_accepted_only_while_valid() {
    use tollgate_emulator::credentials::Rotation;
    let now = tollgate_emulator::ledger::now_ms();
    // Set n issued at start + n·2 s, valid 4 s: set 0 expired a while ago, set 4 is newest.
    let rotation = Rotation::with_seed(2_000, 4_000, now / 1000 * 1000 - 9_000, [3; 32]);
    let mut config = Config::new(REGION, creds());
    config.rotation = Some(rotation.clone());
    config.container_token = Some("pod-token".into());
    let addr = Emulator::new(config)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .addr;
    let host = [("host".to_string(), addr.to_string())];
    let denied = raw_request(addr, "GET", "/v1/credentials", &host, b"").await;
    assert_eq!(denied.status, 401);
    let mut with_token = host.to_vec();
    with_token.push(("authorization".into(), "pod-token".into()));
    let doc = raw_request(addr, "GET", "/v1/credentials", &with_token, b"")
        .await
        .json();
    let newest = rotation.set(rotation.generation_at(tollgate_emulator::ledger::now_ms()));
    assert_eq!(
        doc["AccessKeyId"],
        newest.credentials.access_key_id.as_str()
    );
    assert_eq!(
        doc["SecretAccessKey"],
        newest.credentials.secret_access_key.as_str()
    );

    let path = format!("/model/{MODEL_LABEL}/converse");
    let body = converse_body("hi").to_string().into_bytes();
    let send = |c: Credentials| {
        let headers = signed_headers(addr, &path, &body, &c);
        let path = path.clone();
        let body = body.clone();
        async move { raw_request(addr, "POST", &path, &headers, &body).await }
    };
    assert_eq!(send(newest.credentials.clone()).await.status, 200);
    assert_eq!(send(creds()).await.status, 200);
    let expired = send(rotation.set(0).credentials).await;
    assert_eq!(expired.status, 403);
    assert_eq!(
        expired.header("x-amzn-errortype"),
        Some("ExpiredTokenException")
    );
    let future = send(rotation.set(newest.generation + 3).credentials).await;
    assert_eq!(future.status, 403);
    // A valid set's key with another set's secret is still a bad signature.
    let mut forged = newest.credentials.clone();
    forged.secret_access_key = rotation.set(0).credentials.secret_access_key;
    assert_eq!(send(forged).await.status, 403);
    let generations: Vec<Value> = ledger(addr)
        .await
        .iter()
        .map(|e| e["credentials_generation"].clone())
        .collect();
    assert_eq!(generations[0], json!(newest.generation));
    assert_eq!(generations[1], Value::Null);

    let down = raw_request(addr, "POST", "/_emulator/credentials/down", &host, b"").await;
    assert_eq!(down.json()["down"], true);
    let refused = raw_request(addr, "GET", "/v1/credentials", &with_token, b"").await;
    assert_eq!(refused.status, 503);
    raw_request(addr, "POST", "/_emulator/credentials/up", &host, b"").await;
    // IMDSv2 only: no token, no credentials.
    let v1 = raw_request(
        addr,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &host,
        b"",
    )
    .await;
    assert_eq!(v1.status, 401);
    let mut ttl = host.to_vec();
    ttl.push(("x-aws-ec2-metadata-token-ttl-seconds".into(), "60".into()));
    let token = raw_request(addr, "PUT", "/latest/api/token", &ttl, b"").await;
    assert_eq!(token.status, 200);
    let mut with_imds = host.to_vec();
    with_imds.push((
        "x-aws-ec2-metadata-token".into(),
        String::from_utf8(token.body).unwrap(),
    ));
    let role = raw_request(
        addr,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &with_imds,
        b"",
    )
    .await;
    let role = String::from_utf8(role.body).unwrap();
    let doc = raw_request(
        addr,
        "GET",
        &format!("/latest/meta-data/iam/security-credentials/{role}"),
        &with_imds,
        b"",
    )
    .await
    .json();
    assert_eq!(doc["Code"], "Success");
}
