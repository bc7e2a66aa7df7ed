"""Starts the real things the integration tests drive: the Bedrock emulator and Envoy with the
Tollgate filter, configured from the shipped envoy/envoy-emulator.yaml."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target/wasm32-wasip1/release/tollgate_filter.wasm"
EMULATOR = ROOT / "target/release/tollgate-emulator"
ENVOY = ROOT / ".venv/bin/envoy"

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def envoy_config(plugin_config: dict | str, upstream_port: int, tls_dir: Path) -> dict:
    """envoy/envoy-emulator.yaml, with ports picked by the OS and the given plugin config."""
    cfg = yaml.safe_load((ROOT / "envoy/envoy-emulator.yaml").read_text())
    cfg = copy.deepcopy(cfg)  # break YAML anchors: both listeners share one filter list
    res = cfg["static_resources"]
    for listener in res["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
        for chain in listener["filter_chains"]:
            hcm = chain["filters"][0]["typed_config"]
            wasm = hcm["http_filters"][0]["typed_config"]["config"]
            wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
            wasm["configuration"]["value"] = (
                plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
            )
            ts = chain.get("transport_socket")
            if ts:
                certs = ts["typed_config"]["common_tls_context"]["tls_certificates"][0]
                certs["certificate_chain"]["filename"] = str(tls_dir / "cert.pem")
                certs["private_key"]["filename"] = str(tls_dir / "key.pem")
    endpoint = res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    return cfg


class Envoy:
    def __init__(self, workdir: Path, plugin_config: dict | str, upstream_port: int, tls_dir: Path,
                 concurrency: int = 2, name: str = "envoy"):
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self.admin_path = workdir / f"{name}.admin"
        self.admin_path.unlink(missing_ok=True)
        self.config_path.write_text(json.dumps(envoy_config(plugin_config, upstream_port, tls_dir)))
        self.proc = subprocess.Popen(
            [
                str(ENVOY), "-c", str(self.config_path),
                "--concurrency", str(concurrency),
                "--admin-address-path", str(self.admin_path),
                "--log-path", str(self.log_path),
                "--disable-hot-restart",
                # The log is flushed every 10 s by default; tests read usage records from it.
                "--file-flush-interval-msec", "20",
                "-l", "info",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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

    def usage_records(self) -> list[dict]:
        """Every `tollgate.usage` JSON line the filter logged, with the logging thread's id."""
        out = []
        for line in self.log().splitlines():
            i = line.find("tollgate.usage ")
            if i >= 0:
                record = json.loads(line[i + len("tollgate.usage "):])
                thread = re.search(r"\]\[(\d+)\]\[", line)
                record["_thread"] = thread.group(1) if thread else None
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
