"""The Istio manifests (envoy/istio/) and the module's OCI image (`make oci`).

No Kubernetes cluster runs here, so these tests run what carries the risk: the Envoy
configuration the manifests give a gateway or sidecar. Each manifest's filter is loaded into
Envoy 1.40 from the manifest itself, delivered by extension config discovery (ECDS), its module
fetched over HTTP from a loopback server and checked against its sha256, with only the values a
cluster provides substituted (see tests/mesh.py, checked by `changed_paths`). What istio-agent
does (pull the OCI image, hand Envoy a local file) is not run here; the image it pulls is
checked for the structure its fetcher reads."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

import pytest
import yaml

import harness
import mesh
from test_bedrock_api import MESSAGES, raw

DEMO_KEY = "tg-demo-key"  # the manifests' example key (sha256 e7aab4...)
MODULE_PATH = "/tollgate_filter.wasm"


def docs(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def of_kind(path, kind: str) -> dict:
    [doc] = [d for d in docs(path) if d["kind"] == kind]
    return doc


def document(extension_config: dict) -> dict:
    return json.loads(mesh.get(extension_config, mesh.DOCUMENT))


def test_the_manifests_carry_one_wasm_configuration_and_istio_delivers_it_over_ecds():
    """Both manifests add the filter as an ECDS extension configuration with the flag WasmPlugin
    cannot set, insert an HTTP filter that discovers it, and differ from each other, and from
    the plain-Envoy resource (envoy/ecds/tollgate.yaml), only in the resource name, the policy
    document and where the module comes from."""
    loaded = {}
    for name, path in mesh.MANIFESTS.items():
        extension, http_filter = mesh.manifest_filter(path)
        loaded[name] = extension
        envoy_filter = of_kind(path, "EnvoyFilter")
        patches = {p["applyTo"]: p for p in envoy_filter["spec"]["configPatches"]}
        assert patches["EXTENSION_CONFIG"]["patch"]["operation"] == "ADD"
        insert = patches["HTTP_FILTER"]
        assert insert["patch"]["operation"] == "INSERT_BEFORE"
        chain = insert["match"]["listener"]["filterChain"]
        assert chain["filter"] == {"name": "envoy.filters.network.http_connection_manager",
                                   "subFilter": {"name": "envoy.filters.http.router"}}
        assert patches["EXTENSION_CONFIG"]["match"]["context"] == insert["match"]["context"]
        # The inserted filter discovers exactly that extension, over ADS, waiting for it.
        assert http_filter == {"name": extension["name"], "config_discovery": {
            "config_source": {"ads": {}, "initial_fetch_timeout": "0s"}, "type_urls": [mesh.WASM_TYPE]}}
        assert extension["typed_config"]["@type"] == mesh.WASM_TYPE
        config = extension["typed_config"]["config"]
        assert config["allow_on_headers_stop_iteration"] is True
        assert config["failure_policy"] == "FAIL_CLOSED"
        assert config["vm_config"]["vm_id"] == "tollgate"
        remote = mesh.get(extension, mesh.REMOTE)
        assert remote["http_uri"]["uri"] == "${TOLLGATE_WASM_IMAGE}"
        assert remote["sha256"] == "${TOLLGATE_WASM_SHA256}"
        assert remote["http_uri"]["cluster"] == mesh.MODULE_CLUSTER
        # The document reads its credentials from the proxy's environment, never inline.
        assert document(extension)["credentials"] == {"type": "environment"}
        assert set(config["vm_config"]["environment_variables"]["host_env_keys"]) == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}

    ingress, sidecar = loaded["ingress-gateway"], loaded["sidecar-egress"]
    assert mesh.changed_paths(ingress, sidecar) == {("name",), mesh.DOCUMENT}
    assert mesh.changed_paths(ingress, loaded["mesh-gateway"]) == {("name",), mesh.DOCUMENT}
    code = ("typed_config", "config", "vm_config", "code")
    assert mesh.changed_paths(ingress, mesh.shipped_resource()) == {
        ("name",), mesh.DOCUMENT, code + ("remote",), code + ("local",)}


def test_ingress_gateway_routes_the_rewritten_request_to_bedrock_over_tls():
    """Tollgate rewrites `:authority` to the Bedrock host it signs for, and Envoy routes the
    request again: the gateway's server and VirtualService must serve that host too, and send
    it to Bedrock's ServiceEntry with TLS originated and the right SNI."""
    path = mesh.MANIFESTS["ingress-gateway"]
    extension, _ = mesh.manifest_filter(path)
    bedrock = f"bedrock-runtime.{document(extension)['region']}.amazonaws.com"
    insert = [p for p in of_kind(path, "EnvoyFilter")["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"][0]
    public_host = insert["match"]["listener"]["filterChain"]["sni"]

    gateway = of_kind(path, "Gateway")
    [server] = gateway["spec"]["servers"]
    assert server["port"]["protocol"] == "HTTPS" and server["tls"]["mode"] == "SIMPLE"
    assert set(server["hosts"]) == {public_host, bedrock}
    assert gateway["spec"]["selector"] == of_kind(path, "EnvoyFilter")["spec"]["workloadSelector"]["labels"]

    vs = of_kind(path, "VirtualService")
    assert set(vs["spec"]["hosts"]) == {public_host, bedrock}
    assert vs["spec"]["gateways"] == [gateway["metadata"]["name"]]
    [route] = vs["spec"]["http"]
    [destination] = route["route"]
    assert destination["destination"] == {"host": bedrock, "port": {"number": 443}}
    assert route["timeout"] == "0s"

    entry = of_kind(path, "ServiceEntry")
    assert entry["spec"]["hosts"] == [bedrock] and entry["spec"]["location"] == "MESH_EXTERNAL"
    assert {"number": 443, "name": "https", "protocol": "HTTPS"} in entry["spec"]["ports"]
    rule = of_kind(path, "DestinationRule")
    assert rule["spec"]["host"] == bedrock
    [port] = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    assert port == {"port": {"number": 443}, "tls": {"mode": "SIMPLE", "sni": bedrock}}


def test_sidecar_runs_tollgate_on_its_own_plain_http_port_and_originates_tls():
    """The application speaks plain HTTP to one port of Bedrock's ServiceEntry; only that
    port's outbound connection manager gets the filter, and the sidecar opens TLS to 443."""
    path = mesh.MANIFESTS["sidecar-egress"]
    extension, _ = mesh.manifest_filter(path)
    bedrock = f"bedrock-runtime.{document(extension)['region']}.amazonaws.com"
    entry = of_kind(path, "ServiceEntry")
    assert entry["spec"]["hosts"] == [bedrock] and entry["spec"]["exportTo"] == ["."]
    [port] = entry["spec"]["ports"]
    assert port["protocol"] == "HTTP" and port["targetPort"] == 443
    insert = [p for p in of_kind(path, "EnvoyFilter")["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"][0]
    assert insert["match"]["context"] == "SIDECAR_OUTBOUND"
    assert insert["match"]["listener"]["portNumber"] == port["number"]
    [setting] = of_kind(path, "DestinationRule")["spec"]["trafficPolicy"]["portLevelSettings"]
    assert setting == {"port": {"number": port["number"]}, "tls": {"mode": "SIMPLE", "sni": bedrock}}
    namespaces = {d["metadata"]["namespace"] for d in docs(path)}
    assert len(namespaces) == 1 and extension["name"] == f"{namespaces.pop()}.tollgate"


def load_manifest_filter(name: str, watched, module_url: str, module_sha256: str):
    """The manifest's extension configuration and HTTP filter as the test gives them to Envoy:
    the module fetched from `module_url`, the extension read from a file in `watched`."""
    extension, http_filter = mesh.manifest_filter(mesh.MANIFESTS[name])
    loaded_extension = mesh.substituted(extension, {mesh.MODULE_URI: module_url, mesh.MODULE_SHA256: module_sha256})
    loaded_filter = mesh.substituted(
        http_filter,
        {mesh.PATH_SOURCE: {"path": str(watched / "tollgate.yaml"), "watched_directory": {"path": str(watched)}}},
        removed=(mesh.ADS,),
    )
    # Exactly these, nothing else: what Envoy runs is the manifest.
    assert mesh.changed_paths(extension, loaded_extension) == {mesh.MODULE_URI, mesh.MODULE_SHA256}
    assert mesh.changed_paths(http_filter, loaded_filter) == {mesh.ADS, mesh.PATH_SOURCE}
    return loaded_extension, loaded_filter


def start_manifest_envoy(name: str, workdir, emulator, tls_dir, module_sha256: str | None = None):
    """Envoy running manifest `name`'s filter over ECDS, its module served by a fresh loopback
    server; returns (envoy, server, extension configuration as loaded)."""
    wasm = harness.WASM.read_bytes()
    server = mesh.ModuleServer({MODULE_PATH: wasm})
    watched = workdir / "ecds"
    watched.mkdir(parents=True, exist_ok=True)
    extension, http_filter = load_manifest_filter(name, watched, server.url(MODULE_PATH), module_sha256 or mesh.sha256(wasm))
    (watched / "tollgate.yaml").write_text(mesh.resource_file(extension))
    try:
        envoy = harness.Envoy(workdir, None, 0, tls_dir, name=name, concurrency=2,
                              bootstrap=mesh.manifest_bootstrap(http_filter, emulator.port, server.port),
                              env=mesh.environment_credentials())
    except Exception:
        server.stop()
        raise
    return envoy, server, extension


@pytest.mark.parametrize("name", mesh.KEYED_MANIFESTS)
def test_manifest_filter_runs_in_envoy_over_ecds_with_its_module_fetched_and_verified(name, workdir, emulator, tls_dir):
    """The manifest's filter and policy document, delivered by ECDS, its module fetched once
    over HTTP and checked against its sha256, authenticate, sign with the proxy's environment
    credentials and enforce the document's allowlist and budget."""
    envoy, server, extension = start_manifest_envoy(name, workdir / "manifest" / name, emulator, tls_dir)
    try:
        assert server.gets == {MODULE_PATH: 1}
        fetched = mesh.stats(envoy, r"^wasm\.remote_load_fetch")
        assert fetched == {"wasm.remote_load_fetch_successes": 1, "wasm.remote_load_fetch_failures": 0}
        assert mesh.Discovery(envoy, extension["name"]).counts()["config_reload"] >= 1

        start = len(emulator.ledger())
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
        key = {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"}
        status, _, out = raw(envoy, "POST", "/model/claude-fast/converse", body, key)
        assert status == 200, out
        [entry] = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the ledger entry")
        assert entry["signature_valid"] is True, entry.get("error")
        headers = dict(entry["headers"])
        assert headers["host"] == f"bedrock-runtime.{document(extension)['region']}.amazonaws.com"
        assert headers["x-amz-security-token"] == harness.SESSION_TOKEN  # from Envoy's environment
        assert DEMO_KEY not in json.dumps(entry)

        status, headers, _ = raw(envoy, "POST", "/model/us.amazon.nova-lite-v1:0/converse", body, key)
        assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"
        status, _, _ = raw(envoy, "POST", "/model/claude-fast/converse", body,
                           {"authorization": "Bearer tg-not-a-key", "content-type": "application/json"})
        assert status == 401
        status, _, out = raw(envoy, "GET", "/usage", None, key)
        usage = json.loads(out)
        limits = document(extension)["api_keys"][0]["limits"]
        assert usage["key_id"] == "example" and usage["requests"] == 1
        assert usage["budget"]["limit_usd"] == limits["budget"]["usd"]
        [record] = harness.wait_until(envoy.usage_records, 10, "the usage record")
        assert (record["key_id"], record["status"], record["output_tokens"]) == ("example", 200, 3)
    finally:
        envoy.stop()
        server.stop()


def test_a_module_that_fails_its_sha256_is_refused_and_every_request_fails_closed(workdir, emulator, tls_dir):
    """The module served is not the one the configuration names: Envoy fetches it, refuses it,
    and with the manifests' FAIL_CLOSED answers every request itself with 503; nothing reaches
    Bedrock, nothing is billed."""
    wrong = mesh.sha256(b"some other module")
    envoy, server, _ = start_manifest_envoy("ingress-gateway", workdir / "manifest" / "badsha", emulator, tls_dir,
                                            module_sha256=wrong)
    try:
        assert server.gets.get(MODULE_PATH, 0) >= 1
        harness.wait_until(lambda: mesh.stats(envoy, r"^wasm\.remote_load_fetch_failures")
                           .get("wasm.remote_load_fetch_failures", 0) >= 1, 10, "the fetch to fail")
        assert mesh.stats(envoy, r"^wasm\.remote_load_fetch_successes")["wasm.remote_load_fetch_successes"] == 0
        start = len(emulator.ledger())
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
        for key in (DEMO_KEY, "tg-not-a-key"):
            status, _, _ = raw(envoy, "POST", "/model/claude-fast/converse", body,
                               {"authorization": f"Bearer {key}", "content-type": "application/json"})
            assert status == 503
        assert emulator.ledger()[start:] == []
        assert envoy.usage_records() == []
    finally:
        envoy.stop()
        server.stop()


# --- the OCI image ---------------------------------------------------------------------------

def build_layout(tmp_path, epoch: str = "1795400196"):
    out = tmp_path / "tollgate-filter"
    run = subprocess.run(
        [sys.executable, str(harness.ROOT / "envoy/wasm_oci.py"), str(harness.WASM), str(out), "--version", "0.1.0"],
        capture_output=True, text=True, timeout=60, env={"SOURCE_DATE_EPOCH": epoch, "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    return out, json.loads(run.stdout)


def blob(layout, descriptor: dict) -> bytes:
    algorithm, digest = descriptor["digest"].split(":")
    data = (layout / "blobs" / algorithm / digest).read_bytes()
    assert algorithm == "sha256" and hashlib.sha256(data).hexdigest() == digest
    assert len(data) == descriptor["size"]
    return data


def test_make_oci_writes_the_module_as_a_wasm_artifact_and_as_istio_s_image(tmp_path):
    """An OCI image layout whose every blob matches its digest and size, with the module as the
    CNCF Wasm OCI artifact (`0.1.0`) and as the image istio-agent reads (`0.1.0-istio`: one
    tar+gzip layer holding `plugin.wasm`); built twice, byte for byte the same."""
    wasm = harness.WASM.read_bytes()
    layout, summary = build_layout(tmp_path)
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    assert set(refs) == {"0.1.0", "0.1.0-istio"}
    manifests = {}
    for ref, descriptor in refs.items():
        assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        manifests[ref] = json.loads(blob(layout, descriptor))
        assert manifests[ref]["schemaVersion"] == 2
        assert summary["images"][ref]["manifest_digest"] == descriptor["digest"]
    assert summary["wasm_sha256"] == hashlib.sha256(wasm).hexdigest()

    cncf = manifests["0.1.0"]
    assert cncf["config"]["mediaType"] == "application/vnd.wasm.config.v0+json"
    [layer] = cncf["layers"]
    assert layer["mediaType"] == "application/wasm" and blob(layout, layer) == wasm
    config = json.loads(blob(layout, cncf["config"]))
    assert (config["architecture"], config["os"], config["layerDigests"]) == ("wasm", "wasip1", [layer["digest"]])
    assert config["created"] == "2026-11-23T02:16:36Z"  # SOURCE_DATE_EPOCH

    istio = manifests["0.1.0-istio"]
    assert istio["annotations"]["module.wasm.image/variant"] == "compat"
    assert istio["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer] = istio["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    tar = gzip.decompress(blob(layout, layer))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        [member] = archive.getmembers()
        assert member.name == "plugin.wasm" and member.isfile()
        assert archive.extractfile(member).read() == wasm
    image_config = json.loads(blob(layout, istio["config"]))
    assert image_config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]}

    again, _ = build_layout(tmp_path / "again")
    assert (again / "index.json").read_bytes() == (layout / "index.json").read_bytes()


def test_istio_manifests_render_with_the_digest_istio_agent_checks(tmp_path):
    """`make istio-manifests`: an oci:// image gets the digest of the `-istio` image manifest,
    an https:// module its own sha256, and nothing but the two placeholders changes."""
    layout, summary = build_layout(tmp_path)
    render = harness.ROOT / "envoy/istio/render.py"
    cases = {
        "oci://registry.example.com/platform/tollgate-filter:0.1.0-istio":
            summary["images"]["0.1.0-istio"]["manifest_digest"].removeprefix("sha256:"),
        "https://downloads.example.com/tollgate/0.1.0/tollgate_filter.wasm": summary["wasm_sha256"],
    }
    for image, digest in cases.items():
        out = tmp_path / "rendered" / image.split(":")[0]
        run = subprocess.run([sys.executable, str(render), "--image", image, "--layout", str(layout),
                              "--version", "0.1.0", "--out", str(out)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        for name, path in mesh.MANIFESTS.items():
            rendered = (out / path.name).read_text()
            assert "${" not in rendered
            template, _ = mesh.manifest_filter(path)
            extension, _ = mesh.manifest_filter(out / path.name)
            assert mesh.changed_paths(template, extension) == {mesh.MODULE_URI, mesh.MODULE_SHA256}
            assert mesh.get(extension, mesh.MODULE_URI) == image
            assert mesh.get(extension, mesh.MODULE_SHA256) == digest
            # The other documents are untouched.
            assert [d for d in docs(path) if d["kind"] != "EnvoyFilter"] == \
                   [d for d in docs(out / path.name) if d["kind"] != "EnvoyFilter"]
    bad = subprocess.run([sys.executable, str(render), "--image", "docker.io/x/y:1", "--layout", str(layout),
                          "--version", "0.1.0", "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "oci://" in bad.stderr


# --- updates with a remotely fetched module --------------------------------------------------

def with_document(extension: dict, change) -> dict:
    doc = document(extension)
    change(doc)
    return mesh.substituted(extension, {mesh.DOCUMENT: json.dumps(doc, indent=1)})


def add_key(doc: dict, kid: str, secret: str):
    doc["api_keys"].append({"id": kid, "sha256": harness.sha256_hex(secret), "models": ["*"]})


def demo_converse(envoy, key: str = DEMO_KEY):
    body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
    status, _, _ = raw(envoy, "POST", "/model/claude-fast/converse", body,
                       {"authorization": f"Bearer {key}", "content-type": "application/json"})
    return status


def test_document_updates_reuse_the_fetched_module_and_a_bad_one_is_rejected(workdir, emulator, tls_dir):
    """With the manifests' remotely fetched module, a new document naming the same module (same
    sha256) is applied from Envoy's code cache without another fetch, and a bad one is rejected
    while the previous one keeps serving."""
    base = workdir / "manifest" / "updates"
    envoy, server, extension = start_manifest_envoy("ingress-gateway", base, emulator, tls_dir)
    try:
        discovery = mesh.Discovery(envoy, extension["name"])
        watched = base / "ecds"
        before = discovery.counts()
        mesh.publish(watched, with_document(extension, lambda d: add_key(d, "beta", "tg-remote-beta")), base / "next.yaml")
        assert discovery.outcome(before) == "applied"
        assert demo_converse(envoy, "tg-remote-beta") == 200
        assert server.gets == {MODULE_PATH: 1}

        def bad(d):
            add_key(d, "gamma", "tg-remote-gamma")
            d["api_keys"][-1]["sha256"] = "tg-remote-gamma"  # the key itself, not its hash
        before = discovery.counts()
        mesh.publish(watched, with_document(extension, bad), base / "bad.yaml")
        assert discovery.outcome(before) == "rejected"
        assert "api_keys[1].sha256" in envoy.log()
        assert demo_converse(envoy, "tg-remote-beta") == 200
        assert demo_converse(envoy, "tg-remote-gamma") == 401
    finally:
        envoy.stop()
        server.stop()


def module_update(extension: dict, server: mesh.ModuleServer, path: str, module: bytes, nack: bool) -> dict:
    server.modules[path] = module
    changes = {mesh.MODULE_URI: server.url(path), mesh.MODULE_SHA256: mesh.sha256(module)}
    if nack:
        changes[("typed_config", "config", "vm_config", "nack_on_code_cache_miss")] = True
    return mesh.substituted(extension, changes)


def test_envoy_1_40_skips_the_filter_when_an_ecds_update_brings_a_module_it_has_not_fetched(workdir, emulator, tls_dir):
    """Pins an Envoy 1.40 hazard the README warns about. An ECDS update naming a remote module
    that is not in Envoy's code cache is accepted at once, but the fetch waits on an
    initialisation that is long over and never starts, and until then Envoy leaves the filter
    out of the chain: requests go upstream unauthenticated, unsigned and unmetered, the client's
    key with them. istio-agent never lets Envoy see a remote module (it hands Envoy a local
    file); on plain Envoy, change the module with `nack_on_code_cache_miss` (next test) or a
    restart. If this test fails after an Envoy upgrade, the hazard is gone: update the README."""
    base = workdir / "manifest" / "upgrade-hazard"
    envoy, server, extension = start_manifest_envoy("ingress-gateway", base, emulator, tls_dir)
    try:
        discovery = mesh.Discovery(envoy, extension["name"])
        assert demo_converse(envoy) == 200
        before = discovery.counts()
        module = mesh.variant(harness.WASM.read_bytes(), b"2")
        mesh.publish(base / "ecds", module_update(extension, server, "/v2.wasm", module, nack=False), base / "v2.yaml")
        assert discovery.outcome(before) == "applied"
        start = len(emulator.ledger())
        demo_converse(envoy)
        [entry] = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the request to reach the upstream")
        assert entry["auth"] != "sigv4" and dict(entry["headers"])["authorization"] == f"Bearer {DEMO_KEY}"
        assert server.gets.get("/v2.wasm", 0) == 0
    finally:
        envoy.stop()
        server.stop()


def test_a_module_upgrade_with_nack_on_code_cache_miss_keeps_the_old_module_until_the_new_one_is_in(workdir, emulator, tls_dir):
    """With `nack_on_code_cache_miss: true`, an update naming a module Envoy has not fetched is
    rejected while the module downloads, and the old module keeps serving; the next (different)
    update finds it cached and applies: new VMs, same `vm_id`, so usage totals carry over."""
    base = workdir / "manifest" / "upgrade"
    envoy, server, extension = start_manifest_envoy("ingress-gateway", base, emulator, tls_dir)
    try:
        discovery = mesh.Discovery(envoy, extension["name"])
        assert demo_converse(envoy) == 200
        vms = mesh.vm_counts(envoy)
        module = mesh.variant(harness.WASM.read_bytes(), b"3")
        upgrade = module_update(extension, server, "/v3.wasm", module, nack=True)
        before = discovery.counts()
        mesh.publish(base / "ecds", upgrade, base / "v3.yaml")
        assert discovery.outcome(before) == "rejected"
        harness.wait_until(lambda: server.gets.get("/v3.wasm", 0) >= 1, 20, "the new module's fetch")
        harness.wait_until(lambda: mesh.stats(envoy, r"^wasm\.remote_load_fetch_successes")
                           ["wasm.remote_load_fetch_successes"] >= 2, 20, "the new module in the cache")
        start = len(emulator.ledger())
        assert demo_converse(envoy) == 200
        assert emulator.ledger()[start]["signature_valid"] is True

        # Envoy ignores the same resource sent again after rejecting it: change something.
        before = discovery.counts()
        mesh.publish(base / "ecds", with_document(upgrade, lambda d: add_key(d, "beta", "tg-upgrade-beta")), base / "v3b.yaml")
        assert discovery.outcome(before) == "applied"
        assert mesh.vm_counts(envoy)["created"] > vms["created"] + 1  # a new base VM and workers
        assert demo_converse(envoy, "tg-upgrade-beta") == 200
        status, _, out = raw(envoy, "GET", "/usage", None, {"authorization": f"Bearer {DEMO_KEY}"})
        assert status == 200 and json.loads(out)["requests"] == 2
    finally:
        envoy.stop()
        server.stop()


def test_an_update_whose_module_fails_its_sha256_is_rejected_and_the_old_module_serves(workdir, emulator, tls_dir):
    """With `nack_on_code_cache_miss: true`, an update naming a module whose download does not
    match its sha256 is rejected, every time it is retried, and the module already running
    keeps serving, signed and metered."""
    base = workdir / "manifest" / "upgrade-badsha"
    envoy, server, extension = start_manifest_envoy("ingress-gateway", base, emulator, tls_dir)
    try:
        discovery = mesh.Discovery(envoy, extension["name"])
        module = mesh.variant(harness.WASM.read_bytes(), b"4")
        upgrade = mesh.substituted(module_update(extension, server, "/v4.wasm", module, nack=True),
                                   {mesh.MODULE_SHA256: mesh.sha256(b"not what is served")})
        for attempt in range(2):
            before = discovery.counts()
            mesh.publish(base / "ecds", with_document(upgrade, lambda d: add_key(d, f"k{attempt}", f"tg-k{attempt}")),
                         base / f"v4-{attempt}.yaml")
            assert discovery.outcome(before) == "rejected"
            harness.wait_until(lambda: server.gets.get("/v4.wasm", 0) >= 1, 20, "the module's download")
            start = len(emulator.ledger())
            assert demo_converse(envoy) == 200
            assert emulator.ledger()[start]["signature_valid"] is True
            assert demo_converse(envoy, f"tg-k{attempt}") == 401
        assert mesh.stats(envoy, r"^wasm\.remote_load_fetch_failures")["wasm.remote_load_fetch_failures"] >= 1
    finally:
        envoy.stop()
        server.stop()
