"""The Anthropic dialect end to end with the official `anthropic` Python SDK: `/v1/messages`
(Claude on InvokeModel, other models on Converse), streams, tool calls, images, token counts,
every error the SDK maps, usage and cost exact against the emulator's ledger, quotas; on every
host."""

from __future__ import annotations

import base64
import gzip
import json
import ssl

import anthropic
import httpx2 as httpx
import pytest

import harness
import pricing_oracle
from conftest import HAIKU, KEYS, MAX_BODY, NOVA_LITE, plugin_config, redis_for
from test_bedrock_api import Observed, ledger_usage, raw, record_usage

KEY = KEYS["team-a"][0]
LIMITED = KEYS["team-limited"][0]  # may use claude-fast only
# A 1x1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5f2c7a40000000049454e44ae426082"
)).decode()
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client_for(gateway, key: str = KEY, **kw) -> anthropic.Anthropic:
    """The SDK against the gateway: plain HTTP on Envoy, HTTPS (the tests' CA) on Spin."""
    return anthropic.Anthropic(
        base_url=gateway.url, api_key=key, max_retries=0, timeout=30,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(gateway.ca))), **kw,
    )


@pytest.fixture(scope="module")
def claude(gateway):
    return client_for(gateway)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assert_billed(record: dict, entry: dict, model_id: str, model: str):
    assert record["dialect"] == "anthropic"
    assert (record["key_id"], record["model"], record["model_id"]) == ("team-a", model, model_id)
    assert (record["status"], record["usage_source"]) == (200, "reported")
    assert record_usage(record) == ledger_usage(entry)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(model_id, ledger_usage(entry)) > 0


@pytest.mark.parametrize("model,model_id,operation", [
    ("claude-fast", HAIKU, "invoke"), ("nova-lite", NOVA_LITE, "converse")])
def test_a_message(claude, gateway, emulator, model, model_id, operation):
    seen = Observed(gateway, emulator)
    msg = claude.messages.create(model=model, max_tokens=6,
                                 messages=user("Hello [[emu:cache-read=30]] [[emu:cache-write=5]]"))
    assert msg.content[0].text == "w0 w1 w2 w3 w4 w5"
    # Claude's answer is Bedrock's own (its model ID); a translated one names the client's model.
    assert (msg.role, msg.stop_reason) == ("assistant", "end_turn")
    assert msg.model == (model_id if operation == "invoke" else model)
    [entry] = seen.ledger(1)
    assert (entry["operation"], entry["model_id"], entry["status"]) == (operation, model_id, 200)
    u = ledger_usage(entry)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (u["input_tokens"], 6)
    assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (30, 5)
    [record] = seen.records(1)
    assert_billed(record, entry, model_id, model)
    assert record["operation"] == operation and record["streamed"] is False


@pytest.mark.parametrize("model,model_id,operation", [
    ("claude-fast", HAIKU, "invoke-with-response-stream"), ("nova-lite", NOVA_LITE, "converse-stream")])
def test_a_stream(claude, gateway, emulator, model, model_id, operation):
    seen = Observed(gateway, emulator)
    with claude.messages.stream(model=model, max_tokens=40,
                                messages=user("Count [[emu:events=9]] [[emu:cache-read=12]]")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 9 and "".join(pieces) == " ".join(f"w{i}" for i in range(40))
    [entry] = seen.ledger(1)
    assert (entry["operation"], entry["stream_completed"]) == (operation, True)
    u = ledger_usage(entry)
    assert (final.usage.output_tokens, final.usage.cache_read_input_tokens) == (40, 12)
    assert final.usage.input_tokens == u["input_tokens"]
    assert final.stop_reason == "end_turn"
    [record] = seen.records(1)
    assert_billed(record, entry, model_id, model)
    assert record["streamed"] is True


@pytest.mark.parametrize("model,stream", [("claude-fast", False), ("claude-fast", True),
                                          ("nova-lite", False), ("nova-lite", True)])
def test_a_tool_call_round_trip(claude, gateway, emulator, model, stream):
    seen = Observed(gateway, emulator)
    messages = user("What is the weather in Paris? [[emu:tool=get_weather]]")
    args = dict(model=model, max_tokens=8, tools=[WEATHER], messages=messages)
    if stream:
        with claude.messages.stream(**args) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**args)
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("get_weather", {"city": "emu"})
    messages = messages + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21°C"}]},
    ]
    second = claude.messages.create(model=model, max_tokens=3, tools=[WEATHER], messages=messages)
    assert (second.stop_reason, second.content[0].text) == ("end_turn", "w0 w1 w2")
    first_entry, second_entry = seen.ledger(2)
    assert first_entry["tool_call"] == "get_weather"
    # The tool result reached the model, attached to its call.
    assert second_entry["tool_results"] == ["sunny, 21°C"]
    records = seen.records(2)
    assert [r["usage_source"] for r in records] == ["reported"] * 2
    assert [record_usage(r) for r in records] == [ledger_usage(first_entry), ledger_usage(second_entry)]


@pytest.mark.parametrize("model", ["claude-fast", "nova-lite"])
def test_an_image(claude, gateway, emulator, model):
    seen = Observed(gateway, emulator)
    msg = claude.messages.create(model=model, max_tokens=2, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"}]}])
    assert msg.content[0].text == "w0 w1"
    [entry] = seen.ledger(1)
    assert (entry["status"], entry["request_images"]) == (200, 1)


def test_usage_counts_requests_by_dialect(claude, gateway, emulator):
    def anthropic_requests():
        status, _, body = raw(gateway, "GET", "/usage", headers={"x-api-key": KEY})
        assert status == 200, body
        return json.loads(body)["dialects"].get("anthropic", {}).get("requests", 0)

    before = anthropic_requests()
    seen = Observed(gateway, emulator)
    claude.messages.create(model="nova-lite", max_tokens=1, messages=user("hi"))
    seen.records(1)
    assert anthropic_requests() == before + 1


def test_betas_bedrock_lacks_are_dropped_and_recorded(claude, gateway, emulator):
    seen = Observed(gateway, emulator)
    # What Claude Code sends: Bedrock would refuse the unknown flags ("invalid beta flag") and
    # context_management without its flag.
    msg = claude.messages.create(
        model="claude-fast", max_tokens=2, messages=user("hi"),
        extra_headers={"anthropic-beta": "claude-code-20250219,context-management-2025-06-27,"
                                         "mid-conversation-tool-changes-2026-07-01"},
        extra_body={"context_management": {"edits": []}, "service_tier": "auto"},
    )
    assert msg.content[0].text == "w0 w1"
    [entry] = seen.ledger(1)
    assert entry["status"] == 200, entry.get("error")
    [record] = seen.records(1)
    assert record["dropped"] == ["beta:claude-code-20250219", "beta:mid-conversation-tool-changes-2026-07-01",
                                 "field:service_tier"]


def test_token_counts(claude, gateway, emulator):
    seen = Observed(gateway, emulator)
    counted = claude.messages.count_tokens(model="claude-fast", messages=user("count me [[emu:input=77]]"))
    assert counted.input_tokens == 77
    [entry] = seen.ledger(1)
    assert (entry["operation"], entry["status"]) == ("count-tokens", 200)
    estimated = claude.messages.with_raw_response.count_tokens(model="nova-lite", messages=user("count me"))
    assert estimated.headers["x-tollgate-token-count"] == "estimated"
    assert estimated.parse().input_tokens > 0
    assert json.loads(estimated.http_response.content)["estimated"] is True
    records = seen.records(2)
    assert [(r["operation"], r["cost_pico_usd"], r["forwarded"]) for r in records] == [
        ("count-tokens", 0, True), ("count-tokens", 0, False)]
    assert len(seen.emulator.ledger()) - seen.ledger_start == 1, "an estimate never goes upstream"


def test_errors_are_the_sdks_exceptions(claude, gateway, emulator):
    with pytest.raises(anthropic.AuthenticationError) as e:
        client_for(gateway, "tg-not-a-key").messages.create(model="claude-fast", max_tokens=1, messages=user("x"))
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        client_for(gateway, LIMITED).messages.create(model="nova-lite", max_tokens=1, messages=user("x"))
    assert "nova-lite" in e.value.message
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="claude-sonnet-9", max_tokens=1, messages=user("x"))
    assert e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.beta.messages.batches.list()
    with pytest.raises(anthropic.RequestTooLargeError) as e:
        claude.messages.create(model="claude-fast", max_tokens=1, messages=user("x" * MAX_BODY))
    assert e.value.body["error"]["type"] == "request_too_large"
    # Bedrock's refusals, in Anthropic's words.
    for directive, cls, status, kind in [
        ("[[emu:throttle]]", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("[[emu:error=503:ServiceUnavailableException]]", anthropic.OverloadedError, 529, "overloaded_error"),
        ("[[emu:error=500:InternalServerException]]", anthropic.InternalServerError, 500, "api_error"),
        ("[[emu:error=400:ValidationException]]", anthropic.BadRequestError, 400, "invalid_request_error"),
    ]:
        for model in ("claude-fast", "nova-lite"):
            with pytest.raises(cls) as e:
                claude.messages.create(model=model, max_tokens=1, messages=user(directive))
            assert (e.value.status_code, e.value.body["error"]["type"]) == (status, kind), (directive, model)


@pytest.mark.parametrize("model", ["claude-fast", "nova-lite"])
def test_a_stream_that_fails_midway_raises_and_bills_what_it_delivered(claude, gateway, emulator, model):
    seen = Observed(gateway, emulator)
    got = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with claude.messages.stream(model=model, max_tokens=10,
                                    messages=user("[[emu:events=5]] [[emu:fail-after=2]]")) as s:
            for text in s.text_stream:
                got.append(text)
    assert e.value.body["error"]["type"] == "api_error"
    assert "".join(got) == "w0 w1 w2 w3"
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert record["usage_source"] == "estimated" and record["output_tokens"] >= 1
    assert record["exception"] == "modelStreamErrorException"


def test_gzip_bodies_and_bombs(gateway, emulator):
    body = json.dumps({"model": "claude-fast", "max_tokens": 3, "messages": user("zipped")}).encode()
    headers = {"x-api-key": KEY, "content-type": "application/json", "content-encoding": "gzip",
               "anthropic-version": "2023-06-01"}
    status, _, out = raw(gateway, "POST", "/v1/messages", gzip.compress(body), headers)
    assert status == 200, out
    assert json.loads(out)["content"][0]["text"] == "w0 w1 w2"
    bomb = gzip.compress(json.dumps({"model": "claude-fast", "max_tokens": 3,
                                     "messages": user("0" * (MAX_BODY * 64))}).encode())
    assert len(bomb) < MAX_BODY
    status, _, out = raw(gateway, "POST", "/v1/messages", bomb, headers)
    assert status == 413
    assert json.loads(out)["error"]["type"] == "request_too_large"


def test_claude_codes_discovery_endpoints(claude, gateway):
    status, _, body = raw(gateway, "HEAD", "/")
    assert (status, body) == (200, b"")
    ids = [m.id for m in claude.models.list(limit=1000)]
    assert "claude-fast" in ids and "nova-lite" in ids
    status, _, body = raw(gateway, "GET", "/inference-profiles?type=SYSTEM_DEFINED",
                          headers={"authorization": f"Bearer {LIMITED}"})
    assert status == 200
    profiles = json.loads(body)["inferenceProfileSummaries"]
    assert [p["inferenceProfileId"] for p in profiles] == [HAIKU]
    # A probe of a model the key may not use is a clean 403 in Bedrock's shape.
    status, headers, body = raw(gateway, "POST", f"/model/{NOVA_LITE}/invoke",
                                json.dumps({"max_tokens": 1}).encode(),
                                {"authorization": f"Bearer {LIMITED}", "content-type": "application/json"})
    assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"


# ------------------------------------------------------------------------------------ quotas

QUOTA_KEY = "tg-anthropic-quota"
# 2026-11-22T12:00:00Z: one quota minute for the whole test (x-tollgate-test-now-ms).
NOON_MS = 1_795_348_800_000


@pytest.fixture(scope="module")
def quota_gateway(workdir, emulator, tls_dir, host_kind, request):
    cfg = plugin_config(emulator.port, test_hooks=True)
    cfg["api_keys"] = [{"id": "tight", "sha256": harness.sha256_hex(QUOTA_KEY), "models": ["*"],
                        "limits": {"requests_per_minute": 2, "max_output_tokens": 4}}]
    gw = harness.start_gateway(host_kind, workdir / host_kind / "anthropic-quota", cfg, emulator.port, tls_dir,
                               name="anthropic-quota", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


def test_quotas_in_anthropics_words(quota_gateway, emulator):
    c = client_for(quota_gateway, QUOTA_KEY, default_headers={"x-tollgate-test-now-ms": str(NOON_MS)})
    seen = Observed(quota_gateway, emulator)
    # Claude Code asks for large outputs: clamped to the key's cap, not refused.
    msg = c.messages.create(model="claude-fast", max_tokens=32000, messages=user("hi"))
    assert msg.usage.output_tokens == 4
    [entry] = seen.ledger(1)
    assert entry["usage"]["output_tokens"] == 4
    c.messages.create(model="nova-lite", max_tokens=1, messages=user("hi"))
    with pytest.raises(anthropic.RateLimitError) as e:
        c.messages.create(model="claude-fast", max_tokens=1, messages=user("hi"))
    assert e.value.response.headers["retry-after"] == "60"
    assert e.value.body["error"]["type"] == "rate_limit_error"
