"""OpenAI Chat Completions end to end, with the official `openai` SDK: the SDK → Tollgate (Envoy +
filter, or the Spin component) → Converse / ConverseStream on the emulator, whose ledger is the
oracle for usage and cost."""

from __future__ import annotations

import base64
import json
import ssl
import struct
import time
import zlib

import openai
import pytest

import harness
import pricing_oracle
from conftest import HAIKU, KEYS, MAX_BODY, plugin_config, redis_for
from test_bedrock_api import Observed, ledger_usage, raw, record_usage


def sdk(gateway, key: str | None = None, **kw) -> openai.OpenAI:
    # Plain HTTP on Envoy, HTTPS trusting the tests' CA on Spin.
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(gateway.ca))) \
        if gateway.url.startswith("https:") else None
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key or KEYS["team-a"][0], max_retries=0,
                         http_client=http, timeout=30, **kw)


@pytest.fixture(scope="module")
def oai(gateway):
    return sdk(gateway)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def words(n: int, first: int = 0) -> str:
    """The emulator's answer of n output tokens: `w0 w1 …`."""
    return " ".join(f"w{i}" for i in range(first, first + n))


def openai_usage(entry: dict) -> dict:
    """What the client should be told for the ledger's usage: prompt tokens include cached ones."""
    u = ledger_usage(entry)
    prompt = u["input_tokens"] + u["cache_read_tokens"] + u["cache_write_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": u["output_tokens"],
            "total_tokens": prompt + u["output_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["cache_read_tokens"]}}


def assert_billed(record: dict, entry: dict, operation: str, streamed: bool):
    assert record["request_id"] == dict(entry["headers"])["x-request-id"]
    assert (record["key_id"], record["model"], record["model_id"]) == ("team-a", "claude-fast", HAIKU)
    assert (record["dialect"], record["operation"], record["streamed"]) == ("openai", operation, streamed)
    assert (record["status"], record["usage_source"]) == (200, "reported")
    assert record_usage(record) == ledger_usage(entry)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, ledger_usage(entry)) > 0


def tiny_png() -> str:
    """A valid 1×1 PNG, base64."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city", "days"]},
    },
}


# ---- Plain and streamed ---------------------------------------------------------------------

def test_a_chat_completion_is_billed_exactly(oai, gateway, emulator):
    seen = Observed(gateway, emulator)
    before = int(time.time())
    out = oai.chat.completions.create(
        model="claude-fast",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Say hello [[emu:output=6]] [[emu:cache-read=40]]"}],
        max_tokens=50, temperature=0.2, stop=["\n\n"],
    )
    [entry] = seen.ledger(1)
    assert entry["operation"] == "converse" and entry["model_id"] == HAIKU
    assert entry["signature_valid"] is True
    assert out.object == "chat.completion"
    assert out.id == "chatcmpl-" + entry["request_id"]
    assert before <= out.created <= time.time() + 1
    assert out.model == "claude-fast"
    [choice] = out.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == words(6)
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert out.usage.model_dump(exclude_none=True) == openai_usage(entry)
    assert out.usage.prompt_tokens_details.cached_tokens == 40
    [record] = seen.records(1)
    assert_billed(record, entry, "converse", streamed=False)


def test_a_streamed_chat_completion_with_usage(oai, gateway, emulator):
    seen = Observed(gateway, emulator)
    stream = oai.chat.completions.create(
        model="claude-fast", messages=user("Count [[emu:output=9]] [[emu:events=4]]"),
        max_completion_tokens=100, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    [entry] = seen.ledger(1)
    assert entry["operation"] == "converse-stream" and entry["stream_completed"] is True
    assert {c.id for c in chunks} == {"chatcmpl-" + entry["request_id"]}
    assert all(c.object == "chat.completion.chunk" and c.model == "claude-fast" for c in chunks)
    *deltas, last = chunks
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == words(9)
    assert [c.choices[0].finish_reason for c in deltas][-1] == "stop"
    assert all(c.usage is None for c in deltas)
    assert last.choices == []
    assert last.usage.model_dump(exclude_none=True) == openai_usage(entry)
    # One chunk per Bedrock event: the role, four deltas, the finish.
    assert len(deltas) == 6
    [record] = seen.records(1)
    assert_billed(record, entry, "converse-stream", streamed=True)


def test_a_stream_without_usage_and_its_finish_reason(oai, gateway, emulator):
    seen = Observed(gateway, emulator)
    chunks = list(oai.chat.completions.create(
        model="claude-fast", messages=user("[[emu:output=3]] [[emu:stop=max_tokens]]"), stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert_billed(record, entry, "converse-stream", streamed=True)


def test_the_key_travels_as_x_api_key_too(gateway, emulator):
    seen = Observed(gateway, emulator)
    status, headers, body = gateway.request(
        "POST", "/v1/chat/completions",
        json.dumps({"model": "claude-fast", "messages": user("hi [[emu:output=2]]")}).encode(),
        {"x-api-key": KEYS["team-a"][0], "content-type": "application/json"})
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    out = json.loads(body)
    assert out["choices"][0]["message"]["content"] == words(2)
    [entry] = seen.ledger(1)
    assert all(KEYS["team-a"][0] not in v for _, v in entry["headers"])


def test_usage_counts_openai_requests_under_their_dialect(oai, gateway, emulator):
    def counts():
        status, _, body = raw(gateway, "GET", "/usage", headers={"x-api-key": KEYS["team-a"][0]})
        assert status == 200, body
        return {k: v["requests"] for k, v in json.loads(body)["dialects"].items()}

    before = counts()
    seen = Observed(gateway, emulator)
    oai.chat.completions.create(model="claude-fast", messages=user("hi [[emu:output=1]]"))
    list(oai.chat.completions.create(model="claude-fast", messages=user("hi [[emu:output=1]]"), stream=True))
    seen.records(2)
    after = counts()
    assert after.get("openai", 0) == before.get("openai", 0) + 2
    assert {k: v for k, v in after.items() if k != "openai"} == {k: v for k, v in before.items() if k != "openai"}

# ---- Tools and images -----------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_round_trip(oai, gateway, emulator, stream):
    seen = Observed(gateway, emulator)
    messages = [{"role": "user", "content": "Weather in Paris? [[emu:output=4]] [[emu:tool=get_weather]]"}]
    kw = {"model": "claude-fast", "tools": [WEATHER_TOOL], "tool_choice": "auto", "max_tokens": 200}
    if stream:
        text, calls, finish = "", {}, None
        for c in oai.chat.completions.create(messages=messages, stream=True, **kw):
            delta = c.choices[0].delta
            text += delta.content or ""
            for call in delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                slot["id"] = call.id or slot["id"]
                slot["name"] = (call.function.name if call.function else None) or slot["name"]
                slot["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = c.choices[0].finish_reason or finish
        assert list(calls) == [0]
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
        assistant = {"role": "assistant", "content": text,
                     "tool_calls": [{"id": call_id, "type": "function",
                                     "function": {"name": name, "arguments": arguments}}]}
    else:
        out = oai.chat.completions.create(messages=messages, **kw)
        text, finish = out.choices[0].message.content, out.choices[0].finish_reason
        [call] = out.choices[0].message.tool_calls
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        # As applications do: the answer's message goes back into the conversation as it is.
        assistant = out.choices[0].message
    assert (text, finish, name) == (words(4), "tool_calls", "get_weather")
    # The emulator fills the schema's required properties.
    assert json.loads(arguments) == {"city": "emu", "days": 1}
    [first] = seen.ledger(1)
    assert first["tool_call"] == "get_weather"
    assert call_id.startswith("toolu_emu")

    messages += [assistant, {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 °C"}]
    out = oai.chat.completions.create(messages=messages, **kw)
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.tool_calls is None
    _, second = seen.ledger(2)
    # Bedrock got the result as the answer to its call (the emulator checks the pairing).
    assert second["tool_results"] == ["Sunny, 21 °C"]
    assert "tool_call" not in second
    records = seen.records(2)
    for record, entry, op in zip(records, (first, second), ("converse-stream" if stream else "converse", "converse")):
        assert_billed(record, entry, op, streamed=op == "converse-stream")


def test_a_forced_tool_and_a_result_that_answers_nothing(oai, gateway, emulator):
    seen = Observed(gateway, emulator)
    out = oai.chat.completions.create(
        model="claude-fast", messages=user("[[emu:tool=get_weather]]"), tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert out.choices[0].message.tool_calls[0].function.name == "get_weather"
    # Bedrock refuses a tool result that answers no call of the previous turn: the SDK raises
    # BadRequestError with Bedrock's own message.
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model="claude-fast", tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "ok"},
                      {"role": "tool", "tool_call_id": "call_nobody", "content": "42"}])
    assert e.value.body["code"] == "ValidationException"
    assert "call_nobody" in e.value.message
    _, refused = seen.ledger(2)
    assert refused["status"] == 400
    _, record = seen.records(2)
    assert (record["status"], record["usage_source"], record["cost_pico_usd"]) == (400, "none", 0)


def test_an_image_as_a_data_url(oai, gateway, emulator):
    seen = Observed(gateway, emulator)
    out = oai.chat.completions.create(model="claude-fast", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this? [[emu:output=3]]"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + tiny_png(), "detail": "low"}},
    ]}])
    assert out.choices[0].message.content == words(3)
    [entry] = seen.ledger(1)
    assert entry["request_images"] == 1
    [record] = seen.records(1)
    assert_billed(record, entry, "converse", streamed=False)


# ---- Errors ---------------------------------------------------------------------------------

def too_large() -> list[dict]:
    return user("x" * (MAX_BODY + 1))


@pytest.mark.parametrize("case, call, error, status, says", [
    ("unknown key", lambda gw: sdk(gw, "tg-nope").chat.completions.create(model="claude-fast", messages=user("hi")),
     openai.AuthenticationError, 401, "unknown_key"),
    ("model not allowed", lambda gw: sdk(gw, KEYS["team-limited"][0]).chat.completions.create(
        model="nova-lite", messages=user("hi")), openai.PermissionDeniedError, 403, "model_not_allowed"),
    ("unknown model", lambda gw: sdk(gw).chat.completions.create(model="gpt-4o", messages=user("hi")),
     openai.BadRequestError, 400, "unknown_model"),
    ("n > 1", lambda gw: sdk(gw).chat.completions.create(model="claude-fast", messages=user("hi"), n=2),
     openai.BadRequestError, 400, "`n`"),
    ("image by URL", lambda gw: sdk(gw).chat.completions.create(model="claude-fast", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]),
     openai.BadRequestError, 400, "fetches no URLs"),
    ("unknown parameter", lambda gw: sdk(gw).chat.completions.create(
        model="claude-fast", messages=user("hi"), extra_body={"top_k": 3}), openai.BadRequestError, 400, "`top_k`"),
    ("body too large", lambda gw: sdk(gw).chat.completions.create(model="claude-fast", messages=too_large()),
     openai.APIStatusError, 413, "body_too_large"),
    ("no such route", lambda gw: sdk(gw).completions.create(model="claude-fast", prompt="hi"),
     openai.NotFoundError, 404, "not_found"),
])
def test_refusals_are_openai_errors_and_cost_nothing(gateway, emulator, case, call, error, status, says):
    seen = Observed(gateway, emulator)
    with pytest.raises(error) as e:
        call(gateway)
    assert e.value.status_code == status, case
    assert set(e.value.body) == {"message", "type", "param", "code"}, e.value.body
    assert says in e.value.message or says == e.value.body["code"], (case, e.value.body)
    assert e.value.response.headers["content-type"] == "application/json"
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == [], "nothing went upstream"
    for record in gateway.usage_records()[seen.records_start:]:
        assert (record["status"], record["cost_pico_usd"], record["dialect"]) == (status, 0, "openai")


def test_no_key_is_401_in_openais_envelope(gateway, emulator):
    seen = Observed(gateway, emulator)
    status, headers, body = raw(gateway, "POST", "/v1/chat/completions",
                                json.dumps({"model": "claude-fast", "messages": user("hi")}).encode(),
                                {"content-type": "application/json"})
    assert status == 401 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert (error["type"], error["code"], error["param"]) == ("authentication_error", "missing_key", None), error
    assert "key" in error["message"]
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == [], "nothing went upstream"


def test_a_misconfigured_gateway_is_a_500_in_openais_envelope(launch, emulator):
    cfg = plugin_config(emulator.port)
    cfg["api_keys"][1]["sha256"] = "not-a-hash"
    gw = launch("openai-badcfg", cfg, emulator.port)
    try:
        with pytest.raises(openai.InternalServerError) as e:
            sdk(gw).chat.completions.create(model="claude-fast", messages=user("hi"))
        assert e.value.status_code == 500
        assert set(e.value.body) == {"message", "type", "param", "code"}
        # The caller learns nothing about the configuration; the log names the field.
        assert e.value.body["message"] == "the gateway is misconfigured; the reason is in the gateway's log"
        assert "api_keys[1].sha256" in gw.log()
    finally:
        gw.stop()

@pytest.mark.parametrize("directive, error, status, code", [
    ("[[emu:throttle]]", openai.RateLimitError, 429, "ThrottlingException"),
    ("[[emu:error=400:ValidationException]]", openai.BadRequestError, 400, "ValidationException"),
    ("[[emu:error=503:ServiceUnavailableException]]", openai.InternalServerError, 503, "ServiceUnavailableException"),
    ("[[emu:error=500:InternalServerException]]", openai.InternalServerError, 500, "InternalServerException"),
    ("[[emu:error=408:ModelTimeoutException]]", openai.InternalServerError, 504, "ModelTimeoutException"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bedrocks_refusals_reach_the_client_in_its_dialect(oai, gateway, emulator, directive, error, status, code, stream):
    seen = Observed(gateway, emulator)
    with pytest.raises(error) as e:
        oai.chat.completions.create(model="claude-fast", messages=user(directive), stream=stream)
    assert e.value.status_code == status
    assert e.value.body["code"] == code
    assert "Emulated" in e.value.message or "Too many requests" in e.value.message
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert record["status"] == entry["status"]
    assert (record["usage_source"], record["cost_pico_usd"]) == ("none", 0)


def test_a_stream_that_fails_midway_raises_and_bills_what_it_delivered(oai, gateway, emulator):
    seen = Observed(gateway, emulator)
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in oai.chat.completions.create(
                model="claude-fast", messages=user("[[emu:output=20]] [[emu:events=10]] [[emu:fail-after=3]]"),
                stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "interrupted after 3 content events" in e.value.message
    assert e.value.body["code"] == "modelStreamErrorException"
    assert "".join(got) == words(6)
    [record] = seen.records(1)
    assert (record["status"], record["usage_source"]) == (200, "estimated")
    assert record["output_tokens"] > 0 and record["cost_pico_usd"] > 0


# ---- Quotas ---------------------------------------------------------------------------------

QUOTA_KEYS = {"broke": "tg-oai-broke", "rpm": "tg-oai-rpm", "cutoff": "tg-oai-cutoff"}


@pytest.fixture(scope="module")
def quota_gateway(workdir, emulator, tls_dir, host_kind, request):
    keys = [
        # Less than any request's estimate.
        {"id": "broke", "limits": {"budget": {"usd": "0.000001", "period": "daily"}}},
        {"id": "rpm", "limits": {"requests_per_minute": 1}},
        # Room for the prompt and some 50 output tokens of Haiku 4.5.
        {"id": "cutoff", "limits": {"budget": {"usd": "0.0003", "period": "total"}, "cut_off_streams": True}},
    ]
    cfg = plugin_config(emulator.port)
    cfg["api_keys"] = [{**k, "sha256": harness.sha256_hex(QUOTA_KEYS[k["id"]]), "models": ["*"]} for k in keys]
    gw = harness.start_gateway(host_kind, workdir / host_kind / "openai-quotas", cfg, emulator.port, tls_dir,
                               name="openai-quotas", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


def test_quota_refusals_are_rate_limit_errors_with_retry_after(quota_gateway, emulator):
    seen = Observed(quota_gateway, emulator)
    with pytest.raises(openai.RateLimitError) as e:
        sdk(quota_gateway, QUOTA_KEYS["broke"]).chat.completions.create(model="claude-fast", messages=user("hi"))
    assert e.value.body["code"] == "budget_exhausted"
    assert int(e.value.response.headers["retry-after"]) > 0
    rpm = sdk(quota_gateway, QUOTA_KEYS["rpm"])
    rpm.chat.completions.create(model="claude-fast", messages=user("[[emu:output=1]]"))
    with pytest.raises(openai.RateLimitError) as e:
        rpm.chat.completions.create(model="claude-fast", messages=user("[[emu:output=1]]"))
    assert e.value.body["code"] == "request_rate_limited"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    assert len(seen.ledger(1)) == 1, "only the admitted request went upstream"


def test_a_budget_cut_off_ends_the_stream_with_an_error(quota_gateway, emulator):
    seen = Observed(quota_gateway, emulator)
    c = sdk(quota_gateway, QUOTA_KEYS["cutoff"])
    deltas = 0
    with pytest.raises(openai.APIError) as e:
        for chunk in c.chat.completions.create(
                model="claude-fast", messages=user("[[emu:events=40]] [[emu:slow=20]]"), max_tokens=200,
                stream=True):
            deltas += bool(chunk.choices and chunk.choices[0].delta.content)
    assert e.value.body["code"] == "budget_exhausted"
    assert "budget is exhausted" in e.value.message
    assert 0 < deltas < 40
    [record] = seen.records(1)
    [entry] = seen.ledger(1)
    assert entry["stream_completed"] is False
    assert (record["status"], record["usage_source"], record["dialect"]) == (200, "estimated", "openai")
    assert record["exception"] == "throttlingException"
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="claude-fast", messages=user("more"), max_tokens=10)
