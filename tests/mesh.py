"""Envoy with Tollgate delivered by extension config discovery (ECDS) from a watched directory,
as the Istio manifests (envoy/istio/) and the plain-Envoy live configuration
(envoy/envoy-ecds.yaml, envoy/ecds/) set it up; the module read locally or fetched over HTTP
from a loopback server with its sha256.

What the tests put in place of what only a cluster provides is named once, here, and checked:
`changed_paths` of a manifest's value and the value Envoy is given must be exactly the declared
substitutions."""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import re
import subprocess
import threading
import urllib.request
from pathlib import Path

import yaml

import harness

ROOT = harness.ROOT
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
MANIFESTS = {
    "ingress-gateway": ROOT / "envoy/istio/ingress-gateway.yaml",
    "sidecar-egress": ROOT / "envoy/istio/sidecar-egress.yaml",
    # Callers by mesh identity (SPIFFE ID), not by key: run by tests/test_identity.py.
    "mesh-gateway": ROOT / "envoy/istio/mesh-gateway.yaml",
}
# The manifests whose callers present a Tollgate key.
KEYED_MANIFESTS = ("ingress-gateway", "sidecar-egress")
ECDS_BOOTSTRAP = ROOT / "envoy/envoy-ecds.yaml"
ECDS_RESOURCE = ROOT / "envoy/ecds/tollgate.yaml"
ECDS_UPDATE = ROOT / "envoy/ecds-update.sh"
# The cluster the manifests name for the module fetch: the test's loopback module server.
MODULE_CLUSTER = "tollgate-wasm"

# Paths (into an extension configuration) the tests substitute, and why.
REMOTE = ("typed_config", "config", "vm_config", "code", "remote")
MODULE_URI = REMOTE + ("http_uri", "uri")            # oci:// in the manifest: istio-agent's job
MODULE_SHA256 = REMOTE + ("sha256",)                 # an image digest there; the module's here
LOCAL_FILE = ("typed_config", "config", "vm_config", "code", "local", "filename")
DOCUMENT = ("typed_config", "config", "configuration", "value")   # the policy, when a test sets its own
# ...and into an HTTP filter: Istio serves ECDS over ADS, the test from a watched file.
ADS = ("config_discovery", "config_source", "ads")
PATH_SOURCE = ("config_discovery", "config_source", "path_config_source")


# --- documents -------------------------------------------------------------------------------

def manifest_filter(path: Path) -> tuple[dict, dict]:
    """The manifest's EnvoyFilter: (its EXTENSION_CONFIG value, its HTTP_FILTER value)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    [envoy_filter] = [d for d in docs if d["kind"] == "EnvoyFilter"]
    patches = envoy_filter["spec"]["configPatches"]
    assert sorted(p["applyTo"] for p in patches) == ["EXTENSION_CONFIG", "HTTP_FILTER"], path
    by_kind = {p["applyTo"]: p["patch"]["value"] for p in patches}
    return by_kind["EXTENSION_CONFIG"], by_kind["HTTP_FILTER"]


def shipped_resource() -> dict:
    """envoy/ecds/tollgate.yaml's one extension configuration (without its `@type`)."""
    [resource] = yaml.safe_load(ECDS_RESOURCE.read_text())["resources"]
    assert resource.pop("@type") == EXTENSION_TYPE
    return resource


def get(doc, path: tuple):
    for key in path:
        doc = doc[key]
    return doc


def substituted(doc: dict, changes: dict[tuple, object], removed: tuple[tuple, ...] = ()) -> dict:
    """A copy of `doc` with each path of `changes` set (its parent must exist) and each path of
    `removed` (which must exist) deleted."""
    out = copy.deepcopy(doc)
    for path in removed:
        del get(out, path[:-1])[path[-1]]
    for path, value in changes.items():
        get(out, path[:-1])[path[-1]] = value
    return out


def changed_paths(a, b, path: tuple = ()) -> set[tuple]:
    """Every leaf path where `a` and `b` differ (a key only on one side counts as its path)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for key in a.keys() | b.keys():
            if key not in a or key not in b:
                out.add(path + (key,))
            else:
                out |= changed_paths(a[key], b[key], path + (key,))
        return out
    return set() if a == b else {path}


def policy(upstream_port: int, keys: dict[str, tuple[str, dict | None]], **extra) -> str:
    """A Tollgate document in front of the emulator: `keys` maps an id to (secret, limits)."""
    doc = {
        "region": harness.REGION,
        "upstream_host": f"127.0.0.1:{upstream_port}",
        "aliases": {"claude-fast": "us.anthropic.claude-haiku-4-5-20251001-v1:0"},
        "api_keys": [
            {"id": kid, "sha256": harness.sha256_hex(secret), "models": ["*"], **({"limits": limits} if limits else {})}
            for kid, (secret, limits) in keys.items()
        ],
        "credentials": {
            "type": "inline",
            "access_key_id": harness.ACCESS_KEY_ID,
            "secret_access_key": harness.SECRET_ACCESS_KEY,
            "session_token": harness.SESSION_TOKEN,
        },
        **extra,
    }
    return json.dumps(doc, indent=1)


# --- the module over HTTP --------------------------------------------------------------------

class ModuleServer:
    """Serves Wasm modules over loopback HTTP (path -> bytes) and counts the GETs of each."""

    def __init__(self, modules: dict[str, bytes]):
        self.modules, self.gets = dict(modules), {}
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with lock:
                    outer.gets[self.path] = outer.gets.get(self.path, 0) + 1
                body = outer.modules.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def variant(wasm: bytes, tag: bytes) -> bytes:
    """The same module with a custom section appended: another sha256, the same behaviour."""
    name = b"tollgate-test-variant"
    payload = bytes([len(name)]) + name + tag
    assert len(payload) < 128  # one-byte LEB128 section size
    return wasm + b"\x00" + bytes([len(payload)]) + payload


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- Envoy -----------------------------------------------------------------------------------

def cluster(name: str, port: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def manifest_bootstrap(http_filter: dict, upstream_port: int, module_port: int) -> dict:
    """What Istio would build around the manifest's HTTP filter, reduced to what Tollgate needs:
    a listener whose connection manager runs the filter, then the router, to the Bedrock
    cluster (here the emulator); and the cluster the module is fetched from."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "tollgate",
        "route_config": {"name": "bedrock", "virtual_hosts": [{
            "name": "bedrock", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "bedrock", "timeout": "0s"}}]}]},
        "http_filters": [http_filter, {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "node": {"id": "tollgate-test", "cluster": "tollgate-test"},
        "static_resources": {
            "listeners": [{
                "name": "tollgate_http",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": [cluster("bedrock", upstream_port), cluster(MODULE_CLUSTER, module_port)],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def ecds_bootstrap(watched: Path, upstream_port: int, tls_dir: Path) -> dict:
    """envoy/envoy-ecds.yaml with OS-picked ports, the emulator upstream, this run's certificate
    and `watched` as the ECDS directory."""
    cfg = copy.deepcopy(yaml.safe_load(ECDS_BOOTSTRAP.read_text()))  # break the YAML anchors
    res = cfg["static_resources"]
    for listener in res["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
        for chain in listener["filter_chains"]:
            hcm = chain["filters"][0]["typed_config"]
            [tollgate] = [f for f in hcm["http_filters"] if "config_discovery" in f]
            source = tollgate["config_discovery"]["config_source"]["path_config_source"]
            source["path"] = str(watched / "tollgate.yaml")
            source["watched_directory"]["path"] = str(watched)
            ts = chain.get("transport_socket")
            if ts:
                certs = ts["typed_config"]["common_tls_context"]["tls_certificates"][0]
                certs["certificate_chain"]["filename"] = str(tls_dir / "cert.pem")
                certs["private_key"]["filename"] = str(tls_dir / "key.pem")
    endpoint = res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    return cfg


def resource_file(extension_config: dict) -> str:
    """An ECDS file (a DiscoveryResponse) holding one extension configuration."""
    return json.dumps({"resources": [{"@type": EXTENSION_TYPE, **extension_config}]}, indent=1)


def publish(watched: Path, extension_config: dict, staging: Path):
    """Publishes a new version with the shipped envoy/ecds-update.sh (what the README says)."""
    staging.write_text(resource_file(extension_config))
    subprocess.run(["bash", str(ECDS_UPDATE), str(staging), str(watched / "tollgate.yaml")],
                   check=True, capture_output=True, timeout=30)


def stats(envoy: harness.Envoy, pattern: str) -> dict[str, int]:
    """Envoy's counters and gauges whose names match `pattern`."""
    with urllib.request.urlopen(f"{envoy.admin}/stats?filter={pattern}", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if re.fullmatch(r"-?\d+", value.strip()):
            out[name] = int(value)
    return out


class Discovery:
    """The ECDS subscription of extension configuration `name` of a running Envoy."""

    def __init__(self, envoy: harness.Envoy, name: str):
        self.envoy, self.prefix = envoy, f"extension_config_discovery.http_filter.{name}."

    def counts(self) -> dict[str, int]:
        s = stats(self.envoy, re.escape(self.prefix))
        return {k: s.get(self.prefix + k, 0) for k in ("config_reload", "update_rejected", "update_success")}

    def outcome(self, before: dict[str, int], timeout_s: float = 20) -> str:
        """Waits until the update published after `before` was applied on every worker
        ("applied") or rejected ("rejected")."""
        def done():
            now = self.counts()
            if now["update_rejected"] > before["update_rejected"]:
                return "rejected"
            if now["config_reload"] > before["config_reload"]:
                return "applied"
            return None
        return harness.wait_until(done, timeout_s, "the ECDS update to be applied or rejected")


def vm_counts(envoy: harness.Envoy) -> dict[str, int]:
    """How many V8 VMs Envoy created and has alive."""
    s = stats(envoy, r"^wasm\.envoy\.wasm\.runtime\.v8\.")
    return {"created": s["wasm.envoy.wasm.runtime.v8.created"], "active": s["wasm.envoy.wasm.runtime.v8.active"]}


def environment_credentials() -> dict:
    """Envoy's environment for documents with `"credentials": {"type": "environment"}`."""
    return {"AWS_ACCESS_KEY_ID": harness.ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": harness.SECRET_ACCESS_KEY,
            "AWS_SESSION_TOKEN": harness.SESSION_TOKEN}
