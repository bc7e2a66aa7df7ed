"""Metrics on Envoy's /stats/prometheus agree with the usage records, the totals and the ledger."""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter

import botocore.exceptions
import pytest

import harness
import pricing_oracle
from conftest import KEYS, NOVA_LITE
from test_bedrock_api import MESSAGES, Observed, converse_messages, ledger_usage, raw, usage_of

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")
PICO_PER_MICRO = 10**6


def scrape(gateway) -> tuple[dict, str]:
    """{(name, frozenset(labels)): value} of Tollgate's series, and the raw text."""
    with urllib.request.urlopen(f"{gateway.admin}/stats/prometheus", timeout=10) as r:
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if not line.startswith("tollgate_"):
            continue
        m = LINE.match(line)
        assert m, f"unparsable Prometheus line: {line!r}"
        name, labels, value = m.groups()
        series[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return series, text


def value(series: dict, name: str, **labels) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def family(series: dict, name: str) -> dict:
    return {labels: v for (n, labels), v in series.items() if n == name}


def model_label(record: dict) -> str:
    """The model label Tollgate gives a record (no ARNs in this test)."""
    if record["model"] != record["model_id"]:
        return record["model"]
    return record["model_id"] if record["priced_as"] != "unknown_model" else "other"


def deltas(before: dict, after: dict, name: str) -> dict:
    a, b = family(after, name), family(before, name)
    out = {labels: a.get(labels, 0.0) - b.get(labels, 0.0) for labels in set(a) | set(b)}
    return {labels: d for labels, d in out.items() if d}


def test_prometheus_series_match_records_totals_and_ledger(client, client_for, gateway, emulator):
    before, _ = scrape(gateway)
    seen = Observed(gateway, emulator)
    nova_before = usage_of(gateway, KEYS["team-a"][0]).get("models", {}).get("nova-lite", {})

    # Successes on a non-streaming and a streaming route, cache tokens included.
    client.converse(modelId="claude-smart", messages=MESSAGES, inferenceConfig={"maxTokens": 7})
    resp = client.converse_stream(
        modelId="claude-smart",
        messages=converse_messages("metrics [[emu:cache-read=33]] [[emu:cache-write=11]] [[emu:events=3]]"),
        inferenceConfig={"maxTokens": 9},
    )
    for _ in resp["stream"]:
        pass
    # Throttled by Bedrock: a record, status 429, nothing billed.
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse(modelId="claude-smart", messages=converse_messages("[[emu:throttle]]"))
    # Five records worth a fraction of a micro-USD each over one: exact only in aggregate.
    for i in range(5):
        client.converse(modelId="nova-lite", messages=converse_messages(f"n{i}"), inferenceConfig={"maxTokens": 3})
    # A model ID nothing prices: the `other` label, never the client's string.
    client.converse(modelId="us.example.metrics-probe-v1:0", messages=MESSAGES, inferenceConfig={"maxTokens": 2})
    # Refusals by the gateway: no record, a rejection each.
    limited = client_for(KEYS["team-limited"][0])
    with pytest.raises(limited.exceptions.AccessDeniedException):
        limited.converse(modelId="claude-smart", messages=MESSAGES)
    body = json.dumps({"messages": MESSAGES}).encode()
    assert raw(gateway, "POST", "/model/claude-fast/converse", body)[0] == 401
    with pytest.raises(botocore.exceptions.ClientError) as unknown:
        client_for("tg-not-a-key").converse(modelId="claude-fast", messages=MESSAGES)
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401

    records = seen.records(9)
    assert len(records) == 9 and gateway.settled_record_count() - seen.records_start == 9
    assert {r["dialect"] for r in records} == {"bedrock"}
    assert Counter((model_label(r), r["status"]) for r in records) == {
        ("claude-smart", 200): 2, ("claude-smart", 429): 1, ("nova-lite", 200): 5, ("other", 200): 1,
    }
    # Every request that reached upstream got an answer, so each has a latency sample.
    latency_samples = Counter(model_label(r) for r in records if r["status"] != 0)
    # Only this test uses the aliases claude-smart and nova-lite, so their histograms are exact
    # even though `before` may predate the flush of other tests' samples.
    fresh = {m: n for m, n in latency_samples.items() if m in ("claude-smart", "nova-lite")}
    assert fresh == {"claude-smart": 3, "nova-lite": 5}

    # Histograms reach /stats/prometheus at Envoy's stats flush (every 5 s).
    def flushed():
        now, text = scrape(gateway)
        counts = deltas(before, now, "tollgate_upstream_latency_ms_count")
        moved = {m: counts.get(frozenset({("model", m)}), 0) for m in latency_samples}
        done = all(moved[m] == n for m, n in fresh.items()) and moved["other"] >= 1
        return (now, text) if done else None

    after, text = harness.wait_until(flushed, 20, "the latency histogram to be flushed", interval_s=0.5)

    # Labels came out of the stat names: nothing of the encoding is left in a name.
    assert "# TYPE tollgate_requests_total counter" in text
    assert "# TYPE tollgate_upstream_latency_ms histogram" in text
    assert not [l for l in text.splitlines() if l.startswith("tollgate_") and (";" in l.split("{")[0] or "wasmcustom" in l)]

    expected = {name: Counter() for name in ("requests", "tokens", "usage_source")}
    for r in records:
        key, model = r["key_id"], model_label(r)
        expected["requests"][frozenset({("key", key), ("model", model), ("status", str(r["status"])),
                                        ("dialect", r["dialect"])})] += 1
        for kind in TOKEN_KINDS:
            if r[f"{kind}_tokens"]:
                expected["tokens"][frozenset({("key", key), ("model", model), ("kind", kind)})] += r[f"{kind}_tokens"]
        expected["usage_source"][frozenset({("key", key), ("usage_source", r["usage_source"])})] += 1
    assert deltas(before, after, "tollgate_requests_total") == dict(expected["requests"])
    assert deltas(before, after, "tollgate_tokens_total") == dict(expected["tokens"])
    assert deltas(before, after, "tollgate_usage_source_total") == dict(expected["usage_source"])
    assert deltas(before, after, "tollgate_rejections_total") == {
        frozenset({("key", "team-limited"), ("reason", "model_not_allowed")}): 1,
        frozenset({("key", "-"), ("reason", "missing_key")}): 1,
        frozenset({("key", "-"), ("reason", "unknown_key")}): 1,
    }
    # The whole histogram moved, not just its count.
    for model, n in fresh.items():
        inf = value(after, "tollgate_upstream_latency_ms_bucket", model=model, le="+Inf")
        assert inf - value(before, "tollgate_upstream_latency_ms_bucket", model=model, le="+Inf") == n
        assert value(after, "tollgate_upstream_latency_ms_count", model=model) == inf
        assert ("tollgate_upstream_latency_ms_sum", frozenset({("model", model)})) in after

    # Cost: the nova-lite records, priced independently from what the emulator served...
    entries = {dict(e["headers"]).get("x-request-id"): e for e in emulator.ledger()[seen.ledger_start:]}
    nova = [r for r in records if r["model_id"] == NOVA_LITE]
    nova_pico = sum(pricing_oracle.cost_pico_usd(NOVA_LITE, ledger_usage(entries[r["request_id"]])) for r in nova)
    assert nova_pico == sum(r["cost_pico_usd"] for r in nova) > 0
    total_pico = nova_before.get("cost_pico_usd", 0) + nova_pico
    assert value(after, "tollgate_cost_micro_usd_total", key="team-a", model="nova-lite") == total_pico // PICO_PER_MICRO
    # ...and every cost series of the session, however its records were split across requests
    # and workers, is exactly its pico-USD total floored to micro-USD.
    for name, (secret, _) in KEYS.items():
        models = usage_of(gateway, secret).get("models", {})
        for model, counts in models.items():
            micro = counts["cost_pico_usd"] // PICO_PER_MICRO
            assert value(after, "tollgate_cost_micro_usd_total", key=name, model=model) == micro, (name, model)
        for labels in family(after, "tollgate_cost_micro_usd_total"):
            if ("key", name) in labels:
                assert dict(labels)["model"] in models
