"""Routing that survives throttling (README "Routing"), on both hosts with boto3: fallback chains
on a 429, a 5xx or a connection reset before the first byte, streamed or not, and none after the
first byte; weighted splits; context-window skips; only the answering attempt billed, the ledger
exact; a key's guardrail on every upstream request, and not removable by the client.

The aliases and the guarded key are in the session's configuration (conftest.ROUTED_ALIASES,
"team-guarded"); faults come from the emulator's `[[emu:fail=KIND@MODEL]]` directives, which
fail every call of the request to that model and answer the others."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

import harness
import pricing_oracle
from conftest import GUARDRAIL, HAIKU, KEYS, LLAMA3_8B, NOVA_LITE, SONNET
from test_bedrock_api import (
    Observed,
    anthropic_body,
    assert_clean_upstream,
    converse_messages,
    ledger_usage,
    record_usage,
)

# How the emulator answers each fault, and what Tollgate records for it.
FAULTS = {
    "throttle": (429, "throttled"),
    "503": (503, "server_error"),
    "reset": (0, "connection"),
}


def entries_of(entries: list[dict], record: dict) -> list[dict]:
    """The ledger entries of one request: every attempt carries its request ID."""
    return [e for e in entries if dict(e["headers"]).get("x-request-id") == record["request_id"]]


def read_converse_stream(resp) -> tuple[str, dict]:
    text, metadata, stop = [], {}, None
    for event in resp["stream"]:
        if "contentBlockDelta" in event:
            text.append(event["contentBlockDelta"]["delta"]["text"])
        if "metadata" in event:
            metadata = event["metadata"]
        if "messageStop" in event:
            stop = event["messageStop"]["stopReason"]
    return "".join(text), {**metadata, "stopReason": stop}


def assert_answered_by(record: dict, entries: list[dict], target: str, failed: list[tuple[str, int, str]]):
    """`record` went to the `failed` attempts (model, status, reason), then `target` answered:
    billed exactly what the emulator served at `target`, nothing for the others."""
    assert [(e["model_id"], e["status"]) for e in entries] == [(m, s) for m, s, _ in failed] + [(target, 200)]
    for e in entries:
        assert e["signature_valid"] is True, e.get("error")
        # Tollgate's retry count is for Envoy's router, not for Bedrock.
        assert not [n for n, _ in e["headers"] if n.startswith("x-envoy-") or n.startswith("x-tollgate")]
    assert record["model_id"] == target
    assert record["status"] == 200
    assert record["attempts"] == [
        {"model_id": m, "status": s, "fallback": r} for m, s, r in failed
    ] + [{"model_id": target, "status": 200}]
    answered = entries[-1]
    assert record["usage_source"] == "reported"
    assert record_usage(record) == ledger_usage(answered)
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(target, ledger_usage(answered)) > 0
    # The failed attempts served nothing Bedrock bills.
    for e in entries[:-1]:
        assert e["status"] != 200 and not e.get("output_text")


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("streamed", [False, True], ids=["converse", "converse-stream"])
def test_a_failing_target_falls_back_to_the_next_before_the_first_byte(client, gateway, emulator, fault, streamed):
    status, reason = FAULTS[fault]
    seen = Observed(gateway, emulator)
    messages = converse_messages(f"fall back [[emu:fail={fault}@{HAIKU}]] [[emu:output=7]]")
    if streamed:
        text, metadata = read_converse_stream(client.converse_stream(modelId="fallback", messages=messages))
        usage = metadata["usage"]
    else:
        out = client.converse(modelId="fallback", messages=messages)
        text, usage = out["output"]["message"]["content"][0]["text"], out["usage"]
    assert len(text.split()) == usage["outputTokens"] == 7
    [record] = seen.records(1)
    entries = entries_of(seen.ledger(2), record)
    assert_answered_by(record, entries, SONNET, [(HAIKU, status, reason)])
    assert_clean_upstream(entries[1], SONNET, "converse-stream" if streamed else "converse")
    assert record["model"] == "fallback" and record["streamed"] is streamed


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "invoke-with-response-stream"])
def test_invoke_falls_back_within_the_body_format(client, gateway, emulator, streamed):
    """Haiku throttles, Sonnet answers; Nova, another provider's model, cannot take an Anthropic
    body: it is left out of an invoke's plan."""
    seen = Observed(gateway, emulator)
    body = anthropic_body(f"[[emu:fail=throttle@{HAIKU}]]", max_tokens=6)
    if streamed:
        resp = client.invoke_model_with_response_stream(modelId="fallback", body=body)
        events = [json.loads(e["chunk"]["bytes"]) for e in resp["body"] if "chunk" in e]
        assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 6
    else:
        out = json.loads(client.invoke_model(modelId="fallback", body=body)["body"].read())
        assert out["usage"]["output_tokens"] == 6
    [record] = seen.records(1)
    entries = entries_of(seen.ledger(2), record)
    assert_answered_by(record, entries, SONNET, [(HAIKU, 429, "throttled")])
    assert record["skipped"] == [{"model_id": NOVA_LITE, "reason": "body_format"}]


def test_two_failures_then_the_third_target(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    client.converse(
        modelId="fallback",
        messages=converse_messages(f"[[emu:fail=503@{HAIKU}]] [[emu:fail=reset@{SONNET}]] [[emu:output=4]]"),
    )
    [record] = seen.records(1)
    entries = entries_of(seen.ledger(3), record)
    assert_answered_by(record, entries, NOVA_LITE, [(HAIKU, 503, "server_error"), (SONNET, 0, "connection")])


def test_a_target_throttling_its_first_calls_is_used_again_once_it_recovers(client, gateway, emulator):
    """The emulator's schedule: Haiku throttles its next two calls, whoever makes them. Two
    requests fall back to Sonnet; the third is Haiku's again — nothing is remembered between
    requests."""
    seen = Observed(gateway, emulator)
    harness.http_json_post(f"{emulator.url}/_emulator/faults", {"model": HAIKU, "fault": "throttle", "times": 2})
    try:
        for i in range(3):
            client.converse(modelId="fallback", messages=converse_messages(f"n{i} [[emu:output=2]]"))
    finally:
        harness.http_json(f"{emulator.url}/_emulator/faults", method="DELETE")
    records = seen.records(3)
    entries = seen.ledger(5)
    served = [[(e["model_id"], e["status"]) for e in entries_of(entries, r)] for r in records]
    assert served == [[(HAIKU, 429), (SONNET, 200)]] * 2 + [[(HAIKU, 200)]]
    assert [r["model_id"] for r in records] == [SONNET, SONNET, HAIKU]


def test_when_every_target_fails_the_last_failure_is_the_answer_and_nothing_is_billed(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    text = " ".join(f"[[emu:fail=throttle@{m}]]" for m in (HAIKU, SONNET, NOVA_LITE))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.converse(modelId="fallback", messages=converse_messages(text))
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    [record] = seen.records(1)
    entries = entries_of(seen.ledger(3), record)
    assert [(x["model_id"], x["status"]) for x in entries] == [(HAIKU, 429), (SONNET, 429), (NOVA_LITE, 429)]
    assert (record["status"], record["cost_pico_usd"], record["usage_source"]) == (429, 0, "none")
    assert [a.get("fallback") for a in record["attempts"]] == ["throttled", "throttled", None]


def test_no_fallback_after_the_first_byte(client, gateway, emulator):
    """A stream whose connection fails after its first events cannot be taken back: the client
    sees the failure, the other targets are never called, and what was delivered is billed."""
    seen = Observed(gateway, emulator)
    resp = client.converse_stream(
        modelId="fallback",
        messages=converse_messages(f"[[emu:fail=reset-after-2@{HAIKU}]] [[emu:output=40]] [[emu:events=10]]"),
    )
    got = []
    with pytest.raises(Exception):  # the connection fails mid-stream (botocore's own error types)
        for event in resp["stream"]:
            if "contentBlockDelta" in event:
                got.append(event["contentBlockDelta"]["delta"]["text"])
    assert got, "events arrived before the failure"
    [record] = seen.records(1)
    seen.ledger(1)
    time.sleep(0.3)  # no other attempt may follow
    entries = entries_of(emulator.ledger()[seen.ledger_start:], record)
    assert [(e["model_id"], e["status"], e["stream_completed"]) for e in entries] == [(HAIKU, 200, False)]
    assert record["model_id"] == HAIKU
    assert record["attempts"] == [{"model_id": HAIKU, "status": 200}]
    assert record["usage_source"] == "estimated"
    # Billed for the text that reached the gateway before the reset (4 bytes a token; at most
    # what the emulator wrote), at the one target that ran.
    written = len(entries[0]["output_text"].encode())
    assert 0 < record["output_tokens"] <= (written + 3) // 4
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, record_usage(record))


def expected_first(request_id: str, weights: list[tuple[str, int]]) -> str:
    """The weighted pick Tollgate makes for a request ID: the first 8 bytes of its SHA-256
    (big-endian) modulo the total weight, against the running sum."""
    point = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") % sum(w for _, w in weights)
    below = 0
    for model, weight in weights:
        below += weight
        if point < below:
            return model
    raise AssertionError("unreachable")


def test_a_weighted_split_sends_each_target_its_share(gateway, emulator):
    seen = Observed(gateway, emulator)
    n = 240
    key = {"authorization": f"Bearer {KEYS['team-a'][0]}", "content-type": "application/json"}
    body = json.dumps({"messages": converse_messages("split [[emu:output=1]]")}).encode()

    def one(_):
        status, _, _ = gateway.request("POST", "/model/split/converse", body, key)
        assert status == 200

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(n)))
    records = seen.records(n)
    entries = seen.ledger(n)
    served = [e["model_id"] for e in entries]
    assert len(served) == n, "one call each: no fallback happened"
    haiku = served.count(HAIKU)
    # 3:1 by weight; 240 draws: 180 expected, sd 6.7; within 5 sd.
    assert 146 <= haiku <= 214 and haiku + served.count(SONNET) == n, (haiku, n)
    # Deterministic by request ID: each went where the rule says.
    weights = [(HAIKU, 3), (SONNET, 1)]
    for r in records:
        assert r["model_id"] == expected_first(r["request_id"], weights), r
        assert r["attempts"] == [{"model_id": r["model_id"], "status": 200}]
        [e] = entries_of(entries, r)
        assert r["cost_pico_usd"] == pricing_oracle.cost_pico_usd(r["model_id"], ledger_usage(e))


def test_a_target_whose_context_window_the_request_does_not_fit_is_not_called(client, gateway, emulator):
    seen = Observed(gateway, emulator)
    # ~10k tokens by size: past Llama 3 8B's 8192-token window, within Haiku's.
    long = converse_messages("x" * 40_000 + " [[emu:output=3]]")
    client.converse(modelId="long-context", messages=long)
    [record] = seen.records(1)
    [entry] = entries_of(seen.ledger(1), record)
    assert entry["model_id"] == HAIKU
    assert record["skipped"] == [{"model_id": LLAMA3_8B, "reason": "context_window"}]
    assert record["attempts"] == [{"model_id": HAIKU, "status": 200}]
    assert record["cost_pico_usd"] == pricing_oracle.cost_pico_usd(HAIKU, ledger_usage(entry))
    # Called anyway, that target refuses it (the emulator checks windows from litellm's data)...
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.converse(modelId=LLAMA3_8B, messages=long)
    assert "too long" in e.value.response["Error"]["Message"]
    # ...and a request that fits goes to it first.
    seen = Observed(gateway, emulator)
    client.converse(modelId="long-context", messages=converse_messages("short [[emu:output=2]]"))
    [record] = seen.records(1)
    assert record["model_id"] == LLAMA3_8B and "skipped" not in record


# ---- guardrails ------------------------------------------------------------------------

def guarded(client_for):
    return client_for(KEYS["team-guarded"][0])


def assert_guardrail_billed(record: dict, entry: dict, model_id: str):
    """The record carries the key's guardrail and the units the emulator billed for it, priced
    on top of the tokens."""
    g = entry["guardrail"]
    assert (g["identifier"], g["version"]) == (GUARDRAIL["identifier"], GUARDRAIL["version"])
    units = g["units"]
    assert units and all(n > 0 for n in units.values())
    assert record["guardrail"]["identifier"] == GUARDRAIL["identifier"]
    assert record["guardrail"]["units"] == units
    units_cost = pricing_oracle.guardrail_cost_pico_usd(units)
    assert record["guardrail"]["cost_pico_usd"] == units_cost > 0
    tokens_cost = pricing_oracle.cost_pico_usd(model_id, ledger_usage(entry))
    assert record["cost_pico_usd"] == tokens_cost + units_cost


def test_a_keys_guardrail_replaces_the_clients_on_converse(client_for, gateway, emulator):
    seen = Observed(gateway, emulator)
    out = guarded(client_for).converse(
        modelId="claude-fast",
        messages=converse_messages("guard me [[emu:output=5]]"),
        # The client's own guardrail, which would be refused as unpriced: replaced, not sent.
        guardrailConfig={"guardrailIdentifier": "clientsown", "guardrailVersion": "1", "trace": "disabled"},
    )
    # The trace Tollgate asked for reaches the client, in Bedrock's shape.
    assert "inputAssessment" in out["trace"]["guardrail"]
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["guardrail"]["trace"] is True
    assert "clientsown" not in json.dumps(entry)
    assert_guardrail_billed(record, entry, HAIKU)
    assert "unpriced_options" not in record


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "invoke-with-response-stream"])
def test_a_keys_guardrail_replaces_the_clients_headers_on_invoke(client_for, gateway, emulator, streamed):
    seen = Observed(gateway, emulator)
    client = guarded(client_for)
    kwargs = dict(modelId="claude-fast", body=anthropic_body("guard [[emu:output=4]]", max_tokens=4),
                  guardrailIdentifier="clientsown", guardrailVersion="2", trace="DISABLED")
    if streamed:
        events = [json.loads(e["chunk"]["bytes"]) for e in client.invoke_model_with_response_stream(**kwargs)["body"]
                  if "chunk" in e]
        last = events[-1]
    else:
        last = json.loads(client.invoke_model(**kwargs)["body"].read())
    assert last["amazon-bedrock-guardrailAction"] == "NONE"
    assert "guardrail" in last["amazon-bedrock-trace"]
    [entry] = seen.ledger(1)
    headers = dict(entry["headers"])
    assert headers["x-amzn-bedrock-guardrailidentifier"] == GUARDRAIL["identifier"]
    assert headers["x-amzn-bedrock-guardrailversion"] == GUARDRAIL["version"]
    assert headers["x-amzn-bedrock-trace"] == "ENABLED"
    assert "clientsown" not in json.dumps(entry)
    [record] = seen.records(1)
    assert_guardrail_billed(record, entry, HAIKU)


def test_a_guardrail_intervention_reaches_the_client_and_its_units_are_billed(client_for, gateway, emulator):
    seen = Observed(gateway, emulator)
    text, metadata = read_converse_stream(guarded(client_for).converse_stream(
        modelId="claude-fast", messages=converse_messages("[[emu:guardrail-intervene]]"),
    ))
    assert metadata["stopReason"] == "guardrail_intervened"
    assert text == "Sorry, the model cannot answer this question."
    assert metadata["trace"]["guardrail"]["inputAssessment"]
    [entry] = seen.ledger(1)
    [record] = seen.records(1)
    assert entry["guardrail"]["intervened"] is True
    assert record["guardrail"]["intervened"] is True
    assert (record["input_tokens"], record["output_tokens"], record["usage_source"]) == (0, 0, "reported")
    assert_guardrail_billed(record, entry, HAIKU)


def test_every_attempt_of_a_fallback_carries_the_keys_guardrail(client_for, gateway, emulator):
    seen = Observed(gateway, emulator)
    guarded(client_for).converse(
        modelId="fallback",
        messages=converse_messages(f"[[emu:fail=throttle@{HAIKU}]] [[emu:output=3]]"),
    )
    [record] = seen.records(1)
    entries = entries_of(seen.ledger(2), record)
    assert [e["model_id"] for e in entries] == [HAIKU, SONNET]
    for e in entries:
        assert (e["guardrail"]["identifier"], e["guardrail"]["version"]) == (GUARDRAIL["identifier"], GUARDRAIL["version"])
    # The throttled attempt assessed nothing billable; the answer's units are billed.
    assert "units" not in entries[0]["guardrail"] or not entries[0]["guardrail"]["units"]
    assert_guardrail_billed(record, entries[1], SONNET)


# ---- metrics (Envoy) -------------------------------------------------------------------

@pytest.mark.envoy_only("metrics are Envoy stats; the Spin component has none")
def test_fallbacks_are_counted_by_reason(client, gateway, emulator):
    from test_metrics import scrape, value

    before, _ = scrape(gateway)
    seen = Observed(gateway, emulator)
    client.converse(modelId="fallback", messages=converse_messages(
        f"[[emu:fail=503@{HAIKU}]] [[emu:fail=throttle@{SONNET}]] [[emu:output=2]]"))
    client.converse(modelId="long-context", messages=converse_messages("y" * 40_000))
    seen.records(2)
    after = harness.wait_until(
        lambda: (lambda s: s if value(s, "tollgate_fallbacks_total", key="team-a", model="long-context",
                                      reason="context_window") > value(before, "tollgate_fallbacks_total",
                                      key="team-a", model="long-context", reason="context_window") else None)(
            scrape(gateway)[0]),
        5, "the fallback counters",
    )
    for model, reason in [("fallback", "server_error"), ("fallback", "throttled"), ("long-context", "context_window")]:
        labels = dict(key="team-a", model=model, reason=reason)
        assert value(after, "tollgate_fallbacks_total", **labels) - value(before, "tollgate_fallbacks_total", **labels) == 1
