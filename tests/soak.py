"""Soak: mixed load through Envoy + filter and the Spin component (on Redis) for a set time,
then the books. `make soak` runs it for 10 minutes; `make soak-smoke` (part of `make test`) for
30 seconds.

Load, from a few client threads per gateway, bounded in time and count: converse and
converse-stream calls, streams the client cancels, Bedrock errors (429, 500), mid-stream
exceptions, upstream resets, and refusals (unknown key, unknown model, a key whose budget is
spent). Sampled every few seconds: the resident memory (VmRSS) of Envoy and of `spin up` with its
children, Envoy's heap (admin `/memory`: shared data lives there; Envoy has no call that counts
shared-data keys), and the Redis keys of the Spin gateway (DBSIZE).

At the end, the books, for each gateway:
* every request that reached the emulator has exactly one usage record, and every record that
  says it went upstream has exactly one ledger entry; a record of reported usage equals what the
  emulator served;
* each key's `/usage` totals (requests, tokens, cost) equal the sum of its records;
* each key's budget holds exactly the sum of its records' costs, and no request is in flight.

Flat means no growth beyond warm-up: the least-squares trend of each series after the first
third of the run, extrapolated over the sampled span, stays within a tolerance (RSS and heap:
the larger of 10 % of the series' median and 16 MiB; Redis keys: the larger of 10 % and 16
keys). Tolerances are generous on purpose: they catch a leak per request (thousands of requests
run), not allocator noise. No timing is asserted.

    python tests/soak.py --seconds 600 --out target/soak
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
KEYS = {
    "soak-main": ("tg-soak-main", {"budget": {"usd": "100000", "period": "total"}, "max_concurrent_requests": 64,
                                   "requests_per_minute": 1000000}),
    "soak-spent": ("tg-soak-spent", {"budget": {"usd": "0.000001", "period": "total"}}),
    "soak-cutoff": ("tg-soak-cutoff", {"budget": {"usd": "100000", "period": "total"}, "tokens_per_minute": 100000000,
                                       "cut_off_streams": True}),
}
THREADS_PER_GATEWAY = 3
SAMPLE_EVERY_S = 5.0
MAX_REQUESTS = 2_000_000  # a bound on count, whatever the time


def config(port: int) -> dict:
    return {
        "region": harness.REGION,
        "upstream_host": f"127.0.0.1:{port}",
        "aliases": {"claude-fast": HAIKU},
        "api_keys": [{"id": kid, "sha256": harness.sha256_hex(secret), "models": ["*"], "limits": limits}
                     for kid, (secret, limits) in KEYS.items()],
        "credentials": {"type": "inline", "access_key_id": harness.ACCESS_KEY_ID,
                        "secret_access_key": harness.SECRET_ACCESS_KEY, "session_token": harness.SESSION_TOKEN},
        "max_request_body_bytes": 65536,
    }


# ------------------------------------------------------------------ load


def body(text: str, max_tokens: int = 16) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": [{"text": text}]}],
                       "inferenceConfig": {"maxTokens": max_tokens}}).encode()


# (weight, name, key, path, body, how the response is read)
MIX = [
    (30, "converse", "soak-main", "/model/claude-fast/converse", lambda r: body(f"hi {r}", 1 + r % 16), "read"),
    (25, "stream", "soak-main", "/model/claude-fast/converse-stream",
     lambda r: body(f"[[emu:events={1 + r % 8}]]", 1 + r % 24), "read"),
    (8, "cancel", "soak-main", "/model/claude-fast/converse-stream",
     lambda r: body("[[emu:events=20]] [[emu:slow=20]]", 40), "cancel"),
    (5, "throttled", "soak-main", "/model/claude-fast/converse", lambda r: body("[[emu:throttle]]"), "read"),
    (5, "error", "soak-main", "/model/claude-fast/converse",
     lambda r: body("[[emu:error=500:InternalServerException]]"), "read"),
    (5, "exception", "soak-main", "/model/claude-fast/converse-stream",
     lambda r: body("[[emu:events=6]] [[emu:fail-after=2]]", 12), "read"),
    (4, "reset", "soak-main", "/model/claude-fast/converse-stream",
     lambda r: body("[[emu:events=6]] [[emu:reset-after=3]]", 12), "read"),
    (4, "cut-off", "soak-cutoff", "/model/claude-fast/converse-stream",
     lambda r: body(f"[[emu:events={2 + r % 6}]]", 1 + r % 30), "read"),
    (5, "unknown-key", None, "/model/claude-fast/converse", lambda r: body("x"), "read"),
    (4, "unknown-model", "soak-main", "/model/claude-nope/converse", lambda r: body("x"), "read"),
    (5, "budget-spent", "soak-spent", "/model/claude-fast/converse", lambda r: body("x", 100), "read"),
]


class Load(threading.Thread):
    def __init__(self, gw, deadline: float, seed: int, counts: Counter, lock: threading.Lock):
        super().__init__(daemon=True)
        self.gw, self.deadline, self.rng = gw, deadline, random.Random(seed)
        self.counts, self.lock = counts, lock
        self.errors: list[str] = []
        u = gw.url
        self.https = u.startswith("https:")
        self.port = int(u.rsplit(":", 1)[1])
        self.ctx = ssl.create_default_context(cafile=str(gw.ca)) if self.https else None
        self.conn = None

    def connection(self):
        if self.conn is None:
            if self.https:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
            else:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.conn

    def run(self):
        weights = [m[0] for m in MIX]
        n = 0
        while time.monotonic() < self.deadline and n < MAX_REQUESTS:
            n += 1
            _, name, key, path, make, how = self.rng.choices(MIX, weights)[0]
            headers = {"content-type": "application/json",
                       "x-api-key": KEYS[key][0] if key else "tg-soak-not-a-key"}
            try:
                status = self.cancel(path, make(n), headers) if how == "cancel" else self.call(path, make(n), headers)
            except (OSError, http.client.HTTPException) as e:
                # A reset stream breaks the connection it came on: that is the case, not a failure.
                if name not in ("reset",):
                    self.errors.append(f"{name}: {e!r}")
                self.conn = None
                status = "broken"
            with self.lock:
                self.counts[(name, status)] += 1

    def call(self, path: str, data: bytes, headers: dict):
        c = self.connection()
        c.request("POST", path, data, headers)
        r = c.getresponse()
        r.read()
        if r.getheader("connection", "").lower() == "close":
            self.conn = None
        return r.status

    def cancel(self, path: str, data: bytes, headers: dict):
        """A stream the client hangs up on after its first bytes."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        if self.https:
            s = self.ctx.wrap_socket(s, server_hostname="localhost")
        with s:
            head = f"POST {path} HTTP/1.1\r\nhost: soak\r\ncontent-length: {len(data)}\r\n" + \
                   "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            s.sendall(head.encode() + data)
            got = s.recv(4096)
        return int(got.split()[1]) if got.startswith(b"HTTP/") else "none"


# ------------------------------------------------------------------ sampling


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def envoy_heap(envoy) -> int:
    with harness.urllib.request.urlopen(envoy.admin + "/memory", timeout=10) as r:
        return int(json.loads(r.read())["allocated"])


def redis_keys(spin) -> int:
    """Keys in the Spin gateway's store: its Redis database (DBSIZE), or its SQLite file."""
    if spin.store != "redis":
        return len(spin.store_keys())
    with spin.redis.connect() as r:
        r.command("SELECT", str(spin.redis_db))
        return int(r.command("DBSIZE"))


def sample(envoy, spin, t0: float) -> dict:
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "envoy_rss_kib": rss_kib([envoy.proc.pid]),
        "envoy_heap_bytes": envoy_heap(envoy),
        "spin_rss_kib": rss_kib(descendants(spin.proc.pid)),
        "redis_keys": redis_keys(spin),
    }


# ------------------------------------------------------------------ the books


def books(gw, emulator_entries: list[dict]) -> dict:
    records = gw.usage_records()
    by_id = {}
    for e in emulator_entries:
        rid = dict(e["headers"]).get("x-request-id")
        if rid:
            by_id.setdefault(rid, []).append(e)
    problems = []
    forwarded = [r for r in records if r["forwarded"]]
    matched = 0
    for r in forwarded:
        entries = by_id.get(r.get("request_id"), [])
        if len(entries) != 1:
            problems.append(f"record {r.get('request_id')} has {len(entries)} ledger entries")
            continue
        matched += 1
        e = entries[0]
        if r["usage_source"] == "reported":
            served = {k: e["usage"][k] for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")}
            got = {k: r[k] for k in served}
            if served != got:
                problems.append(f"record {r['request_id']} reports {got}, the emulator served {served}")
    record_ids = {r.get("request_id") for r in forwarded}
    unrecorded = [rid for rid in by_id if rid not in record_ids]
    if unrecorded:
        problems.append(f"{len(unrecorded)} ledger entries without a record, e.g. {unrecorded[:3]}")
    keys = {}
    for kid, (secret, limits) in KEYS.items():
        mine = [r for r in forwarded if r["key_id"] == kid]
        status, _, out = gw.request("GET", "/usage", None, {"x-api-key": secret})
        u = json.loads(out)
        want = {"requests": len(mine), **{f: sum(r[f] for r in mine) for f in
                                           ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                            "cost_pico_usd")}}
        got = {f: u[f] for f in want}
        spent = u["budget"]["spent_pico_usd"]
        in_flight = u.get("concurrent_requests", {"used": 0})["used"]
        if got != want:
            problems.append(f"{kid}: /usage {got} != records {want}")
        if spent != want["cost_pico_usd"]:
            problems.append(f"{kid}: budget spent {spent} != records' cost {want['cost_pico_usd']}")
        if in_flight != 0:
            problems.append(f"{kid}: {in_flight} requests still in flight")
        keys[kid] = {"records": len(mine), "usage": got, "budget_spent_pico_usd": spent, "in_flight": in_flight}
    return {"records": len(records), "forwarded_records": len(forwarded), "ledger_entries": len(emulator_entries),
            "matched": matched, "keys": keys, "problems": problems}


# ------------------------------------------------------------------ flatness


def trend(points: list[tuple[float, float]]) -> float:
    """Least-squares growth over the span of `points` (value units)."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope * (xs[-1] - xs[0])


TOLERANCES = {  # series: (fraction of the median, absolute floor)
    "envoy_rss_kib": (0.10, 16 * 1024),
    "envoy_heap_bytes": (0.10, 16 << 20),
    "spin_rss_kib": (0.10, 16 * 1024),
    "redis_keys": (0.10, 16),
}


def flatness(samples: list[dict]) -> dict:
    warm = samples[len(samples) // 3:]
    out = {}
    for series, (fraction, floor) in TOLERANCES.items():
        values = [s[series] for s in warm]
        growth = trend([(s["t_s"], s[series]) for s in warm])
        allowed = max(fraction * statistics.median(values), floor) if values else floor
        out[series] = {"after_warm_up": [min(values), max(values)] if values else None,
                       "trend_growth": round(growth, 1), "allowed": round(allowed, 1), "flat": growth <= allowed}
    return out


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--out", default="target/soak")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tollgate-soak-"))
    tls = work / "tls"
    subprocess.run(["bash", str(harness.ROOT / "tests/make-certs.sh"), str(tls)], check=True, capture_output=True)
    emulator = harness.Emulator(work / "emulator", "--session-token", harness.SESSION_TOKEN)
    redis = envoy = spin = None
    try:
        try:
            redis = harness.Redis(work / "redis")
        except FileNotFoundError:
            # As the suite does: Spin on SQLite without redis-server, unless CI requires Redis.
            if os.environ.get("TOLLGATE_REQUIRE_REDIS") == "1":
                raise
            print("soak: no redis-server; the Spin gateway runs on SQLite", file=sys.stderr)
        envoy = harness.start_gateway("envoy", work / "envoy", config(emulator.port), emulator.port, tls,
                                      name="soak-envoy", concurrency=2)
        spin = harness.start_gateway("spin-redis" if redis else "spin-sqlite", work / "spin", config(emulator.port),
                                     emulator.port, tls, name="soak-spin", redis=redis)
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        counts = {"envoy": Counter(), "spin": Counter()}
        lock = threading.Lock()
        loads = [Load(gw, deadline, 1000 * i + j, counts[name], lock)
                 for i, (name, gw) in enumerate((("envoy", envoy), ("spin", spin)))
                 for j in range(THREADS_PER_GATEWAY)]
        for load in loads:
            load.start()
        samples = [sample(envoy, spin, t0)]
        every = min(SAMPLE_EVERY_S, max(1.0, args.seconds / 30))
        while time.monotonic() < deadline:
            time.sleep(min(every, max(0.0, deadline - time.monotonic())))
            samples.append(sample(envoy, spin, t0))
        for load in loads:
            load.join(timeout=60)
        # Let the last exchanges settle (records are written when a response ends).
        time.sleep(2)
        for gw in (envoy, spin):
            gw.settled_record_count(quiet_s=1.0, timeout_s=60)
        samples.append(sample(envoy, spin, t0))
        ledger = emulator.ledger()
        # Which gateway sent a ledger entry: by the request IDs each logged.
        report = {"seconds": args.seconds, "threads_per_gateway": THREADS_PER_GATEWAY,
                  "requests": {name: sum(c.values()) for name, c in counts.items()},
                  "mix": {name: {f"{k[0]} {k[1]}": v for k, v in sorted(c.items(), key=str)} for name, c in counts.items()},
                  "client_errors": {name: [e for load in loads if load.gw is gw for e in load.errors][:20]
                                    for name, gw in (("envoy", envoy), ("spin", spin))},
                  "samples": samples, "flatness": flatness(samples), "books": {}}
        for name, gw in (("envoy", envoy), ("spin", spin)):
            ids = {r.get("request_id") for r in gw.usage_records()}
            mine = [e for e in ledger if dict(e["headers"]).get("x-request-id") in ids]
            report["books"][name] = books(gw, mine)
        unattributed = len(ledger) - sum(b["ledger_entries"] for b in report["books"].values())
        if unattributed:
            report["books"]["unattributed_ledger_entries"] = unattributed
        ok = (all(f["flat"] for f in report["flatness"].values())
              and all(not b["problems"] for b in report["books"].values() if isinstance(b, dict))
              and not unattributed
              and all(sum(c.values()) > 0 for c in counts.values()))
        report["ok"] = ok
        (out / "report.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(markdown(report))
        print(markdown(report))
        return 0 if ok else 1
    finally:
        for p in (spin, envoy):
            if p is not None:
                p.stop()
        if redis is not None:
            redis.stop()
        emulator.stop()


def markdown(r: dict) -> str:
    lines = [f"Soak: {r['seconds']:.0f} s, {r['threads_per_gateway']} client threads per gateway; "
             f"requests: Envoy {r['requests']['envoy']}, Spin (Redis) {r['requests']['spin']}. "
             f"Result: {'PASS' if r['ok'] else 'FAIL'}", "",
             "| series | first | after warm-up (min–max) | last | trend growth | allowed | flat |",
             "|---|---|---|---|---|---|---|"]
    first, last = r["samples"][0], r["samples"][-1]
    for series, f in r["flatness"].items():
        lo, hi = f["after_warm_up"] or (None, None)
        lines.append(f"| {series} | {first[series]} | {lo}–{hi} | {last[series]} | {f['trend_growth']} | "
                     f"{f['allowed']} | {'yes' if f['flat'] else 'NO'} |")
    lines += ["", "| gateway | records | went upstream | ledger entries | matched 1:1 | problems |", "|---|---|---|---|---|---|"]
    for name, b in r["books"].items():
        if isinstance(b, dict):
            lines.append(f"| {name} | {b['records']} | {b['forwarded_records']} | {b['ledger_entries']} | "
                         f"{b['matched']} | {'; '.join(b['problems'][:3]) or 'none'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
