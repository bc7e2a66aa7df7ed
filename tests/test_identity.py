"""Callers known by identity instead of an API key, on real Envoy 1.40 loading the shipped
envoy/envoy-identity.yaml: workloads by the SPIFFE ID of their client certificate (mTLS), a
trusted front proxy's x-forwarded-client-cert, people by the claims of a JWT verified by Envoy's
jwt_authn. Certificates (a workload CA, SPIFFE IDs in URI SANs) and tokens (RS256, a local JWKS)
are made in the test with openssl (tests/identities.py, tests/make-identity.py)."""

from __future__ import annotations

import copy
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import botocore
import botocore.config
import pytest
import yaml

import harness
import identities
import mesh
from test_bedrock_api import MESSAGES

SHIPPED = harness.ROOT / "envoy/envoy-identity.yaml"
WASM_IN_CONFIG = "target/wasm32-wasip1/release/tollgate_filter.wasm"
HCM = ("static_resources", "listeners", 0, "filter_chains", 0, "filters", 0, "typed_config")
DOCUMENT = HCM + ("http_filters", 1, "typed_config", "config", "configuration", "value")
DEMO_KEY = "tg-demo-key"
WORKLOAD_A, WORKLOAD_B = "team-a-agent", "team-b-batch"
# team-a-agent's daily budget in the test: room for a few requests, not for ten.
TINY_BUDGET = "0.0001"


def shipped(dev_dir: Path) -> dict:
    """envoy-identity.yaml with its dev files (.run/identity/) read from `dev_dir`."""
    text = SHIPPED.read_text().replace(".run/identity/", f"{dev_dir}/")
    return yaml.safe_load(text.replace(WASM_IN_CONFIG, str(harness.WASM)))


def get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def document_of(config: dict) -> dict:
    return json.loads(get(config, DOCUMENT))


def identity_bootstrap(dev_dir: Path, upstream_port: int, change_document=None) -> dict:
    """The shipped configuration as the test runs it: ports picked by the OS, the emulator as
    Bedrock, the document pointed at the emulator with its credentials, and `change_document`
    applied. Checked: nothing else differs from the shipped file."""
    original = shipped(dev_dir)
    cfg = copy.deepcopy(original)
    res = cfg["static_resources"]
    res["listeners"][0]["address"]["socket_address"]["port_value"] = 0
    endpoint = res["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    doc = document_of(original)
    doc["upstream_host"] = f"127.0.0.1:{upstream_port}"
    doc["credentials"] = {"type": "inline", "access_key_id": harness.ACCESS_KEY_ID,
                          "secret_access_key": harness.SECRET_ACCESS_KEY, "session_token": harness.SESSION_TOKEN}
    if change_document:
        change_document(doc)
    get(cfg, DOCUMENT[:-1])[DOCUMENT[-1]] = json.dumps(doc)
    assert changed_paths(original, cfg) == {
        ("static_resources", "listeners", 0, "address", "socket_address", "port_value"),
        ("static_resources", "clusters", 0, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint",
         "address", "socket_address", "port_value"),
        ("admin", "address", "socket_address", "port_value"),
        DOCUMENT,
    }
    # ...and in the document, only where Bedrock is and how Tollgate signs for it, and `change_document`.
    assert {p[0] for p in changed_paths(document_of(original), doc)} - {"upstream_host", "credentials"} == \
        ({"api_keys"} if change_document else set())
    return cfg


def changed_paths(a, b, path: tuple = ()) -> set[tuple]:
    """Every leaf path where `a` and `b` differ, into lists too."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(changed_paths(a.get(k), b.get(k), path + (k,)) if k in a and k in b else {path + (k,)}
                             for k in a.keys() | b.keys()))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(changed_paths(x, y, path + (i,)) for i, (x, y) in enumerate(zip(a, b))))
    return set() if a == b else {path}


def key_entry(doc: dict, kid: str) -> dict:
    [entry] = [k for k in doc["api_keys"] if k["id"] == kid]
    return entry


@pytest.fixture(scope="module")
def dev(workdir):
    """The dev identities, made as `make identity-dev` makes them."""
    d = workdir / "identity"
    ca, idp = identities.make_dev(d)
    return d, ca, idp


@pytest.fixture(scope="module")
def gw(workdir, emulator, dev):
    """envoy-identity.yaml with team-a-agent on a tiny budget."""
    d, _, _ = dev

    def tiny(doc):
        key_entry(doc, WORKLOAD_A)["limits"]["budget"]["usd"] = TINY_BUDGET
    envoy = harness.Envoy(workdir / "identity-envoy", None, 0, d, name="identity",
                          bootstrap=identity_bootstrap(d, emulator.port, tiny))
    envoy.url_ = f"https://127.0.0.1:{envoy.ports['tollgate_identity']}"
    yield envoy
    envoy.stop()


def call(gw, dev_dir: Path, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         cert: str | None = None):
    """(status, headers, body) over HTTPS, presenting workload `cert`'s certificate if given."""
    ctx = ssl.create_default_context(cafile=str(dev_dir / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(dev_dir / f"{cert}.pem"), str(dev_dir / f"{cert}.key"))
    req = urllib.request.Request(gw.url_ + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def converse(gw, dev_dir, model="claude-fast", headers=None, cert=None):
    body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 4}}).encode()
    return call(gw, dev_dir, "POST", f"/model/{model}/converse", body,
                {"content-type": "application/json", **(headers or {})}, cert)


def usage(gw, dev_dir, headers=None, cert=None) -> tuple[int, dict]:
    status, _, body = call(gw, dev_dir, "GET", "/usage", None, headers, cert)
    return status, json.loads(body)


def workload_client(gw, dev_dir: Path, cert: str, signed: bool):
    """boto3 as a workload runs it: its own AWS credentials (or none), its own certificate."""
    session = boto3.Session(region_name=harness.REGION, aws_access_key_id="AKIAWORKLOADOWN",
                            aws_secret_access_key="workload-own-secret")
    return session.client(
        "bedrock-runtime", endpoint_url=gw.url_, verify=str(dev_dir / "ca.pem"),
        config=botocore.config.Config(
            client_cert=(str(dev_dir / f"{cert}.pem"), str(dev_dir / f"{cert}.key")),
            retries={"total_max_attempts": 1, "mode": "standard"},
            # SigV4 even where AWS_BEARER_TOKEN_BEDROCK is set (boto3 would send that instead).
            signature_version="v4" if signed else botocore.UNSIGNED,
        ),
    )


# --- workloads (mTLS) ------------------------------------------------------------------------

def test_two_workloads_get_their_own_allowlists_and_budgets(gw, dev, emulator):
    """Each SPIFFE ID is its key entry: its allowlist, its budget, its totals and records."""
    d, _, _ = dev
    status, _, out = converse(gw, d, cert=WORKLOAD_B, model="nova-lite")
    assert status == 200, out
    status, headers, out = converse(gw, d, cert=WORKLOAD_A, model="nova-lite")
    assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"
    assert "team-a-agent" in json.loads(out)["message"]
    # team-a-agent spends its tiny budget; team-b-batch is not affected.
    outcomes = []
    for _ in range(10):
        status, _, _ = converse(gw, d, cert=WORKLOAD_A)
        outcomes.append(status)
        if status == 429:
            break
    assert outcomes[0] == 200 and outcomes[-1] == 429, outcomes
    status, _, _ = converse(gw, d, cert=WORKLOAD_B)
    assert status == 200
    status, a = usage(gw, d, cert=WORKLOAD_A)
    assert status == 200 and a["key_id"] == WORKLOAD_A
    assert a["requests"] == outcomes.count(200)
    assert a["budget"]["limit_usd"] == TINY_BUDGET and a["budget"]["spent_pico_usd"] <= 10**8
    status, b = usage(gw, d, cert=WORKLOAD_B)
    assert b["key_id"] == WORKLOAD_B and b["requests"] == 2
    records = harness.wait_until(
        lambda: (lambda r: r if len(r) >= len(outcomes) + 2 else None)(gw.usage_records()), 10, "the records")
    assert {r["key_id"] for r in records} == {WORKLOAD_A, WORKLOAD_B}
    assert [r["status"] for r in records if r["key_id"] == WORKLOAD_A] == outcomes


@pytest.mark.parametrize("signed", [True, False], ids=["own-sigv4", "unsigned"])
def test_a_workload_calls_with_its_own_aws_sdk_and_tollgate_signs_instead(gw, dev, emulator, signed):
    """boto3 with the workload's own AWS credentials (SigV4) or none: the client's signature
    is discarded, Tollgate signs with its own credentials, and the workload's never leave."""
    d, _, _ = dev
    client = workload_client(gw, d, WORKLOAD_B, signed)
    start = len(emulator.ledger())
    out = client.converse(modelId="claude-fast", messages=MESSAGES, inferenceConfig={"maxTokens": 3})
    assert out["usage"]["outputTokens"] == 3
    [entry] = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the ledger entry")
    assert entry["auth"] == "sigv4" and entry["signature_valid"] is True, entry.get("error")
    headers = dict(entry["headers"])
    assert f"Credential={harness.ACCESS_KEY_ID}/" in headers["authorization"]
    assert "AKIAWORKLOADOWN" not in json.dumps(entry)
    assert headers["x-amz-security-token"] == harness.SESSION_TOKEN
    [record] = harness.wait_until(
        lambda: [r for r in gw.usage_records() if r.get("request_id") == headers["x-request-id"]], 10, "the record")
    assert record["key_id"] == WORKLOAD_B


def test_no_certificate_or_an_unknown_one_is_401_and_another_ca_cannot_connect(gw, dev, workdir):
    d, _, _ = dev
    status, headers, out = converse(gw, d)
    assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    status, _, out = converse(gw, d, cert="stranger")
    assert status == 401
    assert "spiffe://cluster.local/ns/team-c/sa/unknown" in json.loads(out)["message"]
    # Own SigV4 without a certificate: no key, no identity.
    status, _, out = converse(gw, d, headers={"authorization": "AWS4-HMAC-SHA256 Credential=AKIAX/20261122/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00"})
    assert status == 401 and "SigV4" in json.loads(out)["message"]
    # A certificate from another CA, with a SPIFFE ID the document names: the TLS handshake
    # fails before any request.
    rogue = identities.WorkloadCa(workdir / "rogue-ca", name="Rogue CA")
    rogue.workload(WORKLOAD_A, identities.DEV_WORKLOADS[WORKLOAD_A])
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.load_cert_chain(str(rogue.dir / f"{WORKLOAD_A}.pem"), str(rogue.dir / f"{WORKLOAD_A}.key"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(urllib.request.Request(gw.url_ + "/usage"), timeout=10, context=ctx).read()
    # The API key still works on the same listener.
    status, _, _ = converse(gw, d, headers={"authorization": f"Bearer {DEMO_KEY}"})
    assert status == 200


def test_a_forged_forwarded_client_cert_changes_nothing_and_the_trusted_proxy_s_counts(gw, dev):
    """x-forwarded-client-cert names the caller only when the peer is the document's trusted
    proxy; from anyone else it is ignored (and never forwarded upstream)."""
    d, _, _ = dev
    as_b = {"x-forwarded-client-cert": f"By=spiffe://x;Hash=00;URI={identities.DEV_WORKLOADS[WORKLOAD_B]}"}
    # From a workload: still itself.
    status, u = usage(gw, d, as_b, cert=WORKLOAD_A)
    assert (status, u["key_id"]) == (200, WORKLOAD_A)
    # Without a certificate: Envoy drops the header, and Tollgate would ignore it anyway.
    status, u = usage(gw, d, as_b)
    assert status == 401
    # From the trusted front proxy: the client it names.
    status, u = usage(gw, d, as_b, cert="front-proxy")
    assert (status, u["key_id"]) == (200, WORKLOAD_B)
    # The proxy itself is no caller.
    status, _ = usage(gw, d, cert="front-proxy")
    assert status == 401
    status, _, out = converse(gw, d, headers={"x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/x/sa/y"},
                              cert="front-proxy")
    assert status == 401 and "forwarded by" in json.loads(out)["message"]


# --- people (JWT) ----------------------------------------------------------------------------

def test_people_are_known_by_the_claims_of_a_verified_jwt(gw, dev, emulator, workdir):
    d, _, idp = dev
    bearer = lambda token: {"authorization": f"Bearer {token}"}  # noqa: E731
    alice = idp.token({"sub": "00u-alice", "email": "alice@example.com"})
    status, u = usage(gw, d, bearer(alice))
    assert (status, u["key_id"]) == (200, "alice")
    start = len(emulator.ledger())
    status, _, _ = converse(gw, d, headers=bearer(alice))
    assert status == 200
    [entry] = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the ledger entry")
    assert alice not in json.dumps(entry) and entry["signature_valid"] is True
    # A group names its members' entry; the person's own entry comes first.
    carol = idp.token({"sub": "00u-carol", "email": "carol@example.com", "groups": ["staff", "ml-engineers"]})
    assert usage(gw, d, bearer(carol))[1]["key_id"] == "ml-team"
    status, headers, out = converse(gw, d, model="nova-lite", headers=bearer(carol))
    assert status == 403 and "ml-team" in json.loads(out)["message"]
    both = idp.token({"sub": "00u-alice", "email": "alice@example.com", "groups": ["ml-engineers"]})
    assert usage(gw, d, bearer(both))[1]["key_id"] == "alice"
    # An email the provider marks unverified is not believed.
    unverified = idp.token({"sub": "00u-x", "email": "alice@example.com", "email_verified": False})
    status, u = usage(gw, d, bearer(unverified))
    assert status == 401 and "00u-x" in u["message"]
    # Refused tokens: 401 in Bedrock's shape, saying why.
    forger = identities.IdentityProvider(workdir / "forger", identities.DEV_ISSUER, kid=idp.kid)
    refused = {
        "expired": (idp.token({"email": "alice@example.com"}, lifetime_s=-3600), "expired"),
        "wrong issuer": (idp.token({"email": "alice@example.com"}, issuer="https://evil.example.com"), "issuer"),
        "forged signature": (forger.token({"email": "alice@example.com"}), "verification fails"),
    }
    for case, (token, why) in refused.items():
        status, headers, out = converse(gw, d, headers=bearer(token))
        assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException", case
        assert why in json.loads(out)["message"], (case, out)
        assert usage(gw, d, bearer(token))[0] == 401
    # A refused token does not fall back to the connection's certificate.
    status, _ = usage(gw, d, bearer(refused["expired"][0]), cert=WORKLOAD_A)
    assert status == 401
    # No token: as before (401 without a key; the key works).
    assert usage(gw, d)[0] == 401
    assert usage(gw, d, bearer(DEMO_KEY))[1]["key_id"] == "demo"


# --- Istio: the mesh gateway manifest -----------------------------------------------------

def istio_mutual_tls(dev_dir: Path) -> dict:
    """What istiod gives a Gateway server with `tls.mode: ISTIO_MUTUAL`, with the test's files in
    place of the mesh's SDS secrets: a client certificate required, verified against the root."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(dev_dir / "server.pem")},
                                  "private_key": {"filename": str(dev_dir / "server.key")}}],
            "validation_context": {"trusted_ca": {"filename": str(dev_dir / "ca.pem")}}}}}


def test_the_mesh_gateway_manifest_knows_workloads_by_their_mesh_identity(workdir, emulator, dev):
    """envoy/istio/mesh-gateway.yaml's filter and document, delivered over ECDS with its module
    fetched and checked as on Istio, behind a listener that requires client certificates as
    ISTIO_MUTUAL does: each workload's SPIFFE ID is its key entry."""
    import test_istio

    d, _, _ = dev
    base = workdir / "mesh-gateway"
    wasm = harness.WASM.read_bytes()
    server = mesh.ModuleServer({test_istio.MODULE_PATH: wasm})
    watched = base / "ecds"
    watched.mkdir(parents=True, exist_ok=True)
    extension, http_filter = test_istio.load_manifest_filter(
        "mesh-gateway", watched, server.url(test_istio.MODULE_PATH), mesh.sha256(wasm))
    (watched / "tollgate.yaml").write_text(mesh.resource_file(extension))
    bootstrap = mesh.manifest_bootstrap(http_filter, emulator.port, server.port)
    [listener] = bootstrap["static_resources"]["listeners"]
    listener["name"] = "tollgate_mesh"
    [chain] = listener["filter_chains"]
    chain["transport_socket"] = istio_mutual_tls(d)
    # Istio's default on gateways: x-forwarded-client-cert replaced by the peer's own.
    chain["filters"][0]["typed_config"].update({
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True}})
    try:
        envoy = harness.Envoy(base, None, 0, d, name="mesh-gateway", bootstrap=bootstrap,
                              env=mesh.environment_credentials())
    except Exception:
        server.stop()
        raise
    try:
        envoy.url_ = f"https://127.0.0.1:{envoy.ports['tollgate_mesh']}"
        doc = json.loads(mesh.get(extension, mesh.DOCUMENT))
        assert [k.get("principals") for k in doc["api_keys"]] == [
            [identities.DEV_WORKLOADS[WORKLOAD_A]], [identities.DEV_WORKLOADS[WORKLOAD_B]]]
        start = len(emulator.ledger())
        status, _, out = converse(envoy, d, cert=WORKLOAD_A)
        assert status == 200, out
        [entry] = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the ledger entry")
        assert entry["signature_valid"] is True
        assert dict(entry["headers"])["x-amz-security-token"] == harness.SESSION_TOKEN
        status, _, _ = converse(envoy, d, model="nova-lite", cert=WORKLOAD_A)
        assert status == 403
        assert converse(envoy, d, model="nova-lite", cert=WORKLOAD_B)[0] == 200
        status, a = usage(envoy, d, cert=WORKLOAD_A)
        status_b, b = usage(envoy, d, cert=WORKLOAD_B)
        assert (a["key_id"], a["requests"], a["budget"]["limit_usd"]) == (WORKLOAD_A, 1, "5.00")
        assert (b["key_id"], b["requests"], b["budget"]["limit_usd"]) == (WORKLOAD_B, 1, "20.00")
        assert converse(envoy, d, cert="stranger")[0] == 401
        # The workload's own boto3, signing with its own AWS credentials.
        out = workload_client(envoy, d, WORKLOAD_B, signed=True).converse(
            modelId="nova-lite", messages=MESSAGES, inferenceConfig={"maxTokens": 2})
        assert out["usage"]["outputTokens"] == 2
        # No certificate: ISTIO_MUTUAL ends the handshake.
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            call(envoy, d, "GET", "/usage", None, {"authorization": f"Bearer {DEMO_KEY}"})
    finally:
        envoy.stop()
        server.stop()


# --- Spin ------------------------------------------------------------------------------------

@pytest.mark.spin_only("Spin has no verified peer identity or JWT: identity entries never match there")
def test_identity_entries_never_match_on_spin(launch, emulator, host_kind):
    """`spin up` verifies no client certificate and runs no JWT filter, so a document's identity
    entries name nobody on Spin; a forged x-forwarded-client-cert or claim header changes
    nothing. Its key entries work as everywhere."""
    doc = document_of(shipped(Path("/nonexistent")))
    doc["upstream_host"] = f"127.0.0.1:{emulator.port}"
    doc["credentials"] = {"type": "inline", "access_key_id": harness.ACCESS_KEY_ID,
                          "secret_access_key": harness.SECRET_ACCESS_KEY, "session_token": harness.SESSION_TOKEN}
    gw = launch("identity-doc", doc, emulator.port)
    try:
        forged = {"x-forwarded-client-cert": f"URI={identities.DEV_WORKLOADS[WORKLOAD_B]}",
                  "x-jwt-payload": "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20ifQ"}
        status, _, out = gw.request("GET", "/usage", None, forged)
        assert status == 401, out
        status, _, out = gw.request("GET", "/usage", None, {"authorization": f"Bearer {DEMO_KEY}"})
        assert status == 200 and json.loads(out)["key_id"] == "demo"
    finally:
        gw.stop()
