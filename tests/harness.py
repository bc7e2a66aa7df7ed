"""Starts the real things the integration tests drive: the Bedrock emulator, and Tollgate on one
of its two hosts: Envoy with the filter (configured from the shipped envoy/envoy-emulator.yaml)
or the Spin component on tollgate-spin-host (Spin 4.1 semantics); and redis-server for Spin's
shared state."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target/wasm32-wasip1/release/tollgate_filter.wasm"
EMULATOR = ROOT / "target/release/tollgate-emulator"
ENVOY = ROOT / ".venv/bin/envoy"
SPIN_HOST = ROOT / "target/spin-host/release/tollgate-spin-host"
SPIN_COMPONENT = ROOT / "target/wasm32-wasip2/release/tollgate_spin.wasm"

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIDTOLLGATETEST"
SECRET_ACCESS_KEY = "tollgate-test-secret"
SESSION_TOKEN = "tollgate-test-session-token"

START_TIMEOUT_S = 20


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def http_json(url: str, method: str = "GET", timeout: float = 10):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def stop_process(proc: subprocess.Popen, timeout_s: float = 10):
    """Terminates `proc`, killing it if it does not exit within `timeout_s`; bounded either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


class Emulator:
    def __init__(self, workdir: Path, *extra_args: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "emulator.log"
        self.proc = subprocess.Popen(
            [
                str(EMULATOR),
                "--listen", "127.0.0.1:0",
                "--region", REGION,
                "--access-key-id", ACCESS_KEY_ID,
                "--secret-access-key", SECRET_ACCESS_KEY,
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"),
            text=True,
        )
        line = self.proc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line or "")
        if not m:
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r}, see {self.log_path}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def ledger(self) -> list[dict]:
        return http_json(f"{self.url}/_emulator/ledger")

    def reset(self):
        http_json(f"{self.url}/_emulator/reset", method="POST")

    def stop(self):
        stop_process(self.proc, 5)


USAGE_PREFIX = "tollgate.usage "


class Gateway:
    """What the tests use of a running gateway, whichever the host: `kind`, `http_url`,
    `https_url`, `log()`, `usage_records()`, `settled_record_count()`, `stop()`."""

    kind = "?"
    http_url: str
    https_url: str

    def log(self) -> str:
        raise NotImplementedError

    def _thread_of(self, line: str):
        return None

    def usage_records(self) -> list[dict]:
        """Every `tollgate.usage` JSON line the gateway logged, with `_thread`: the logging
        Envoy worker's thread id (None on Spin, where every request is a fresh instance)."""
        out = []
        for line in self.log().splitlines():
            i = line.find(USAGE_PREFIX)
            if i >= 0:
                record = json.loads(line[i + len(USAGE_PREFIX):])
                record["_thread"] = self._thread_of(line)
                out.append(record)
        return out

    def settled_record_count(self, quiet_s: float = 0.2, timeout_s: float = 10) -> int:
        """The number of usage records once none has arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        count, since = len(self.usage_records()), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = len(self.usage_records())
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return count
        raise TimeoutError("usage records kept arriving")

    def stop(self):
        raise NotImplementedError


def envoy_config(plugin_config: dict | str, upstream_port: int, tls_dir: Path,
                 hcm_overrides: dict | None = None, route_timeout: str | None = None) -> dict:
    """envoy/envoy-emulator.yaml, with ports picked by the OS and the given plugin config;
    `hcm_overrides` are set on every listener's http_connection_manager (deployment variants);
    `route_timeout` (e.g. "1s") replaces the route's `timeout: 0s`."""
    cfg = yaml.safe_load((ROOT / "envoy/envoy-emulator.yaml").read_text())
    cfg = copy.deepcopy(cfg)  # break YAML anchors: both listeners share one filter list
    res = cfg["static_resources"]
    for listener in res["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
        for chain in listener["filter_chains"]:
            hcm = chain["filters"][0]["typed_config"]
            hcm.update(copy.deepcopy(hcm_overrides or {}))
            wasm = hcm["http_filters"][0]["typed_config"]["config"]
            wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
            wasm["configuration"]["value"] = (
                plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
            )
            if route_timeout is not None:
                for vhost in hcm["route_config"]["virtual_hosts"]:
                    for route in vhost["routes"]:
                        route["route"]["timeout"] = route_timeout
            ts = chain.get("transport_socket")
            if ts:
                certs = ts["typed_config"]["common_tls_context"]["tls_certificates"][0]
                certs["certificate_chain"]["filename"] = str(tls_dir / "cert.pem")
                certs["private_key"]["filename"] = str(tls_dir / "key.pem")
    endpoint = res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    return cfg


class Envoy(Gateway):
    kind = "envoy"

    def __init__(self, workdir: Path, plugin_config: dict | str, upstream_port: int, tls_dir: Path,
                 concurrency: int = 2, name: str = "envoy", bootstrap: dict | None = None,
                 env: dict | None = None, hcm_overrides: dict | None = None,
                 route_timeout: str | None = None):
        """`bootstrap`: a whole Envoy configuration to run instead of envoy/envoy-emulator.yaml
        (`plugin_config`, `upstream_port`, `tls_dir`, `hcm_overrides` and `route_timeout` are then
        unused); `env`: variables added to Envoy's environment."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self.admin_path = workdir / f"{name}.admin"
        self.admin_path.unlink(missing_ok=True)
        if bootstrap is None:
            bootstrap = envoy_config(plugin_config, upstream_port, tls_dir, hcm_overrides, route_timeout)
        self.config_path.write_text(json.dumps(bootstrap))
        self.proc = subprocess.Popen(
            [
                str(ENVOY), "-c", str(self.config_path),
                "--concurrency", str(concurrency),
                "--admin-address-path", str(self.admin_path),
                "--log-path", str(self.log_path),
                "--disable-hot-restart",
                # The log is flushed every 10 s by default; tests read usage records from it.
                "--file-flush-interval-msec", "20",
                "-l", os.environ.get("ENVOY_LOG_LEVEL", "info"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
        try:
            admin = wait_until(
                lambda: self.admin_path.exists() and self.admin_path.read_text().strip(),
                START_TIMEOUT_S, "the Envoy admin address",
            )
            self.admin = f"http://{admin}"
            wait_until(self._ready, START_TIMEOUT_S, "Envoy to be ready")
            listeners = http_json(f"{self.admin}/listeners?format=json")["listener_statuses"]
            ports = {l["name"]: l["local_address"]["socket_address"]["port_value"] for l in listeners}
        except Exception:
            self.stop()
            raise RuntimeError(f"Envoy did not start; see {self.log_path}")
        self.http_url = f"http://127.0.0.1:{ports['tollgate_http']}"
        if "tollgate_https" in ports:
            self.https_url = f"https://127.0.0.1:{ports['tollgate_https']}"

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"Envoy exited with {self.proc.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"{self.admin}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _thread_of(self, line: str):
        thread = re.search(r"\]\[(\d+)\]\[", line)
        return thread.group(1) if thread else None

    def stop(self):
        stop_process(self.proc, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_listening_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first stdout line of a process that announces `listening on HOST:PORT`; bounded."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline() if ready else ""


class SpinHost(Gateway):
    """The Spin component (target/wasm32-wasip2/release/tollgate_spin.wasm) on
    tollgate-spin-host: configuration in the Spin variable `tollgate_config`, outbound allowed
    to the emulator only, key-value store `default` in memory or on a Redis URL. One port serves
    HTTPS (the tests' certificate, as `spin up --tls-cert`) and plain HTTP."""

    kind = "spin"

    def __init__(self, workdir: Path, plugin_config: dict | str | None, upstream_port: int, tls_dir: Path,
                 name: str = "spin", store: str = "memory", variables: dict | None = None,
                 env: dict | None = None):
        for built, how in ((SPIN_COMPONENT, "make spin-build"), (SPIN_HOST, "make spin-host")):
            if not built.exists():
                raise RuntimeError(f"{built} is missing: build it with `{how}` (or `make test`)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        if isinstance(plugin_config, dict):
            # Envoy's cluster decides the upstream scheme; a Spin component opens the connection
            # itself, and the emulator speaks plain HTTP.
            plugin_config = json.dumps({"upstream_scheme": "http", **plugin_config})
        args = [
            str(SPIN_HOST),
            "--component", str(SPIN_COMPONENT),
            "--listen", "127.0.0.1:0",
            "--tls-cert", str(tls_dir / "cert.pem"),
            "--tls-key", str(tls_dir / "key.pem"),
            "--accept-plain-http",
            "--allowed-outbound-host", f"http://127.0.0.1:{upstream_port}",
            "--key-value-store", f"default={store}",
        ]
        if plugin_config is not None:  # None: the variable is missing
            args += ["--variable", f"tollgate_config={plugin_config}"]
        for k, v in (variables or {}).items():
            args += ["--variable", f"{k}={v}"]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"),
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        line = read_listening_line(self.proc, START_TIMEOUT_S)
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line or "")
        if not m:
            self.stop()
            raise RuntimeError(f"tollgate-spin-host did not start: {line!r}, see {self.log_path}")
        self.port = int(m.group(1))
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.https_url = f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        stop_process(self.proc, 10)


def start_gateway(kind: str, workdir: Path, plugin_config: dict | str, upstream_port: int, tls_dir: Path,
                  name: str = "gateway", **kw) -> Gateway:
    """Tollgate on `kind` ("envoy" or "spin") in front of the emulator on `upstream_port`.
    Envoy takes `concurrency`, `hcm_overrides`, `route_timeout`; Spin takes `store`, `variables`, `env`."""
    if kind == "envoy":
        return Envoy(workdir, plugin_config, upstream_port, tls_dir, name=name,
                     concurrency=kw.pop("concurrency", 2), **kw)
    if kind == "spin":
        kw.pop("concurrency", None)
        return SpinHost(workdir, plugin_config, upstream_port, tls_dir, name=name, **kw)
    raise ValueError(f"unknown host {kind!r}")


class Redis:
    """A private redis-server on a free loopback port, without persistence; `stop()` ends it."""

    def __init__(self, workdir: Path):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise FileNotFoundError("redis-server is not on PATH (apt-get install -y redis-server)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "redis.log"
        last = None
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            )
            try:
                wait_until(self._pong, 10, "redis-server to answer PING")
                return
            except TimeoutError as e:  # the port was taken in between: try another
                last = e
                self.stop()
        raise RuntimeError(f"redis-server did not start: {last}; see {self.log_path}")

    def _pong(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self):
        stop_process(self.proc, 10)
