"""What the gateway bills from Bedrock's responses, on each host: every model family's invoke
formats, streams cancelled or cut off before their final usage, replies Bedrock never gave,
and image models."""

from __future__ import annotations

import json
import time

import botocore.exceptions
import pytest

import harness
import pricing_oracle
from conftest import redis_for, bedrock_client, plugin_config
from test_bedrock_api import Observed, ledger_usage, record_usage

PICO = 10**12


def chat(text: str) -> list:
    return [{"role": "user", "content": text}]


def native_body(model_id: str, text: str, max_tokens: int) -> dict:
    """An InvokeModel body in the model family's own format."""
    if "nova" in model_id:
        return {"messages": [{"role": "user", "content": [{"text": text}]}],
                "inferenceConfig": {"max_new_tokens": max_tokens}}
    if "titan-text" in model_id:
        return {"inputText": text, "textGenerationConfig": {"maxTokenCount": max_tokens}}
    if ".meta." in model_id or model_id.startswith("meta."):
        return {"prompt": text, "max_gen_len": max_tokens}
    if "mistral-large-2402" in model_id or "deepseek.r1" in model_id:
        return {"prompt": f"<s>[INST] {text} [/INST]", "max_tokens": max_tokens}
    if "cohere" in model_id:
        return {"message": text, "max_tokens": max_tokens}
    if "openai" in model_id:
        return {"messages": chat(text), "max_completion_tokens": max_tokens}
    return {"messages": chat(text), "max_tokens": max_tokens}


# (model ID, how a client reads the text out of one stream chunk), per family.
FAMILIES = [
    ("us.amazon.nova-lite-v1:0", lambda c: c.get("contentBlockDelta", {}).get("delta", {}).get("text", "")),
    ("amazon.titan-text-express-v1", lambda c: c.get("outputText", "")),
    ("meta.llama3-8b-instruct-v1:0", lambda c: c.get("generation", "")),
    ("mistral.mistral-large-2402-v1:0", lambda c: c["outputs"][0]["text"]),
    ("mistral.mistral-large-2407-v1:0", lambda c: c["choices"][0]["message"]["content"]),
    ("cohere.command-r-v1:0", lambda c: c.get("text", "") if c.get("event_type") == "text-generation" else ""),
    ("ai21.jamba-1-5-mini-v1:0", lambda c: c["choices"][0]["delta"].get("content", "") if c["choices"] else ""),
    ("openai.gpt-oss-20b-1:0", lambda c: c["choices"][0]["delta"].get("content", "") if c["choices"] else ""),
    ("us.deepseek.r1-v1:0", lambda c: c["choices"][0]["text"]),
    ("us.writer.palmyra-x5-v1:0", lambda c: c["choices"][0]["delta"].get("content", "") if c["choices"] else ""),
    ("qwen.qwen3-32b-v1:0", lambda c: c["choices"][0]["delta"].get("content", "") if c["choices"] else ""),
]


def priced(model_id: str) -> bool:
    try:
        pricing_oracle.prices(model_id)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize("model_id,text_of", FAMILIES, ids=[m for m, _ in FAMILIES])
def test_invoke_stream_of_every_family_is_reported_exactly(client, gateway, emulator, model_id, text_of):
    seen = Observed(gateway, emulator)
    body = native_body(model_id, "count [[emu:events=5]]", 12)
    resp = client.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in resp["body"] if "chunk" in e]
    assert "".join(text_of(c) for c in chunks) == " ".join(f"w{i}" for i in range(12))
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 12
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert (record["status"], record["usage_source"]) == (200, "reported")
    assert record_usage(record) == ledger_usage(entry)
    if priced(model_id):
        assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(model_id, ledger_usage(entry))


@pytest.mark.parametrize("model_id", [m for m, _ in FAMILIES])
def test_invoke_of_every_family_is_reported_exactly(client, gateway, emulator, model_id):
    seen = Observed(gateway, emulator)
    out = client.invoke_model(modelId=model_id, body=json.dumps(native_body(model_id, "hello", 6)))
    json.loads(out["body"].read())
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert (record["status"], record["usage_source"]) == (200, "reported")
    assert record_usage(record) == ledger_usage(entry)
    assert ledger_usage(entry)["output_tokens"] == 6


@pytest.mark.parametrize("model_id", ["mistral.mistral-large-2402-v1:0", "meta.llama3-8b-instruct-v1:0",
                                      "openai.gpt-oss-20b-1:0"])
def test_a_stream_cancelled_before_its_metrics_is_billed_for_what_it_delivered(
        client_for, gateway, emulator, model_id):
    from conftest import KEYS
    seen = Observed(gateway, emulator)
    c = client_for(KEYS["team-a"][0])
    body = native_body(model_id, "[[emu:events=20]] [[emu:slow=100]]", 40)
    resp = c.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
    texts = 0
    for event in resp["body"]:
        if "chunk" in event:
            texts += 1
            if texts == 4:
                break
    resp["body"].close()  # hang up before the last chunk, which carries the invocation metrics
    [record] = seen.records(1)
    [entry] = seen.ledger(1)
    assert entry["client_disconnected"] is True and entry["stream_completed"] is False
    assert (record["status"], record["usage_source"]) == (200, "estimated")
    # The generated text the gateway relayed is billed, at 4 bytes a token: never input only.
    assert 0 < record["output_tokens"] <= 40
    assert record["input_tokens"] > 0
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(model_id, record_usage(record))


# ---- a gateway with limits ------------------------------------------------------------------

KEYS = {
    "cutoff": "tg-billing-cutoff",
    "estimate": "tg-billing-estimate",
    "images": "tg-billing-images",
}


@pytest.fixture(scope="module")
def billing_gateway(workdir, emulator, tls_dir, host_kind, request):
    keys = [
        # Room for the prompt and roughly 15 output tokens of Mistral Large (2402).
        {"id": "cutoff", "limits": {"budget": {"usd": "0.0003", "period": "total"}, "cut_off_streams": True}},
        {"id": "estimate", "limits": {"budget": {"usd": "10", "period": "total"}}},
        # Room for one Nova Canvas image ($0.06), not two.
        {"id": "images", "limits": {"budget": {"usd": "0.1", "period": "total"}}},
    ]
    cfg = plugin_config(emulator.port, test_hooks=True)
    cfg["api_keys"] = [{**k, "sha256": harness.sha256_hex(KEYS[k["id"]]), "models": ["*"]} for k in keys]
    gw = harness.start_gateway(host_kind, workdir / host_kind / "billing", cfg, emulator.port, tls_dir,
                               name="billing", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


def usage_of(gateway, key: str) -> dict:
    from test_bedrock_api import raw
    status, _, body = raw(gateway, "GET", "/usage", None, {"authorization": f"Bearer {KEYS[key]}"})
    assert status == 200, body
    return json.loads(body)


def test_budget_cut_off_ends_a_non_anthropic_invoke_stream(billing_gateway, tls_dir, emulator):
    model_id = "mistral.mistral-large-2402-v1:0"
    c = bedrock_client(billing_gateway, tls_dir, KEYS["cutoff"])
    seen = Observed(billing_gateway, emulator)
    body = native_body(model_id, "[[emu:events=40]] [[emu:slow=20]]", 200)
    resp = c.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
    chunks = 0
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for event in resp["body"]:
            chunks += "chunk" in event
    assert e.value.response["Error"]["Code"] == "throttlingException"
    assert "budget is exhausted" in e.value.response["Error"]["Message"]
    assert 0 < chunks < 40
    [record] = seen.records(1)
    [entry] = seen.ledger(1)
    assert entry["stream_completed"] is False and entry["content_events_sent"] < 40
    assert (record["status"], record["usage_source"], record["exception"]) == (200, "estimated", "throttlingException")
    assert record["output_tokens"] > 0
    u = usage_of(billing_gateway, "cutoff")
    assert u["budget"]["spent_pico_usd"] == record["cost_pico_usd"]
    # At most one chunk (5 words, ~4 tokens at 4 bytes a token) past the budget.
    assert record["cost_pico_usd"] <= 300_000_000 + 6 * pricing_oracle.prices(model_id)["output"] * PICO


# ---- responses that misreport themselves ---------------------------------------------------

def post(gateway, path: str, body: dict):
    from conftest import KEYS as CONF_KEYS
    from test_bedrock_api import raw
    return raw(gateway, "POST", path, json.dumps(body).encode(),
               {"x-api-key": CONF_KEYS["team-a"][0], "content-type": "application/json"})


@pytest.mark.parametrize("operation,content_type", [
    ("converse", "text/plain"),
    ("converse", "application/vnd.amazon.eventstream"),
    ("converse-stream", "application/json"),
    ("invoke", "image/png"),
])
def test_the_operation_not_the_content_type_decides_how_a_response_is_read(
        gateway, emulator, operation, content_type):
    seen = Observed(gateway, emulator)
    text = f"hi [[emu:content-type={content_type}]] [[emu:output=9]]"
    if operation == "invoke":
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9,
                "messages": [{"role": "user", "content": text}]}
    else:
        body = {"messages": [{"role": "user", "content": [{"text": text}]}]}
    status, headers, _ = post(gateway, f"/model/claude-fast/{operation}", body)
    assert status == 200 and headers["content-type"] == content_type
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert record["usage_source"] == "reported"
    assert record_usage(record) == ledger_usage(entry)


@pytest.mark.parametrize("misreport", ["-1", "none"])
def test_a_stream_whose_final_usage_has_no_valid_output_count_is_billed_for_its_text(
        client, gateway, emulator, misreport):
    seen = Observed(gateway, emulator)
    resp = client.converse_stream(
        modelId="claude-fast",
        messages=[{"role": "user", "content": [{"text": f"[[emu:reported-output={misreport}]] [[emu:output=30]]"}]}],
    )
    for _ in resp["stream"]:
        pass
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["stream_completed"] is True
    assert (record["status"], record["usage_source"]) == (200, "estimated")
    # The input the stream reported, and its text at 4 bytes a token: not zero output.
    assert record["input_tokens"] == ledger_usage(entry)["input_tokens"]
    assert record["output_tokens"] == -(-len(entry["output_text"].encode()) // 4) > 0


# ---- exchanges Bedrock ran but never answered ----------------------------------------------

HAIKU_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"


def estimate_of(record: dict, max_tokens: int) -> dict:
    """The reservation's estimate: the body at 4 bytes a token, and the output limit."""
    return {"input_tokens": -(-record["request_bytes"] // 4), "output_tokens": max_tokens,
            "cache_read_tokens": 0, "cache_write_tokens": 0}


def assert_billed_the_estimate(gateway, record: dict, max_tokens: int, spent_before: int):
    assert record["usage_source"] == "estimated"
    assert record_usage(record) == estimate_of(record, max_tokens)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU_ID, record_usage(record)) > 0
    # The budget holds the same amount: the reservation became the bill.
    u = usage_of(gateway, "estimate")
    assert u["budget"]["spent_pico_usd"] - spent_before == record["cost_pico_usd"]
    assert u.get("concurrent_requests", {"used": 0})["used"] == 0


def test_a_client_that_cancels_a_non_streamed_call_is_billed_its_estimate(billing_gateway, tls_dir, emulator):
    """Bedrock runs a non-streamed call to its end whether or not the client waits for it.
    Differs between hosts: Envoy resets the upstream request when the client goes, so nothing
    reports the usage and the estimate is billed; the Spin component (on the test host) runs the
    exchange to Bedrock's answer and bills what it reports."""
    spent = usage_of(billing_gateway, "estimate")["budget"]["spent_pico_usd"]
    seen = Observed(billing_gateway, emulator)
    c = bedrock_client(billing_gateway, tls_dir, KEYS["estimate"], read_timeout=1)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        c.converse(modelId="claude-fast", messages=[{"role": "user", "content": [{"text": "[[emu:slow=3000]]"}]}],
                   inferenceConfig={"maxTokens": 100})
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["signature_valid"] is True and record["forwarded"] is True
    if billing_gateway.kind == "envoy":
        # The emulator noticed the gateway hang up: no usage ever came back.
        assert (entry["status"], record["status"]) == (499, 0)
        assert_billed_the_estimate(billing_gateway, record, 100, spent)
    else:
        assert (entry["status"], record["status"], record["usage_source"]) == (200, 200, "reported")
        assert record_usage(record) == ledger_usage(entry)
        u = usage_of(billing_gateway, "estimate")
        assert u["budget"]["spent_pico_usd"] - spent == record["cost_pico_usd"]


def test_an_upstream_that_hangs_up_after_the_request_is_billed_its_estimate(billing_gateway, emulator):
    """The request reached Bedrock, which may have run it, but no answer came: the client gets
    503 (Envoy's own; the Spin component's ServiceUnavailableException) and the estimate is
    billed."""
    from test_bedrock_api import raw
    spent = usage_of(billing_gateway, "estimate")["budget"]["spent_pico_usd"]
    seen = Observed(billing_gateway, emulator)
    body = {"messages": [{"role": "user", "content": [{"text": "[[emu:hang-up]]"}]}],
            "inferenceConfig": {"maxTokens": 100}}
    status, _, _ = raw(billing_gateway, "POST", "/model/claude-fast/converse", json.dumps(body).encode(),
                       {"x-api-key": KEYS["estimate"], "content-type": "application/json"})
    assert status == 503
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["signature_valid"] is True and entry["error_type"] == "HangUp"
    assert record["forwarded"] is True and record["status"] == 503
    assert_billed_the_estimate(billing_gateway, record, 100, spent)


def test_a_non_streamed_answer_without_valid_usage_is_billed_its_estimate(billing_gateway, tls_dir, emulator):
    spent = usage_of(billing_gateway, "estimate")["budget"]["spent_pico_usd"]
    seen = Observed(billing_gateway, emulator)
    c = bedrock_client(billing_gateway, tls_dir, KEYS["estimate"])
    out = c.converse(modelId="claude-fast",
                     messages=[{"role": "user", "content": [{"text": "[[emu:reported-output=none]] [[emu:output=7]]"}]}],
                     inferenceConfig={"maxTokens": 50})
    assert out["output"]["message"]["content"][0]["text"] == "w0 w1 w2 w3 w4 w5 w6"
    [record] = seen.records(1)
    assert record["status"] == 200
    # The body's input count stands; its output is unknown, and Bedrock generated all of it
    # before answering: the most the request allowed.
    [entry] = seen.ledger(1)
    assert record["input_tokens"] == ledger_usage(entry)["input_tokens"]
    assert record["output_tokens"] == 50
    assert record["usage_source"] == "estimated"


@pytest.fixture(scope="module")
def timeout_envoy(workdir, emulator, tls_dir, host_kind):
    if host_kind != "envoy":
        pytest.skip("differs between hosts (envoy only): a route timeout is Envoy's; a Spin "
                    "component has none")
    cfg = plugin_config(emulator.port)
    cfg["api_keys"] = [{"id": "estimate", "sha256": harness.sha256_hex(KEYS["estimate"]), "models": ["*"],
                        "limits": {"budget": {"usd": "10", "period": "total"}}}]
    gw = harness.start_gateway("envoy", workdir / "envoy" / "timeout", cfg, emulator.port, tls_dir,
                               name="timeout", route_timeout="1s")
    yield gw
    gw.stop()


@pytest.mark.envoy_only("a route timeout is Envoy's own reply; a Spin component has no route timeout")
def test_envoys_upstream_timeout_after_sending_is_billed_its_estimate(timeout_envoy, emulator):
    from test_bedrock_api import raw
    spent = usage_of(timeout_envoy, "estimate")["budget"]["spent_pico_usd"]
    seen = Observed(timeout_envoy, emulator)
    body = {"messages": [{"role": "user", "content": [{"text": "[[emu:slow=4000]]"}]}],
            "inferenceConfig": {"maxTokens": 100}}
    status, headers, out = raw(timeout_envoy, "POST", "/model/claude-fast/converse", json.dumps(body).encode(),
                               {"x-api-key": KEYS["estimate"], "content-type": "application/json"})
    assert status == 504 and b"upstream request timeout" in out
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["signature_valid"] is True and entry["status"] == 499
    assert record["forwarded"] is True and record["status"] == 504
    assert_billed_the_estimate(timeout_envoy, record, 100, spent)


# ---- image models ---------------------------------------------------------------------------

def image_price_pico(model_id: str) -> int:
    """litellm's per-image price of `model_id`: its own entry or, for per-size/step variants
    (`1024-x-1024/50-steps/<id>`), the highest of them."""
    from decimal import Decimal
    prices = [Decimal(e["output_cost_per_image"]) for k, e in pricing_oracle._SNAPSHOT.items()
              if isinstance(e, dict) and "output_cost_per_image" in e
              and (k == model_id or k.endswith("/" + model_id))]
    assert prices, model_id
    return int(max(prices) * pricing_oracle.PICO)


def image_request(model_id: str, n: int, text: str = "a lighthouse at dusk") -> dict:
    if "stable-diffusion-xl" in model_id:
        return {"text_prompts": [{"text": text}], "samples": n, "steps": 30}
    if model_id.startswith("stability.") or ".stability." in model_id:
        return {"prompt": text, "mode": "text-to-image"}
    return {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": text},
            "imageGenerationConfig": {"numberOfImages": n, "width": 1024, "height": 1024}}


@pytest.mark.parametrize("model_id,asked,made", [
    ("amazon.nova-canvas-v1:0", 2, 2),
    ("us.amazon.nova-canvas-v1:0", 3, 2),  # the answer's count is billed, not the request's
    ("amazon.titan-image-generator-v2:0", 4, 4),
    ("stability.sd3-5-large-v1:0", 1, 1),
    ("stability.stable-image-ultra-v1:1", 1, 1),
    ("stability.stable-diffusion-xl-v1", 1, 1),
])
def test_image_models_are_billed_per_image(client, gateway, emulator, model_id, asked, made):
    seen = Observed(gateway, emulator)
    text = "a lighthouse" + (f" [[emu:images={made}]]" if made != asked else "")
    out = client.invoke_model(modelId=model_id, body=json.dumps(image_request(model_id, asked, text)))
    body = json.loads(out["body"].read())
    assert len(body.get("images") or body.get("artifacts")) == made
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["usage"]["images"] == made
    assert (record["status"], record["usage_source"], record["images"]) == (200, "reported", made)
    assert (record["input_tokens"], record["output_tokens"]) == (0, 0)
    assert record["cost_pico_usd"] == made * image_price_pico(model_id) > 0


def test_an_image_model_the_gateway_cannot_price_is_refused(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    model_id = "stability.unreleased-image-model-v9:0"
    with pytest.raises(client.exceptions.ValidationException) as e:
        client.invoke_model(modelId=model_id, body=json.dumps(image_request(model_id, 1)))
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "per-image price" in e.value.response["Error"]["Message"]
    # Refused at admission, like an unknown model: nothing upstream, nothing billed.
    time.sleep(0.2)
    assert emulator.ledger()[seen.ledger_start:] == []
    assert all(r["cost_pico_usd"] == 0 for r in gateway.usage_records()[seen.records_start:])


def test_the_budget_reserves_the_images_requested(billing_gateway, tls_dir, emulator):
    c = bedrock_client(billing_gateway, tls_dir, KEYS["images"])
    model_id = "amazon.nova-canvas-v1:0"
    seen = Observed(billing_gateway, emulator)
    with pytest.raises(c.exceptions.ServiceQuotaExceededException):
        c.invoke_model(modelId=model_id, body=json.dumps(image_request(model_id, 2)))
    c.invoke_model(modelId=model_id, body=json.dumps(image_request(model_id, 1)))
    [entry] = seen.ledger(1)
    assert entry["usage"]["images"] == 1
    u = usage_of(billing_gateway, "images")
    assert u["budget"]["spent_pico_usd"] == u["cost_pico_usd"] == image_price_pico(model_id)
