"""Credentials that rotate (README: "Credentials on AWS"): Tollgate fetches them from EC2's
instance metadata service or the container endpoint (ECS, EKS Pod Identity) and refreshes them
ahead of expiry, on Envoy and on Spin; or leaves signing to Envoy's own aws_request_signing
filter (EKS with IRSA or Pod Identity). The emulator hands out a new set every few seconds, each
valid a few seconds, and accepts a set only while it is valid. Every gateway runs the shipped
configuration of its platform (envoy/envoy-ec2.yaml, envoy-ecs.yaml, envoy-eks.yaml; on Spin the
same documents), with every AWS address pointed at the emulator on loopback."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import botocore.exceptions
import pytest

import harness
from conftest import KEYS, bedrock_client, plugin_config, redis_for

ROTATE_MS = 3_000
LIFETIME_MS = 9_000
POD_TOKEN = "pod-identity-token-for-tests"
DEMO_KEY = "tg-demo-key"  # the shipped documents' demo key
MESSAGES = [{"role": "user", "content": [{"text": "Hello"}]}]


@pytest.fixture(scope="module")
def rotating(workdir):
    """An emulator whose credentials rotate every 3 s, each set valid 9 s."""
    emu = harness.Emulator(workdir / "rotating", "--session-token", harness.SESSION_TOKEN,
                           "--credentials-rotate-ms", str(ROTATE_MS),
                           "--credentials-lifetime-ms", str(LIFETIME_MS),
                           "--container-token", POD_TOKEN)
    yield emu
    emu.stop()


def control(emu, what: str = "", method: str = "GET") -> dict:
    return harness.http_json(f"{emu.url}/_emulator/credentials{what}", method=method)


def start(request, host_kind, workdir, tls_dir, emu, platform: str, name: str):
    """Tollgate on `host_kind` with the shipped configuration of `platform` (ec2 or ecs)."""
    if host_kind == "envoy":
        env = {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/test-task"}
        bootstrap = harness.shipped_envoy_config(f"envoy-{platform}.yaml", emu.port, tls_dir)
        return harness.Envoy(workdir / host_kind / name, None, emu.port, tls_dir, name=name,
                             bootstrap=bootstrap, env=env)
    doc = harness.plugin_document(f"envoy-{platform}.yaml")
    doc["upstream_host"] = f"127.0.0.1:{emu.port}"
    # The AWS SDKs' own variables, as Spin variables, name the loopback emulator; and it is the
    # one credentials origin the component may call.
    variables = {"credentials_origin": emu.url}
    if platform == "ec2":
        variables["aws_ec2_metadata_service_endpoint"] = emu.url
    else:
        variables["aws_container_credentials_full_uri"] = f"{emu.url}/v1/credentials"
        variables["aws_container_authorization_token"] = POD_TOKEN
    return harness.start_gateway(host_kind, workdir / host_kind / name, doc, emu.port, tls_dir, name=name,
                                 redis=redis_for(request, host_kind), variables=variables)


def converse_body(max_tokens: int = 3) -> bytes:
    return json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": max_tokens}}).encode()


def wait_serving(gw, timeout_s: float = 20):
    """Until the first credentials are fetched (a 503 before then is expected)."""
    headers = {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"}

    def ok():
        status, _, body = gw.request("POST", "/model/claude-fast/converse", converse_body(), headers)
        assert status in (200, 503), (status, body)
        return status == 200
    harness.wait_until(ok, timeout_s, "the first credentials", interval_s=0.2)


def call_once(client, i: int):
    """A Converse or a ConverseStream call (read to its end); raises on any failure."""
    if i % 2:
        out = client.converse(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 4})
        assert out["usage"]["outputTokens"] == 4
        return out
    out = client.converse_stream(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 4})
    events = list(out["stream"])
    assert any("metadata" in e for e in events), events
    return events


def drive(gw, tls_dir, seconds: float, threads: int = 2):
    """Continuous traffic from `threads` boto3 clients for `seconds`: (calls made, failures)."""
    deadline = time.monotonic() + seconds
    failures, calls, seen = [], [0], []
    lock = threading.Lock()

    def run(t):
        client = bedrock_client(gw, tls_dir, DEMO_KEY)
        i = t
        while time.monotonic() < deadline:
            try:
                seen.append(repr(call_once(client, i)))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")
            with lock:
                calls[0] += 1
            i += 1
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    return calls[0], failures, seen


def assert_no_secret_leaks(emu, *texts: str):
    """No secret key or session token of any set the endpoint handed out appears in `texts`
    (logs, metrics, responses)."""
    issued = control(emu)["issued"]
    assert issued
    for text in texts:
        for s in issued:
            assert s["secret_access_key"] not in text
            assert s["session_token"] not in text
        assert POD_TOKEN not in text


def envoy_metrics(gw) -> str:
    with harness.urllib.request.urlopen(f"{gw.admin}/stats/prometheus", timeout=10) as r:
        return r.read().decode()


def test_traffic_across_three_rotations_has_no_failed_request(request, host_kind, workdir, tls_dir, rotating):
    """EC2's instance profile (IMDSv2), envoy/envoy-ec2.yaml: continuous Converse and
    ConverseStream traffic for more than three rotations; not one request fails, each is signed
    with a set that was valid when it arrived, the sets that sign span at least three rotations, and
    the endpoint is asked about once per refresh (one fetcher for all workers), not once per worker and tick."""
    gw = start(request, host_kind, workdir, tls_dir, rotating, "ec2", "rotation-ec2")
    try:
        wait_serving(gw)
        seq = len(rotating.ledger())
        before = control(rotating)
        # Five rotations of traffic: refreshes fall at half-life (every 3 to 4.5 s), so the sets
        # that sign span three rotations with a refresh's worth of slack on a loaded machine.
        calls, failures, seen = drive(gw, tls_dir, seconds=5 * ROTATE_MS / 1000 + 1)
        after = control(rotating)
        assert failures == [], failures[:5]
        entries = rotating.ledger()[seq:]
        assert calls >= 20 and len(entries) >= calls
        assert all(e["signature_valid"] and e["status"] == 200 for e in entries)
        generations = {e["credentials_generation"] for e in entries}
        assert None not in generations
        # Traffic spans at least three rotations. Which sets sign depends on when refreshes fall
        # (on a loaded machine a set may be skipped between two refreshes), so the span is
        # asserted, not the count.
        assert max(generations) - min(generations) >= 3, generations
        assert after["generation"] - before["generation"] >= 5
        fetched = after["imds_credentials"] - before["imds_credentials"]
        # A refresh at each set's half-life, 3 to 4.5 s apart: at most 6 in this run.
        # One fetcher for all: two Envoy workers each fetching when due would make about 8-10.
        assert 3 <= fetched <= 6, fetched
        status, headers, body = gw.request("GET", "/usage", None, {"authorization": f"Bearer {DEMO_KEY}"})
        texts = [gw.log(), json.dumps(headers), body.decode(), *seen]
        if host_kind == "envoy":
            metrics = envoy_metrics(gw)
            refreshes = int(re.search(r"^tollgate_credential_refreshes_total\{\} (\d+)$", metrics, re.M)[1])
            assert refreshes >= fetched + 1  # and the first fetch
            texts.append(metrics)
        assert_no_secret_leaks(rotating, *texts)
    finally:
        gw.stop()


def test_an_outage_of_the_credentials_endpoint(request, host_kind, workdir, tls_dir, rotating):
    """ECS (envoy/envoy-ecs.yaml on Envoy; the container endpoint with a token on Spin): the
    endpoint goes down; requests keep working while the credentials held are valid, then get a
    clean 503 ServiceUnavailableException (nothing is sent that AWS would refuse), then recover
    by themselves once the endpoint is back."""
    gw = start(request, host_kind, workdir, tls_dir, rotating, "ecs", "outage-ecs")
    client = bedrock_client(gw, tls_dir, DEMO_KEY)
    outcomes = []

    def one():
        try:
            client.converse(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 2})
            outcomes.append("ok")
            return "ok"
        except botocore.exceptions.ClientError as e:
            err = e.response["Error"]
            outcomes.append(f"{e.response['ResponseMetadata']['HTTPStatusCode']} {err['Code']}")
            return outcomes[-1], err["Message"]
    try:
        wait_serving(gw)
        seq = len(rotating.ledger())
        control(rotating, "/down", "POST")
        down_at = time.monotonic()
        # Bounded: the credentials held last at most their 9 s lifetime.
        while time.monotonic() - down_at < LIFETIME_MS / 1000 + 10:
            out = one()
            if out != "ok":
                assert out[0] == "503 ServiceUnavailableException", out
                assert "no valid AWS credentials" in out[1], out
                if outcomes[-3:] == [outcomes[-1]] * 3:
                    break
            time.sleep(0.2)
        assert outcomes[0] == "ok", outcomes
        first_503 = outcomes.index("503 ServiceUnavailableException")
        assert set(outcomes[first_503:]) == {"503 ServiceUnavailableException"}, outcomes
        # Nothing the endpoint's outage caused reached the emulator as a bad signature.
        assert all(e["signature_valid"] for e in rotating.ledger()[seq:])
        control(rotating, "/up", "POST")
        up_at = time.monotonic()
        while one() != "ok":
            assert time.monotonic() - up_at < 20, outcomes[-5:]
            time.sleep(0.2)
        for _ in range(3):
            assert one() == "ok"
        log = gw.log()
        # (Whether a failure is also logged after expiry, "no valid credentials", depends on
        # where the back-off's retries fell.)
        assert "could not refresh credentials" in log
        texts = [log]
        if host_kind == "envoy":
            metrics = envoy_metrics(gw)
            assert 'reason="credentials_unavailable"' in metrics
            assert re.search(r"^tollgate_credential_refresh_failures_total\{\} [1-9]", metrics, re.M)
            texts.append(metrics)
        status, headers, body = gw.request("GET", "/usage", None, {"authorization": f"Bearer {DEMO_KEY}"})
        assert_no_secret_leaks(rotating, *texts, json.dumps(headers), body.decode())
    finally:
        control(rotating, "/up", "POST")
        gw.stop()


def native_signing_envoy(workdir, tls_dir, emu, name: str, document=None):
    """envoy/envoy-eks.yaml: Tollgate ({"type": "envoy"}) then Envoy's aws_request_signing filter,
    whose default credential chain finds EKS Pod Identity's variables (set here as the Pod
    Identity webhook sets them, the endpoint on loopback, the token in a file) and nothing else:
    no keys in the environment, no credentials file, instance metadata disabled."""
    d = workdir / "envoy" / name
    d.mkdir(parents=True, exist_ok=True)
    token_file = d / "eks-pod-identity-token"
    token_file.write_text(POD_TOKEN)
    env = {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{emu.url}/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(d / "no-such-file"),
        "AWS_CONFIG_FILE": str(d / "no-such-file"),
        "HOME": str(d),
    }
    for name_ in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        assert name_ not in os.environ, name_
    bootstrap = harness.shipped_envoy_config("envoy-eks.yaml", emu.port, tls_dir, document)
    return harness.Envoy(d, None, emu.port, tls_dir, name=name, bootstrap=bootstrap, env=env)


def test_envoy_native_signing_signs_what_tollgate_rewrote_across_rotations(workdir, tls_dir, rotating):
    """Envoy only (Spin has no such filter). {"type": "envoy"}: Tollgate authenticates the key,
    rewrites the alias and caps the output (here the key's max_output_tokens rewrites the body),
    sends no credentials of its own and removes the client's; Envoy's signer signs the rewritten
    request with the Pod Identity credentials it fetched: continuous traffic across three
    rotations, every request accepted, the body the emulator hashed is the capped one."""
    def cap(doc):
        doc["api_keys"][0]["limits"] = {"max_output_tokens": 5}
    gw = native_signing_envoy(workdir, tls_dir, rotating, "native", cap)
    try:
        wait_serving(gw)
        seq = len(rotating.ledger())
        client = bedrock_client(gw, tls_dir, DEMO_KEY)
        out = client.converse(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 50})
        assert out["usage"]["outputTokens"] == 5
        [entry] = rotating.ledger()[seq:]
        assert entry["signature_valid"] and entry["auth"] == "sigv4"
        assert entry["raw_path"] == "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
        headers = dict(entry["headers"])
        assert headers["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
        assert "Bearer" not in headers["authorization"]
        # The emulator generates what the body it received asks for: the capped body, which
        # is what Envoy's signer hashed (the signature verified over it).
        assert int(headers["content-length"]) == entry["body_len"]
        assert entry["usage"]["output_tokens"] == 5
        # Five rotations of traffic: refreshes fall at half-life (every 3 to 4.5 s), so the sets
        # that sign span three rotations with a refresh's worth of slack on a loaded machine.
        calls, failures, seen = drive(gw, tls_dir, seconds=5 * ROTATE_MS / 1000 + 1)
        assert failures == [], failures[:5]
        entries = rotating.ledger()[seq + 1:]
        assert all(e["signature_valid"] and e["status"] == 200 for e in entries)
        generations = {e["credentials_generation"] for e in entries}
        assert None not in generations and len(generations) >= 4, generations
        texts = [gw.log(), envoy_metrics(gw), *seen]
        assert_no_secret_leaks(rotating, *texts)
    finally:
        gw.stop()


def test_envoys_signer_signs_every_attempt_of_a_fallback(workdir, tls_dir, rotating):
    """Envoy only. envoy/envoy-eks.yaml puts Envoy's signer after Tollgate's upstream filter on
    the Bedrock cluster, so a retried attempt is signed as Tollgate rebuilt it for its target:
    the first target (capped at 5 output tokens for this key) throttles; the second gets the
    client's own 50, from the body as it was before the first target's cap, signed anew."""
    haiku, sonnet = "us.anthropic.claude-haiku-4-5-20251001-v1:0", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

    def chain(doc):
        doc["aliases"]["fallback"] = [haiku, sonnet]
        doc["api_keys"][0]["limits"] = {"models": {haiku: {"max_output_tokens": 5}}}
    gw = native_signing_envoy(workdir, tls_dir, rotating, "native-fallback", chain)
    try:
        wait_serving(gw)
        seq = len(rotating.ledger())
        client = bedrock_client(gw, tls_dir, DEMO_KEY)
        text = f"[[emu:fail=throttle@{haiku}]]"
        out = client.converse(modelId="fallback", inferenceConfig={"maxTokens": 50},
                              messages=[{"role": "user", "content": [{"text": text}]}])
        assert out["usage"]["outputTokens"] == 50
        first, second = rotating.ledger()[seq:]
        assert (first["model_id"], first["status"], second["model_id"], second["status"]) == (haiku, 429, sonnet, 200)
        for e in (first, second):
            assert e["signature_valid"] and e["auth"] == "sigv4", e.get("error")
            assert int(dict(e["headers"])["content-length"]) == e["body_len"]
        assert first["body_sha256"] != second["body_sha256"], "each target's own cap"
        records = harness.wait_until(lambda: [r for r in gw.usage_records() if r["model"] == "fallback"], 10, "the record")
        assert records[-1]["model_id"] == sonnet
        assert [a["status"] for a in records[-1]["attempts"]] == [429, 200]
    finally:
        gw.stop()


@pytest.mark.spin_only("Envoy signs with its aws_request_signing filter; Spin has none")
def test_envoy_signing_is_refused_on_spin(request, host_kind, workdir, tls_dir, rotating):
    """{"type": "envoy"} on Spin: a configuration error naming the field, every request 500."""
    doc = harness.plugin_document("envoy-eks.yaml")
    gw = harness.start_gateway(host_kind, workdir / host_kind / "envoytype", doc, rotating.port, tls_dir,
                               name="envoytype", redis=redis_for(request, host_kind))
    try:
        status, headers, _ = gw.request("POST", "/model/claude-fast/converse", converse_body(),
                                        {"authorization": f"Bearer {DEMO_KEY}"})
        assert status == 500 and headers["x-amzn-errortype"] == "InternalServerException"
        assert "`credentials.type`: `envoy` leaves signing to Envoy's aws_request_signing filter" in gw.log()
    finally:
        gw.stop()


def test_a_container_token_file_is_refused_naming_the_alternative(launch, rotating):
    """EKS Pod Identity's token is a file, which neither Tollgate component can read: the
    configuration is refused, pointing to {"type": "envoy"} (Envoy's signer reads it)."""
    doc = harness.plugin_document("envoy-ecs.yaml")
    doc["upstream_host"] = f"127.0.0.1:{rotating.port}"
    doc["credentials"] = {"type": "container", "endpoint": f"{rotating.url}/v1/credentials",
                          "authorization_token_file": "/var/run/secrets/pods.eks.amazonaws.com/token"}
    gw = launch("tokenfile", doc, rotating.port, concurrency=1)
    try:
        status, _, _ = gw.request("POST", "/model/claude-fast/converse", converse_body(),
                                  {"authorization": f"Bearer {DEMO_KEY}"})
        assert status == 500
        log = gw.log()
        assert "`credentials.authorization_token_file`" in log and '{"type": "envoy"}' in log
    finally:
        gw.stop()


def test_envoy_native_signer_drops_valid_credentials_when_a_refresh_fails(workdir, tls_dir, rotating):
    """Pins how Envoy 1.40's own signer meets an outage of the credentials endpoint (README: EKS
    Pod Identity): its next refresh fails and it drops the credentials it held, though they are
    still valid for seconds, and sends requests unsigned: AWS (here the emulator) answers 403
    MissingAuthenticationTokenException, where Tollgate's own refresh keeps serving and then
    answers 503. If this test fails after an Envoy upgrade, the README's note is out of date."""
    gw = native_signing_envoy(workdir, tls_dir, rotating, "native-outage")
    headers = {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"}
    try:
        wait_serving(gw)
        newest = control(rotating)["generation"]
        control(rotating, "/down", "POST")
        held_until = next(s["expires_ms"] for s in control(rotating)["issued"] if s["generation"] == newest)
        deadline = time.monotonic() + LIFETIME_MS / 1000 + 3
        while True:
            status, h, _ = gw.request("POST", "/model/claude-fast/converse", converse_body(), headers)
            if status != 200:
                break
            assert time.monotonic() < deadline, "Envoy kept signing through the outage"
            time.sleep(0.2)
        refused_at = time.time() * 1000
        assert (status, h.get("x-amzn-errortype")) == (403, "MissingAuthenticationTokenException")
        # Well before the credentials it dropped expired (the newest set has 6 s or more).
        assert refused_at < held_until - 2_000, (refused_at, held_until)
    finally:
        control(rotating, "/up", "POST")
        gw.stop()


def test_the_readme_per_platform_configs_are_the_tested_ones():
    """README "Credentials on AWS" names, per platform, the shipped Envoy configuration these
    tests load and the Spin variables they set: each exists, and says the credentials type the
    README says."""
    import tomllib

    readme = (harness.ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Credentials on AWS"):readme.index("\n## Routes")]
    rows = re.findall(r"^\| \[([^\]]+)\]\(#[^)]+\) \| `envoy/(envoy-[a-z0-9]+\.yaml)`[^|]*\|[^|]*\| (.+) \|$",
                      section, re.M)
    assert [r[0] for r in rows] == ["EKS with IRSA", "EKS Pod Identity", "ECS", "EC2",
                                    "Static keys or a Bedrock API key"]
    for platform, config, types in rows:
        doc = harness.plugin_document(config)
        assert f'{{"type":"{doc["credentials"]["type"]}"}}' in types, (platform, config)
    variables = tomllib.loads((harness.ROOT / "host-spin/spin.toml").read_text())["variables"]
    for name in set(re.findall(r"SPIN_VARIABLE_([A-Z0-9_]+)", section)) | set(
            re.findall(r"--variable ([a-z0-9_]+)=", section)):
        assert name.lower() in variables, name


@pytest.mark.envoy_only("Envoy fetches through a cluster; Spin through an allowed origin")
def test_a_missing_cluster_is_named_in_the_log(launch, rotating):
    """The document names a cluster Envoy does not have: every fetch fails, the log says which
    cluster to add, requests get the clean 503."""
    cfg = plugin_config(rotating.port, credentials={
        "type": "instance_metadata", "endpoint": rotating.url, "cluster": "no_such_cluster"})
    gw = launch("nocluster", cfg, rotating.port, concurrency=1)
    try:
        key = {"authorization": f"Bearer {KEYS['team-a'][0]}", "content-type": "application/json"}
        status, headers, body = gw.request("POST", "/model/claude-fast/converse", converse_body(), key)
        assert status == 503 and headers["x-amzn-errortype"] == "ServiceUnavailableException", body
        harness.wait_until(lambda: "cluster `no_such_cluster`" in gw.log(), 10, "the log line")
        assert "is the cluster in Envoy's configuration?" in gw.log()
    finally:
        gw.stop()
