"""Hostile requests, table-driven, on every host (Envoy + filter, Spin on SQLite, Spin on Redis):
malformed auth, enormous headers, non-UTF-8 and control bytes, path tricks, ARNs of other
accounts and regions, non-JSON, truncated and deeply nested JSON, chunked uploads, HTTP/2 with
trailers, wrong methods, huge, negative and non-integer token limits, gzip bombs, look-alike
aliases.

Each case is one row of CASES and is checked four ways:
* the status, and the error in the client's dialect (Bedrock's `x-amzn-ErrorType` and
  `{"message"}`, or OpenAI's `{"error":{...}}` on `/v1/`), where the gateway answers; where the
  host refuses the request before Tollgate runs (an HTTP parser's 400 or 431) the row says so;
* what reached the emulator (the only upstream): nothing, or exactly the request, signed;
* what was billed: nothing for a refusal, the usage for a served request;
* the next request on the same gateway still succeeds (Envoy runs one worker here, so it is the
  same worker and the same Wasm VM).
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import pytest

import harness
from conftest import HAIKU, KEYS, MAX_BODY, SONNET, plugin_config, redis_for
from test_bedrock_api import Observed, assert_clean_upstream
from test_request_hardening import assert_next_request_succeeds, connect, converse_h2_headers, h2c

KEY = KEYS["team-a"][0]
LIMITED = KEYS["team-limited"][0]
CAPPED = "tg-hostile-capped"
BUDGETED = "tg-hostile-budgeted"
RESPELL = "tg-hostile-respell"


@pytest.fixture(scope="module")
def hostile(request, workdir, emulator, tls_dir, host_kind):
    cfg = plugin_config(emulator.port)
    cfg["api_keys"] += [
        {"id": "capped", "sha256": harness.sha256_hex(CAPPED), "models": ["*"], "limits": {"max_output_tokens": 50}},
        {"id": "budgeted", "sha256": harness.sha256_hex(BUDGETED), "models": ["*"],
         "limits": {"budget": {"usd": "100", "period": "monthly"}}},
        {"id": "respell", "sha256": harness.sha256_hex(RESPELL), "models": ["*"],
         "limits": {"models": {"claude-fast": {"requests_per_minute": 1000}}}},
    ]
    # One worker: "the next request" of every case runs in the same Wasm VM as the case.
    gw = harness.start_gateway(host_kind, workdir / host_kind / "hostile", cfg, emulator.port, tls_dir,
                               concurrency=1, name="hostile", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


# ------------------------------------------------------------------ sending


def send_raw(gateway, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Writes `data` as is and reads one response; status 0 if the connection closed without one."""
    try:
        with connect(gateway, timeout) as s:
            s.sendall(data)
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, TimeoutError, socket.timeout):
                    break
                if not chunk:
                    break
                buf += chunk
                if _complete(buf):
                    break
    except (ConnectionResetError, BrokenPipeError) as e:
        return 0, {"error": str(e)}, b""
    if not buf.startswith(b"HTTP/"):
        return 0, {}, buf
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        n, _, v = line.partition(":")
        headers[n.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    return int(lines[0].split()[1]), headers, rest


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
    return head.startswith(b"HTTP/1.1 1")  # 100 Continue: read on


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def request(method: str = "POST", target: str = "/model/claude-fast/converse", body: bytes | None = None,
            key: str | None = KEY, headers: list[tuple[bytes, bytes]] | None = None, length: bool = True,
            content_type: bool = True) -> bytes:
    """An HTTP/1.1 request, byte for byte."""
    body = converse() if body is None else body
    lines = [f"{method} {target} HTTP/1.1".encode(), b"host: gateway.test"]
    if content_type:
        lines.append(b"content-type: application/json")
    if key is not None:
        lines.append(b"authorization: Bearer " + key.encode())
    lines += [n + b": " + v for n, v in headers or []]
    if length:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def converse(text: str = "Say hello.", max_tokens=4, **extra) -> bytes:
    doc = {"messages": [{"role": "user", "content": [{"text": text}]}], **extra}
    if max_tokens is not None:
        doc.setdefault("inferenceConfig", {})["maxTokens"] = max_tokens
    return json.dumps(doc).encode()


def raw_converse_with_limit(limit: str) -> bytes:
    return b'{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":' + \
        limit.encode() + b"}}"


def model_path(model: str, op: str = "converse") -> str:
    return "/model/" + urllib.parse.quote(model, safe="") + "/" + op


def chunked(body: bytes, pieces: int = 3, trailers: bytes = b"") -> bytes:
    size = max(1, len(body) // pieces)
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n" + trailers + b"\r\n"


def gzip_bomb() -> bytes:
    return gzip.compress(b"{" + b" " * (20 << 20) + b"}", compresslevel=9)


def nested(depth: int) -> bytes:
    return b'{"messages":' + b"[" * depth + b"]" * depth + b"}"


# ------------------------------------------------------------------ the table

BEDROCK = "bedrock"
OPENAI = "openai"
HOST = "host"  # the host refuses the request itself, before Tollgate runs


@dataclass
class Case:
    id: str
    data: Callable[[], bytes] | None = None
    status: int | tuple = 400
    error: str | None = "ValidationException"
    dialect: str = BEDROCK
    # Requests that reach the emulator (0: nothing gets past the gateway).
    upstream: int = 0
    # The upstream request, when there is one: the model ID and operation it must carry.
    model_id: str = HAIKU
    operation: str = "converse"
    # Checks of the one ledger entry, when there is one.
    check: Callable[[dict], None] | None = None
    # A case that differs on Spin: replacement fields (README "Differs between hosts").
    on_spin: dict = field(default_factory=dict)
    envoy_only: str | None = None
    # HTTP/2 requests instead of raw HTTP/1.1 bytes: (headers, body, trailers) each.
    h2: Callable[[object], list] | None = None


def capped_max_tokens(entry: dict):
    """The emulator serves the body's maxTokens: the key's cap (50), whatever the client wrote."""
    assert entry["usage"]["output_tokens"] == 50, entry["usage"]


def no_query(entry: dict):
    assert entry["raw_query"] == "", entry["raw_query"]


def upstream_host_is_configured(entry: dict):
    host = dict(entry["headers"]).get("host", "")
    assert host.startswith("127.0.0.1:"), host


CASES: list[Case] = [
    # --- malformed auth
    Case("no-key", lambda: request(key=None), 401, "UnrecognizedClientException"),
    Case("empty-bearer", lambda: request(key=None, headers=[(b"authorization", b"Bearer ")]), 401,
         "UnrecognizedClientException"),
    Case("bearer-without-space", lambda: request(key=None, headers=[(b"authorization", b"Bearer" + KEY.encode())]),
         401, "UnrecognizedClientException"),
    Case("basic-auth", lambda: request(key=None, headers=[(b"authorization", b"Basic dGctdGVzdDprZXk=")]), 401,
         "UnrecognizedClientException"),
    Case("sigv4-auth", lambda: request(key=None, headers=[(b"authorization",
                                                           b"AWS4-HMAC-SHA256 Credential=AKID/20261122/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00")]),
         401, "UnrecognizedClientException"),
    Case("wrong-key", lambda: request(key="tg-not-a-key"), 401, "UnrecognizedClientException"),
    Case("key-prefix", lambda: request(key=KEY[:-1]), 401, "UnrecognizedClientException"),
    Case("key-with-suffix", lambda: request(key=KEY + "x"), 401, "UnrecognizedClientException"),
    Case("huge-key", lambda: request(key="k" * 30_000), 401, "UnrecognizedClientException"),
    Case("key-with-nul", lambda: request(key=None, headers=[(b"authorization", b"Bearer tg-\x00key")]), 400, None,
         dialect=HOST),
    Case("key-with-control-byte", lambda: request(key=None, headers=[(b"x-api-key", KEY.encode() + b"\x01")]), 400,
         None, dialect=HOST),
    Case("key-not-utf8", lambda: request(key=None, headers=[(b"x-api-key", KEY.encode() + b"\xff")]), 401,
         "UnrecognizedClientException", on_spin={"status": 500, "error": None, "dialect": HOST}),
    Case("two-different-keys", lambda: request(key=LIMITED, headers=[(b"x-api-key", KEY.encode())]), 401,
         "UnrecognizedClientException"),
    Case("key-in-chunked-trailer-only", lambda: request(key=None, headers=[(b"transfer-encoding", b"chunked")],
                                                        length=False, body=chunked(converse(), trailers=b"x-api-key: " + KEY.encode() + b"\r\n")),
         401, "UnrecognizedClientException"),
    # --- enormous headers, odd bytes
    Case("enormous-header", lambda: request(headers=[(b"x-padding", b"a" * 200_000)]), 431, None, dialect=HOST,
         # Spin's HTTP server takes it; the allowlist keeps it from Bedrock.
         on_spin={"status": 200, "upstream": 1, "dialect": BEDROCK}),
    Case("many-headers", lambda: request(headers=[(b"x-h%d" % i, b"v" * 50) for i in range(2_000)]), 431, None,
         dialect=HOST),
    Case("header-not-utf8", lambda: request(headers=[(b"x-note", b"caf\xe9")]), 200, None, upstream=1,
         on_spin={"status": 500, "error": None, "upstream": 0, "dialect": HOST}),
    Case("header-with-control-byte", lambda: request(headers=[(b"x-note", b"a\x07b")]), 400, None, dialect=HOST),
    Case("header-name-with-space", lambda: request(headers=[(b"x bad", b"1")]), 400, None, dialect=HOST),
    # --- path tricks
    Case("trailing-slash", lambda: request(target="/model/claude-fast/converse/"), 404,
         "UnknownOperationException"),
    Case("dot-dot-segment", lambda: request(target="/model/claude-fast/../converse"), (400, 404), None,
         dialect=BEDROCK),
    Case("double-slash", lambda: request(target="//model/claude-fast/converse"), 404, "UnknownOperationException"),
    Case("encoded-slash-in-operation", lambda: request(target="/model/claude-fast%2Fconverse"), 404,
         "UnknownOperationException"),
    Case("uppercase-prefix", lambda: request(target="/MODEL/claude-fast/converse"), 404, "UnknownOperationException"),
    Case("uppercase-operation", lambda: request(target="/model/claude-fast/Converse"), 404,
         "UnknownOperationException"),
    Case("unknown-operation", lambda: request(target="/model/claude-fast/count-tokens"), 404,
         "UnknownOperationException"),
    Case("encoded-dot-dot-model", lambda: request(target="/model/%2e%2e/converse"), 400, "ValidationException"),
    Case("nul-in-model", lambda: request(target="/model/claude-fast%00/converse"), 400, "ValidationException"),
    Case("invalid-utf8-model", lambda: request(target="/model/%ff%fe/converse"), 400, "ValidationException"),
    Case("raw-slash-in-arn", lambda: request(target=f"/model/arn:aws:bedrock:us-east-1:1:inference-profile/{HAIKU}/converse"),
         400, "ValidationException"),
    Case("query-is-dropped", lambda: request(target="/model/claude-fast/converse?x-id=evil&redirect=http://x"), 200,
         None, upstream=1, check=no_query),
    Case("percent-encoded-alias", lambda: request(target="/model/%63laude%2Dfast/converse"), 200, None, upstream=1),
    Case("absolute-form-target", lambda: request(target="http://evil.example:9/model/claude-fast/converse"), 200,
         None, upstream=1, check=upstream_host_is_configured,
         # Spin's HTTP server closes the connection without an answer.
         on_spin={"status": 0, "dialect": HOST, "upstream": 0}),
    Case("huge-path", lambda: request(target="/model/" + "a" * 100_000 + "/converse"), (400, 404, 414, 431), None,
         dialect=HOST),
    Case("usage-with-post", lambda: request(target="/usage"), 404, "UnknownOperationException"),
    Case("models-with-post", lambda: request(target="/v1/models"), 404, "not_found_error", dialect=OPENAI),
    Case("openai-route-not-served", lambda: request(target="/v1/completions"), 404, "not_found_error",
         dialect=OPENAI),
    # --- wrong methods
    Case("get-converse", lambda: request(method="GET", body=b""), 404, "UnknownOperationException"),
    Case("put-converse", lambda: request(method="PUT"), 404, "UnknownOperationException"),
    Case("delete-converse", lambda: request(method="DELETE", body=b""), 404, "UnknownOperationException"),
    Case("options-converse", lambda: request(method="OPTIONS", body=b""), 404, "UnknownOperationException"),
    Case("lowercase-post", lambda: request(method="post"), (400, 404), None, dialect=HOST),
    # --- model IDs
    Case("arn-other-region", lambda: request(target=model_path(f"arn:aws:bedrock:eu-west-1:123456789012:inference-profile/{HAIKU}")),
         400, "ValidationException"),
    Case("arn-other-account", lambda: request(target=model_path(f"arn:aws:bedrock:us-east-1:999999999999:inference-profile/{HAIKU}")),
         200, None, upstream=1),
    Case("arn-inside-arn", lambda: request(target=model_path(
        f"arn:aws:bedrock:us-east-1:1:inference-profile/arn:aws:bedrock:us-east-1:1:inference-profile/{HAIKU}")),
         400, "ValidationException"),
    Case("arn-of-another-service", lambda: request(target=model_path("arn:aws:s3:us-east-1:1:bucket/x")), 400,
         "ValidationException"),
    Case("lookalike-alias-cyrillic", lambda: request(target=model_path("clаude-fast")), 400, "ValidationException"),
    Case("lookalike-alias-fullwidth", lambda: request(target=model_path("ｃｌａｕｄｅ-fast")), 400,
         "ValidationException"),
    Case("alias-with-zero-width-space", lambda: request(target=model_path("claude\u200b-fast")), 400,
         "ValidationException"),
    Case("alias-with-trailing-space", lambda: request(target=model_path("claude-fast ")), 400, "ValidationException"),
    Case("limited-key-other-model", lambda: request(key=LIMITED, target=model_path(SONNET)), 403,
         "AccessDeniedException"),
    Case("limited-key-model-as-url", lambda: request(key=LIMITED, target=model_path("https://evil.example/" + HAIKU)),
         400, "ValidationException"),
    Case("model-with-at-sign", lambda: request(target=model_path("user@evil.example")), 400, "ValidationException"),
    # --- bodies
    Case("not-json", lambda: request(body=b"hello"), 400, "ValidationException"),
    Case("empty-body", lambda: request(body=b""), 400, "ValidationException"),
    Case("truncated-json", lambda: request(body=converse()[:-7]), 400, "ValidationException"),
    Case("json-array", lambda: request(body=b"[1,2,3]"), 400, "ValidationException"),
    Case("deeply-nested-array", lambda: request(body=nested(20_000)), 400, "ValidationException"),
    Case("deeply-nested-object", lambda: request(body=b'{"a":' * 5_000 + b"1" + b"}" * 5_000), 400,
         "ValidationException"),
    Case("invalid-utf8-body", lambda: request(body=b'{"messages":[{"role":"user","content":[{"text":"\xff"}]}]}'), 400,
         "ValidationException"),
    Case("nul-bytes-body", lambda: request(body=b"{\x00}"), 400, "ValidationException"),
    Case("body-over-limit", lambda: request(body=converse("x" * (MAX_BODY + 10))), 413, "ValidationException"),
    Case("declared-length-over-limit", lambda: request(headers=[(b"content-length", b"%d" % (MAX_BODY * 4))],
                                                       length=False, body=b"{" + b" " * (MAX_BODY * 4 - 2) + b"}"),
         413, "ValidationException"),
    Case("chunked-upload", lambda: request(headers=[(b"transfer-encoding", b"chunked")], length=False,
                                           body=chunked(converse(), pieces=7)), 200, None, upstream=1),
    Case("chunked-upload-over-limit", lambda: request(headers=[(b"transfer-encoding", b"chunked")], length=False,
                                                      body=chunked(converse("y" * (MAX_BODY + 10)), pieces=5)),
         413, "ValidationException"),
    Case("chunked-and-content-length", lambda: request(headers=[(b"transfer-encoding", b"chunked")],
                                                       body=chunked(converse())), 400, None, dialect=HOST,
         # Spin's HTTP server reads it as chunked (RFC 9112 6.3), as its length says nothing then.
         on_spin={"status": 200, "upstream": 1, "dialect": BEDROCK}),
    # Decompressed with its inflated size counted against the body limit: refused at the limit.
    Case("gzip-bomb", lambda: request(headers=[(b"content-encoding", b"gzip")], body=gzip_bomb()), 413,
         "ValidationException"),
    Case("deflate-body", lambda: request(headers=[(b"content-encoding", b"deflate")], body=b"x\x9c\x03\x00"), 400,
         "ValidationException"),
    Case("identity-encoding", lambda: request(headers=[(b"content-encoding", b"identity")]), 200, None, upstream=1),
    # --- token limits
    Case("huge-limit-capped", lambda: request(key=CAPPED, body=raw_converse_with_limit("99999999999999999999999")),
         200, None, upstream=1, check=capped_max_tokens),
    Case("negative-limit-capped", lambda: request(key=CAPPED, body=raw_converse_with_limit("-5")), 200, None,
         upstream=1, check=capped_max_tokens),
    Case("fractional-limit-capped", lambda: request(key=CAPPED, body=raw_converse_with_limit("3.5")), 200, None,
         upstream=1, check=capped_max_tokens),
    Case("string-limit-capped", lambda: request(key=CAPPED, body=raw_converse_with_limit('"100"')), 200, None,
         upstream=1, check=capped_max_tokens),
    Case("exponent-limit-capped", lambda: request(key=CAPPED, body=raw_converse_with_limit("1e9")), 200, None,
         upstream=1, check=capped_max_tokens),
    Case("u64-max-limit-budgeted", lambda: request(key=BUDGETED, body=raw_converse_with_limit("18446744073709551615")),
         429, "ServiceQuotaExceededException"),
    Case("limit-in-nested-model-fields-capped", lambda: request(key=CAPPED, body=converse(
        max_tokens=10, additionalModelRequestFields={"thinking": {"max_tokens": 10 ** 12}})), 200, None, upstream=1),
    # --- HTTP/2 with trailers (the Spin half serves HTTP/1.1: its chunked-trailer rows run there)
    Case("h2-key-in-trailers", status=401, error="UnrecognizedClientException", upstream=0,
         h2=lambda gw: [([h for h in converse_h2_headers(gw) if h[0] != "authorization"], converse(),
                         [("authorization", f"Bearer {KEY}")])],
         envoy_only="HTTP/2 without TLS; the Spin listener serves HTTP/1.1 over TLS"),
    Case("h2-trailers-with-x-envoy", status=200, error=None, upstream=1,
         h2=lambda gw: [(converse_h2_headers(gw), converse(), [("x-envoy-retry-on", "5xx"), ("x-api-key", "k")])],
         envoy_only="HTTP/2 without TLS; the Spin listener serves HTTP/1.1 over TLS"),
]


def expectation(case: Case, host: str) -> Case:
    if host == "envoy" or not case.on_spin:
        return case
    return Case(**{**case.__dict__, **case.on_spin})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(hostile, emulator, host_kind, case):
    if case.envoy_only and host_kind != "envoy":
        pytest.skip(f"differs between hosts (envoy only): {case.envoy_only}")
    want = expectation(case, host_kind)
    seen = Observed(hostile, emulator)
    if case.h2:
        [(status, headers, body)] = h2c(hostile, case.h2(hostile))
        headers = {k: v for k, v in headers.items()}
    else:
        status, headers, body = send_raw(hostile, case.data())
    statuses = want.status if isinstance(want.status, tuple) else (want.status,)
    assert status in statuses, (case.id, status, headers, body[:300])

    # The error, in the client's dialect, where the gateway answered.
    if want.error is not None and want.dialect == BEDROCK:
        assert headers.get("x-amzn-errortype") == want.error, (case.id, headers, body[:300])
        assert isinstance(json.loads(body)["message"], str)
    elif want.error is not None and want.dialect == OPENAI:
        err = json.loads(body)["error"]
        assert err["type"] == want.error and isinstance(err["message"], str), (case.id, body)
    elif want.dialect == BEDROCK and status >= 400:
        assert headers.get("x-amzn-errortype"), (case.id, headers)

    # Nothing reached Bedrock that should not have; what did is signed and clean.
    if want.upstream is not None:
        if want.upstream:
            [entry] = seen.ledger(1)
            assert_clean_upstream(entry, want.model_id, want.operation)
            if want.check:
                want.check(entry)
        time.sleep(0.2)
        assert len(emulator.ledger()) - seen.ledger_start == want.upstream, case.id

    # Nothing billed for a refusal; a served request billed once, at a price.
    time.sleep(0.1)
    # Records of this case only: the previous case's last request may be logged late (Spin
    # writes a record once the client has its response).
    earlier = {dict(e["headers"]).get("x-request-id") for e in emulator.ledger()[:seen.ledger_start]}
    records = [r for r in hostile.usage_records()[seen.records_start:] if r.get("request_id") not in earlier]
    if status >= 400 or status == 0:
        assert all(r["cost_pico_usd"] == 0 and not r["forwarded"] for r in records), records
    elif want.upstream:
        [entry] = emulator.ledger()[seen.ledger_start:]
        rid = dict(entry["headers"]).get("x-request-id")
        [record] = harness.wait_until(lambda: [r for r in hostile.usage_records() if r.get("request_id") == rid],
                                      10, "the case's usage record")
        assert record["status"] == 200 and record["cost_pico_usd"] > 0, record

    assert_next_request_succeeds(hostile, emulator)


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
