"""Quotas with boto3 against each host: Envoy (2 workers, shared data) and the Spin component under
`spin up` (its key-value store on SQLite, and on Redis): budgets, rates, concurrency, exact
billing; and two `spin up` processes sharing one Redis enforcing one budget."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

import harness
import pricing_oracle
from conftest import HAIKU, bedrock_client, plugin_config, redis_for
from test_bedrock_api import Observed, converse_messages, ledger_usage, raw

# 2026-11-22T12:00:00Z: the quota clock tests drive with x-tollgate-test-now-ms.
DAY1_NOON_MS = 1_795_348_800_000
DAY_MS = 86_400_000
PICO = 10**12

# One prompt for every budget request, so every request has the same input size.
BUDGET_PROMPT = "budget please [[emu:output=10]]"
BUDGET_MAX_TOKENS = 100  # reserved per request; the emulator then generates only 10

KEYS = {
    "budget": "tg-quota-budget",
    "rpm": "tg-quota-rpm",
    "tpm": "tg-quota-tpm",
    "conc": "tg-quota-conc",
    "bulk": "tg-quota-bulk",
    "capped": "tg-quota-capped",
    "cutoff": "tg-quota-cutoff",
    "leaks": "tg-quota-leaks",
}


def measure_costs(client, emulator, prompt: str) -> tuple[int, int]:
    """(estimate, actual) pico-USD of one request with `prompt`, measured on an unlimited gateway."""
    start = len(emulator.ledger())
    client.converse(modelId="claude-fast", messages=converse_messages(prompt),
                    inferenceConfig={"maxTokens": BUDGET_MAX_TOKENS})
    entry = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the probe's ledger entry")[0]
    usage = ledger_usage(entry)
    assert usage["output_tokens"] == 10
    # The gateway estimates input as ceil(body bytes / 4): the emulator counts input the same way.
    estimate = pricing_oracle.cost_pico_usd(HAIKU, {**usage, "output_tokens": BUDGET_MAX_TOKENS})
    actual = pricing_oracle.cost_pico_usd(HAIKU, usage)
    return estimate, actual


@pytest.fixture(scope="module")
def budget_costs(client, emulator):
    """(estimate, actual) pico-USD of one budget request."""
    return measure_costs(client, emulator, BUDGET_PROMPT)


def usd(pico: int) -> str:
    return f"{pico // PICO}.{pico % PICO:012d}"


@pytest.fixture(scope="module")
def quota_gateway(workdir, emulator, tls_dir, budget_costs, host_kind, request):
    estimate, actual = budget_costs
    # Room for exactly 5 requests: after 4 settled ones, the 5th's reservation fits exactly;
    # after 5, the 6th's does not.
    budget = 4 * actual + estimate
    keys = [
        {"id": "budget", "limits": {"budget": {"usd": usd(budget), "period": "daily"}}},
        {"id": "rpm", "limits": {"requests_per_minute": 2}},
        {"id": "tpm", "limits": {"tokens_per_minute": 1000}},
        {"id": "conc", "limits": {"max_concurrent_requests": 2}},
        {"id": "bulk", "limits": {"budget": {"usd": "1000", "period": "monthly"}, "max_concurrent_requests": 500}},
        {"id": "capped", "limits": {"max_output_tokens": 50}},
        # Room for the prompt and roughly 50 output tokens of Haiku 4.5.
        {"id": "cutoff", "limits": {"budget": {"usd": "0.0003", "period": "total"}, "cut_off_streams": True}},
        {"id": "leaks", "limits": {"budget": {"usd": "1", "period": "monthly"}, "max_concurrent_requests": 1,
                                   "tokens_per_minute": 100000}},
    ]
    cfg = plugin_config(emulator.port, test_hooks=True)
    cfg["api_keys"] = [
        {**k, "sha256": harness.sha256_hex(KEYS[k["id"]]), "models": ["*"]} for k in keys
    ]
    gw = harness.start_gateway(host_kind, workdir / host_kind / "quotas", cfg, emulator.port, tls_dir,
                               concurrency=2, name="quotas", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


def quota_client(gateway, tls_dir, key: str, now_ms: list[int] | None = None, **kw):
    """A boto3 client; with `now_ms`, each request carries the quota test clock's current value."""
    c = bedrock_client(gateway, tls_dir, KEYS[key], **kw)
    if now_ms is not None:
        def set_clock(request, **_):
            request.headers["x-tollgate-test-now-ms"] = str(now_ms[0])
        c.meta.events.register("before-sign.bedrock-runtime.*", set_clock)
    return c


def usage_at(gateway, key: str, now_ms: int | None = None) -> dict:
    headers = {"authorization": f"Bearer {KEYS[key]}"}
    if now_ms is not None:
        headers["x-tollgate-test-now-ms"] = str(now_ms)
    status, _, body = raw(gateway, "GET", "/usage", None, headers)
    assert status == 200, body
    return json.loads(body)


def retry_after(e: botocore.exceptions.ClientError) -> int:
    return int(e.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"])


def test_budget_rejects_at_exactly_the_right_request_and_renews_daily(quota_gateway, tls_dir, budget_costs):
    estimate, actual = budget_costs
    clock = [DAY1_NOON_MS]
    c = quota_client(quota_gateway, tls_dir, "budget", clock)

    def one():
        return c.converse(modelId="claude-fast", messages=converse_messages(BUDGET_PROMPT),
                          inferenceConfig={"maxTokens": BUDGET_MAX_TOKENS})

    for _ in range(5):
        one()
    with pytest.raises(c.exceptions.ServiceQuotaExceededException) as e:
        one()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert retry_after(e.value) == 12 * 3600  # until UTC midnight
    u = usage_at(quota_gateway, "budget", clock[0])
    assert u["budget"]["current"] == "2026-11-22"
    assert u["budget"]["spent_pico_usd"] == 5 * actual
    assert u["budget"]["remaining_pico_usd"] == estimate - actual

    # The next UTC day starts afresh; the previous day's spend is gone from the counter.
    clock[0] += DAY_MS
    one()
    u = usage_at(quota_gateway, "budget", clock[0])
    assert (u["budget"]["current"], u["budget"]["spent_pico_usd"]) == ("2026-11-23", actual)
    assert u["requests"] == 6 and u["cost_pico_usd"] == 6 * actual


def test_requests_per_minute(quota_gateway, tls_dir):
    clock = [DAY1_NOON_MS + 30_000]
    c = quota_client(quota_gateway, tls_dir, "rpm", clock)
    call = lambda: c.converse(modelId="claude-fast", messages=converse_messages("hi"), inferenceConfig={"maxTokens": 1})
    call()
    call()
    with pytest.raises(c.exceptions.ThrottlingException) as e:
        call()
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert retry_after(e.value) == 30
    assert "2 requests per minute" in e.value.response["Error"]["Message"]
    clock[0] += 30_000
    call()


def test_tokens_per_minute(quota_gateway, tls_dir):
    clock = [DAY1_NOON_MS]
    c = quota_client(quota_gateway, tls_dir, "tpm", clock)
    # Reserves ~600 + input; uses ~400 + input.
    c.converse(modelId="claude-fast", messages=converse_messages("a [[emu:output=400]]"), inferenceConfig={"maxTokens": 600})
    # ~400 used: 500 more fits, 700 more does not.
    with pytest.raises(c.exceptions.ThrottlingException) as e:
        c.converse(modelId="claude-fast", messages=converse_messages("b"), inferenceConfig={"maxTokens": 700})
    assert "1000 tokens per minute" in e.value.response["Error"]["Message"]
    assert retry_after(e.value) == 60
    c.converse(modelId="claude-fast", messages=converse_messages("c [[emu:output=5]]"), inferenceConfig={"maxTokens": 500})


def test_concurrency_limit_and_release_on_every_path(quota_gateway, tls_dir, emulator):
    c = quota_client(quota_gateway, tls_dir, "conc")
    slow = converse_messages("[[emu:events=6]] [[emu:slow=150]]")
    started = threading.Barrier(3, timeout=10)
    done = []

    def stream():
        resp = c.converse_stream(modelId="claude-fast", messages=slow, inferenceConfig={"maxTokens": 6})
        started.wait()
        done.append(sum(1 for _ in resp["stream"]))

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()  # both streams are admitted and in flight
    with pytest.raises(c.exceptions.ThrottlingException) as e:
        c.converse(modelId="claude-fast", messages=converse_messages("third"))
    assert retry_after(e.value) == 1
    assert "2 requests in flight" in e.value.response["Error"]["Message"]
    for t in threads:
        t.join(timeout=20)
    assert len(done) == 2

    # Slots come back after success, a mid-stream exception, and a client cancel.
    resp = c.converse_stream(modelId="claude-fast", messages=converse_messages("[[emu:fail-after=2]]"))
    with pytest.raises(botocore.exceptions.EventStreamError):
        for _ in resp["stream"]:
            pass
    resp = c.converse_stream(modelId="claude-fast", messages=slow, inferenceConfig={"maxTokens": 6})
    next(iter(resp["stream"]))
    resp["stream"].close()
    harness.wait_until(
        lambda: usage_at(quota_gateway, "conc")["concurrent_requests"]["used"] == 0, 10, "slots to be released"
    )
    # Two at once are admitted again.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: c.converse(modelId="claude-fast", messages=converse_messages("x")), range(2)))


def test_output_cap_clamps_the_request(quota_gateway, tls_dir, emulator):
    c = quota_client(quota_gateway, tls_dir, "capped")
    start = len(emulator.ledger())
    out = c.converse(modelId="claude-fast", messages=converse_messages("long"), inferenceConfig={"maxTokens": 4000})
    # The emulator generates maxTokens by default: it saw the clamped value.
    assert out["usage"]["outputTokens"] == 50
    entry = emulator.ledger()[start]
    assert entry["signature_valid"] is True  # the rewritten body was what got signed


def test_300_concurrent_requests_half_streams_are_billed_exactly(quota_gateway, tls_dir, emulator):
    before = usage_at(quota_gateway, "bulk")
    start = len(emulator.ledger())
    c = quota_client(quota_gateway, tls_dir, "bulk", max_pool_connections=64)
    n = 300

    def one(i: int):
        text = f"bulk {i} [[emu:cache-read={i % 11}]] [[emu:output={1 + i % 17}]]"
        if i % 2:
            c.converse(modelId="claude-fast", messages=converse_messages(text), inferenceConfig={"maxTokens": 64})
        else:
            resp = c.converse_stream(modelId="claude-fast", messages=converse_messages(text),
                                     inferenceConfig={"maxTokens": 64})
            for _ in resp["stream"]:
                pass

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=48) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.monotonic() - t0
    entries = harness.wait_until(
        lambda: (lambda l: l[start:] if len(l) - start >= n else None)(emulator.ledger()), 30, "the ledger"
    )
    assert len(entries) == n and all(e["signature_valid"] for e in entries)
    expected_cost = sum(pricing_oracle.cost_pico_usd(HAIKU, ledger_usage(e)) for e in entries)

    def settled():
        u = usage_at(quota_gateway, "bulk")
        return u if u["requests"] - before["requests"] == n and u["concurrent_requests"]["used"] == 0 else None

    after = harness.wait_until(settled, 30, "all records to settle")
    for field in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert after[field] - before[field] == sum(ledger_usage(e)[field] for e in entries), field
    assert after["cost_pico_usd"] - before["cost_pico_usd"] == expected_cost
    # Every reservation was replaced by the actual cost: the budget counter is exact too.
    assert after["budget"]["spent_pico_usd"] - before["budget"]["spent_pico_usd"] == expected_cost
    print(f"300 requests through {quota_gateway.kind} in {elapsed:.2f}s")


def test_budget_cut_off_ends_the_stream_with_an_exception_frame(quota_gateway, tls_dir, emulator):
    c = quota_client(quota_gateway, tls_dir, "cutoff")
    seen = Observed(quota_gateway, emulator)
    resp = c.converse_stream(
        modelId="claude-fast", messages=converse_messages("[[emu:events=40]] [[emu:slow=20]]"),
        inferenceConfig={"maxTokens": 200},
    )
    deltas = 0
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for event in resp["stream"]:
            deltas += "contentBlockDelta" in event
    assert e.value.response["Error"]["Code"] == "throttlingException"
    assert "budget is exhausted" in e.value.response["Error"]["Message"]
    assert 0 < deltas < 40
    [record] = seen.records(1)
    [entry] = seen.ledger(1)
    # The gateway stopped the upstream too: Bedrock did not generate the rest.
    assert entry["stream_completed"] is False
    assert entry["content_events_sent"] < 40
    assert (record["status"], record["usage_source"]) == (200, "estimated")
    assert record["exception"] == "throttlingException"
    # Billed what was delivered: the generated words the client saw, at 4 bytes a token.
    assert record["output_tokens"] > 0
    u = usage_at(quota_gateway, "cutoff")
    assert u["budget"]["spent_pico_usd"] == record["cost_pico_usd"]
    # At most one event (5 tokens here) past the budget.
    assert record["cost_pico_usd"] <= 300_000_000 + 5 * pricing_oracle.prices(HAIKU)["output"] * PICO
    # Nothing left for another prompt.
    with pytest.raises(c.exceptions.ServiceQuotaExceededException):
        c.converse_stream(modelId="claude-fast", messages=converse_messages("more"), inferenceConfig={"maxTokens": 10})


def test_cancelled_and_failed_streams_leave_no_reservation_behind(quota_gateway, tls_dir, emulator):
    clock = [DAY1_NOON_MS]  # one minute window for the whole test
    c = quota_client(quota_gateway, tls_dir, "leaks", clock)
    seen = Observed(quota_gateway, emulator)
    # A mid-stream exception from Bedrock.
    resp = c.converse_stream(modelId="claude-fast", messages=converse_messages("[[emu:fail-after=2]]"),
                             inferenceConfig={"maxTokens": 500})
    with pytest.raises(botocore.exceptions.EventStreamError):
        for _ in resp["stream"]:
            pass
    seen.records(1)
    # A client that hangs up after the first event.
    resp = c.converse_stream(modelId="claude-fast", messages=converse_messages("[[emu:events=30]] [[emu:slow=50]]"),
                             inferenceConfig={"maxTokens": 500})
    next(iter(resp["stream"]))
    resp["stream"].close()
    records = seen.records(2)
    assert [r["usage_source"] for r in records] == ["estimated", "estimated"]
    assert all(r["cost_pico_usd"] > 0 for r in records)
    u = usage_at(quota_gateway, "leaks", clock[0])
    # Each reservation (for 500 output tokens) was replaced by what was billed: nothing leaked.
    assert u["budget"]["spent_pico_usd"] == sum(r["cost_pico_usd"] for r in records)
    assert u["tokens_per_minute"]["used"] == sum(
        r["input_tokens"] + r["output_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"] for r in records
    )
    assert u["concurrent_requests"]["used"] == 0


@pytest.mark.spin_redis_only("several Spin instances share one Redis; Envoy's shared data is per process")
def test_two_spin_instances_sharing_redis_enforce_one_budget_exactly(
        workdir, emulator, tls_dir, client, redis_server, host_kind):
    """Two `spin up` processes (the shipped manifest) on one Redis database: 3n concurrent requests spread over both,
    on a key whose total budget has room for exactly n. Reservations are estimates, so how many
    the burst admits depends on timing; but the budget is one, so no interleaving admits more
    than n, and requests sent one at a time afterwards fill it to exactly n. Spend and totals on
    both instances then equal the emulator's ledger exactly. Two separate stores would admit 2n."""
    # Each answer takes 300 ms, so the burst's requests are in flight together: their reservations
    # (estimates) compete for the budget across both instances.
    prompt = "budget please [[emu:output=10]] [[emu:slow=300]]"
    estimate, actual = measure_costs(client, emulator, prompt)
    n = 12
    budget = (n - 1) * actual + estimate  # after n-1 settled, the n-th fits exactly; after n, none
    secret = "tg-shared-budget"
    cfg = plugin_config(emulator.port)
    cfg["api_keys"] = [{"id": "shared", "sha256": harness.sha256_hex(secret), "models": ["*"],
                        "limits": {"budget": {"usd": usd(budget), "period": "total"}}}]
    db = redis_server.new_db()
    hosts = [harness.Spin(workdir / "spin-shared", cfg, emulator.port, tls_dir, name=f"shared-{i}",
                          redis=redis_server, redis_db=db) for i in range(2)]
    try:
        clients = [bedrock_client(h, tls_dir, secret, max_pool_connections=3 * n) for h in hosts]
        start = len(emulator.ledger())

        def one(i: int) -> str:
            try:
                clients[i % 2].converse(modelId="claude-fast", messages=converse_messages(prompt),
                                        inferenceConfig={"maxTokens": BUDGET_MAX_TOKENS})
                return "ok"
            except clients[i % 2].exceptions.ServiceQuotaExceededException:
                return "budget"

        with ThreadPoolExecutor(max_workers=3 * n) as pool:
            burst = list(pool.map(one, range(3 * n)))
        admitted = burst.count("ok")
        # The burst both admitted and refused (else it proved nothing about concurrency), and
        # never admitted more than the budget has room for.
        assert 1 <= admitted <= n and "budget" in burst, burst
        print(f"burst of {3 * n} over two instances: {admitted} admitted, then one at a time to {n}")
        # One at a time, alternating instances, until the budget refuses.
        for i in range(n + 1):
            if one(i) == "budget":
                break
            admitted += 1
        assert admitted == n, f"{admitted} requests admitted on a budget for {n}"

        entries = harness.wait_until(
            lambda: (lambda l: l[start:] if len(l) - start >= n else None)(emulator.ledger()), 10, "the ledger")
        time.sleep(0.2)
        entries = emulator.ledger()[start:]
        assert len(entries) == n and all(e["signature_valid"] for e in entries)
        assert all(pricing_oracle.cost_pico_usd(HAIKU, ledger_usage(e)) == actual for e in entries)
        # Both instances served admitted requests.
        served = [sum(1 for r in h.usage_records() if r["forwarded"]) for h in hosts]
        assert sum(served) == n and min(served) >= 1, served
        # Both see one budget and one set of totals, equal to the ledger.
        for h in hosts:
            status, _, body = raw(h, "GET", "/usage", None, {"authorization": f"Bearer {secret}"})
            assert status == 200, body
            u = json.loads(body)
            assert u["requests"] == n and u["cost_pico_usd"] == n * actual
            assert u["output_tokens"] == sum(ledger_usage(e)["output_tokens"] for e in entries)
            assert u["budget"]["spent_pico_usd"] == n * actual
            assert u["budget"]["remaining_pico_usd"] == estimate - actual < estimate
    finally:
        for h in hosts:
            h.stop()
