"""Secrets, on every host. Distinctive secrets are planted — two client API keys, an AWS secret
access key and session token, a Bedrock API key, a container endpoint's authorization token and
the rotating credentials it hands out (a new set every 3 s) — and traffic of every kind is sent (served,
streamed, refused, failed upstream, `/usage`, `/v1/models`). Then every output the gateway
produces is scanned for them: each response body and header, the gateway's log (Envoy's log;
`spin up`'s output and log directory), Envoy's `/stats` and `/stats/prometheus`, and the names of
the store's keys. The SigV4 signatures Bedrock received (from the emulator's ledger: the emulator
is Bedrock here, so it legitimately sees them) must not show anywhere else either.

Also: the client's `x-amz-*`, auth and `x-envoy-*` headers never reach upstream; the upstream host
is the configuration's whatever a request says (a second loopback listener must never be
contacted); `/usage` shows only the caller's key.
"""

from __future__ import annotations

import json
import secrets as random_secrets
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import harness
from conftest import plugin_config, redis_for
from test_bedrock_api import Observed
from test_request_hardening import connect

TAG = random_secrets.token_hex(6)
KEY_A = f"tg-planted-alpha-{TAG}"
KEY_B = f"tg-planted-beta-{TAG}"
ACCESS_KEY_ID = "AKIDPLANTED" + TAG.upper()
AWS_SECRET = f"planted-aws-secret-{TAG}"
SESSION_TOKEN = f"planted-session-token-{TAG}"
BEDROCK_API_KEY = f"planted-bedrock-api-key-{TAG}"
CLIENT_SECRET = f"planted-client-credential-{TAG}"  # what a client sends in headers it should not
CONTAINER_TOKEN = f"planted-container-token-{TAG}"
SECRETS = [KEY_A, KEY_B, AWS_SECRET, SESSION_TOKEN, BEDROCK_API_KEY, CLIENT_SECRET, CONTAINER_TOKEN]


class Canary:
    """A loopback listener nothing may ever connect to: where a request tries to send the gateway."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 1800  # bounded, whatever happens to the test
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def secret_emulator(workdir):
    # Also a container credentials endpoint: a new set every 3 s, each valid 9 s, handed out only
    # for CONTAINER_TOKEN.
    emu = harness.Emulator(workdir / "secrets-emulator", "--session-token", SESSION_TOKEN,
                           "--bearer-token", BEDROCK_API_KEY, "--log",
                           "--credentials-rotate-ms", "3000", "--credentials-lifetime-ms", "9000",
                           "--container-token", CONTAINER_TOKEN,
                           access_key_id=ACCESS_KEY_ID, secret_access_key=AWS_SECRET)
    yield emu
    emu.stop()


def secret_config(port: int, credentials: dict) -> dict:
    cfg = plugin_config(port)
    cfg["api_keys"] = [
        {"id": "alpha", "sha256": harness.sha256_hex(KEY_A), "models": ["*"],
         "limits": {"budget": {"usd": "0.01", "period": "total"}}},
        {"id": "beta", "sha256": harness.sha256_hex(KEY_B), "models": ["claude-fast"]},
    ]
    cfg["credentials"] = credentials
    return cfg


SIGV4 = {"type": "inline", "access_key_id": ACCESS_KEY_ID, "secret_access_key": AWS_SECRET,
         "session_token": SESSION_TOKEN}
API_KEY = {"type": "bedrock_api_key", "api_key": BEDROCK_API_KEY}


def rotating_credentials(emu) -> dict:
    """The emulator's container endpoint; on Envoy fetched through a cluster of its own, as the
    shipped configurations do (a cluster carrying Tollgate's upstream filter cannot be called
    from Tollgate's own VM: README, Credentials on AWS)."""
    return {"type": "container", "endpoint": f"{emu.url}/v1/credentials",
            "authorization_token": CONTAINER_TOKEN, "cluster": "aws_credentials"}


def with_credentials_cluster(boot: dict) -> dict:
    """`boot` with an `aws_credentials` cluster to the emulator: the Bedrock cluster without
    Tollgate's upstream filter."""
    clusters = boot["static_resources"]["clusters"]
    plain = json.loads(json.dumps(clusters[0]))
    plain["name"] = plain["load_assignment"]["cluster_name"] = "aws_credentials"
    plain.pop("typed_extension_protocol_options", None)
    clusters.append(plain)
    return boot


def issued_secrets(emu) -> list[str]:
    """Every secret key and session token the credentials endpoint has handed out so far."""
    issued = harness.http_json(f"{emu.url}/_emulator/credentials")["issued"]
    return [s[k] for s in issued for k in ("secret_access_key", "session_token")]


@pytest.fixture(scope="module", params=["sigv4", "bedrock-api-key", "rotating"])
def secret_gateway(request, workdir, secret_emulator, tls_dir, host_kind):
    creds = {"sigv4": SIGV4, "bedrock-api-key": API_KEY,
             "rotating": rotating_credentials(secret_emulator)}[request.param]
    kw = {}
    if request.param == "rotating" and host_kind != "envoy":
        kw["variables"] = {"credentials_origin": secret_emulator.url}
    if request.param == "rotating" and host_kind == "envoy":
        kw["bootstrap"] = with_credentials_cluster(harness.envoy_config(
            secret_config(secret_emulator.port, creds), secret_emulator.port, tls_dir))
    gw = harness.start_gateway(host_kind, workdir / host_kind / f"secrets-{request.param}",
                               secret_config(secret_emulator.port, creds), secret_emulator.port, tls_dir,
                               concurrency=1, name=f"secrets-{request.param}", redis=redis_for(request, host_kind),
                               **kw)
    gw.upstream_auth = request.param
    if request.param == "rotating":
        # Until the first credentials are fetched (a 503 before then is expected).
        def serving():
            body = converse()
            status, _, out = raw(gw, request_head("/model/claude-fast/converse", KEY_B, body), body)
            assert status in (200, 503), (status, out[:200])
            return status == 200
        harness.wait_until(serving, 20, "the first rotating credentials", interval_s=0.2)
    yield gw
    gw.stop()


def raw(gw, head: bytes, body: bytes = b"", timeout: float = 15) -> tuple[int, bytes, bytes]:
    """(status, raw head, body) of one request written byte for byte; the whole response is kept
    for scanning."""
    data = b""
    with connect(gw, timeout) as s:
        s.sendall(head + b"\r\n" + body)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    first = head_bytes.split(b"\r\n", 1)[0].split()
    status = int(first[1]) if len(first) > 1 and first[0].startswith(b"HTTP/") else 0
    return status, head_bytes, rest


def request_head(path: str, key: str | None, body: bytes, extra: list[tuple[str, str]] = (),
                 target: str | None = None, host: str = "gateway.test") -> bytes:
    lines = [f"POST {target or path} HTTP/1.1", f"host: {host}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close"]
    if key:
        lines.append(f"authorization: Bearer {key}")
    lines += [f"{n}: {v}" for n, v in extra]
    return ("\r\n".join(lines) + "\r\n").encode()


def converse(text: str = "hello", max_tokens: int = 4) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": [{"text": text}]}],
                       "inferenceConfig": {"maxTokens": max_tokens}}).encode()


# What a client must not get upstream: credentials of its own, AWS's own headers, Envoy's controls.
CLIENT_EXTRAS = [
    ("x-amz-security-token", CLIENT_SECRET),
    ("x-amz-date", "20200101T000000Z"),
    ("x-amz-content-sha256", CLIENT_SECRET),
    ("x-amz-target", "BedrockRuntime.Converse"),
    ("proxy-authorization", f"Basic {CLIENT_SECRET}"),
    ("cookie", f"session={CLIENT_SECRET}"),
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-original-path", "/evil"),
    ("x-forwarded-host", "127.0.0.1:{canary}"),
    ("forwarded", "host=127.0.0.1:{canary}"),
]


def traffic(gw, canary: Canary) -> list[bytes]:
    """Sends every kind of exchange; returns every response (head and body) for scanning."""
    out = []

    def send(*args, **kw):
        status, head, body = raw(gw, *args, **kw)
        out.append(head + b"\r\n\r\n" + body)
        return status, head, body

    extras = [(n, v.replace("{canary}", str(canary.port))) for n, v in CLIENT_EXTRAS]
    for key in (KEY_A, KEY_B):
        body = converse()
        status, _, _ = send(request_head("/model/claude-fast/converse", key, body, [("x-api-key", key), *extras]), body)
        assert status == 200
        body = converse("[[emu:events=4]]")
        status, _, _ = send(request_head("/model/claude-fast/converse-stream", key, body), body)
        assert status == 200
    refusals = [
        ("/model/claude-fast/converse", "tg-planted-wrong-" + TAG, converse(), 401),
        ("/model/claude-smart/converse", KEY_B, converse(), 403),
        ("/model/claude-nope/converse", KEY_A, converse(), 400),
        ("/model/claude-fast/converse", KEY_A, b"{" + b" " * (70 * 1024) + b"}", 413),
        ("/model/claude-fast/converse", KEY_A, b"not json", 400),
        ("/model/claude-fast/converse", KEY_A, converse(max_tokens=10 ** 9), 429),  # budget
        ("/model/claude-fast/converse", KEY_A, converse("[[emu:error=500:InternalServerException]]"), 500),
        ("/model/claude-fast/converse", KEY_A, converse("[[emu:throttle]]"), 429),
        ("/model/claude-fast/converse", KEY_A, converse("[[emu:hang-up]]"), 503),
        ("/model/claude-fast/converse-stream", KEY_A, converse("[[emu:fail-after=1]]"), 200),
        ("/model/claude-fast/converse-stream", KEY_A, converse("[[emu:reset-after=1]]"), (0, 200)),
    ]
    for path, key, body, want in refusals:
        status, _, resp = send(request_head(path, key, body), body)
        assert status in (want if isinstance(want, tuple) else (want,)), (path, status, resp[:200])
    # A key in the query string, an unknown key that looks like a real one, both keys at once.
    body = converse()
    send(request_head(f"/model/claude-fast/converse?api_key={KEY_A}", None, body), body)
    send(request_head("/model/claude-fast/converse", KEY_A, body, [("x-api-key", KEY_B)]), body)
    for path in ("/usage", "/v1/models"):
        for key in (KEY_A, KEY_B, None):
            lines = [f"GET {path} HTTP/1.1", "host: gateway.test", "connection: close"]
            if key:
                lines.append(f"authorization: Bearer {key}")
            send(("\r\n".join(lines) + "\r\n").encode())
    return out


def spin_outputs(gw) -> str:
    """Everything `spin up` wrote under its directory (its output, its log directory), but the
    store itself."""
    texts = []
    for p in Path(gw.dir).rglob("*"):
        if p.is_file() and p.suffix not in (".db", ".wasm") and "kv.db" not in p.name:
            texts.append(p.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(texts)


def test_no_secret_in_any_output(secret_gateway, secret_emulator):
    gw = secret_gateway
    canary = Canary()
    try:
        seen = Observed(gw, secret_emulator)
        responses = traffic(gw, canary)
        time.sleep(0.5)
        entries = secret_emulator.ledger()[seen.ledger_start:]
        assert entries, "nothing reached the emulator"
    finally:
        canary.stop()

    rotated = issued_secrets(secret_emulator)
    # The upstream host is the configuration's, whatever the request said.
    assert canary.connections == 0, "the gateway connected to a host a request named"
    signatures = []
    for e in entries:
        headers = dict(e["headers"])
        assert headers["host"] == f"127.0.0.1:{secret_emulator.port}", headers["host"]
        if gw.upstream_auth in ("sigv4", "rotating"):
            assert e["auth"] == "sigv4" and e["signature_valid"] is True, e
            if gw.upstream_auth == "sigv4":
                assert headers["x-amz-security-token"] == SESSION_TOKEN
            else:
                assert headers["x-amz-security-token"] in rotated, "not a rotating set's token"
            signatures.append(headers["authorization"].rsplit("Signature=", 1)[1])
        else:
            assert e["auth"] == "bearer" and e["signature_valid"] is True, e
            assert "x-amz-security-token" not in headers
        # No credential, AWS header or Envoy control of the client's reaches Bedrock.
        for name, value in e["headers"]:
            assert not name.startswith("x-envoy-") or name == "x-envoy-expected-rq-timeout-ms", name
            assert name not in ("x-api-key", "proxy-authorization", "cookie", "x-amz-target",
                                "x-amz-content-sha256", "x-forwarded-host", "forwarded"), name
            assert KEY_A not in value and KEY_B not in value and CLIENT_SECRET not in value, (name, value)
        if "x-amz-date" in headers:
            assert headers["x-amz-date"] != "20200101T000000Z"

    outputs = {"responses": b"\n".join(responses).decode("utf-8", errors="replace"), "log": gw.log()}
    if gw.kind == "envoy":
        for path in ("/stats", "/stats/prometheus", "/config_dump?include_eds", "/clusters"):
            with harness.urllib.request.urlopen(gw.admin + path, timeout=10) as r:
                outputs[f"admin{path}"] = r.read().decode("utf-8", errors="replace")
    else:
        outputs["spin files"] = spin_outputs(gw)
        outputs["store keys"] = "\n".join(gw.store_keys())
    # Envoy's config dump holds the plugin configuration, secrets included (it is the operator's
    # own admin port, like the file it came from): everything else must be clean.
    config_dump = outputs.pop("admin/config_dump?include_eds", None)
    if gw.kind == "envoy":
        # The control: the secret is there to be found, and the scan reads what holds it.
        assert {"sigv4": AWS_SECRET, "bedrock-api-key": BEDROCK_API_KEY,
                "rotating": CONTAINER_TOKEN}[gw.upstream_auth] in config_dump
        # Client keys exist only as hashes, even in the configuration.
        for key in (KEY_A, KEY_B):
            assert key not in config_dump and harness.sha256_hex(key) in config_dump
    for where, text in outputs.items():
        for secret in SECRETS + rotated + signatures:
            assert secret not in text, f"{secret[:24]}… appears in {where}"
    # The log does record the exchanges (the scan looked at something real).
    assert len(gw.usage_records()) >= 4


def test_usage_shows_only_the_callers_key(secret_gateway):
    gw = secret_gateway
    views = {}
    for key, kid in ((KEY_A, "alpha"), (KEY_B, "beta")):
        body = converse()
        status, _, _ = raw(gw, request_head("/model/claude-fast/converse", key, body), body)
        assert status == 200
        status, _, out = raw(gw, f"GET /usage HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {key}\r\n".encode())
        assert status == 200
        views[kid] = json.loads(out[out.index(b"{"):out.rindex(b"}") + 1])
    assert views["alpha"]["key_id"] == "alpha" and views["beta"]["key_id"] == "beta"
    # Beta's view holds beta's usage only: its own requests, no budget of alpha's.
    assert "budget" in views["alpha"] and "budget" not in views["beta"]
    assert views["alpha"]["requests"] != views["beta"]["requests"] or \
        views["alpha"]["cost_pico_usd"] != views["beta"]["cost_pico_usd"]
    for view in views.values():
        text = json.dumps(view)
        assert KEY_A not in text and KEY_B not in text
        assert "alpha" not in text or view["key_id"] == "alpha"
        assert "beta" not in text or view["key_id"] == "beta"


@pytest.mark.parametrize("model", [
    "127.0.0.1:{canary}",
    "user@127.0.0.1:{canary}",
    "http://127.0.0.1:{canary}/model/x",
    "../../127.0.0.1:{canary}",
    "arn:aws:bedrock:us-east-1:1:application-inference-profile/../../x",
    "arn:aws:bedrock:us-east-1:1:application-inference-profile/x%2F..%2F..",
])
def test_the_upstream_host_is_fixed_by_configuration(secret_gateway, secret_emulator, model):
    """Model IDs that look like hosts, URLs or paths, sent with a Host, x-forwarded-host and an
    absolute-form target naming another listener: either refused, or sent to the configured
    upstream as one encoded path segment."""
    gw = secret_gateway
    canary = Canary()
    try:
        seen = Observed(gw, secret_emulator)
        model = model.replace("{canary}", str(canary.port))
        path = "/model/" + urllib.parse.quote(model, safe="") + "/converse"
        body = converse()
        other = f"127.0.0.1:{canary.port}"
        for target, host in [(path, other), (f"http://{other}{path}", other)]:
            status, _, out = raw(gw, request_head(path, KEY_A, body, [("x-forwarded-host", other)],
                                                  target=target, host=host), body)
            assert status in (0, 200, 400), (status, out[:200])
        time.sleep(0.5)
    finally:
        canary.stop()
    assert canary.connections == 0
    for e in secret_emulator.ledger()[seen.ledger_start:]:
        assert dict(e["headers"])["host"] == f"127.0.0.1:{secret_emulator.port}"
        # One encoded segment: no `/`, `..` or `@` reaches the upstream path as such.
        assert e["raw_path"].count("/") == 3 and e["raw_path"].endswith("/converse"), e["raw_path"]
        label = e["raw_path"].split("/")[2]
        assert label == urllib.parse.quote(e["model_id"], safe="-_.~"), (label, e["model_id"])
