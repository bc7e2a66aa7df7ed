"""Request-side hardening, on each host: what a client may put in a request (headers, trailers,
body encodings, model spellings, cost-raising options) never reaches Bedrock unsigned, carrying
the client's key, unpriced, or past a limit. Every case checks the emulator's ledger (what
actually reached "Bedrock"), the usage records (what was billed), and that the next request on
the same gateway still succeeds."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse

import pytest

import harness
import pricing_oracle
from conftest import redis_for, HAIKU, KEYS, MAX_BODY, SONNET, plugin_config
from test_bedrock_api import MESSAGES, Observed, assert_clean_upstream, raw

KEY = KEYS["team-a"][0]

# Keys of the hardening gateway, each with the limits its case needs.
HARD_KEYS = {
    # One request a minute on claude-fast, any spelling of it.
    "respell": ("tg-hard-respell", ["*"], {"models": {"claude-fast": {"requests_per_minute": 1}}}),
    # An output cap: every field that can set the output limit is clamped to it.
    "capped": ("tg-hard-capped", ["*"], {"max_output_tokens": 50}),
    # A budget and no cap: bodies must still be strict JSON.
    "budgeted": ("tg-hard-budgeted", ["*"], {"budget": {"usd": "100", "period": "monthly"}}),
    # Options Tollgate cannot price are refused for every key but this one.
    "optin": ("tg-hard-optin", ["*"], {"unpriced_options": ["guardrails", "latency_optimized", "service_tier"]}),
}
# 2026-11-22T12:00:00Z; each case takes its own minute from here (x-tollgate-test-now-ms).
CLOCK_MS = 1_795_348_800_000


@pytest.fixture(scope="module")
def hard_gateway(request, workdir, emulator, tls_dir, host_kind):
    cfg = plugin_config(emulator.port, test_hooks=True)
    cfg["api_keys"] += [
        {"id": kid, "sha256": harness.sha256_hex(secret), "models": models, "limits": limits}
        for kid, (secret, models, limits) in HARD_KEYS.items()
    ]
    gw = harness.start_gateway(host_kind, workdir / host_kind / "hardening", cfg, emulator.port, tls_dir,
                               concurrency=2, name="hardening", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


def hard_headers(kid: str, minute: int = 0, **extra) -> dict:
    return {"authorization": f"Bearer {HARD_KEYS[kid][0]}", "content-type": "application/json",
            "x-tollgate-test-now-ms": str(CLOCK_MS + minute * 60_000), **extra}


def converse_body(text: str = "Say hello.", max_tokens: int | None = 4, **extra) -> bytes:
    doc = {"messages": [{"role": "user", "content": [{"text": text}]}], **extra}
    if max_tokens is not None:
        doc.setdefault("inferenceConfig", {})["maxTokens"] = max_tokens
    return json.dumps(doc).encode()


def port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port


def connect(gateway, timeout: float, alpn: str | None = None) -> socket.socket:
    """A raw connection to the gateway: plain where it serves plain HTTP (Envoy), else TLS
    trusting the test CA (`spin up` serves HTTPS only)."""
    s = socket.create_connection(("127.0.0.1", port_of(gateway.url)), timeout=timeout)
    if gateway.url.startswith("https:"):
        import ssl
        ctx = ssl.create_default_context(cafile=str(gateway.ca))
        if alpn:
            ctx.set_alpn_protocols([alpn])
        s = ctx.wrap_socket(s, server_hostname="localhost")
    return s


def http1(gateway, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request written byte for byte (`head` without the blank line), for what
    urllib refuses to send: non-UTF-8 header values, chunked bodies with trailers."""
    with connect(gateway, timeout) as s:
        s.sendall(head + b"\r\n" + body)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if _complete(data):
                break
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, _dechunk(rest) if headers.get("transfer-encoding") == "chunked" else rest


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return rest.endswith(b"0\r\n\r\n")
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":")[1])
    return False


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def converse_head(path: str, extra: list[tuple[bytes, bytes]], length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"host: gateway.test", b"content-type: application/json"]
    if length is not None:
        lines.append(b"content-length: %d" % length)
    lines += [name + b": " + value for name, value in extra]
    return b"\r\n".join(lines) + b"\r\n"


def assert_next_request_succeeds(gateway, emulator):
    """The gateway (on Envoy: its workers' Wasm VMs) still serves after the case."""
    seen = Observed(gateway, emulator)
    status, _, out = raw(gateway, "POST", "/model/claude-fast/converse", converse_body(max_tokens=2),
                         {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert status == 200, out
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "converse")


def h2c(gateway, requests: list[tuple[list, bytes, list | None]], timeout: float = 10) -> list[tuple[int, dict, bytes]]:
    """Requests one after another on one HTTP/2 connection without TLS (prior knowledge), each
    `(headers, body, trailers)`; a request with trailers ends with a trailers HEADERS frame
    instead of END_STREAM on its last DATA frame. Returns (status, headers, body) each, or
    status 0 for a reset stream."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    out = []
    with connect(gateway, timeout, alpn="h2") as s:
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        # The server's SETTINGS and window first: bodies larger than 64 KiB need its window.
        settled, deadline = False, time.monotonic() + timeout
        while not settled and time.monotonic() < deadline:
            events = conn.receive_data(s.recv(65536))
            s.sendall(conn.data_to_send())
            settled = any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
        for headers, body, trailers in requests:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=False)
            frame = conn.max_outbound_frame_size
            pieces = [body[i:i + frame] for i in range(0, len(body), frame)] or [b""]
            for i, piece in enumerate(pieces):
                conn.send_data(sid, piece, end_stream=trailers is None and i == len(pieces) - 1)
            if trailers is not None:
                conn.send_headers(sid, trailers, end_stream=True)
            s.sendall(conn.data_to_send())
            status, resp_headers, resp_body, done = 0, {}, b"", False
            deadline = time.monotonic() + timeout
            while not done and time.monotonic() < deadline:
                data = s.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                        resp_headers = dict(event.headers)
                        status = int(resp_headers[":status"])
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                        resp_body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == sid:
                        done = True
                        if isinstance(event, h2.events.StreamReset):
                            status = 0
                s.sendall(conn.data_to_send())
            assert done, "no complete HTTP/2 response"
            out.append((status, resp_headers, resp_body))
    return out


# ---------------------------------------------------------------- request trailers


def converse_h2_headers(gateway, path="/model/claude-fast/converse"):
    return [(":method", "POST"), (":scheme", "http"), (":authority", "gateway.test"), (":path", path),
            ("authorization", f"Bearer {KEY}"), ("content-type", "application/json")]


def assert_trailers_case(gateway, emulator, seen, results, n):
    """Every request of the case was answered 200, reached Bedrock signed, without the client's
    key (not in a header, not in a trailer), and was billed once."""
    assert [status for status, _, _ in results] == [200] * n, results
    entries = seen.ledger(n)
    for entry in entries:
        assert_clean_upstream(entry, HAIKU, "converse")
    records = seen.records(n)
    assert [(r["status"], r["forwarded"]) for r in records] == [(200, True)] * n
    assert all(r["cost_pico_usd"] > 0 for r in records)
    time.sleep(0.2)
    assert len(emulator.ledger()) - seen.ledger_start == n


@pytest.mark.envoy_only("the Spin test host serves HTTP/1.1 only (its h1 case runs on Spin)")
def test_http2_request_trailers_are_dropped_and_the_request_signed(gateway, emulator):
    seen = Observed(gateway, emulator)
    headers = converse_h2_headers(gateway)
    trailers = [("x-api-key", KEY), ("x-checksum", "abc")]
    results = h2c(gateway, [
        (headers, converse_body(), trailers),
        # A body in several DATA frames, then trailers; then a request without trailers on the
        # same connection (and Envoy worker).
        (headers, converse_body("second " + "y" * 40_000), trailers),
        (headers, converse_body("third"), None),
    ])
    assert_trailers_case(gateway, emulator, seen, results, 3)

    # A body over the limit that ends with trailers: the gateway's own 413, nothing upstream.
    seen = Observed(gateway, emulator)
    big = converse_body("x" * (MAX_BODY + 10))
    [(status, resp_headers, out)] = h2c(gateway, [(headers, big, trailers)])
    assert (status, resp_headers.get("x-amzn-errortype")) == (413, "ValidationException"), out
    [record] = seen.records(1)
    assert (record["status"], record["cost_pico_usd"]) == (413, 0)
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []
    assert_next_request_succeeds(gateway, emulator)


def test_http1_chunked_request_trailers_are_dropped_and_the_request_signed(gateway, emulator):
    seen = Observed(gateway, emulator)
    body = converse_body()
    chunked = b"%x\r\n%s\r\n0\r\nx-api-key: %s\r\nx-checksum: abc\r\n\r\n" % (len(body), body, KEY.encode())
    head = converse_head("/model/claude-fast/converse",
                         [(b"authorization", b"Bearer " + KEY.encode()), (b"transfer-encoding", b"chunked"),
                          (b"te", b"trailers")], None)
    status, _, out = http1(gateway, head, chunked)
    assert_trailers_case(gateway, emulator, seen, [(status, {}, out)], 1)
    assert_next_request_succeeds(gateway, emulator)


# ---------------------------------------------------------------- request headers

# What Bedrock reads, what the AWS SDKs send, and tracing: the README lists the same names.
FORWARDED = {
    "content-type", "accept", "user-agent", "x-request-id",
    "amz-sdk-invocation-id", "amz-sdk-request", "x-amzn-trace-id", "traceparent", "tracestate",
    "x-amzn-bedrock-accept", "x-amzn-bedrock-trace",
}
# Set by Tollgate itself (signing), or by Envoy itself for the upstream hop.
SET_BY_GATEWAY = {"authorization", "x-amz-date", "x-amz-security-token", "host", "content-length",
                  "transfer-encoding", "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms"}


def test_only_allowlisted_request_headers_reach_bedrock(gateway, emulator):
    seen = Observed(gateway, emulator)
    sent = {
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "accept": "application/json",
        "user-agent": "Boto3/1.40 md/Botocore#1.40",
        "amz-sdk-invocation-id": "0f0e0d0c-0b0a-4908-8706-050403020100",
        "amz-sdk-request": "attempt=1; max=1",
        "x-amzn-bedrock-trace": "DISABLED",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        # Not Bedrock's business: cookies, proxies' and clients' own headers, Envoy's controls.
        "cookie": "session=secret",
        "x-forwarded-for": "203.0.113.9",
        "x-real-ip": "203.0.113.9",
        "x-custom-thing": "1",
        "anthropic-beta": "some-beta",
        "x-envoy-upstream-alt-stat-name": "x",
        "x-envoy-force-trace": "true",
        "x-amz-target": "BedrockRuntime.Converse",
        "proxy-authorization": "Basic c2VjcmV0",
    }
    status, _, out = raw(gateway, "POST", "/model/claude-fast/converse", converse_body(), sent)
    assert status == 200, out
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "converse")
    names = {n for n, _ in entry["headers"]}
    assert names <= FORWARDED | SET_BY_GATEWAY, sorted(names - FORWARDED - SET_BY_GATEWAY)
    got = dict(entry["headers"])
    for kept in ("user-agent", "amz-sdk-invocation-id", "amz-sdk-request", "x-amzn-bedrock-trace", "traceparent"):
        assert got[kept] == sent[kept], kept
    [record] = seen.records(1)
    assert record["status"] == 200 and record["cost_pico_usd"] > 0


def test_x_envoy_headers_cannot_make_envoy_retry_or_time_out(gateway, emulator):
    """A retry would invoke (and bill) Bedrock again while Tollgate saw one response."""
    seen = Observed(gateway, emulator)
    headers = {
        "authorization": f"Bearer {KEY}", "content-type": "application/json",
        # One private address: enough for Envoy without use_remote_address to call the
        # request internal, and to honour x-envoy-* controls from it.
        "x-forwarded-for": "10.1.2.3",
        "x-envoy-retry-on": "5xx,reset,retriable-status-codes",
        "x-envoy-retriable-status-codes": "500",
        "x-envoy-max-retries": "3",
        "x-envoy-upstream-rq-per-try-timeout-ms": "60000",
    }
    status, resp_headers, _ = raw(gateway, "POST", "/model/claude-fast/converse",
                                  converse_body("[[emu:error=500:InternalServerException]]"), headers)
    assert status == 500 and resp_headers["x-amzn-errortype"] == "InternalServerException"
    [record] = seen.records(1)
    assert (record["status"], record["cost_pico_usd"]) == (500, 0)
    time.sleep(0.5)  # a retry would have arrived by now
    entries = emulator.ledger()[seen.ledger_start:]
    assert len(entries) == 1, [e["status"] for e in entries]
    assert not [n for n, _ in entries[0]["headers"] if n.startswith("x-envoy-") and n != "x-envoy-expected-rq-timeout-ms"]

    # Nor can a client shorten the upstream timeout (Envoy would answer 504 and reset Bedrock).
    seen = Observed(gateway, emulator)
    status, _, out = raw(gateway, "POST", "/model/claude-fast/converse", converse_body("[[emu:slow=300]]"),
                         {"authorization": f"Bearer {KEY}", "content-type": "application/json",
                          "x-forwarded-for": "10.1.2.3", "x-envoy-upstream-rq-timeout-ms": "1"})
    assert status == 200, out
    [entry] = seen.ledger(1)
    assert entry["status"] == 200 and entry["signature_valid"]
    assert_next_request_succeeds(gateway, emulator)


@pytest.mark.envoy_only("x-envoy-* are Envoy's own request controls")
def test_x_envoy_headers_are_stripped_even_from_clients_envoy_calls_internal(workdir, emulator, tls_dir, host_kind):
    """A mesh or edge that lists its clients' networks in internal_address_config makes Envoy
    honour x-envoy-* from them; Tollgate removes them before the router reads them."""
    gw = harness.start_gateway(host_kind, workdir / host_kind / "internal", plugin_config(emulator.port),
                               emulator.port, tls_dir, concurrency=1, name="internal",
                               hcm_overrides={"use_remote_address": True, "internal_address_config": {"cidr_ranges": [
                                   {"address_prefix": "127.0.0.0", "prefix_len": 8}]}})
    try:
        seen = Observed(gw, emulator)
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json",
                   "x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3"}
        status, _, _ = raw(gw, "POST", "/model/claude-fast/converse",
                           converse_body("[[emu:error=500:InternalServerException]]"), headers)
        assert status == 500
        [record] = seen.records(1)
        assert (record["status"], record["cost_pico_usd"]) == (500, 0)
        time.sleep(0.5)  # a retry would have arrived by now
        entries = emulator.ledger()[seen.ledger_start:]
        assert len(entries) == 1, f"{len(entries)} upstream calls for one request"
        assert_next_request_succeeds(gw, emulator)
    finally:
        gw.stop()


def test_non_utf8_credential_headers_are_stripped_too(gateway, emulator):
    seen = Observed(gateway, emulator)
    body = converse_body()
    extra = [
        (b"authorization", b"Bearer " + KEY.encode()),
        # (A second, different key in x-api-key is refused outright: test_hostile_requests.)
        (b"proxy-authorization", b"Bearer \xff\xfe" + KEY.encode()),
        (b"x-amz-target", b"Bedrock\xe9Runtime"),
        (b"x-custom-latin1", b"caf\xe9"),
    ]
    status, _, out = http1(gateway, converse_head("/model/claude-fast/converse", extra, len(body)), body)
    if gateway.kind != "envoy":
        # Spin's HTTP trigger refuses a request whose header values are not UTF-8 before the
        # component runs ("invalid utf-8 sequence"): a 500 of its own, nothing forwarded or billed.
        assert status == 500, out
        time.sleep(0.2)
        assert emulator.ledger()[seen.ledger_start:] == []
        assert gateway.settled_record_count() == seen.records_start
        assert_next_request_succeeds(gateway, emulator)
        return
    assert status == 200, out
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "converse")
    names = [n for n, _ in entry["headers"]]
    for gone in ("proxy-authorization", "x-amz-target", "x-custom-latin1"):
        assert gone not in names, names
    # A key sent only in a header that is not UTF-8 does not authenticate.
    seen = Observed(gateway, emulator)
    extra = [(b"x-api-key", KEY.encode() + b"\xff")]
    status, headers, _ = http1(gateway, converse_head("/model/claude-fast/converse", extra, len(body)), body)
    assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []
    assert_next_request_succeeds(gateway, emulator)


# ---------------------------------------------------------------- model spellings


def test_a_model_respelt_is_still_the_same_model(hard_gateway, emulator):
    """Allowlists and per-model limits hold however the model is spelt: case, an
    inference-profile ARN (of any account), percent-encoded or not."""
    gw = hard_gateway
    spellings = [
        HAIKU.upper(),
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{HAIKU}",
        f"arn:aws:bedrock:us-east-1:999999999999:inference-profile/{HAIKU}".upper(),
        HAIKU,
    ]
    for minute, model in enumerate(spellings, start=1):
        seen = Observed(gw, emulator)
        path = "/model/" + urllib.parse.quote(model, safe="") + "/converse"
        # The alias takes the minute's one request...
        status, _, out = raw(gw, "POST", "/model/claude-fast/converse", converse_body(), hard_headers("respell", minute))
        assert status == 200, out
        # ... and no spelling of the same model gets another.
        status, headers, out = raw(gw, "POST", path, converse_body(), hard_headers("respell", minute))
        assert (status, headers.get("x-amzn-errortype")) == (429, "ThrottlingException"), (model, out)
        [entry] = seen.ledger(1)
        assert_clean_upstream(entry, HAIKU, "converse")
        time.sleep(0.2)
        assert len(emulator.ledger()) - seen.ledger_start == 1, model
    # In a fresh minute a respelt model is served as the canonical one, billed as it.
    seen = Observed(gw, emulator)
    status, _, out = raw(gw, "POST", "/model/" + urllib.parse.quote(spellings[1], safe="") + "/converse",
                         converse_body(), hard_headers("respell", 10))
    assert status == 200, out
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "converse")
    [record] = seen.records(1)
    assert (record["model"], record["model_id"], record["priced_as"]) == (HAIKU, HAIKU, "model")
    # A key allowed only claude-fast may use it however it is spelt, and no other model spelt
    # as an ARN; an ARN of another region is refused.
    limited = {"authorization": f"Bearer {KEYS['team-limited'][0]}", "content-type": "application/json"}
    for model, want in [
        (spellings[0], (200, None)),
        (spellings[2], (200, None)),
        (f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{SONNET}", (403, "AccessDeniedException")),
        (f"arn:aws:bedrock:eu-west-1:123456789012:inference-profile/{HAIKU}", (400, "ValidationException")),
    ]:
        status, headers, out = raw(gw, "POST", "/model/" + urllib.parse.quote(model, safe="") + "/converse",
                                   converse_body(), limited)
        assert (status, headers.get("x-amzn-errortype")) == want, (model, out)
    assert_next_request_succeeds(gw, emulator)


# ---------------------------------------------------------------- bodies


def sha256(b: bytes) -> str:
    import hashlib
    return hashlib.sha256(b).hexdigest()


LOOSE_BODIES = {
    "byte-order mark": b"\xef\xbb\xbf" + converse_body(max_tokens=5000),
    "trailing data": converse_body(max_tokens=5000) + b' {"inferenceConfig":{"maxTokens":9}}',
    "duplicate member": b'{"inferenceConfig":{"maxTokens":10},"inferenceConfig":{"maxTokens":5000},'
                        b'"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
    "duplicate nested member": b'{"inferenceConfig":{"maxTokens":10,"maxTokens":5000},'
                               b'"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
    "lone surrogate": b'{"inferenceConfig":{"maxTokens":5000},'
                      b'"messages":[{"role":"user","content":[{"text":"\\ud800"}]}]}',
}


@pytest.mark.parametrize("kid", ["capped", "budgeted"])
def test_bodies_parsers_may_read_differently_are_refused(hard_gateway, emulator, kid):
    """With a cap or a budget, the body decides what is reserved and clamped: one strict JSON
    object, or a 400 before anything reaches Bedrock."""
    gw = hard_gateway
    seen = Observed(gw, emulator)
    for what, body in LOOSE_BODIES.items():
        status, headers, out = raw(gw, "POST", "/model/claude-fast/converse", body, hard_headers(kid))
        assert (status, headers.get("x-amzn-errortype")) == (400, "ValidationException"), (what, out)
        assert "JSON object" in json.loads(out)["message"], what
    records = seen.records(len(LOOSE_BODIES))
    assert [(r["status"], r["cost_pico_usd"]) for r in records] == [(400, 0)] * len(LOOSE_BODIES)
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []
    assert_next_request_succeeds(gw, emulator)


def test_every_field_that_sets_the_output_limit_is_clamped(hard_gateway, emulator):
    gw = hard_gateway
    cases = [
        # Converse: its own field, and the model's fields passed through.
        ("claude-fast", "converse",
         b'{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":5000},'
         b'"additionalModelRequestFields":{"max_tokens":9000,"max_completion_tokens":9000}}',
         [(b'"maxTokens":5000', b'"maxTokens":50'), (b'"max_tokens":9000', b'"max_tokens":50'),
          (b'"max_completion_tokens":9000', b'"max_completion_tokens":50')]),
        # Anthropic on invoke: the second spelling too.
        ("claude-fast", "invoke",
         b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"max_completion_tokens":9000,'
         b'"messages":[{"role":"user","content":"hi"}]}',
         [(b'"max_completion_tokens":9000', b'"max_completion_tokens":50')]),
    ]
    for model, op, body, edits in cases:
        seen = Observed(gw, emulator)
        status, _, out = raw(gw, "POST", f"/model/{model}/{op}", body, hard_headers("capped"))
        assert status == 200, out
        expected = body
        for old, new in edits:
            expected = expected.replace(old, new)
        [entry] = seen.ledger(1)
        assert_clean_upstream(entry, HAIKU, op)
        assert (entry["body_len"], entry["body_sha256"]) == (len(expected), sha256(expected)), op
        [record] = seen.records(1)
        assert record["status"] == 200
    assert_next_request_succeeds(gw, emulator)


# ---------------------------------------------------------------- cost-raising options

NOVA_PRO = "amazon.nova-pro-v1:0"  # litellm prices its priority and flex tiers


def ledger_usage(entry: dict) -> dict:
    return {k: entry["usage"][k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")}


@pytest.mark.parametrize("tier,how", [("priority", "body"), ("flex", "header")])
def test_a_priced_service_tier_is_billed_at_its_price(hard_gateway, emulator, tier, how):
    gw = hard_gateway
    seen = Observed(gw, emulator)
    if how == "body":
        status, _, out = raw(gw, "POST", f"/model/{NOVA_PRO}/converse",
                             converse_body(serviceTier={"type": tier}), hard_headers("capped"))
    else:
        status, _, out = raw(gw, "POST", f"/model/{NOVA_PRO}/converse", converse_body(),
                             hard_headers("capped", **{"x-amzn-bedrock-service-tier": tier}))
    assert status == 200, out
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, NOVA_PRO, "converse")
    if how == "header":
        assert dict(entry["headers"])["x-amzn-bedrock-service-tier"] == tier
    [record] = seen.records(1)
    usage = ledger_usage(entry)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(NOVA_PRO, usage, tier)
    assert record["cost_pico_usd"] != pricing_oracle.cost_pico_usd(NOVA_PRO, usage)
    assert record["service_tier"] == tier


UNPRICED = [
    ("service tier without a price", "claude-fast", {"x-amzn-bedrock-service-tier": "priority"}, {}, "service_tier"),
    ("service tier in the body", "claude-fast", {}, {"serviceTier": {"type": "priority"}}, "service_tier"),
    ("reserved tier", NOVA_PRO, {"x-amzn-bedrock-service-tier": "reserved"}, {}, "service_tier"),
    ("latency-optimized header", "claude-fast", {"x-amzn-bedrock-performanceconfig-latency": "optimized"}, {}, "latency_optimized"),
    ("latency-optimized body", "claude-fast", {}, {"performanceConfig": {"latency": "optimized"}}, "latency_optimized"),
    ("guardrail headers", "claude-fast", {"x-amzn-bedrock-guardrailidentifier": "gr-1", "x-amzn-bedrock-guardrailversion": "1"}, {}, "guardrails"),
    ("guardrail config", "claude-fast", {}, {"guardrailConfig": {"guardrailIdentifier": "gr-1", "guardrailVersion": "1"}}, "guardrails"),
]


@pytest.mark.parametrize("what,model,headers,body,option", UNPRICED, ids=[u[0] for u in UNPRICED])
def test_options_tollgate_cannot_price_are_refused_unless_the_key_opts_in(hard_gateway, emulator, what, model, headers, body, option):
    gw = hard_gateway
    seen = Observed(gw, emulator)
    status, resp_headers, out = raw(gw, "POST", f"/model/{model}/converse", converse_body(**body),
                                    hard_headers("capped", **headers))
    assert (status, resp_headers.get("x-amzn-errortype")) == (400, "ValidationException"), out
    message = json.loads(out)["message"]
    assert option in message and "unpriced_options" in message, message
    [record] = seen.records(1)
    assert (record["status"], record["cost_pico_usd"]) == (400, 0)
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []

    # The key that opts in: forwarded as sent, billed at the standard price, and the record says so.
    seen = Observed(gw, emulator)
    status, _, out = raw(gw, "POST", f"/model/{model}/converse", converse_body(**body), hard_headers("optin", **headers))
    assert status == 200, out
    [entry] = seen.ledger(1)
    sent = dict(entry["headers"])
    for name, value in headers.items():
        assert sent[name] == value, name
    [record] = seen.records(1)
    model_id = HAIKU if model == "claude-fast" else model
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(model_id, ledger_usage(entry))
    assert record["unpriced_options"] == [option]
    assert_next_request_succeeds(gw, emulator)


def test_unknown_option_values_are_refused(hard_gateway, emulator):
    gw = hard_gateway
    seen = Observed(gw, emulator)
    for headers, body in [
        ({"x-amzn-bedrock-service-tier": "turbo"}, {}),
        ({}, {"serviceTier": {"type": "turbo"}}),
        ({}, {"serviceTier": "priority"}),
        ({"x-amzn-bedrock-performanceconfig-latency": "warp"}, {}),
    ]:
        status, resp_headers, out = raw(gw, "POST", f"/model/{NOVA_PRO}/converse", converse_body(**body),
                                        hard_headers("optin", **headers))
        assert (status, resp_headers.get("x-amzn-errortype")) == (400, "ValidationException"), (headers, body, out)
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []
