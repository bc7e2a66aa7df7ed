#!/usr/bin/env python3
"""Tollgate's benchmark: `make bench` (full run) and `make bench-smoke` (a few seconds).

One invocation measures, with the gateway pinned to core 1 and the load generator plus the
Bedrock emulator pinned to core 0:

  emulator   the emulator alone (the floor: no gateway)
  envoy      stock Envoy routing to the emulator, no filter (the shipped config minus the Wasm filter)
  tollgate   the same Envoy with the Tollgate filter (the shipped config)
  litellm    LiteLLM proxy, Bedrock pass-through route, same alias and a master key
  spin       the Spin component under real `spin up` (the shipped manifest, SQLite state), when it
             is built and a Spin >= 4.1 is found (tests/find-spin.sh)

Request mix for all: Converse with a 1 KB and a 10 KB body, ConverseStream with 64 content
events, InvokeModel (Claude's body) 1 KB and InvokeModelWithResponseStream with 64 events; and
for the gateways that translate (Tollgate, Spin, LiteLLM), the same 1 KB request and 64-event
stream through OpenAI's `/v1/chat/completions` (Tollgate: onto Converse) and Anthropic's
`/v1/messages` (Tollgate: Claude onto InvokeModel), whose added cost is measured against the
native route in the same round (`translated`). Closed loop at concurrency 1 (A/B rounds,
interleaved) and 16, then a constant-rate sweep (the latency-vs-load curve). Each run checks that every request reached the emulator
(the emulator's request sequence numbers) and each gateway's requests are checked in the
emulator's ledger (signature valid, real model ID, stream completed).

This is not a test: nothing here asserts a timing. The smoke run exits non-zero only if a
gateway did not serve its requests.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from harness import SPIN_MANIFEST, free_port, spin_binary, wait_until  # noqa: E402  (stdlib + PyYAML: importable from bench/.venv)
BENCH = ROOT / "bench"

WASM = Path(os.environ.get("BENCH_WASM", ROOT / "target/wasm32-wasip1/release/tollgate_filter.wasm"))
EMULATOR = Path(os.environ.get("BENCH_EMULATOR", ROOT / "target/release/tollgate-emulator"))
ENVOY = Path(os.environ.get("BENCH_ENVOY", ROOT / ".venv/bin/envoy"))
DRIVER = Path(os.environ.get("BENCH_DRIVER", ROOT / "target/bench/release/tollgate-bench-driver"))
SPIN_WASM = Path(os.environ.get("BENCH_SPIN_WASM", ROOT / "target/wasm32-wasip2/release/tollgate_spin.wasm"))
LITELLM = Path(os.environ.get("BENCH_LITELLM", BENCH / ".venv-litellm/bin/litellm"))

GATEWAY_CORE = "1"
LOAD_CORE = "0"

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIDTOLLGATEBENCH"
SECRET_ACCESS_KEY = "tollgate-bench-secret"
BEDROCK_API_KEY = "bench-bedrock-api-key"  # what the floor and bare Envoy present to the emulator
TOLLGATE_KEY = "tg-bench-key"
LITELLM_MASTER_KEY = "sk-bench-master-key"
ALIAS = "claude-fast"
MODEL_ID = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
STREAM_EVENTS = 64

START_TIMEOUT_S = 30
LITELLM_START_TIMEOUT_S = 120

# name, the Bedrock operation the emulator sees, body size, stream, the API the client speaks
MIX = [
    ("converse-1k", "converse", 1024, False, "bedrock"),
    ("converse-10k", "converse", 10240, False, "bedrock"),
    ("stream-64", "converse-stream", 1024, True, "bedrock"),
    ("invoke-1k", "invoke", 1024, False, "bedrock"),
    ("invoke-stream-64", "invoke-with-response-stream", 1024, True, "bedrock"),
    ("chat-1k", "converse", 1024, False, "openai"),
    ("chat-stream-64", "converse-stream", 1024, True, "openai"),
    ("messages-1k", "invoke", 1024, False, "anthropic"),
    ("messages-stream-64", "invoke-with-response-stream", 1024, True, "anthropic"),
]
NATIVE = [m for m, *_, api in MIX if api == "bedrock"]
# A translated request's native counterpart (same size, same answer): what it adds is measured
# against it, in the same round.
NATIVE_OF = {"chat-1k": "converse-1k", "chat-stream-64": "stream-64",
             "messages-1k": "invoke-1k", "messages-stream-64": "invoke-stream-64"}
# Per translated API: its (request, stream) mixes.
TRANSLATED_MIXES = {"openai": ("chat-1k", "chat-stream-64"), "anthropic": ("messages-1k", "messages-stream-64")}
# Where each translated API is served (at the gateway's root).
API_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
# The APIs Tollgate serves (both hosts).
TRANSLATED = ("bedrock", "openai", "anthropic")
# Server-sent events of a translated stream, at least: OpenAI's role chunk, 64 deltas, the finish
# chunk (then usage and [DONE]); Anthropic's message_start, content_block_start, 64 deltas,
# content_block_stop, message_delta, message_stop.
SSE_MIN_EVENTS = STREAM_EVENTS + 2


def mix(name: str):
    return next(m for m in MIX if m[0] == name)


def stream_args(name: str) -> list[str]:
    _n, op, _size, stream, api = mix(name)
    if not stream:
        return []
    if api == "bedrock" and op == "converse-stream":
        # messageStart, contentBlockDelta × 64, contentBlockStop, messageStop, metadata
        return ["--stream", "--min-frames", str(STREAM_EVENTS + 4)]
    if api == "bedrock":
        # chunks of message_start, content_block_start, 64 deltas, content_block_stop,
        # message_delta, message_stop
        return ["--stream", "--min-frames", str(STREAM_EVENTS + 5)]
    return ["--sse", "--min-frames", str(SSE_MIN_EVENTS)]

LABELS = {
    "emulator": "Emulator alone (floor)",
    "envoy": "Bare Envoy (no filter)",
    "tollgate": "Envoy + Tollgate",
    "litellm": "LiteLLM proxy",
    "spin": "Spin component (spin up)",
}

PROCS: list["Proc"] = []


def log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Proc:
    def __init__(self, name: str, cmd: list[str], log_path: Path, stdout_pipe=False, env=None):
        self.name = name
        self.log_path = log_path
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE if stdout_pipe else open(log_path, "ab"),
            stderr=open(log_path, "ab"),
            stdin=subprocess.DEVNULL,
            text=stdout_pipe,
            env=env,
            start_new_session=True,
        )
        PROCS.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self in PROCS:
            PROCS.remove(self)


def serving(p: Proc, url: str, log_path: Path) -> bool:
    """For `wait_until`: `url` answers 200; an exited process fails at once."""
    if not p.alive():
        raise RuntimeError(f"{p.name} exited; see {log_path}")
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def stop_all(*_):
    for p in list(PROCS):
        try:
            p.stop()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
# /proc accounting


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int):
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()
    # fields after the name: state(3) ppid(4) ... utime(14) stime(15)
    return {"ppid": int(rest[1]), "cpu_ticks": int(rest[11]) + int(rest[12]),
            "comm": raw[raw.index("(") + 1: raw.rindex(")")]}


def all_stats():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s:
                out[int(d)] = s
    return out


def tree_cpu_s(pid: int) -> float:
    """utime+stime of `pid` and its live descendants, in seconds."""
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for p, s in stats.items():
        children.setdefault(s["ppid"], []).append(p)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p]["cpu_ticks"]
        todo.extend(children.get(p, []))
    return total / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for p, s in stats.items():
        children.setdefault(s["ppid"], []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def busy_processes(window_s: float = 2.0, exclude: set[int] | None = None) -> list[dict]:
    """Processes that used more than 3 % of a core over `window_s`."""
    exclude = exclude or set()
    a = all_stats()
    time.sleep(window_s)
    b = all_stats()
    busy = []
    for pid, s in b.items():
        if pid in exclude or pid == os.getpid():
            continue
        before = a.get(pid, {"cpu_ticks": s["cpu_ticks"]})["cpu_ticks"] if pid in a else 0
        pct = 100.0 * (s["cpu_ticks"] - before) / CLK_TCK / window_s
        if pct >= 3.0:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = s["comm"]
            busy.append({"pid": pid, "cpu_pct": round(pct, 1), "cmd": cmd[:160]})
    return sorted(busy, key=lambda x: -x["cpu_pct"])


def hold_pm_qos() -> int | None:
    """Keeps the CPUs out of idle halts while the benchmark runs (what tuned's
    latency-performance profile does): writes 0 to /dev/cpu_dma_latency and keeps it open.
    In this VM an idle vCPU otherwise halts after the haltpoll window (50 µs) and every wake-up
    of the gateway core costs a VM exit, which adds ~100+ µs per request at concurrency 1 to
    every gateway alike. Released when the process exits. None if not permitted."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
        os.write(fd, (0).to_bytes(4, "little"))
        return fd
    except OSError:
        return None


def ours() -> set[int]:
    """Pids of this benchmark: itself, what it started, and their descendants."""
    pids = {os.getpid()}
    for p in PROCS:
        pids.update(tree_pids(p.pid))
    return pids


def other_cpu_ticks(before: dict, after: dict, mine: set[int]) -> int:
    """CPU ticks used between two all_stats() snapshots by processes that are not ours (those
    that started meanwhile count whole; those that ended meanwhile are missed)."""
    total = 0
    for pid, s in after.items():
        if pid in mine or s["comm"] == "tollgate-bench-d":
            continue
        total += s["cpu_ticks"] - before[pid]["cpu_ticks"] if pid in before else s["cpu_ticks"]
    return total


def _children_cpu_s() -> float:
    ru = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu_s() -> float:
    ru = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def busy_ticks_total() -> int:
    """All CPU time spent not idle on the machine (user, nice, system, irq, softirq, steal)."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return user + nice + system + irq + softirq + steal


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_for_quiet(max_wait_s: float, threshold_pct: float = 20.0) -> dict:
    """Waits (bounded) until other processes use less than `threshold_pct` of a core."""
    t0 = time.monotonic()
    while True:
        busy = busy_processes(2.0)
        other = sum(b["cpu_pct"] for b in busy)
        waited = time.monotonic() - t0
        if other < threshold_pct or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "quiet": other < threshold_pct,
                    "other_cpu_pct": round(other, 1), "busy": busy[:8], "loadavg": loadavg()}
        log(f"machine busy ({other:.0f}% of a core in other processes: "
            f"{', '.join(b['cmd'][:40] for b in busy[:3])}); waiting "
            f"(up to {max_wait_s - waited:.0f}s more)")
        time.sleep(8)


# ----------------------------------------------------------------------------------------------
# The processes under test


class Emulator:
    def __init__(self, workdir: Path):
        self.p = Proc("emulator", [
            "taskset", "-c", LOAD_CORE, str(EMULATOR), "--listen", "127.0.0.1:0",
            "--region", REGION, "--access-key-id", ACCESS_KEY_ID,
            "--secret-access-key", SECRET_ACCESS_KEY, "--bearer-token", BEDROCK_API_KEY,
        ], workdir / "emulator.log", stdout_pipe=True)
        line = self.p.proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line or "")
        if not m:
            self.p.stop()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def seq(self) -> int:
        """The emulator's request counter, read with a probe request (which it counts)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("POST", f"/model/{urllib.parse.quote(MODEL_ID, safe='')}/converse",
                      body=b'{"messages":[{"role":"user","content":[{"text":"probe"}]}]}',
                      headers={"authorization": f"Bearer {BEDROCK_API_KEY}",
                               "content-type": "application/json"})
            r = c.getresponse()
            r.read()
            rid = r.getheader("x-amzn-requestid") or ""
            return int(rid.rsplit("-", 1)[-1], 16)
        finally:
            c.close()

    def ledger(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/_emulator/ledger", timeout=30) as r:
            return json.loads(r.read())

    def reset(self):
        req = urllib.request.Request(f"{self.url}/_emulator/reset", method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()


def plugin_config(upstream_port: int, scheme: str | None = None) -> dict:
    cfg = {
        "region": REGION,
        "upstream_host": f"127.0.0.1:{upstream_port}",
        "aliases": {ALIAS: MODEL_ID},
        "api_keys": [{"id": "bench", "sha256": hashlib.sha256(TOLLGATE_KEY.encode()).hexdigest(),
                      "models": ["*"]}],
        "credentials": {"type": "inline", "access_key_id": ACCESS_KEY_ID,
                        "secret_access_key": SECRET_ACCESS_KEY},
    }
    if scheme:
        cfg["upstream_scheme"] = scheme
    return cfg


def envoy_config(with_filter: bool, upstream_port: int, wasm: Path | None = None,
                 plugin_value: str | None = None) -> dict:
    """envoy/envoy-emulator.yaml as shipped: the plain-HTTP listener only, OS-chosen ports;
    without the Wasm filter for the bare-Envoy baseline (everything else identical)."""
    # A JSON round trip breaks YAML anchors: the two Tollgate filters share a vm_config.
    cfg = json.loads(json.dumps(yaml.safe_load((ROOT / "envoy/envoy-emulator.yaml").read_text())))
    res = cfg["static_resources"]
    res["listeners"] = [l for l in res["listeners"] if l["name"] == "tollgate_http"]
    listener = res["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = 0
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    # Tollgate's upstream filter on the Bedrock cluster (fallback attempts, README "Routing").
    options = res["clusters"][0].get("typed_extension_protocol_options", {})
    upstream = options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
    if with_filter:
        value = plugin_value if plugin_value is not None else json.dumps(plugin_config(upstream_port))
        wasm_cfgs = [hcm["http_filters"][0]["typed_config"]["config"]] + [
            f["typed_config"]["config"] for f in upstream.get("http_filters", [])
            if f["name"] == "envoy.filters.http.wasm"]
        for wasm_cfg in wasm_cfgs:
            wasm_cfg["vm_config"]["code"]["local"]["filename"] = str(wasm or WASM)
            wasm_cfg["configuration"]["value"] = value
    else:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        if upstream:
            upstream["http_filters"] = [f for f in upstream["http_filters"]
                                        if f["name"] != "envoy.filters.http.wasm"]
    endpoint = res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    return cfg


class Envoy:
    def __init__(self, workdir: Path, name: str, with_filter: bool, upstream_port: int,
                 wasm: Path | None = None, plugin_value: str | None = None, log_level: str = "info"):
        cfg_path = workdir / f"{name}.json"
        admin_path = workdir / f"{name}.admin"
        admin_path.unlink(missing_ok=True)
        cfg_path.write_text(json.dumps(envoy_config(with_filter, upstream_port, wasm, plugin_value), indent=1))
        self.log_path = workdir / f"{name}.log"
        self.p = Proc(name, [
            "taskset", "-c", GATEWAY_CORE, str(ENVOY), "-c", str(cfg_path), "--concurrency", "1",
            "--admin-address-path", str(admin_path), "--log-path", str(self.log_path),
            "--disable-hot-restart", "-l", log_level,
        ], workdir / f"{name}.stdout")
        try:
            admin = wait_until(lambda: admin_path.exists() and admin_path.read_text().strip(),
                               START_TIMEOUT_S, f"{name} admin address")
            self.admin = f"http://{admin}"
            wait_until(self._ready, START_TIMEOUT_S, f"{name} ready")
            with urllib.request.urlopen(f"{self.admin}/listeners?format=json", timeout=5) as r:
                listeners = json.loads(r.read())["listener_statuses"]
            port = listeners[0]["local_address"]["socket_address"]["port_value"]
        except Exception as e:
            self.p.stop()
            raise RuntimeError(f"{name} did not start ({e}); see {self.log_path}")
        self.url = f"http://127.0.0.1:{port}"

    def _ready(self):
        return serving(self.p, f"{self.admin}/ready", self.log_path)

    def usage_records(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("tollgate.usage ")
        except OSError:
            return 0


class LiteLLM:
    def __init__(self, workdir: Path, upstream_port: int):
        cfg = {
            "model_list": [{
                "model_name": ALIAS,
                "litellm_params": {
                    "model": f"bedrock/{MODEL_ID}",
                    "aws_access_key_id": ACCESS_KEY_ID,
                    "aws_secret_access_key": SECRET_ACCESS_KEY,
                    "aws_region_name": REGION,
                    "aws_bedrock_runtime_endpoint": f"http://127.0.0.1:{upstream_port}",
                },
            }],
            "litellm_settings": {"num_retries": 0, "request_timeout": 60},
            "general_settings": {"master_key": LITELLM_MASTER_KEY},
        }
        cfg_path = workdir / "litellm.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        port = free_port()
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env["LITELLM_TELEMETRY"] = "False"
        self.p = Proc("litellm", [
            "taskset", "-c", GATEWAY_CORE, str(LITELLM), "--config", str(cfg_path),
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
        ], workdir / "litellm.log", env=env)
        self.url = f"http://127.0.0.1:{port}"

        def up():
            return serving(self.p, f"{self.url}/health/liveliness", workdir / "litellm.log")

        try:
            wait_until(up, LITELLM_START_TIMEOUT_S, "LiteLLM to start", 0.25)
        except Exception:
            self.p.stop()
            raise

    def version(self) -> str:
        py = LITELLM.parent / "python"
        r = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True, timeout=60)
        return r.stdout.strip()


class Spin:
    """`spin up --from host-spin/spin.toml` on plain HTTP, its default SQLite store in the run's
    directory, configuration and emulator origin as Spin variables."""

    def __init__(self, workdir: Path, upstream_port: int, spin: str):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPIN_")}
        env["SPIN_VARIABLE_TOLLGATE_CONFIG"] = json.dumps(plugin_config(upstream_port, "http"))
        env["SPIN_VARIABLE_UPSTREAM_ORIGIN"] = f"http://127.0.0.1:{upstream_port}"
        self.p = Proc("spin", [
            "taskset", "-c", GATEWAY_CORE, spin, "up", "--from", str(SPIN_MANIFEST),
            "--listen", f"127.0.0.1:{port}", "--state-dir", str(workdir / "spin-state"),
        ], workdir / "spin.log", env=env)
        self.url = f"http://127.0.0.1:{port}"

        def up():
            if not self.p.alive():
                raise RuntimeError(f"spin exited; see {workdir / 'spin.log'}")
            try:
                urllib.request.urlopen(f"{self.url}/usage", timeout=1)
                return True
            except urllib.error.HTTPError:
                return True  # 401 without a key: serving
            except OSError:
                return False

        try:
            wait_until(up, 30, "spin up to serve", 0.1)
        except Exception:
            self.p.stop()
            raise


# ----------------------------------------------------------------------------------------------
# Requests


def make_body(size: int, prefix: str = "") -> bytes:
    doc = {"messages": [{"role": "user", "content": [{"text": ""}]}],
           "inferenceConfig": {"maxTokens": 256}}
    pad = size - len(json.dumps(doc)) - len(prefix)
    words = ("The quick brown fox jumps over the lazy dog. " * (size // 40 + 2))[:max(pad, 0)]
    doc["messages"][0]["content"][0]["text"] = prefix + words
    out = json.dumps(doc).encode()
    assert len(out) == size, (len(out), size)
    return out


def make_chat_body(size: int, prefix: str = "", stream: bool = False) -> bytes:
    """An OpenAI Chat Completions body of `size` bytes asking what make_body's Converse body asks."""
    doc = {"model": ALIAS, "messages": [{"role": "user", "content": ""}], "max_tokens": 256}
    if stream:
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
    pad = size - len(json.dumps(doc)) - len(prefix)
    words = ("The quick brown fox jumps over the lazy dog. " * (size // 40 + 2))[:max(pad, 0)]
    doc["messages"][0]["content"] = prefix + words
    out = json.dumps(doc).encode()
    assert len(out) == size, (len(out), size)
    return out


def make_messages_body(size: int, prefix: str = "", stream: bool = False, invoke: bool = False) -> bytes:
    """Anthropic's Messages body of `size` bytes asking what make_body asks: for `/v1/messages`
    (`model`, `stream`), or as Claude takes it on InvokeModel (`anthropic_version`)."""
    doc = {"anthropic_version": "bedrock-2023-05-31"} if invoke else {"model": ALIAS}
    doc.update({"max_tokens": 256, "messages": [{"role": "user", "content": ""}]})
    if stream and not invoke:
        doc["stream"] = True
    pad = size - len(json.dumps(doc)) - len(prefix)
    words = ("The quick brown fox jumps over the lazy dog. " * (size // 40 + 2))[:max(pad, 0)]
    doc["messages"][0]["content"] = prefix + words
    out = json.dumps(doc).encode()
    assert len(out) == size, (len(out), size)
    return out


def write_bodies(workdir: Path) -> dict[str, Path]:
    out = {}
    for name, op, size, stream, api in MIX:
        prefix = f"[[emu:output={STREAM_EVENTS}]][[emu:events={STREAM_EVENTS}]] " if stream else ""
        p = workdir / f"body-{name}.json"
        if api == "openai":
            body = make_chat_body(size, prefix, stream)
        elif api == "anthropic" or op.startswith("invoke"):
            body = make_messages_body(size, prefix, stream, invoke=api == "bedrock")
        else:
            body = make_body(size, prefix)
        p.write_bytes(body)
        out[name] = p
    return out


class Target:
    """One gateway (or the emulator itself) as the driver sees it, and the APIs it serves:
    Bedrock's routes under `path_prefix`, translated ones at `API_PATHS`."""

    def __init__(self, name, url, path_prefix, auth_header, pid, upstream_auth, apis=("bedrock",)):
        self.name, self.url, self.path_prefix = name, url, path_prefix
        self.auth_header, self.pid, self.upstream_auth = auth_header, pid, upstream_auth
        self.apis = set(apis)

    def serves(self, mix_name: str) -> bool:
        return mix(mix_name)[4] in self.apis

    def target(self, mix_name: str) -> str:
        _n, op, _size, _stream, api = mix(mix_name)
        if api == "bedrock":
            return f"{self.url}{self.path_prefix}/{op}"
        return f"{self.url}{API_PATHS[api]}"


class Runner:
    def __init__(self, workdir: Path, emulator: Emulator, bodies: dict[str, Path]):
        self.workdir, self.emu, self.bodies = workdir, emulator, bodies
        self.runs: list[dict] = []
        self.discarded: list[dict] = []
        self.n = 0

    # Total time the benchmark may spend waiting for other processes to go quiet (and re-running
    # runs they disturbed); past it, disturbed runs are kept and flagged.
    quiet_budget_s = float(os.environ.get("BENCH_MAX_WAIT_QUIET_S", 600))
    CONTENDED_PCT = 15.0

    def drive(self, t: Target, mix_name: str, **kw) -> dict:
        """One run; if other processes used more than CONTENDED_PCT of a core meanwhile, waits
        for quiet and runs it again (twice at most, within the benchmark's wait budget)."""
        for attempt in range(3):
            res = self._drive(t, mix_name, **kw)
            res["attempt"] = attempt + 1
            if res["other_cpu_pct"] <= self.CONTENDED_PCT or self.quiet_budget_s <= 0:
                break
            log(f"  disturbed: other processes used {res['other_cpu_pct']}% of a core; "
                f"waiting for quiet (budget left {self.quiet_budget_s:.0f}s), then again")
            q = wait_for_quiet(min(self.quiet_budget_s, 300))
            self.quiet_budget_s -= q["waited_s"] + res["wall_s"]
            self.runs.remove(res)
            self.discarded.append(res)
        res["contended"] = res["other_cpu_pct"] > self.CONTENDED_PCT
        return res

    def _drive(self, t: Target, mix_name: str, *, concurrency=None, rate=None, connections=64,
               duration=2.0, warmup=0.3, requests=None, phase="", extra=None) -> dict:
        _n, op, size, stream, _api = mix(mix_name)
        if requests:
            warmup = 0.0  # a request cap (smoke, verification) with a time warm-up would measure nothing
        self.n += 1
        out = self.workdir / f"run-{self.n:04d}.json"
        cmd = ["taskset", "-c", LOAD_CORE, str(DRIVER), "--target", t.target(mix_name),
               "--header", t.auth_header, "--body-file", str(self.bodies[mix_name]),
               "--duration", str(duration), "--warmup", str(warmup), "--json", str(out),
               "--timeout", "30", "--label", f"{t.name}/{mix_name}"]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        else:
            cmd += ["--rate", f"{rate:.3f}", "--connections", str(connections)]
        if requests:
            cmd += ["--requests", str(requests)]
        cmd += stream_args(mix_name)
        seq0 = self.emu.seq()
        mine = ours()
        snap0 = all_stats()
        busy0 = busy_ticks_total()
        ours0 = sum(tree_cpu_s(p.pid) for p in list(PROCS)) + _children_cpu_s() + _self_cpu_s()
        cpu0, wall0 = tree_cpu_s(t.pid), time.monotonic()
        emu_cpu0 = tree_cpu_s(self.emu.p.pid)
        r = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=duration + warmup + 120)
        wall = time.monotonic() - wall0
        cpu = tree_cpu_s(t.pid) - cpu0
        emu_cpu = tree_cpu_s(self.emu.p.pid) - emu_cpu0
        other = other_cpu_ticks(snap0, all_stats(), mine | ours()) / CLK_TCK
        # Also from the machine's totals, which catch short-lived processes too (but include
        # the kernel's network work done outside our processes' accounting).
        other_total = max((busy_ticks_total() - busy0) / CLK_TCK
                          - (sum(tree_cpu_s(p.pid) for p in list(PROCS)) + _children_cpu_s() + _self_cpu_s() - ours0), 0.0)
        if r.returncode != 0 or not out.exists():
            raise RuntimeError(f"driver failed ({r.returncode}): {r.stderr[-2000:]}")
        res = json.loads(out.read_text())
        seq1 = self.emu.seq()
        self.emu.reset()  # the ledger keeps every entry: keep its memory bounded
        sent = res["ok"] + res["warmup_ok"]
        upstream = seq1 - seq0 - 1
        res.update({
            "target": t.name, "mix": mix_name, "phase": phase, "body_bytes_sent": size,
            "wall_s": round(wall, 3), "gateway_cpu_s": round(cpu, 3),
            "cpu_us_per_request": round(cpu * 1e6 / max(sent + res["errors"], 1), 1),
            "gateway_core_util": round(cpu / wall, 3) if wall > 0 else None,
            "emulator_cpu_s": round(emu_cpu, 3),
            "other_cpu_pct": round(100 * other / wall, 1) if wall > 0 else 0.0,
            "unaccounted_cpu_pct": round(100 * other_total / wall, 1) if wall > 0 else 0.0,
            "upstream_requests": upstream,
            "served": res["errors"] == 0 and res["ok"] > 0 and upstream == sent,
        })
        if extra:
            res.update(extra)
        self.runs.append(res)
        lat = res["latency_us"] or {}
        log(f"{phase:8s} {t.name:9s} {mix_name:12s} "
            + (f"c={concurrency:<3d}" if concurrency else f"r={rate:<7.0f}")
            + f" ok={res['ok']:<6d} err={res['errors']:<3d} up={upstream:<6d} "
            f"rps={res['throughput_rps']:<8.0f} p50={lat.get('p50')}µs p99={lat.get('p99')}µs "
            f"cpu/req={res['cpu_us_per_request']}µs"
            + (f" other={res['other_cpu_pct']}%" if res["other_cpu_pct"] > 5 else "")
            + ("" if res["served"] else "  NOT SERVED"))
        return res


def verify_ledger(runner: Runner, t: Target, per_type: int) -> dict:
    """Sends `per_type` requests of each kind through `t`, then checks each in the ledger."""
    entries_by_mix = {}
    mixes = [m for m in MIX if t.serves(m[0])]
    for name, op, size, stream, _api in mixes:
        cmd = ["taskset", "-c", LOAD_CORE, str(DRIVER), "--target", t.target(name),
               "--header", t.auth_header, "--body-file", str(runner.bodies[name]),
               "--concurrency", "1", "--duration", "30", "--warmup", "0",
               "--requests", str(per_type), "--timeout", "30"] + stream_args(name)
        runner.emu.reset()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"driver failed ({r.returncode}): {r.stderr[-2000:]}")
        # A stream's entry is recorded as its last frame goes out: allow it a moment.
        entries_by_mix[name] = wait_until(lambda: (lambda l: l if len(l) >= per_type else None)(runner.emu.ledger()),
                                          5, "ledger entries") if per_type else []
    runner.emu.reset()
    problems = []
    operations = {}
    for name, op, size, stream, api in mixes:
        entries = entries_by_mix[name]
        operations[name] = sorted({e["operation"] for e in entries})
        # Tollgate's translations are fixed (Chat Completions onto Converse, Claude's Messages
        # onto InvokeModel); another gateway may pick either of Bedrock's APIs: it is recorded.
        ops = {op} if api == "bedrock" or t.name != "litellm" else (
            {"converse-stream", "invoke-with-response-stream"} if stream else {"converse", "invoke"})
        if len(entries) != per_type:
            problems.append(f"{name}: {len(entries)} ledger entries for {per_type} requests")
        for e in entries:
            bad = []
            if e["status"] != 200:
                bad.append(f"status {e['status']}")
            if e["auth"] != t.upstream_auth or not e["signature_valid"]:
                bad.append(f"auth {e['auth']} valid={e['signature_valid']}")
            if e["model_id"] != MODEL_ID:
                bad.append(f"model {e['model_id']}")
            if e["operation"] not in ops:
                bad.append(f"operation {e['operation']}")
            if stream and (not e.get("stream_completed") or e.get("content_events_sent") != STREAM_EVENTS):
                bad.append(f"stream completed={e.get('stream_completed')} events={e.get('content_events_sent')}")
            if bad:
                problems.append(f"{name} #{e['seq']}: {', '.join(bad)}")
    ok = not problems
    log(f"verify   {t.name:9s} ledger: {'OK' if ok else 'PROBLEMS: ' + '; '.join(problems[:5])}")
    return {"ok": ok, "requests_per_type": per_type, "problems": problems[:20],
            "auth_seen_by_emulator": t.upstream_auth, "operations": operations}


# ----------------------------------------------------------------------------------------------
# Phases


def c1_rounds(runner: Runner, targets: list[Target], rounds: int, duration: float, requests=None):
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for name, *_ in MIX:
            for t in order:
                if t.serves(name):
                    runner.drive(t, name, concurrency=1, duration=duration, warmup=0.3,
                                 requests=requests, phase=f"c1-r{r + 1}", extra={"round": r + 1})


def c16(runner: Runner, t: Target, duration: float, requests=None, round_no: int = 1):
    for name, *_ in MIX:
        if t.serves(name):
            runner.drive(t, name, concurrency=16, duration=duration, warmup=0.5, requests=requests,
                         phase="c16", extra={"round": round_no})


def c16_rounds(runner: Runner, targets: list[Target], rounds: int, duration: float, requests=None):
    """c=16 in interleaved rounds, the order rotating, as for c=1: this VM's speed drifts by tens
    of percent over minutes, so a single run per gateway compares moments, not gateways."""
    for r in range(rounds):
        k = r % len(targets)
        for t in targets[k:] + targets[:k]:
            c16(runner, t, duration, requests, round_no=r + 1)


def c16_base(runner: Runner, t: Target) -> float:
    """Median c=16 throughput of 1 KB Converse: where the constant-rate sweep is scaled from."""
    return statistics.median(r["throughput_rps"] for r in runner.runs if r["target"] == t.name
                             and r["mix"] == "converse-1k" and r["phase"] == "c16")


SWEEP_FRACTIONS = [0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25]


def sweep(runner: Runner, t: Target, base_rps: float, duration: float, fractions, connections=64):
    """Constant-rate runs at fractions of the closed-loop c=16 throughput (1 KB Converse)."""
    misses = 0
    for f in fractions:
        rate = max(base_rps * f, 5.0)
        res = runner.drive(t, "converse-1k", rate=rate, connections=connections, duration=duration,
                           warmup=0.5, phase="rate", extra={"fraction_of_c16": f})
        lat = res["latency_us"] or {}
        behind = res["throughput_rps"] < 0.9 * rate or res["errors"] > 0
        if behind or (lat.get("p99") or 0) > 50_000:
            misses += 1
            if misses >= 2:
                break
        else:
            misses = 0


# ----------------------------------------------------------------------------------------------
# Summary


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def clean(rs: list[dict]) -> list[dict]:
    """The runs no other process disturbed, if there are any."""
    return [r for r in rs if not r.get("contended")] or rs


def summarize(runs: list[dict], names: list[str]) -> dict:
    s: dict = {"c1": {}, "c16": {}, "rate": {}, "added_over_emulator": {}, "filter_added": {}}
    pick = lambda **kw: [r for r in runs if all(r.get(k) == v for k, v in kw.items())]
    for t in names:
        s["c1"][t], s["c16"][t] = {}, {}
        for m, *_ in MIX:
            rs = [r for r in runs if r["target"] == t and r["mix"] == m and r["phase"].startswith("c1-r")
                  and r["latency_us"]] \
                or [r for r in runs if r["target"] == t and r["mix"] == m and r["phase"] == "c1-ll" and r["latency_us"]]
            rs = clean(rs)
            if rs:
                def mm(key, q):
                    return med([(r.get(key) or {}).get(q) for r in rs])
                s["c1"][t][m] = {
                    "rounds": len(rs),
                    "requests": sum(r["ok"] for r in rs),
                    "p50_us": mm("latency_us", "p50"), "p90_us": mm("latency_us", "p90"),
                    "p99_us": mm("latency_us", "p99"), "mean_us": mm("latency_us", "mean"),
                    "ttfb_p50_us": mm("ttfb_us", "p50"), "ttfb_p99_us": mm("ttfb_us", "p99"),
                    "first_event_p50_us": mm("first_event_us", "p50"),
                    "first_event_p99_us": mm("first_event_us", "p99"),
                    "event_gap_p50_us": mm("event_gap_us", "p50"),
                    "cpu_us_per_request": med([r["cpu_us_per_request"] for r in rs]),
                    "throughput_rps": med([r["throughput_rps"] for r in rs]),
                }
            rs = clean([r for r in pick(target=t, mix=m, phase="c16") if r["latency_us"]])
            if rs:
                s["c16"][t][m] = {
                    "rounds": len(rs),
                    "throughput_rps": med([r["throughput_rps"] for r in rs]),
                    "p50_us": med([r["latency_us"]["p50"] for r in rs]),
                    "p99_us": med([r["latency_us"]["p99"] for r in rs]),
                    "cpu_us_per_request": med([r["cpu_us_per_request"] for r in rs]),
                    "gateway_core_util": med([r["gateway_core_util"] for r in rs]),
                    "first_event_p99_us": med([(r.get("first_event_us") or {}).get("p99") for r in rs]),
                }
        rates = pick(target=t, phase="rate")
        if rates:
            passing = [r for r in rates if r["errors"] == 0 and r["latency_us"]
                       and r["latency_us"]["p99"] <= 5000 and r["throughput_rps"] >= 0.95 * r["offered_rps"]]
            best = max(passing, key=lambda r: r["offered_rps"]) if passing else None
            s["rate"][t] = {
                "max_rps_p99_under_5ms": best["offered_rps"] if best else 0.0,
                "core_util_at_max": best["gateway_core_util"] if best else None,
                "cpu_us_per_request_at_max": best["cpu_us_per_request"] if best else None,
                "curve": [{"offered_rps": r["offered_rps"], "achieved_rps": r["throughput_rps"],
                           "p50_us": (r["latency_us"] or {}).get("p50"),
                           "p99_us": (r["latency_us"] or {}).get("p99"),
                           "errors": r["errors"], "cpu_us_per_request": r["cpu_us_per_request"],
                           "gateway_core_util": r["gateway_core_util"]} for r in rates],
            }

    # Added latency: per round, gateway minus the floor (or minus bare Envoy), then the median.
    def added(t, base, against=lambda m: NATIVE_OF.get(m, m)):
        """Per round, (t, mix) minus (base, its counterpart: for a translated mix on a base that
        does not translate, the native request), then the median."""
        out = {}
        for m, *_ in MIX:
            bm = against(m)
            per = {}
            for r in runs:
                if not r["phase"].startswith("c1-"):
                    continue
                if (r["target"], r["mix"]) == (t, m):
                    per.setdefault(r.get("round", 1), {})["a"] = r
                elif (r["target"], r["mix"]) == (base, bm):
                    per.setdefault(r.get("round", 1), {})["b"] = r
            diffs = {k: [] for k in ("p50", "p99", "ttfb_p99", "first_event_p99", "first_event_p50",
                                     "event_gap_p50", "total_stream_p50")}
            pairs = [p for p in per.values() if "a" in p and "b" in p
                     and p["a"]["latency_us"] and p["b"]["latency_us"]]
            pairs = [p for p in pairs if not p["a"].get("contended") and not p["b"].get("contended")] or pairs
            for pair in pairs:
                a, b = pair["a"], pair["b"]
                diffs["p50"].append(a["latency_us"]["p50"] - b["latency_us"]["p50"])
                diffs["p99"].append(a["latency_us"]["p99"] - b["latency_us"]["p99"])
                diffs["ttfb_p99"].append(a["ttfb_us"]["p99"] - b["ttfb_us"]["p99"])
                if a.get("first_event_us") and b.get("first_event_us"):
                    diffs["first_event_p99"].append(a["first_event_us"]["p99"] - b["first_event_us"]["p99"])
                    diffs["first_event_p50"].append(a["first_event_us"]["p50"] - b["first_event_us"]["p50"])
                if a.get("event_gap_us") and b.get("event_gap_us"):
                    diffs["event_gap_p50"].append(a["event_gap_us"]["p50"] - b["event_gap_us"]["p50"])
            if diffs["p50"]:
                out[m] = {f"{k}_us": med(v) for k, v in diffs.items() if v}
                out[m]["rounds"] = len(diffs["p50"])
        return out

    for t in names:
        if t != "emulator":
            s["added_over_emulator"][t] = added(t, "emulator")
    # A translated route over the same gateway's native route, same round: the translation's cost.
    s["translated_added"] = {}
    for t in names:
        a = {m: v for m, v in added(t, t).items() if m in NATIVE_OF}
        if a:
            s["translated_added"][t] = a
    if "tollgate" in names and "envoy" in names:
        s["filter_added"]["tollgate"] = added("tollgate", "envoy")
    if "spin" in names:
        s["filter_added"]["spin"] = s["added_over_emulator"].get("spin", {})

    # CPU: gateway cost per request and per stream event (c=16, saturated).
    cpu = {}
    for t in names:
        c = s["c16"].get(t, {})
        if all(m in c for m in NATIVE):
            cpu[t] = {m: c[m]["cpu_us_per_request"] for m, *_ in MIX if m in c}
            # Per-event: the stream's CPU beyond a 1 KB Converse's, over its 64 events.
            cpu[t]["per_event_us"] = round((c["stream-64"]["cpu_us_per_request"]
                                            - c["converse-1k"]["cpu_us_per_request"]) / STREAM_EVENTS, 2)
            for api, (req_mix, stream_mix) in TRANSLATED_MIXES.items():
                if req_mix not in c or stream_mix not in c:
                    continue
                per_request = c[req_mix]["cpu_us_per_request"] - c[NATIVE_OF[req_mix]]["cpu_us_per_request"]
                stream = c[stream_mix]["cpu_us_per_request"] - c[NATIVE_OF[stream_mix]]["cpu_us_per_request"]
                cpu[t].setdefault("translated", {})[api] = {
                    # What translating adds to a request (non-stream pair).
                    "per_request_us": round(per_request, 1),
                    # What translating adds to a 64-event stream, all of it.
                    "stream_us": round(stream, 1),
                    # Per event: the stream's added CPU beyond a request's, over its 64 events.
                    "per_event_us": round((stream - per_request) / STREAM_EVENTS, 2),
                }
    s["cpu_us"] = cpu
    return s


def targets_check(s: dict) -> dict:
    out = {}
    fa = s.get("filter_added", {}).get("tollgate", {}).get("converse-1k")
    if fa:
        out["filter_added_p99_1k_le_150us"] = {"value_us": fa["p99_us"], "holds": fa["p99_us"] <= 150}
    rt, re_ = s["rate"].get("tollgate"), s["rate"].get("envoy")
    if rt and re_ and re_["max_rps_p99_under_5ms"]:
        loss = 1 - rt["max_rps_p99_under_5ms"] / re_["max_rps_p99_under_5ms"]
        out["throughput_loss_le_15pct"] = {"value_pct": round(100 * loss, 1), "holds": loss <= 0.15}
    c = s.get("cpu_us", {})
    if "tollgate" in c and "envoy" in c:
        loss = 1 - c["envoy"]["converse-1k"] / c["tollgate"]["converse-1k"]
        out["cpu_capacity_loss_1k"] = {"value_pct": round(100 * loss, 1), "holds": loss <= 0.15,
                                       "note": "1 - cpu/req(envoy)/cpu/req(tollgate): the throughput "
                                               "loss if the gateway core were the only bottleneck"}
    ao = s.get("added_over_emulator", {})
    if "litellm" in ao and "tollgate" in ao and "converse-1k" in ao["litellm"] and "converse-1k" in ao["tollgate"]:
        lt, tg = ao["litellm"]["converse-1k"]["p99_us"], ao["tollgate"]["converse-1k"]["p99_us"]
        ratio = lt / tg if tg > 0 else None
        out["litellm_over_tollgate_added_p99_ge_30x"] = {
            "value": round(ratio, 1) if ratio else None, "holds": bool(ratio and ratio >= 30)}
    for t in ("tollgate", "spin"):
        for api, tr in ((s.get("cpu_us", {}).get(t) or {}).get("translated") or {}).items():
            req_mix, _stream_mix = TRANSLATED_MIXES[api]
            lat = s.get("translated_added", {}).get(t, {}).get(req_mix)
            out[f"{t}_{api}_per_request_le_50us"] = {
                "cpu_us": tr["per_request_us"], "p50_us": lat and lat["p50_us"], "p99_us": lat and lat["p99_us"],
                "holds": tr["per_request_us"] <= 50 and (lat is None or lat["p50_us"] <= 50)}
            out[f"{t}_{api}_per_event_le_2us"] = {"cpu_us": tr["per_event_us"],
                                                  "holds": tr["per_event_us"] <= 2}
    st = ao.get("tollgate", {}).get("stream-64")
    if st:
        out["stream_added_ttfb_p99_le_500us"] = {
            "value_us": st["ttfb_p99_us"], "first_event_value_us": st.get("first_event_p99_us"),
            "holds": st["ttfb_p99_us"] <= 500 and (st.get("first_event_p99_us") or 0) <= 500}
    return out


def fmt(v, unit="", nd=0):
    if v is None:
        return "–"
    if isinstance(v, float) and nd == 0:
        v = round(v)
    return f"{v:,.{nd}f}{unit}" if isinstance(v, (int, float)) else str(v)


def ratio(a, b, nd=2):
    if a is None or b is None or b == 0:
        return "–"
    x = a / b
    return f"{x:.{nd}f}×" if abs(x) >= 0.1 else f"{x:.2g}×"


def table(s: dict, meta: dict, names: list[str]) -> str:
    cols = [n for n in ["emulator", "envoy", "tollgate", "litellm", "spin"] if n in names]
    head = "| Metric | " + " | ".join(cols) + " | Tollgate / Envoy | LiteLLM / Tollgate |"
    sep = "|" + "---|" * (len(cols) + 3)
    rows = [head, sep]

    def row(label, getter, unit="", nd=0, r1=True, r2=True):
        vals = {c: getter(c) for c in cols}
        rr1 = ratio(vals.get("tollgate"), vals.get("envoy")) if r1 else ""
        rr2 = ratio(vals.get("litellm"), vals.get("tollgate"), 1) if r2 else ""
        rows.append(f"| {label} | " + " | ".join(fmt(vals[c], unit, nd) for c in cols) + f" | {rr1} | {rr2} |")

    g = lambda d, *ks: (lambda c: _dig(d, c, *ks))
    for m, label in [("converse-1k", "Converse 1 KB"), ("converse-10k", "Converse 10 KB"),
                     ("stream-64", "ConverseStream 64 ev"), ("invoke-1k", "InvokeModel 1 KB"),
                     ("invoke-stream-64", "InvokeModel stream 64 ev"), ("chat-1k", "Chat Completions 1 KB"),
                     ("chat-stream-64", "Chat Completions stream 64 ev"), ("messages-1k", "Messages 1 KB"),
                     ("messages-stream-64", "Messages stream 64 ev")]:
        row(f"{label}: latency p50, c=1 (µs)", g(s["c1"], m, "p50_us"))
        row(f"{label}: latency p99, c=1 (µs)", g(s["c1"], m, "p99_us"))
        row(f"{label}: added p50 over emulator (µs)", g(s["added_over_emulator"], m, "p50_us"))
        row(f"{label}: added p99 over emulator (µs)", g(s["added_over_emulator"], m, "p99_us"))
    row("Stream: added TTFB p99 over emulator (µs)", g(s["added_over_emulator"], "stream-64", "ttfb_p99_us"))
    row("Stream: added first-event p99 over emulator (µs)", g(s["added_over_emulator"], "stream-64", "first_event_p99_us"))
    row("Stream: added per-event gap p50 (µs)", g(s["added_over_emulator"], "stream-64", "event_gap_p50_us"), nd=2)
    for m, label in [("converse-1k", "1 KB"), ("converse-10k", "10 KB"), ("stream-64", "stream"),
                     ("invoke-1k", "invoke 1 KB"), ("invoke-stream-64", "invoke stream"),
                     ("chat-1k", "chat 1 KB"), ("chat-stream-64", "chat stream"),
                     ("messages-1k", "messages 1 KB"), ("messages-stream-64", "messages stream")]:
        row(f"Throughput c=16, {label} (req/s)", g(s["c16"], m, "throughput_rps"))
    row("Max req/s with p99 < 5 ms, 1 KB (constant rate)", lambda c: (s["rate"].get(c) or {}).get("max_rps_p99_under_5ms"))
    for m, label in [("converse-1k", "1 KB"), ("converse-10k", "10 KB"), ("stream-64", "stream"),
                     ("invoke-1k", "invoke 1 KB"), ("invoke-stream-64", "invoke stream"),
                     ("chat-1k", "chat 1 KB"), ("chat-stream-64", "chat stream"),
                     ("messages-1k", "messages 1 KB"), ("messages-stream-64", "messages stream")]:
        row(f"Gateway CPU-µs per request, c=16, {label}", g(s["c16"], m, "cpu_us_per_request"), nd=1)
    row("Gateway CPU-µs per stream event, (stream − 1 KB Converse) / 64", lambda c: (s["cpu_us"].get(c) or {}).get("per_event_us"), nd=2)
    row("Gateway RSS after the run (MiB)", lambda c: (meta["rss_kb"].get(c) or 0) / 1024 or None, nd=1)
    rows.append("")
    rows.append(f"Filter (Tollgate − bare Envoy, same round, median of rounds), c=1:")
    for m, *_ in MIX:
        fa = s["filter_added"].get("tollgate", {}).get(m)
        if fa:
            rows.append(f"- {m}: p50 +{fa['p50_us']:.0f} µs, p99 +{fa['p99_us']:.0f} µs"
                        + (f", first event p99 +{fa['first_event_p99_us']:.0f} µs" if "first_event_p99_us" in fa else ""))
    rows.append(f"- tollgate_filter.wasm: {meta['wasm_bytes']:,} bytes ({meta['wasm_gzip_bytes']:,} gzipped)")
    rows.append("")
    rows.append("Translated routes over the same gateway's native route (c=1: same round, median of "
                "rounds; CPU: c=16):")
    for t in [c for c in ("tollgate", "spin", "litellm") if c in names]:
        ta = s.get("translated_added", {}).get(t, {})
        for m, native in NATIVE_OF.items():
            a = ta.get(m)
            if a:
                rows.append(f"- {t} {m} over {native}: p50 {a['p50_us']:+.0f} µs, p99 {a['p99_us']:+.0f} µs"
                            + (f", first event p99 {a['first_event_p99_us']:+.0f} µs, event gap p50 "
                               f"{a['event_gap_p50_us']:+.2f} µs" if "first_event_p99_us" in a else ""))
        for api, tr in ((s["cpu_us"].get(t) or {}).get("translated") or {}).items():
            rows.append(f"- {t} {api} CPU: {tr['per_request_us']:+.1f} µs per request, {tr['stream_us']:+.1f} µs per "
                        f"64-event stream, {tr['per_event_us']:+.2f} µs per event")
    return "\n".join(rows)


def _dig(d, c, *ks):
    v = d.get(c)
    for k in ks:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def plot(s: dict, path: Path, names: list[str], meta: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"emulator": "#555555", "envoy": "#1f77b4", "tollgate": "#d62728",
              "litellm": "#2ca02c", "spin": "#9467bd"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    for ax, q, title in [(axes[0], "p50_us", "p50"), (axes[1], "p99_us", "p99")]:
        for t in names:
            curve = (s["rate"].get(t) or {}).get("curve") or []
            pts = sorted((c["offered_rps"], c[q] / 1000) for c in curve if c[q] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors.get(t),
                        label=LABELS.get(t, t), linewidth=2, markersize=4)
        ax.axhline(5, color="#999999", linestyle="--", linewidth=1, label="5 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s, constant rate, log)")
        ax.set_title(f"Converse 1 KB: {title} latency vs load")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms, log; from scheduled send)")
    axes[1].legend(loc="upper left", fontsize=9)
    fig.suptitle(f"Tollgate benchmark — gateway on 1 core, load generator + emulator on the other "
                 f"({meta['machine']['cpu_model']}, {meta['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]

    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:
            return None
    return {"cpu_model": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 1048576, 1),
            "kernel": platform.release(), "envoy": ver([str(ENVOY), "--version"]),
            "rustc": ver(["rustc", "--version"]), "python": platform.python_version()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds; exit 1 unless every gateway served")
    ap.add_argument("--out", default=None, help="results directory (default bench/, smoke: bench/.work/smoke)")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--no-spin", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--c16-rounds", type=int, default=3, help="interleaved c=16 rounds (median reported)")
    ap.add_argument("--no-pm-qos", action="store_true", help="let idle CPUs halt (see hold_pm_qos)")
    ap.add_argument("--max-wait-quiet", type=float, default=float(os.environ.get("BENCH_MAX_WAIT_QUIET_S", 600)))
    args = ap.parse_args()
    smoke = args.smoke
    t_start = time.monotonic()

    out_dir = Path(args.out) if args.out else (BENCH / ".work/smoke" if smoke else BENCH)
    workdir = BENCH / ".work" / ("smoke" if smoke else "full")
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))

    for p, what in [(WASM, "make wasm"), (EMULATOR, "make emulator"), (ENVOY, "make venv"),
                    (DRIVER, "the bench driver build")]:
        if not p.exists():
            print(f"missing {p} ({what})", file=sys.stderr)
            return 2
    if os.cpu_count() < 2:
        print("needs 2 cores", file=sys.stderr)
        return 2
    skipped = {}
    use_litellm = not args.no_litellm and LITELLM.exists()
    if not use_litellm:
        skipped["litellm"] = "disabled" if args.no_litellm else f"{LITELLM} not installed"
    spin_cli = None
    if not args.no_spin and SPIN_WASM.exists():
        try:
            spin_cli = spin_binary()
        except RuntimeError as e:
            skipped["spin"] = str(e).splitlines()[0]
    elif not args.no_spin:
        skipped["spin"] = f"not built yet: {SPIN_WASM.relative_to(ROOT) if SPIN_WASM.is_relative_to(ROOT) else SPIN_WASM} missing"
    else:
        skipped["spin"] = "disabled"
    use_spin = spin_cli is not None

    meta = {"mode": "smoke" if smoke else "full", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_info(), "skipped": skipped,
            "git": subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                  capture_output=True, text=True).stdout.strip(),
            "wasm": str(WASM), "wasm_bytes": WASM.stat().st_size,
            "wasm_gzip_bytes": len(gzip.compress(WASM.read_bytes(), 9)),
            "wasm_sha256": hashlib.sha256(WASM.read_bytes()).hexdigest(),
            "pinning": {"gateway": f"core {GATEWAY_CORE} (taskset; Envoy --concurrency 1)",
                        "load_generator_and_emulator": f"core {LOAD_CORE}"},
            "rss_kb": {}}
    log(f"{meta['mode']} run; wasm {meta['wasm_bytes']:,} B; skipped: {skipped or 'nothing'}")
    if not smoke:
        meta["quiet_before"] = wait_for_quiet(args.max_wait_quiet)
        log(f"machine: other processes {meta['quiet_before']['other_cpu_pct']}% of a core, "
            f"load {meta['quiet_before']['loadavg']}")

    qos_fd = None if args.no_pm_qos else hold_pm_qos()
    meta["pm_qos_cpu_dma_latency_0"] = qos_fd is not None
    bodies = write_bodies(workdir)
    failures: list[str] = []
    try:
        emu = Emulator(workdir)
        runner = Runner(workdir, emu, bodies)
        runner.quiet_budget_s = 0 if smoke else args.max_wait_quiet
        direct_prefix = f"/model/{urllib.parse.quote(MODEL_ID, safe='')}"
        targets = [Target("emulator", emu.url, direct_prefix, f"authorization: Bearer {BEDROCK_API_KEY}",
                          emu.p.pid, "bearer")]
        envoy = Envoy(workdir, "envoy", False, emu.port)
        tollgate = Envoy(workdir, "tollgate", True, emu.port)
        meta["rss_kb_idle"] = {"envoy": rss_kb(envoy.p.pid), "tollgate": rss_kb(tollgate.p.pid)}
        targets.append(Target("envoy", envoy.url, direct_prefix, f"authorization: Bearer {BEDROCK_API_KEY}",
                              envoy.p.pid, "bearer"))
        targets.append(Target("tollgate", tollgate.url, f"/model/{ALIAS}", f"authorization: Bearer {TOLLGATE_KEY}",
                              tollgate.p.pid, "sigv4", apis=TRANSLATED))
        spin = None
        if use_spin:
            try:
                spin = Spin(workdir, emu.port, spin_cli)
                targets.append(Target("spin", spin.url, f"/model/{ALIAS}",
                                      f"authorization: Bearer {TOLLGATE_KEY}", spin.p.pid, "sigv4",
                                      apis=TRANSLATED))
                meta["rss_kb_idle"]["spin"] = rss_kb(spin.p.pid)
            except Exception as e:
                failures.append(f"spin: {e}")
                log(f"spin did not start: {e}")

        verify_n = 5 if smoke else 20
        meta["verified"] = {}
        for t in targets:
            v = verify_ledger(runner, t, verify_n)
            meta["verified"][t.name] = v
            if not v["ok"]:
                failures.append(f"{t.name}: ledger check failed: {v['problems'][:3]}")

        # Phase 1: c=1, A/B rounds interleaved (all of these are idle when not driven).
        rounds = 1 if smoke else args.rounds
        c1_rounds(runner, targets, rounds, duration=0.5 if smoke else 1.5,
                  requests=30 if smoke else None)
        # Phase 2: c=16 in interleaved rounds, then the constant-rate sweep, one gateway at a time.
        c16_rounds(runner, targets, 1 if smoke else args.c16_rounds, duration=0.5 if smoke else 3.0,
                   requests=200 if smoke else None)
        for t in targets:
            sweep(runner, t, c16_base(runner, t), duration=0.5 if smoke else 3.0,
                  fractions=[0.1, 0.5] if smoke else SWEEP_FRACTIONS)
            meta["rss_kb"][t.name] = rss_kb(t.pid)
        if spin:
            spin.p.stop()
        meta["usage_records_logged_by_tollgate"] = tollgate.usage_records()

        # Phase 3: LiteLLM, alone on the gateway core (Envoys stopped).
        envoy.p.stop()
        tollgate.p.stop()
        if use_litellm:
            try:
                t0 = time.monotonic()
                ll = LiteLLM(workdir, emu.port)
                meta["litellm"] = {"version": ll.version(), "start_s": round(time.monotonic() - t0, 1),
                                   "route": f"POST /bedrock/model/{ALIAS}/converse[-stream] (Bedrock pass-through, router model)"}
                meta["litellm"]["translated_routes"] = "POST /v1/chat/completions, POST /v1/messages (router model)"
                lt = Target("litellm", ll.url, f"/bedrock/model/{ALIAS}",
                            f"authorization: Bearer {LITELLM_MASTER_KEY}", ll.p.pid, "sigv4",
                            apis=TRANSLATED)
                meta["rss_kb_idle"]["litellm"] = rss_kb(ll.p.pid)
                v = verify_ledger(runner, lt, 3 if smoke else 10)
                meta["verified"]["litellm"] = v
                if not v["ok"]:
                    failures.append(f"litellm: ledger check failed: {v['problems'][:3]}")
                # One longer round, paired with an emulator run, for added latency.
                # (Smoke: a few requests each; LiteLLM spends 20-60 ms on one.)
                c1_dur = 0.5 if smoke else 8.0
                for m, *_ in MIX:
                    if targets[0].serves(m):
                        runner.drive(targets[0], m, concurrency=1, duration=c1_dur, warmup=0.5,
                                     requests=8 if smoke else None, phase="c1-ll", extra={"round": 100})
                    runner.drive(lt, m, concurrency=1, duration=c1_dur, warmup=0.5,
                                 requests=8 if smoke else None, phase="c1-ll", extra={"round": 100})
                c16(runner, lt, duration=0.5 if smoke else 5.0, requests=16 if smoke else None)
                sweep(runner, lt, c16_base(runner, lt), duration=0.5 if smoke else 4.0,
                      fractions=[0.5] if smoke else [0.05, 0.1, 0.25, 0.5, 0.7, 0.85, 1.0, 1.15])
                meta["rss_kb"]["litellm"] = rss_kb(ll.p.pid)
                ll.p.stop()
            except Exception as e:
                failures.append(f"litellm: {e}")
                log(f"litellm failed: {e}")
    finally:
        stop_all()
        if qos_fd is not None:
            os.close(qos_fd)

    names = [t.name for t in targets] + (["litellm"] if any(r["target"] == "litellm" for r in runner.runs) else [])
    for r in runner.runs:
        if not r["served"]:
            failures.append(f"{r['target']}/{r['mix']}/{r['phase']}: ok={r['ok']} errors={r['errors']} "
                            f"{r['error_kinds']} upstream={r['upstream_requests']}")
    s = summarize(runner.runs, names)
    checks = targets_check(s)
    if not smoke:
        meta["quiet_after"] = {"loadavg": loadavg(), "busy": busy_processes(2.0)}
    meta["duration_s"] = round(time.monotonic() - t_start, 1)
    meta["runs_rerun_because_disturbed"] = len(runner.discarded)
    meta["runs_kept_although_disturbed"] = sum(1 for r in runner.runs if r.get("contended"))
    results = {"meta": meta, "summary": s, "targets": checks, "failures": failures, "runs": runner.runs,
               "discarded_runs": runner.discarded}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    tbl = table(s, meta, names)
    md = [f"Run: {meta['date']}, {meta['mode']}, git {meta['git']}, {meta['duration_s']} s",
          f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['cores']} cores, "
          f"{meta['machine']['mem_gib']} GiB, Linux {meta['machine']['kernel']}, {meta['machine']['envoy']}", "", tbl, "",
          "Targets (issue 5):"]
    for k, v in checks.items():
        md.append(f"- {k}: {json.dumps({kk: vv for kk, vv in v.items() if kk != 'note'})}")
    if skipped:
        md.append(f"Skipped: {skipped}")
    if smoke:
        # Tiny runs: their numbers mean nothing. Say only who served what.
        md = [f"Smoke run ({meta['duration_s']} s): the machinery works; these are not measurements."]
        for n in names:
            rs = [r for r in runner.runs if r["target"] == n]
            md.append(f"- {n}: {sum(r['served'] for r in rs)}/{len(rs)} runs served, "
                      f"{sum(r['ok'] + r['warmup_ok'] for r in rs)} requests answered 200 and seen by the emulator; "
                      f"ledger check {'OK' if meta['verified'].get(n, {}).get('ok') else 'FAILED'}")
        if skipped:
            md.append(f"Skipped: {skipped}")
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    print("\n" + "\n".join(md))
    if not smoke:
        try:
            plot(s, out_dir / "latency.png", names, meta)
            log(f"wrote {out_dir / 'latency.png'}")
        except Exception as e:
            log(f"plot failed: {e}")
    log(f"wrote {out_dir / 'results.json'} in {meta['duration_s']} s")
    if failures:
        print("\nNOT SERVED / FAILED:\n  " + "\n  ".join(failures[:30]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
