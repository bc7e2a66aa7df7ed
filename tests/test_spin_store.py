"""The Spin component's key-value store under real `spin up`, as the store itself sees it: what one
request costs Redis, that keys of past quota windows are deleted rather than piling up, and that a
store that fails costs one clear 503. Spin only: Envoy's shared data is in-process
memory with a fixed set of keys."""

from __future__ import annotations

import json
import re

import pytest

import harness
from conftest import HAIKU, bedrock_client, plugin_config
from test_bedrock_api import Observed, converse_messages

pytestmark = pytest.mark.spin_only("the Spin component's key-value store")

MINUTE_MS = 60_000
# 2026-11-22T12:00:00Z, as in test_quotas.
DAY1_NOON_MS = 1_795_348_800_000


def limited_config(emulator_port: int, secret: str, limits: dict) -> dict:
    cfg = plugin_config(emulator_port, test_hooks=True)
    cfg["api_keys"] = [{"id": "store", "sha256": harness.sha256_hex(secret), "models": ["*"], "limits": limits}]
    return cfg


@pytest.fixture
def own_redis(workdir, request):
    """A redis-server of this test's own: its INFO stats count only this test's gateway."""
    try:
        redis = harness.Redis(workdir / "redis" / request.node.name)
    except FileNotFoundError as e:
        import os
        if os.environ.get("TOLLGATE_REQUIRE_REDIS") == "1":
            raise
        pytest.skip(str(e))
    yield redis
    redis.stop()


@pytest.mark.spin_redis_only("counts the Redis commands of one request")
def test_one_converse_costs_a_few_redis_commands(workdir, emulator, tls_dir, own_redis, host_kind):
    """One converse request (totals counted, no quota on the key) costs a small, fixed number of
    Redis commands on the connection Spin already has, and no new connection. Spin's Redis
    compare-and-swap opens two connections per attempt and reports every swap as failed, so a
    CAS retry loop costs thousands of each (and never ends the response)."""
    secret = "tg-store-commands"
    cfg = plugin_config(emulator.port)
    cfg["api_keys"] = [{"id": "cmds", "sha256": harness.sha256_hex(secret), "models": ["*"]}]
    gw = harness.Spin(workdir / "spin-store", cfg, emulator.port, tls_dir, name="commands", redis=own_redis)
    try:
        client = bedrock_client(gw, tls_dir, secret, read_timeout=20)
        seen = Observed(gw, emulator)

        def converse():
            client.converse(modelId="claude-fast", messages=converse_messages("count [[emu:cache-read=3]]"),
                            inferenceConfig={"maxTokens": 5})

        converse()  # the first use of a model also registers it for /usage; Spin connects
        seen.records(1)
        with own_redis.connect() as r:
            before = r.stats()
            converse()
            seen.records(2)
            after = r.stats()
        # INFO itself is one command (the first one, counted in `after`).
        commands = after["total_commands_processed"] - before["total_commands_processed"] - 1
        connections = after["total_connections_received"] - before["total_connections_received"]
        print(f"one converse on Redis: {commands} commands, {connections} new connections")
        assert connections == 0
        # The store opened (PING), ten INCRBYs of totals (requests, input, output and cache-read
        # tokens, cost; overall and for the model); zero deltas (cache writes) skipped.
        assert commands <= 12, commands
        status, _, body = gw.request("GET", "/usage", None, {"authorization": f"Bearer {secret}"})
        assert status == 200, body
        usage = json.loads(body)
        assert usage["requests"] == 2 and usage["models"]["claude-fast"]["requests"] == 2
        assert usage["cache_read_tokens"] == 6
    finally:
        gw.stop()


def window_keys(keys: list[str]) -> dict[str, set[int]]:
    """The windows each windowed counter name has a key for (`name@window`)."""
    out: dict[str, set[int]] = {}
    for k in keys:
        m = re.fullmatch(r"(.*)@(\d+)", k)
        if m:
            out.setdefault(m.group(1), set()).add(int(m.group(2)))
    return out


def test_keys_of_past_quota_windows_are_deleted(workdir, emulator, tls_dir, host_kind, request):
    """Requests over many minutes and days of the test clock, with gaps, and /usage reads in
    minutes without requests: afterwards each windowed counter has a key for its latest window
    only, and the store holds as many keys as after the first few minutes."""
    secret = "tg-store-windows"
    limits = {"requests_per_minute": 100, "tokens_per_minute": 100_000,
              "budget": {"usd": "100", "period": "daily"}, "max_concurrent_requests": 4}
    redis = request.getfixturevalue("redis_server") if host_kind == "spin-redis" else None
    gw = harness.Spin(workdir / "spin-store", limited_config(emulator.port, secret, limits), emulator.port,
                      tls_dir, name=f"windows-{host_kind}", redis=redis)
    try:
        clock = [DAY1_NOON_MS]
        client = bedrock_client(gw, tls_dir, secret)
        client.meta.events.register(
            "before-sign.bedrock-runtime.*",
            lambda request, **_: request.headers.__setitem__("x-tollgate-test-now-ms", str(clock[0])))

        def usage_read(at_ms: int):
            status, _, body = gw.request("GET", "/usage", None,
                                         {"authorization": f"Bearer {secret}", "x-tollgate-test-now-ms": str(at_ms)})
            assert status == 200, body
            return json.loads(body)

        def requests_at(minutes: list[int], day: int):
            for m in minutes:
                clock[0] = DAY1_NOON_MS + day * 86_400_000 + m * MINUTE_MS
                client.converse(modelId="claude-fast", messages=converse_messages("w"),
                                inferenceConfig={"maxTokens": 2})
                # Reads in minutes nobody sends a request in.
                usage_read(clock[0] + 2 * MINUTE_MS + 1000)

        requests_at([0, 1, 3], day=0)
        first = gw.store_keys()
        requests_at([7, 8, 15, 40, 41], day=0)
        requests_at([2, 30], day=1)
        requests_at([5, 6, 59], day=2)
        keys = gw.store_keys()
        last_minute = clock[0] // MINUTE_MS
        last_day = clock[0] // 86_400_000
        windows = window_keys(keys)
        rpm = [n for n in windows if n.endswith("/rpm")]
        tpm = [n for n in windows if n.endswith("/tpm")]
        spend = [n for n in windows if n.endswith("/spend")]
        assert len(rpm) == len(tpm) == len(spend) == 1, keys
        assert windows[rpm[0]] == {last_minute}, keys
        assert windows[tpm[0]] == {last_minute}, keys
        assert windows[spend[0]] == {last_day}, keys
        # Each lease-bucket counter (concurrency slots, budget records) is a handful of slot
        # names, each holding its latest bucket only, whatever the traffic.
        assert all(len(ws) == 1 for ws in windows.values()), keys
        leased = [n for n in windows if re.search(r"/(concurrent|reserved|expired)/\d+s/\d$", n)]
        assert len(windows) - len(leased) == 3 and len(leased) <= 12, keys
        # Nothing else of the quotas: a marker per name.
        assert len([k for k in keys if k.startswith("tollgate/q/")]) == 2 * len(windows), keys
        # The totals' keys are as many as after the first requests.
        totals = lambda ks: [k for k in ks if not k.startswith("tollgate/q/")]
        assert len(totals(keys)) == len(totals(first)), (first, keys)
        u = usage_read(clock[0])
        assert u["requests"] == 13 and u["requests_per_minute"]["used"] == 1
        assert u["concurrent_requests"]["used"] == 0
    finally:
        gw.stop()


@pytest.mark.spin_redis_only("writes into the Redis database under a running Spin")
def test_a_failing_store_costs_one_clear_503(workdir, emulator, tls_dir, own_redis, host_kind):
    """The store refuses the admission's increment (here Redis: a counter holds a value that is
    no integer, so INCRBY fails): the request gets 503 ServiceUnavailableException naming the
    store, nothing goes upstream, and the next request, once the store works, is admitted.
    (Redis going away altogether is another matter: Spin's Redis store then blocks the calling
    instance until long after Redis is back, which no component can time out; README: Spin.)"""
    secret = "tg-store-down"
    cfg = limited_config(emulator.port, secret, {"max_concurrent_requests": 4})
    gw = harness.Spin(workdir / "spin-store", cfg, emulator.port, tls_dir, name="refusing", redis=own_redis)
    try:
        client = bedrock_client(gw, tls_dir, secret, read_timeout=30)
        client.meta.events.register(
            "before-sign.bedrock-runtime.*",
            lambda request, **_: request.headers.__setitem__("x-tollgate-test-now-ms", str(DAY1_NOON_MS)))
        call = lambda: client.converse(modelId="claude-fast", messages=converse_messages("x"),
                                       inferenceConfig={"maxTokens": 2})
        call()
        # The concurrency slot of the test clock's lease bucket (600 s leases: 300 s buckets, 4 slots).
        bucket = DAY1_NOON_MS // 300_000
        counter = f"tollgate/q/store/concurrent/600s/{bucket % 4}@{bucket}"
        with own_redis.connect() as r:
            r.command("SELECT", str(gw.redis_db))
            assert r.command("GET", counter) == b"0"
            r.command("SET", counter, "not a number")
            seen = Observed(gw, emulator)
            with pytest.raises(client.exceptions.ServiceUnavailableException) as e:
                call()
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            message = e.value.response["Error"]["Message"]
            assert "quota state unavailable" in message and "not an integer" in message, message
            [record] = seen.records(1)
            assert (record["status"], record["forwarded"], record["cost_pico_usd"]) == (503, False, 0)
            assert emulator.ledger()[seen.ledger_start:] == []
            r.command("DEL", counter)
        call()
    finally:
        gw.stop()
