"""The Bedrock-native path end to end: boto3 → Tollgate (Envoy + filter, or the Spin component)
→ emulator."""

from __future__ import annotations

import json
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

import harness
import pricing_oracle
from conftest import HAIKU, KEYS, MAX_BODY, SONNET

MESSAGES = [{"role": "user", "content": [{"text": "Say hello."}]}]


def converse_messages(text: str):
    return [{"role": "user", "content": [{"text": text}]}]


def anthropic_body(text: str, max_tokens: int = 16) -> bytes:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        }
    ).encode()


def ledger_usage(entry: dict) -> dict:
    u = entry["usage"]
    return {k: u[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")}


def record_usage(record: dict) -> dict:
    return {k: record[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")}


class Observed:
    """What the emulator served and the gateway recorded since this object was made."""

    def __init__(self, gateway, emulator):
        self.gateway, self.emulator = gateway, emulator
        # Records of earlier requests may still be on their way to the log: let it go quiet.
        self.records_start = gateway.settled_record_count()
        self.ledger_start = len(emulator.ledger())

    def ledger(self, n: int) -> list[dict]:
        return harness.wait_until(
            lambda: (lambda l: l[self.ledger_start:] if len(l) - self.ledger_start >= n else None)(self.emulator.ledger()),
            10, f"{n} ledger entries",
        )

    def records(self, n: int) -> list[dict]:
        # on_log runs just after the response completes: wait for it.
        return harness.wait_until(
            lambda: (lambda r: r[self.records_start:] if len(r) - self.records_start >= n else None)(self.gateway.usage_records()),
            10, f"{n} usage records",
        )


def assert_clean_upstream(entry: dict, model_id: str, operation: str):
    """The emulator verified our SigV4, got the real model ID, and no client credential."""
    assert entry["auth"] == "sigv4"
    assert entry["signature_valid"] is True, entry.get("error")
    assert entry["model_id"] == model_id
    encoded = urllib.parse.quote(model_id, safe="")
    assert entry["raw_path"] == f"/model/{encoded}/{operation}"
    headers = dict(entry["headers"])
    assert headers["x-amz-security-token"] == harness.SESSION_TOKEN
    assert "x-api-key" not in headers
    # Nor the host's own request metadata (Spin's spin-full-url, spin-client-addr, ...).
    assert not [n for n in headers if n.startswith("spin-")], headers
    for secret, _ in KEYS.values():
        assert all(secret not in v for _, v in entry["headers"]), "a client key leaked upstream"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + harness.ACCESS_KEY_ID)


def assert_record(record: dict, entry: dict, key_id: str, model: str, model_id: str):
    # The record and the upstream request are the same exchange.
    assert record["request_id"] == dict(entry["headers"])["x-request-id"]
    assert record["key_id"] == key_id
    assert record["model"] == model
    assert record["model_id"] == model_id
    assert record["status"] == 200
    assert record["usage_source"] == "reported"
    assert record_usage(record) == ledger_usage(entry)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(model_id, ledger_usage(entry))
    assert record["cost_pico_usd"] > 0


def test_converse_with_an_alias(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    out = client.converse(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 12})
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "converse")
    usage = ledger_usage(entry)
    assert usage["output_tokens"] == 12
    assert out["usage"]["inputTokens"] == usage["input_tokens"]
    assert out["usage"]["outputTokens"] == 12
    assert len(out["output"]["message"]["content"][0]["text"].split()) == 12
    [record] = seen.records(1)
    assert_record(record, entry, "team-a", "claude-fast", HAIKU)
    assert record["operation"] == "converse" and record["streamed"] is False


@pytest.mark.parametrize(
    "model_id",
    [SONNET, f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{HAIKU}"],
)
def test_converse_with_a_model_id_or_arn(client, gateway, emulator, model_id):
    seen = Observed(gateway, emulator)
    client.converse(modelId=model_id, messages=MESSAGES, inferenceConfig={"maxTokens": 5})
    # An inference-profile ARN is the profile ID: sent, recorded and priced as that.
    canonical = model_id.rsplit("/", 1)[-1]
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, canonical, "converse")
    [record] = seen.records(1)
    assert record["model_id"] == canonical and record["model"] == canonical
    assert record_usage(record) == ledger_usage(entry)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(canonical, ledger_usage(entry))


def test_converse_stream_arrives_incrementally(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    resp = client.converse_stream(
        modelId="claude-fast",
        messages=converse_messages("stream please [[emu:events=8]] [[emu:slow=150]]"),
        inferenceConfig={"maxTokens": 24},
    )
    first_delta_ms, text, metadata = None, [], None
    for event in resp["stream"]:
        if "contentBlockDelta" in event:
            first_delta_ms = first_delta_ms or time.time() * 1000
            text.append(event["contentBlockDelta"]["delta"]["text"])
        if "metadata" in event:
            metadata = event["metadata"]
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "converse-stream")
    assert entry["stream_completed"] is True
    # The first event reached boto3 long before the emulator sent the last one.
    assert first_delta_ms < entry["last_event_at_ms"] - 500, (first_delta_ms, entry["last_event_at_ms"])
    usage = ledger_usage(entry)
    assert metadata["usage"]["inputTokens"] == usage["input_tokens"]
    assert metadata["usage"]["outputTokens"] == usage["output_tokens"] == 24
    assert len("".join(text).split()) == 24
    [record] = seen.records(1)
    assert_record(record, entry, "team-a", "claude-fast", HAIKU)
    assert record["streamed"] is True


def test_invoke_with_cache_tokens(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    out = client.invoke_model(
        modelId="claude-fast",
        body=anthropic_body("cached [[emu:cache-read=300]] [[emu:cache-write=120]]", max_tokens=9),
        contentType="application/json",
        accept="application/json",
    )
    body = json.loads(out["body"].read())
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "invoke")
    usage = ledger_usage(entry)
    assert (usage["cache_read_tokens"], usage["cache_write_tokens"], usage["output_tokens"]) == (300, 120, 9)
    assert body["usage"]["input_tokens"] == usage["input_tokens"]
    assert body["usage"]["cache_read_input_tokens"] == 300
    [record] = seen.records(1)
    assert_record(record, entry, "team-a", "claude-fast", HAIKU)
    # Cache tokens are priced at their own (lower / higher) rates, not as input.
    p = pricing_oracle.prices(HAIKU)
    assert p["cache_read"] < p["input"] < p["cache_write"]


def test_invoke_with_response_stream(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    resp = client.invoke_model_with_response_stream(
        modelId="claude-fast", body=anthropic_body("stream [[emu:cache-read=40]]", max_tokens=30)
    )
    events = [json.loads(e["chunk"]["bytes"]) for e in resp["body"] if "chunk" in e]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    [entry] = seen.ledger(1)
    assert_clean_upstream(entry, HAIKU, "invoke-with-response-stream")
    assert metrics["outputTokenCount"] == ledger_usage(entry)["output_tokens"] == 30
    [record] = seen.records(1)
    assert_record(record, entry, "team-a", "claude-fast", HAIKU)
    assert record["cache_read_tokens"] == 40


def test_limited_key_uses_its_model(client_for, gateway, emulator):
    seen = Observed(gateway, emulator)
    limited = client_for(KEYS["team-limited"][0])
    limited.converse(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 3})
    # The raw ID behind the allowed alias is the same model: allowed too.
    limited.converse(modelId=HAIKU, messages=MESSAGES, inferenceConfig={"maxTokens": 3})
    records = seen.records(2)
    assert [r["key_id"] for r in records] == ["team-limited", "team-limited"]


def client_error(fn) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn()
    return e.value


def test_errors_use_bedrock_classes_and_reach_nothing_upstream(client, client_for, gateway, emulator):
    seen = Observed(gateway, emulator)
    unknown = client_for("tg-not-a-key")
    e = client_error(lambda: unknown.converse(modelId="claude-fast", messages=MESSAGES))
    assert (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]) == (401, "UnrecognizedClientException")

    limited = client_for(KEYS["team-limited"][0])
    with pytest.raises(limited.exceptions.AccessDeniedException) as denied:
        limited.converse(modelId="claude-smart", messages=MESSAGES)
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "claude-smart" in denied.value.response["Error"]["Message"]

    with pytest.raises(client.exceptions.ValidationException) as invalid:
        client.converse(modelId="claude-nope", messages=MESSAGES)
    assert invalid.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    big = "x" * (MAX_BODY + 1)
    with pytest.raises(client.exceptions.ValidationException) as too_big:
        client.converse(modelId="claude-fast", messages=converse_messages(big))
    assert too_big.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413

    # Only the 413 got past authentication: it is recorded, billed nothing.
    [record] = seen.records(1)
    assert (record["status"], record["cost_pico_usd"], record["usage_source"]) == (413, 0, "none")
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []


def raw(gateway, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request as curl sends it: plain HTTP on Envoy's HTTP listener; HTTPS on Spin, whose
    `spin up` serves one scheme per listener (HTTPS, so that boto3 can send bearer keys)."""
    return gateway.request(method, path, body, headers)


def test_raw_http_clients(gateway, emulator):
    body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 4}}).encode()
    key = KEYS["team-a"][0]
    # No key at all.
    status, headers, out = raw(gateway, "POST", "/model/claude-fast/converse", body)
    assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    assert "missing API key" in json.loads(out)["message"]
    # x-api-key, and the model ID's colon sent raw, as curl users do.
    status, _, out = raw(gateway, "POST", f"/model/{HAIKU}/converse", body, {"x-api-key": key, "content-type": "application/json"})
    assert status == 200 and json.loads(out)["usage"]["outputTokens"] == 4
    # Unknown routes and methods.
    for method, path in [("GET", "/model/claude-fast/converse"), ("POST", "/model/claude-fast/count-tokens"), ("GET", "/")]:
        status, headers, _ = raw(gateway, method, path, None, {"authorization": f"Bearer {key}"})
        assert status == 404 and headers["x-amzn-errortype"] == "UnknownOperationException", (method, path)


def test_upstream_errors_pass_through_unbilled(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse(modelId="claude-fast", messages=converse_messages("[[emu:throttle]]"))
    [record] = seen.records(1)
    assert (record["status"], record["cost_pico_usd"], record["usage_source"]) == (429, 0, "none")


def test_mid_stream_exception_reaches_the_client_and_is_billed(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    resp = client.converse_stream(
        modelId="claude-fast", messages=converse_messages("[[emu:fail-after=3]] [[emu:events=10]]"),
        inferenceConfig={"maxTokens": 40},
    )
    deltas = 0
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for event in resp["stream"]:
            deltas += "contentBlockDelta" in event
    assert deltas == 3
    assert "modelStreamErrorException" in str(e.value)
    [record] = seen.records(1)
    assert record["exception"] == "modelStreamErrorException"
    assert record["usage_source"] == "estimated"
    assert record["input_tokens"] > 0 and record["output_tokens"] > 0 and record["cost_pico_usd"] > 0


def test_unknown_model_is_priced_at_the_top_tier(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    client.converse(modelId="us.example.unreleased-model-v9:0", messages=MESSAGES, inferenceConfig={"maxTokens": 2})
    [record] = seen.records(1)
    assert record["priced_as"] == "unknown_model" and record["cost_pico_usd"] > 0
    assert "no price for model `us.example.unreleased-model-v9:0`" in gateway.log()


def usage_of(gateway, key: str) -> dict:
    status, _, body = raw(gateway, "GET", "/usage", None, {"authorization": f"Bearer {key}"})
    assert status == 200
    return json.loads(body)


def test_concurrent_totals_are_exact(client_for, gateway, emulator):
    """Concurrent requests over both Envoy workers: totals equal the emulator's ledger exactly."""
    key = KEYS["team-limited"][0]
    before = usage_of(gateway, key)
    seen = Observed(gateway, emulator)
    n = 40

    def one(i: int):
        c = client_for(key)
        if i % 2:
            c.converse(modelId="claude-fast", messages=converse_messages(f"req {i} [[emu:cache-read={i}]]"),
                       inferenceConfig={"maxTokens": 1 + i % 7})
        else:
            resp = c.converse_stream(modelId="claude-fast", messages=converse_messages(f"req {i}"),
                                     inferenceConfig={"maxTokens": 1 + i % 5})
            for _ in resp["stream"]:
                pass

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(n)))
    entries = seen.ledger(n)
    records = seen.records(n)
    assert all(e["signature_valid"] for e in entries)
    after = usage_of(gateway, key)
    assert after["key_id"] == "team-limited"
    assert after["requests"] - before["requests"] == n
    for field in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        served = sum(ledger_usage(e)[field] for e in entries)
        assert after[field] - before[field] == served, field
        assert sum(r[field] for r in records) == served, field
    expected_cost = sum(pricing_oracle.cost_pico_usd(HAIKU, ledger_usage(e)) for e in entries)
    assert after["cost_pico_usd"] - before["cost_pico_usd"] == expected_cost
    # Differs between hosts: on Envoy both workers must have served them (else this proves
    # nothing across workers); on Spin every request runs in its own fresh instance anyway.
    if gateway.kind == "envoy":
        assert len({r["_thread"] for r in records}) == 2


def test_usage_endpoint_shows_only_the_callers_key(gateway):
    a = usage_of(gateway, KEYS["team-a"][0])
    assert a["key_id"] == "team-a"
    assert set(a) >= {"requests", "input_tokens", "output_tokens", "cost_pico_usd", "cost_usd"}
    status, _, _ = raw(gateway, "GET", "/usage")
    assert status == 401


def test_client_cancel_mid_stream_is_still_billed(client_for, gateway, emulator):
    seen = Observed(gateway, emulator)
    c = client_for(KEYS["team-a"][0])
    resp = c.converse_stream(
        modelId="claude-fast", messages=converse_messages("[[emu:events=20]] [[emu:slow=100]]"),
        inferenceConfig={"maxTokens": 40},
    )
    deltas = 0
    for event in resp["stream"]:
        deltas += "contentBlockDelta" in event
        if deltas == 3:
            break
    resp["stream"].close()  # hang up, as a client that stops reading does
    [record] = seen.records(1)
    [entry] = seen.ledger(1)
    assert entry["client_disconnected"] is True and entry["stream_completed"] is False
    assert entry["content_events_sent"] < 20
    assert record["request_id"] == dict(entry["headers"])["x-request-id"]
    assert (record["status"], record["usage_source"]) == (200, "estimated")
    assert record["input_tokens"] > 0 and record["output_tokens"] > 0 and record["cost_pico_usd"] > 0


def test_models_endpoint_with_the_openai_sdk(gateway):
    import ssl

    import openai

    def sdk(key: str):
        # Plain HTTP on Envoy, HTTPS trusting the tests' CA on Spin (see `raw`).
        http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(gateway.ca))) \
            if gateway.url.startswith("https:") else None
        return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, http_client=http)

    limited = sdk(KEYS["team-limited"][0])
    models = limited.models.list()
    assert [m.id for m in models.data] == ["claude-fast", HAIKU]
    assert models.data[0].model_extra["bedrock_model_id"] == HAIKU
    # A `*` key sees every alias.
    everyone = sdk(KEYS["team-a"][0])
    assert {m.id for m in everyone.models.list().data} >= {"claude-fast", "claude-smart", "nova-lite"}
    with pytest.raises(openai.AuthenticationError):
        sdk("tg-nope").models.list()
