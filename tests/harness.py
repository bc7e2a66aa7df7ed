"""Starts the real things the integration tests drive: the Bedrock emulator, and Tollgate on one
of its two hosts: Envoy with the filter (configured from the shipped envoy/envoy-emulator.yaml)
or the Spin component under real `spin up` (the shipped host-spin/spin.toml); and redis-server for
Spin's shared state."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
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
SPIN_COMPONENT = ROOT / "target/wasm32-wasip2/release/tollgate_spin.wasm"

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIDTOLLGATETEST"
SECRET_ACCESS_KEY = "tollgate-test-secret"
SESSION_TOKEN = "tollgate-test-session-token"

START_TIMEOUT_S = 20


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def http_json_post(url: str, body: dict, timeout: float = 10):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = r.read()
    return json.loads(out) if out else None


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
    def __init__(self, workdir: Path, *extra_args: str, access_key_id: str = ACCESS_KEY_ID,
                 secret_access_key: str = SECRET_ACCESS_KEY):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "emulator.log"
        self.proc = subprocess.Popen(
            [
                str(EMULATOR),
                "--listen", "127.0.0.1:0",
                "--region", REGION,
                "--access-key-id", access_key_id,
                "--secret-access-key", secret_access_key,
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
    """What the tests use of a running gateway, whichever the host: `kind`, `url` (what raw HTTP
    clients use: plain HTTP where the host serves it, else HTTPS trusting `ca`), `https_url`,
    `request()`, `log()`, `usage_records()`, `settled_record_count()`, `stop()`."""

    kind = "?"
    # Envoy serves both schemes on two listeners; `spin up` serves one, HTTPS here.
    http_url: str | None = None
    https_url: str
    ca: Path

    @property
    def url(self) -> str:
        return self.http_url or self.https_url

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10):
        """(status, headers, body) of one raw request to `url`."""
        return https_request(self.url + path, self.ca, method, body, headers, timeout)

    def log(self) -> str:
        raise NotImplementedError

    def _thread_of(self, line: str):
        return None

    def usage_records(self) -> list[dict]:
        """Every `tollgate.usage` JSON line the gateway logged, with `_thread`: the logging
        Envoy worker's thread id (None on Spin, where every request is a fresh instance)."""
        out = []
        text = self.log()
        # The last line may still be being written (a record read half-way is not JSON yet):
        # only lines that have ended are read.
        for line in text[: text.rfind("\n") + 1].splitlines():
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
    # Break YAML anchors (both listeners share one filter list; both Tollgate filters one
    # vm_config and document): every copy is then changed on its own.
    cfg = json.loads(json.dumps(cfg))
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
    for wasm in upstream_filters(res["clusters"]):
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        wasm["configuration"]["value"] = (
            plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        )
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    return cfg


def upstream_filters(clusters: list) -> list[dict]:
    """The Wasm `config` of every Tollgate upstream filter on `clusters` (the Bedrock cluster's
    attempts filter), to point at this build and document like the downstream one."""
    out = []
    for cluster in clusters:
        options = cluster.get("typed_extension_protocol_options", {})
        http = options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
        for f in http.get("http_filters", []):
            if f.get("name") == "envoy.filters.http.wasm":
                out.append(f["typed_config"]["config"])
    return out


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
        self.ports = ports
        if "tollgate_http" in ports:
            self.http_url = f"http://127.0.0.1:{ports['tollgate_http']}"
        if "tollgate_https" in ports:
            self.https_url = f"https://127.0.0.1:{ports['tollgate_https']}"
        self.ca = tls_dir / "ca.pem"

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


def spin_binary() -> str:
    """A Spin >= 4.1 (tests/find-spin.sh: $TOLLGATE_SPIN, `spin` on PATH, ../shared/tools/spin)."""
    out = subprocess.run(["bash", str(ROOT / "tests/find-spin.sh")], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or "tests/find-spin.sh found no Spin >= 4.1")
    return out.stdout.strip()


SPIN_MANIFEST = ROOT / "host-spin/spin.toml"


class Spin(Gateway):
    """Tollgate's component under real `spin up --from host-spin/spin.toml`, as a user runs it:
    HTTPS with the tests' certificate (`--tls-cert/--tls-key`: Spin serves one scheme per
    listener, and boto3 sends a bearer key only over HTTPS), the configuration and credentials as
    `SPIN_VARIABLE_*` (and `--variable`), the emulator as the manifest's `upstream_origin`, and
    the `default` key-value store on SQLite in a temporary state directory or on a Redis
    database, through a generated `--runtime-config-file`."""

    kind = "spin"

    def __init__(self, workdir: Path, plugin_config: dict | str | None, upstream_port: int, tls_dir: Path,
                 name: str = "spin", redis: "Redis | None" = None, redis_db: int | None = None,
                 variables: dict | None = None, env: dict | None = None):
        if not SPIN_COMPONENT.exists():
            raise RuntimeError(f"{SPIN_COMPONENT} is missing: build it with `make spin-build` (or `make test`)")
        self.spin = spin_binary()
        self.dir = workdir / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "spin.log"
        self.ca = tls_dir / "ca.pem"
        self.redis = redis
        if redis is not None:
            self.redis_db = redis.new_db() if redis_db is None else redis_db
            self.store = "redis"
            store_config = f'type = "redis"\nurl = "{redis.url(self.redis_db)}"\n'
        else:
            self.store = "sqlite"
            self.sqlite_path = self.dir / "kv.db"
            store_config = f'type = "spin"\npath = "{self.sqlite_path}"\n'
        runtime_config = self.dir / "runtime-config.toml"
        runtime_config.write_text("[key_value_store.default]\n" + store_config)
        if isinstance(plugin_config, dict):
            # Envoy's cluster decides the upstream scheme; a Spin component opens the connection
            # itself, and the emulator speaks plain HTTP.
            plugin_config = json.dumps({"upstream_scheme": "http", **plugin_config})
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SPIN_")}
        child_env["SPIN_VARIABLE_UPSTREAM_ORIGIN"] = f"http://127.0.0.1:{upstream_port}"
        if plugin_config is not None:  # None: the required variable is missing
            child_env["SPIN_VARIABLE_TOLLGATE_CONFIG"] = plugin_config
        child_env.update(env or {})
        last = ""
        for _ in range(3):  # a free port can be taken before Spin binds it: try another
            self.port = free_port()
            args = [
                self.spin, "up", "--from", str(SPIN_MANIFEST),
                "--listen", f"127.0.0.1:{self.port}",
                "--tls-cert", str(tls_dir / "cert.pem"), "--tls-key", str(tls_dir / "key.pem"),
                "--state-dir", str(self.dir / "state"),
                "--runtime-config-file", str(runtime_config),
            ]
            for k, v in (variables or {}).items():
                args += ["--variable", f"{k}={v}"]
            with open(self.log_path, "ab") as log:
                # A session of its own: `spin up` runs the app in a child (`spin trigger http`),
                # and stop() ends both together.
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                             cwd=self.dir, start_new_session=True)
            try:
                wait_until(self._ready, START_TIMEOUT_S, "`spin up` to serve")
                break
            except (TimeoutError, RuntimeError) as e:
                last = str(e)
                self.stop()
        else:
            raise RuntimeError(f"`spin up` did not start: {last}; see {self.log_path}")
        self.https_url = f"https://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"`spin up` exited with {self.proc.returncode}: {self.log()[-2000:]}")
        if f"Serving https://127.0.0.1:{self.port}" not in self.log():
            return False
        try:  # the listener answers over TLS (401 without a key; 500 without a valid configuration)
            https_request(f"https://127.0.0.1:{self.port}/usage", self.ca, timeout=2)
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def store_keys(self) -> list[str]:
        """Every key in this instance's key-value store (its Redis database, or its SQLite file)."""
        if self.store == "redis":
            return self.redis.keys(self.redis_db)
        import sqlite3
        with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10) as db:
            return [k for (k,) in db.execute("SELECT key FROM spin_key_value WHERE store = 'default'")]

    def stop(self):
        stop_process(self.proc, 10)
        try:  # anything of its session still running (the trigger, if `spin up` was killed)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def https_request(url: str, ca: Path, method: str = "GET", body: bytes | None = None,
                  headers: dict | None = None, timeout: float = 10):
    """(status, headers, body) of one request, verifying the server against `ca` for HTTPS."""
    import ssl
    import urllib.error
    context = ssl.create_default_context(cafile=str(ca)) if url.startswith("https:") else None
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


HOST_KINDS = ("envoy", "spin-sqlite", "spin-redis")


def start_gateway(kind: str, workdir: Path, plugin_config: dict | str, upstream_port: int, tls_dir: Path,
                  name: str = "gateway", **kw) -> Gateway:
    """Tollgate on `kind` (one of HOST_KINDS) in front of the emulator on `upstream_port`.
    Envoy takes `concurrency`, `hcm_overrides`, `route_timeout`; Spin takes `redis` (required for
    "spin-redis"), `variables`, `env`."""
    if kind == "envoy":
        kw.pop("redis", None)
        return Envoy(workdir, plugin_config, upstream_port, tls_dir, name=name,
                     concurrency=kw.pop("concurrency", 2), **kw)
    if kind in ("spin-sqlite", "spin-redis"):
        kw.pop("concurrency", None)
        redis = kw.pop("redis", None)
        if kind == "spin-redis" and redis is None:
            raise ValueError("spin-redis needs a Redis")
        return Spin(workdir, plugin_config, upstream_port, tls_dir, name=name,
                    redis=redis if kind == "spin-redis" else None, **kw)
    raise ValueError(f"unknown host {kind!r}")


class Redis:
    """A private redis-server on a free loopback port, without persistence; `stop()` ends it.
    It has many databases: each Spin gateway on it takes its own (`new_db()`)."""

    DATABASES = 1024

    def __init__(self, workdir: Path):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise FileNotFoundError("redis-server is not on PATH (apt-get install -y redis-server)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / "redis.log"
        self.next_db = 1
        last = None
        for _ in range(5):
            self.port = free_port()
            try:
                self._start()
                return
            except TimeoutError as e:  # the port was taken in between: try another
                last = e
        raise RuntimeError(f"redis-server did not start: {last}; see {self.log_path}")

    def _start(self):
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--databases", str(self.DATABASES)],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._pong, 10, "redis-server to answer PING")
        except TimeoutError:
            self.stop()
            raise

    def restart(self):
        """Starts it again, empty, on the same port (after `stop()`)."""
        self._start()

    def _pong(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            with RedisConnection(self.port) as r:
                return r.command("PING") == "PONG"
        except OSError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def new_db(self) -> int:
        """A database number no other user of this server has taken."""
        if self.next_db >= self.DATABASES:
            raise RuntimeError("out of Redis databases")
        self.next_db += 1
        return self.next_db - 1

    def connect(self) -> "RedisConnection":
        return RedisConnection(self.port)

    def keys(self, db: int) -> list[str]:
        with self.connect() as r:
            r.command("SELECT", str(db))
            return sorted(k.decode() for k in r.command("KEYS", "*"))

    def stop(self):
        stop_process(self.proc, 10)


class RedisConnection:
    """One connection speaking RESP2, enough for the tests' few commands (no client library)."""

    def __init__(self, port: int, timeout_s: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.sock.close()

    def command(self, *args: str):
        out = b"*%d\r\n" % len(args)
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        self.sock.sendall(out)
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exactly(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def stats(self) -> dict[str, int]:
        """INFO stats as numbers (total_commands_processed, total_connections_received, ...)."""
        text = self.command("INFO", "stats").decode()
        return {k: int(v) for k, v in (l.split(":", 1) for l in text.splitlines() if ":" in l)
                if v.strip().isdigit()}


def shipped_envoy_config(name: str, upstream_port: int, tls_dir: Path, document=None) -> dict:
    """envoy/<name> as shipped, changed only where a test must: every listener and the admin on
    a free port, the dev certificate and the module from this build, and every cluster pointed at
    the emulator on `upstream_port` (plain HTTP): Bedrock, and the AWS credentials endpoints whose
    addresses (169.254.169.254, 169.254.170.2) no test may reach. Requests keep the `:authority`
    Tollgate gives them, so signatures cover the real Bedrock host name. `document`: a function
    given the plugin's configuration document (a dict) to change (test keys, limits)."""
    cfg = json.loads(json.dumps(yaml.safe_load((ROOT / "envoy" / name).read_text())))  # no anchors
    res = cfg["static_resources"]
    for listener in res["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
        for chain in listener["filter_chains"]:
            hcm = chain["filters"][0]["typed_config"]
            wasm = hcm["http_filters"][0]["typed_config"]["config"]
            wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
            if document is not None:
                doc = json.loads(wasm["configuration"]["value"])
                document(doc)
                wasm["configuration"]["value"] = json.dumps(doc)
            ts = chain.get("transport_socket")
            if ts:
                certs = ts["typed_config"]["common_tls_context"]["tls_certificates"][0]
                certs["certificate_chain"]["filename"] = str(tls_dir / "cert.pem")
                certs["private_key"]["filename"] = str(tls_dir / "key.pem")
    for wasm in upstream_filters(res["clusters"]):
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        if document is not None:
            doc = json.loads(wasm["configuration"]["value"])
            document(doc)
            wasm["configuration"]["value"] = json.dumps(doc)
    for cluster in res["clusters"]:
        cluster["type"] = "STATIC"
        cluster.pop("dns_lookup_family", None)
        cluster.pop("transport_socket", None)
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": upstream_port}
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    text = json.dumps(cfg)
    assert "169.254." not in json.dumps(res["clusters"]), "a test would reach an AWS address"
    return json.loads(text)


def plugin_document(name: str) -> dict:
    """The Tollgate configuration document in envoy/<name>."""
    cfg = yaml.safe_load((ROOT / "envoy" / name).read_text())
    chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    wasm = chain["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
    return json.loads(wasm["configuration"]["value"])
