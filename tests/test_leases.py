"""Leases on what a request in flight holds (README "Leases"): a concurrency slot and a budget
reservation whose exchange is lost — its Envoy VM trapped, its Spin instance killed — come back
once the lease runs out, and the estimate stays billed; a live exchange renews its lease however
long it runs; a settlement the store failed is retried, not dropped. On every host, with the real
clients; the crash is real (a trapped VM, a killed `spin up`), the clock the quota test clock."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import botocore.exceptions
import pytest
import urllib3

import harness
import pricing_oracle
from conftest import HAIKU, bedrock_client, plugin_config, redis_for
from test_bedrock_api import Observed, converse_messages, raw

# 2026-11-22T12:00:00Z, as in test_quotas.
T0 = 1_795_348_800_000
DEFAULT_LEASE_MS = 600_000

KEYS = {
    "lost": "tg-lease-lost",
    "retry": "tg-lease-retry",
    "long": "tg-lease-long",
    "killed": "tg-lease-killed",
    "redis-fault": "tg-lease-redis-fault",
    "durable": "tg-lease-durable",
}


def key_doc(kid: str, limits: dict) -> dict:
    return {"id": kid, "sha256": harness.sha256_hex(KEYS[kid]), "models": ["*"], "limits": limits}


def envoy_that_reloads(cfg: dict, emulator_port: int, tls_dir) -> dict:
    """envoy/envoy-emulator.yaml with `failure_policy: FAIL_RELOAD`, so a VM trapped by a test
    comes back (FAIL_CLOSED, as shipped, would answer 503 on that worker for good)."""
    boot = harness.envoy_config(cfg, emulator_port, tls_dir)
    filters = [f for listener in boot["static_resources"]["listeners"]
               for chain in listener["filter_chains"]
               for f in chain["filters"][0]["typed_config"]["http_filters"]]
    # Tollgate's upstream filter on the Bedrock cluster shares the VM: it traps with it.
    for cluster in boot["static_resources"]["clusters"]:
        options = cluster.get("typed_extension_protocol_options", {})
        upstream = options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
        filters += upstream.get("http_filters", [])
    for f in filters:
        if f["name"] == "envoy.filters.http.wasm":
            wasm = f["typed_config"]["config"]
            wasm["failure_policy"] = "FAIL_RELOAD"
            wasm["reload_config"] = {"backoff": {"base_interval": "0.1s", "max_interval": "0.2s"}}
    return boot


def start(host_kind, request, workdir, tls_dir, emulator, name: str, cfg: dict):
    if host_kind == "envoy":
        return harness.Envoy(workdir / host_kind / name, cfg, emulator.port, tls_dir, name=name, concurrency=1,
                             bootstrap=envoy_that_reloads(cfg, emulator.port, tls_dir))
    return harness.start_gateway(host_kind, workdir / host_kind / name, cfg, emulator.port, tls_dir, name=name,
                                 redis=redis_for(request, host_kind))


@pytest.fixture(scope="module")
def lease_gateway(workdir, emulator, tls_dir, host_kind, request):
    """The default lease (600 s); quotas on the test clock."""
    cfg = plugin_config(emulator.port, test_hooks=True)
    cfg["api_keys"] = [
        key_doc("lost", {"max_concurrent_requests": 1, "budget": {"usd": "1", "period": "monthly"}}),
        key_doc("retry", {"max_concurrent_requests": 1, "budget": {"usd": "1", "period": "monthly"}}),
    ]
    gw = start(host_kind, request, workdir, tls_dir, emulator, "leases", cfg)
    yield gw
    gw.stop()


def usage_at(gateway, kid: str, now_ms: int) -> dict:
    status, _, body = raw(gateway, "GET", "/usage", None,
                          {"authorization": f"Bearer {KEYS[kid]}", "x-tollgate-test-now-ms": str(now_ms)})
    assert status == 200, body
    return json.loads(body)


def converse_body(text: str, max_tokens: int) -> bytes:
    return json.dumps({"messages": converse_messages(text), "inferenceConfig": {"maxTokens": max_tokens}}).encode()


def estimate_of(body: bytes, max_tokens: int) -> int:
    """What admission reserves for a Haiku converse with this body (README: request bytes / 4,
    rounded up, plus the output limit)."""
    return pricing_oracle.cost_pico_usd(HAIKU, {"input_tokens": math.ceil(len(body) / 4),
                                                "output_tokens": max_tokens,
                                                "cache_read_tokens": 0, "cache_write_tokens": 0})


def post(gateway, kid: str, body: bytes, now_ms: int, extra: dict | None = None, timeout: float = 10):
    headers = {"authorization": f"Bearer {KEYS[kid]}", "content-type": "application/json",
               "x-tollgate-test-now-ms": str(now_ms), **(extra or {})}
    return gateway.request("POST", "/model/claude-fast/converse", body, headers, timeout=timeout)


def serving(gateway, kid: str) -> bool:
    try:
        usage_at(gateway, kid, T0)
        return True
    except (AssertionError, OSError):
        return False


def test_a_lost_exchange_holds_its_slot_only_until_its_lease_runs_out(lease_gateway, emulator):
    """The host dies right after admission (the test hook traps the Envoy VM or the Spin
    instance): nothing settles the exchange. Its slot keeps the key (max 1 in flight) refused
    for the lease, then the first request after it finds the slot free again, says so in the
    log, and the lost request's estimate stays billed (it may well have run)."""
    gw = lease_gateway
    body = converse_body("lost [[emu:output=10]]", 100)
    lost_estimate = estimate_of(body, 100)
    try:
        status, _, _ = post(gw, "lost", body, T0, {"x-tollgate-test-fault": "trap-after-admission"})
    except OSError:  # the connection went down with the instance
        status = None
    assert status != 200
    harness.wait_until(lambda: "test hook: trapping the" in gw.log(), 10, "the trap's log line")
    harness.wait_until(lambda: serving(gw, "lost"), 20, "the gateway to serve again")

    u = usage_at(gw, "lost", T0 + 1_000)
    assert u["concurrent_requests"] == {"limit": 1, "used": 1}
    assert u["budget"]["spent_pico_usd"] == lost_estimate
    # Within the lease: still held.
    for at in (T0 + 1_000, T0 + DEFAULT_LEASE_MS - 1):
        status, headers, out = post(gw, "lost", converse_body("refused", 10), at)
        assert (status, headers.get("x-amzn-errortype")) == (429, "ThrottlingException"), out
        assert b"1 requests in flight" in out

    # Past one and a half leases: reclaimed, reported, and the estimate still billed.
    seen = Observed(gw, emulator)
    later = T0 + 3 * DEFAULT_LEASE_MS // 2
    status, _, out = post(gw, "lost", converse_body("after [[emu:output=10]]", 10), later)
    assert status == 200, out
    [record] = seen.records(1)
    line = harness.wait_until(
        lambda: [l for l in gw.log().splitlines() if "lease" in l and "`lost`" in l], 10, "the reclaim line")
    assert len(line) == 1, line
    assert "1 request in flight" in line[0] and f"({lost_estimate} pico-USD) stays billed" in line[0], line[0]
    u = usage_at(gw, "lost", later)
    assert u["concurrent_requests"]["used"] == 0
    assert u["budget"]["spent_pico_usd"] == lost_estimate + record["cost_pico_usd"]
    # Once only: the next request reports nothing more.
    status, _, _ = post(gw, "lost", converse_body("again [[emu:output=10]]", 10), later + 1)
    assert status == 200
    seen.records(2)
    assert len([l for l in gw.log().splitlines() if "lease" in l and "`lost`" in l]) == 1


def test_a_settlement_the_store_failed_is_retried(lease_gateway, emulator):
    """The store fails the first attempt to settle (the test hook's injected store error): the
    settlement is retried (Envoy: from the worker's timer; Spin: within the request), so the slot
    is freed and the budget holds the actual cost, and the log says the retry succeeded."""
    gw = lease_gateway
    seen = Observed(gw, emulator)
    at = T0 + 10 * 86_400_000
    status, _, out = post(gw, "retry", converse_body("retry [[emu:output=10]]", 100), at,
                          {"x-tollgate-test-fault": "store-error-on-settle"})
    assert status == 200, out
    [record] = seen.records(1)
    assert "quota settlement failed" in (record.get("problem") or ""), record

    def settled():
        u = usage_at(gw, "retry", at)
        return u if u["concurrent_requests"]["used"] == 0 else None

    u = harness.wait_until(settled, 15, "the settlement to be retried")
    assert u["budget"]["spent_pico_usd"] == record["cost_pico_usd"]
    harness.wait_until(lambda: "settled on attempt" in gw.log(), 10, "the retry's log line")
    status, _, out = post(gw, "retry", converse_body("next", 10), at + 1)
    assert status == 200, out


@pytest.fixture(scope="module")
def short_lease_gateway(workdir, emulator, tls_dir, host_kind, request):
    """Leases of 2 s, so that renewal is needed within a few seconds of real time."""
    cfg = plugin_config(emulator.port, test_hooks=True, lease_seconds=2)
    cfg["api_keys"] = [key_doc("long", {"max_concurrent_requests": 1})]
    gw = start(host_kind, request, workdir, tls_dir, emulator, "short-lease", cfg)
    yield gw
    gw.stop()


def test_a_live_exchange_keeps_its_slot_however_long_it_runs(short_lease_gateway, tls_dir, emulator):
    """Leases of 2 s; a non-streamed call whose answer takes 5 s, then a stream of 5 s: each
    keeps its slot throughout (renewed while waiting for the answer, and as the stream runs),
    so a second request 3.5 s in — past any unrenewed lease — is refused; once it ends, the
    slot is free."""
    gw = short_lease_gateway
    c = bedrock_client(gw, tls_dir, KEYS["long"], read_timeout=30)
    calls = [
        lambda: c.converse(modelId="claude-fast", messages=converse_messages("[[emu:slow=5000]] [[emu:output=5]]"),
                           inferenceConfig={"maxTokens": 5}),
        lambda: sum(1 for _ in c.converse_stream(
            modelId="claude-fast", messages=converse_messages("[[emu:events=10]] [[emu:slow=500]]"),
            inferenceConfig={"maxTokens": 10})["stream"]),
    ]
    for call in calls:
        seen = Observed(gw, emulator)
        failed = []

        def run():
            try:
                call()
            except Exception as e:  # noqa: BLE001 - reported below
                failed.append(e)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(3.5)
        with pytest.raises(c.exceptions.ThrottlingException):
            c.converse(modelId="claude-fast", messages=converse_messages("second"), inferenceConfig={"maxTokens": 1})
        t.join(timeout=30)
        assert not t.is_alive() and not failed, failed
        # The refusal's record, and the long call's, billed as usual.
        records = seen.records(2)
        assert sorted(r["status"] for r in records) == [200, 429], records
        c.converse(modelId="claude-fast", messages=converse_messages("after"), inferenceConfig={"maxTokens": 1})
        assert seen.records(3)[-1]["status"] == 200


def redis_config(emulator_port: int, *keys: dict) -> dict:
    cfg = plugin_config(emulator_port, test_hooks=True)
    cfg["api_keys"] = list(keys)
    return cfg


@pytest.mark.spin_redis_only("two `spin up` processes share one Redis; one is killed")
def test_a_killed_spin_instance_leaves_a_slot_the_other_reclaims(
        workdir, emulator, tls_dir, redis_server, host_kind):
    """Two `spin up` processes on one Redis database; one is killed (SIGKILL, its whole process
    group) while it streams a response. The slot it held keeps the key (max 1 in flight) refused
    on the other process for the lease; after it, the other reclaims the slot, logs it, and the
    killed request's estimate stays billed."""
    cfg = redis_config(emulator.port, key_doc("killed", {"max_concurrent_requests": 1,
                                                         "budget": {"usd": "1", "period": "monthly"}}))
    db = redis_server.new_db()
    hosts = [harness.Spin(workdir / "spin-killed", cfg, emulator.port, tls_dir, name=f"killed-{i}",
                          redis=redis_server, redis_db=db) for i in range(2)]
    try:
        doomed, survivor = hosts
        c = bedrock_client(doomed, tls_dir, KEYS["killed"], read_timeout=30)
        c.meta.events.register("before-sign.bedrock-runtime.*",
                               lambda request, **_: request.headers.__setitem__("x-tollgate-test-now-ms", str(T0)))
        text = "[[emu:events=40]] [[emu:slow=500]]"
        lost_estimate = estimate_of(converse_body(text, 200), 200)
        resp = c.converse_stream(modelId="claude-fast", messages=converse_messages(text),
                                 inferenceConfig={"maxTokens": 200})
        stream = iter(resp["stream"])
        next(stream)  # streaming now
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(timeout=10)
        with pytest.raises((botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, urllib3.exceptions.HTTPError,
                            OSError)):
            for _ in stream:
                pass

        u = usage_at(survivor, "killed", T0 + 1_000)
        assert u["concurrent_requests"]["used"] == 1
        assert u["budget"]["spent_pico_usd"] == lost_estimate
        status, _, out = post(survivor, "killed", converse_body("refused", 10), T0 + DEFAULT_LEASE_MS - 1)
        assert status == 429 and b"1 requests in flight" in out, out
        seen = Observed(survivor, emulator)
        later = T0 + 3 * DEFAULT_LEASE_MS // 2
        status, _, out = post(survivor, "killed", converse_body("after [[emu:output=10]]", 10), later)
        assert status == 200, out
        [record] = seen.records(1)
        harness.wait_until(lambda: "`killed`" in survivor.log() and "lease" in survivor.log(), 10,
                           "the reclaim line")
        u = usage_at(survivor, "killed", later)
        assert u["concurrent_requests"]["used"] == 0
        assert u["budget"]["spent_pico_usd"] == lost_estimate + record["cost_pico_usd"]
    finally:
        for h in hosts:
            h.stop()


@pytest.mark.spin_redis_only("writes into the Redis database under a running Spin")
def test_a_settlement_redis_refused_is_retried(workdir, emulator, tls_dir, redis_server, host_kind):
    """Redis refuses the settlement's decrement of the concurrency slot (the key holds no integer
    while the request streams): the component retries with back-off after the response has
    ended; once the key is an integer again, the retry frees the slot."""
    cfg = redis_config(emulator.port, key_doc("redis-fault", {"max_concurrent_requests": 2}))
    gw = harness.Spin(workdir / "spin-redis-fault", cfg, emulator.port, tls_dir, name="redis-fault",
                      redis=redis_server)
    try:
        c = bedrock_client(gw, tls_dir, KEYS["redis-fault"], read_timeout=30)
        c.meta.events.register("before-sign.bedrock-runtime.*",
                               lambda request, **_: request.headers.__setitem__("x-tollgate-test-now-ms", str(T0)))
        seen = Observed(gw, emulator)
        resp = c.converse_stream(modelId="claude-fast", messages=converse_messages("[[emu:events=8]] [[emu:slow=300]]"),
                                 inferenceConfig={"maxTokens": 20})
        stream = iter(resp["stream"])
        next(stream)
        with redis_server.connect() as r:
            r.command("SELECT", str(gw.redis_db))
            [slot] = [k.decode() for k in r.command("KEYS", "tollgate/q/redis-fault/concurrent*")
                      if not k.endswith(b"@last") and r.command("GET", k) == b"1"]
            r.command("SET", slot, "not a number")
            for _ in stream:
                pass
            [record] = seen.records(1)
            assert "quota settlement failed" in (record.get("problem") or ""), record
            r.command("SET", slot, "1")
        harness.wait_until(lambda: usage_at(gw, "redis-fault", T0)["concurrent_requests"]["used"] == 0, 15,
                           "the retried settlement")
        assert "settled on attempt" in gw.log()
    finally:
        gw.stop()


@pytest.mark.spin_redis_only("the Spin component's state in Redis outlives its processes")
def test_totals_and_budgets_on_redis_survive_a_restart_of_spin(workdir, emulator, tls_dir, redis_server, host_kind):
    """The durable option: Spin on Redis keeps totals, budget spend and windows in Redis, so a
    `spin up` process that stops (or crashes) and starts again finds them as they were."""
    cfg = redis_config(emulator.port, key_doc("durable", {"budget": {"usd": "1", "period": "monthly"},
                                                          "requests_per_minute": 10}))
    db = redis_server.new_db()
    first = harness.Spin(workdir / "spin-durable", cfg, emulator.port, tls_dir, name="durable-1",
                         redis=redis_server, redis_db=db)
    try:
        seen = Observed(first, emulator)
        for i in range(2):
            status, _, out = post(first, "durable", converse_body(f"keep {i} [[emu:output=7]]", 10), T0 + i)
            assert status == 200, out
        records = seen.records(2)
        before = usage_at(first, "durable", T0 + 2)
    finally:
        first.stop()
    second = harness.Spin(workdir / "spin-durable", cfg, emulator.port, tls_dir, name="durable-2",
                          redis=redis_server, redis_db=db)
    try:
        after = usage_at(second, "durable", T0 + 2)
        assert after == before
        assert after["requests"] == 2 and after["budget"]["spent_pico_usd"] == sum(r["cost_pico_usd"] for r in records)
        assert after["requests_per_minute"]["used"] == 2
    finally:
        second.stop()
