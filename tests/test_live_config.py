"""Live configuration on Envoy: new documents through extension config discovery (ECDS) from a
watched directory, published with the shipped envoy/ecds-update.sh into the shipped
envoy/envoy-ecds.yaml, take effect without restarting Envoy. In-flight requests finish and are
billed under the document they started with, totals and quotas carry over, a revoked key is
refused from its next request, and a bad document is rejected while the previous one keeps
serving. Each test starts its own Envoy (2 workers)."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import botocore.eventstream
import pytest

import harness
import mesh
from test_bedrock_api import MESSAGES, raw

ALPHA, BETA = "tg-live-alpha", "tg-live-beta"
NOW_MS = 1795867200000  # 2026-11-29T12:00:00Z: every request of a test in one quota minute
CLOCK = {"x-tollgate-test-now-ms": str(NOW_MS)}


class Live:
    """Envoy from envoy/envoy-ecds.yaml, its Tollgate resource envoy/ecds/tollgate.yaml with
    this run's module path and the test's document (the only two substitutions)."""

    def __init__(self, workdir, emulator, tls_dir, document: str, name: str):
        self.dir = workdir / name
        self.watched = self.dir / "ecds"
        self.watched.mkdir(parents=True, exist_ok=True)
        shipped = mesh.shipped_resource()
        self.resource = mesh.substituted(shipped, {mesh.LOCAL_FILE: str(harness.WASM), mesh.DOCUMENT: document})
        assert mesh.changed_paths(shipped, self.resource) == {mesh.LOCAL_FILE, mesh.DOCUMENT}
        self.published = 0
        self._publish(self.resource)
        self.envoy = harness.Envoy(self.dir, None, 0, tls_dir, name="envoy", concurrency=2,
                                   bootstrap=mesh.ecds_bootstrap(self.watched, emulator.port, tls_dir))
        self.discovery = mesh.Discovery(self.envoy, "tollgate")

    def _publish(self, resource: dict):
        self.published += 1
        mesh.publish(self.watched, resource, self.dir / f"next-{self.published}.yaml")

    def update(self, document: str) -> str:
        """Publishes `document`; "applied" or "rejected" once Envoy has decided."""
        before = self.discovery.counts()
        self._publish(mesh.substituted(self.resource, {mesh.DOCUMENT: document}))
        return self.discovery.outcome(before)

    def stop(self):
        self.envoy.stop()


@pytest.fixture
def live(workdir, emulator, tls_dir, request):
    made = []

    def start(document: str) -> Live:
        made.append(Live(workdir, emulator, tls_dir, document, f"live-{request.node.name}-{len(made)}"))
        return made[-1]

    yield start
    for one in made:
        one.stop()


def document(emulator, keys: dict, **extra) -> str:
    return mesh.policy(emulator.port, keys, test_hooks=True, **extra)


def converse(gw, key: str, max_tokens: int = 3):
    body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": max_tokens}}).encode()
    status, headers, out = raw(gw, "POST", "/model/claude-fast/converse", body,
                               {"authorization": f"Bearer {key}", "content-type": "application/json", **CLOCK})
    return status, headers, json.loads(out) if out else None


def usage(gw, key: str) -> dict:
    status, _, out = raw(gw, "GET", "/usage", None, {"authorization": f"Bearer {key}", **CLOCK})
    assert status == 200, out
    return json.loads(out)


def forwarded_records(gw, key_id: str, n: int) -> list[dict]:
    """The usage records of `key_id`'s requests that went upstream, once there are `n`."""
    def found():
        records = [r for r in gw.usage_records() if r["key_id"] == key_id and r["forwarded"]]
        return records if len(records) >= n else None
    return harness.wait_until(found, 10, f"{n} usage records of {key_id}")


def test_keys_added_revoked_and_limits_changed_take_effect_without_restart(live, emulator):
    """One Envoy process, one set of VMs: each new document is applied by a throw-away canary VM
    plus the VMs already running, and usage totals, the request-per-minute window and the budget
    spent carry over from one document to the next, even across a key's revocation."""
    limits = {"requests_per_minute": 2, "budget": {"usd": "1", "period": "total"}}
    gw = live(document(emulator, {"alpha": (ALPHA, limits)}))
    pid, vms = gw.envoy.proc.pid, mesh.vm_counts(gw.envoy)
    assert converse(gw.envoy, ALPHA)[0] == 200
    assert converse(gw.envoy, BETA)[0] == 401

    # A key added.
    assert gw.update(document(emulator, {"alpha": (ALPHA, limits), "beta": (BETA, None)})) == "applied"
    assert converse(gw.envoy, BETA)[0] == 200
    assert converse(gw.envoy, ALPHA)[0] == 200
    # The minute's count started under the first document: the third request is refused.
    status, headers, out = converse(gw.envoy, ALPHA)
    assert status == 429 and headers["x-amzn-errortype"] == "ThrottlingException", out

    # A limit changed: the same window, a higher limit.
    raised = {**limits, "requests_per_minute": 5}
    assert gw.update(document(emulator, {"alpha": (ALPHA, raised), "beta": (BETA, None)})) == "applied"
    assert converse(gw.envoy, ALPHA)[0] == 200
    alpha = usage(gw.envoy, ALPHA)
    assert alpha["requests"] == 3 and alpha["requests_per_minute"] == {"limit": 5, "used": 3}
    billed = sum(r["cost_pico_usd"] for r in forwarded_records(gw.envoy, "alpha", 3))
    assert billed > 0 and alpha["cost_pico_usd"] == billed
    assert alpha["budget"]["spent_pico_usd"] == billed

    # A key revoked: refused from its next request; the other key serves on.
    assert gw.update(document(emulator, {"beta": (BETA, None)})) == "applied"
    status, headers, _ = converse(gw.envoy, ALPHA)
    assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    assert converse(gw.envoy, BETA)[0] == 200

    # Re-issued under the same id: its totals and budget were kept, not reset.
    assert gw.update(document(emulator, {"alpha": (ALPHA, raised), "beta": (BETA, {"requests_per_minute": 100})})) == "applied"
    alpha = usage(gw.envoy, ALPHA)
    assert alpha["requests"] == 3 and alpha["budget"]["spent_pico_usd"] == billed
    assert usage(gw.envoy, BETA)["requests"] == 2

    # No restart, no new VM but one throw-away canary per new document.
    assert gw.envoy.proc.poll() is None and gw.envoy.proc.pid == pid
    assert mesh.vm_counts(gw.envoy) == {"created": vms["created"] + 4, "active": vms["active"]}
    assert len(forwarded_records(gw.envoy, "alpha", 3)) == 3


def test_a_bad_update_is_rejected_and_the_serving_configuration_stays(live, emulator):
    """A bad document after a good one is rejected (Envoy counts an update_rejected and logs the
    field), and the good one keeps serving: the key it has still works, the key the bad one
    would have added does not; a corrected document then applies, totals intact."""
    gw = live(document(emulator, {"alpha": (ALPHA, None)}))
    assert converse(gw.envoy, ALPHA)[0] == 200

    bad = json.loads(document(emulator, {"alpha": (ALPHA, None), "beta": (BETA, None)}))
    bad["api_keys"][1]["sha256"] = "not-a-hash"
    assert gw.update(json.dumps(bad)) == "rejected"
    log = gw.envoy.log()
    assert "api_keys[1].sha256" in log and "configuration update rejected" in log
    assert converse(gw.envoy, ALPHA)[0] == 200
    assert converse(gw.envoy, BETA)[0] == 401

    assert gw.update(document(emulator, {"alpha": (ALPHA, None)}, budgets={})) == "rejected"
    assert converse(gw.envoy, ALPHA)[0] == 200

    assert gw.update(document(emulator, {"alpha": (ALPHA, None), "beta": (BETA, None)})) == "applied"
    assert converse(gw.envoy, BETA)[0] == 200
    assert usage(gw.envoy, ALPHA)["requests"] == 3


def test_a_bad_first_document_fails_closed_and_a_good_one_then_serves(live, emulator):
    """With no valid document served yet there is nothing to keep: the filter loads and answers
    500 (the field named in the log only, as with a static configuration), and the next good
    document applies."""
    gw = live(document(emulator, {"alpha": (ALPHA, None)}, budgets={}))
    status, headers, out = converse(gw.envoy, ALPHA)
    assert status == 500 and headers["x-amzn-errortype"] == "InternalServerException"
    assert "budgets" not in out["message"] and "budgets" in gw.envoy.log()
    assert gw.envoy.usage_records() == []
    assert gw.update(document(emulator, {"alpha": (ALPHA, None)})) == "applied"
    assert converse(gw.envoy, ALPHA)[0] == 200


def test_a_document_that_failed_closed_before_does_the_same_again_and_never_wedges_envoy(live, emulator):
    """Envoy remembers which documents passed its canary VM and does not run the canary again
    for them, but configures the running VMs with them, and a VM that refuses a document there
    is marked failed: every later configuration on it is refused. A bad document that failed
    closed (nothing valid had served yet) and is delivered again later must therefore fail
    closed again, in every VM, and a valid document must still apply afterwards."""
    bad = document(emulator, {"alpha": (ALPHA, None)}, budgets={})
    gw = live(bad)
    assert converse(gw.envoy, ALPHA)[0] == 500
    assert gw.update(document(emulator, {"alpha": (ALPHA, None)})) == "applied"
    assert converse(gw.envoy, ALPHA)[0] == 200

    start = len(emulator.ledger())
    again = gw.update(bad)
    replies = [converse(gw.envoy, key) for key in (ALPHA, "tg-not-a-key")]
    forwarded = emulator.ledger()[start:]
    assert gw.update(document(emulator, {"alpha": (ALPHA, None), "beta": (BETA, None)})) == "applied"
    assert converse(gw.envoy, BETA)[0] == 200
    assert "Failed to configure thread-local Wasm plugin" not in gw.envoy.log()

    # Envoy's cached canary verdict accepts it; it fails closed as it did the first time.
    assert again == "applied"
    for status, headers, out in replies:
        assert status == 500 and headers["x-amzn-errortype"] == "InternalServerException", (status, out)
        assert "budgets" not in out["message"]
    assert forwarded == []


def stream_request(gw, key: str, prompt: str, max_tokens: int) -> http.client.HTTPResponse:
    url = urllib.parse.urlsplit(gw.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": prompt}]}],
                       "inferenceConfig": {"maxTokens": max_tokens}})
    conn.request("POST", "/model/claude-fast/converse-stream", body=body,
                 headers={"authorization": f"Bearer {key}", "content-type": "application/json", **CLOCK})
    return conn.getresponse()


def test_an_in_flight_stream_finishes_and_is_billed_under_the_document_it_started_with(live, emulator):
    """A slow stream is admitted under a document giving its key one concurrency slot and a
    budget; its key is revoked while it streams. New requests with the key are refused at
    once, the stream runs to its last event, and its usage is recorded and settled against the
    key's counters: when the key comes back its totals hold the stream, its budget the stream's
    cost, and its slot is free."""
    limits = {"max_concurrent_requests": 1, "budget": {"usd": "1", "period": "total"}}
    gw = live(document(emulator, {"alpha": (ALPHA, limits), "beta": (BETA, None)}))
    events = 16
    response = stream_request(gw.envoy, ALPHA, f"[[emu:events={events}]] [[emu:slow=300]]", events)
    assert response.status == 200
    decoder = botocore.eventstream.EventStreamBuffer()
    seen = []

    def read_some():
        chunk = response.read1(65536)
        decoder.add_data(chunk)
        seen.extend(m.headers.get(":event-type") for m in decoder)
        return chunk

    harness.wait_until(lambda: read_some() and "contentBlockDelta" in seen, 10, "the first stream event")
    assert converse(gw.envoy, ALPHA)[0] == 429  # its one slot is the stream's

    assert gw.update(document(emulator, {"beta": (BETA, None)})) == "applied"
    before_update = seen.count("contentBlockDelta")
    assert converse(gw.envoy, ALPHA)[0] == 401
    assert converse(gw.envoy, BETA)[0] == 200
    while read_some():
        pass
    assert seen.count("contentBlockDelta") == events and seen[-1] == "metadata"
    assert before_update < events  # the update landed mid-stream

    [record] = forwarded_records(gw.envoy, "alpha", 1)
    assert record["operation"] == "converse-stream"
    assert (record["status"], record["usage_source"], record["output_tokens"]) == (200, "reported", events)
    assert gw.update(document(emulator, {"alpha": (ALPHA, limits), "beta": (BETA, None)})) == "applied"
    alpha = usage(gw.envoy, ALPHA)
    assert alpha["requests"] == 1 and alpha["output_tokens"] == events
    assert alpha["concurrent_requests"] == {"limit": 1, "used": 0}
    assert alpha["budget"]["spent_pico_usd"] == record["cost_pico_usd"] == alpha["cost_pico_usd"] > 0
    assert converse(gw.envoy, ALPHA)[0] == 200


def test_the_shipped_ecds_files_serve_as_written(workdir, tls_dir):
    """envoy/envoy-ecds.yaml with envoy/ecds/tollgate.yaml, published by envoy/ecds-update.sh as
    `make run-ecds` does, against an emulator with `make run`'s credentials; only the module path
    and the emulator's port differ from the files."""
    emu = harness.Emulator(workdir / "shipped-ecds", "--access-key-id", "AKIDEMULATOR",
                           "--secret-access-key", "emulator-secret-key")
    envoy = None
    try:
        shipped = mesh.shipped_resource()
        text = mesh.get(shipped, mesh.DOCUMENT)
        assert text.count('"127.0.0.1:9100"') == 1
        resource = mesh.substituted(shipped, {
            mesh.LOCAL_FILE: str(harness.WASM),
            mesh.DOCUMENT: text.replace('"127.0.0.1:9100"', f'"127.0.0.1:{emu.port}"')})
        watched = workdir / "shipped-ecds" / "ecds"
        watched.mkdir(parents=True, exist_ok=True)
        mesh.publish(watched, resource, workdir / "shipped-ecds" / "first.yaml")
        envoy = harness.Envoy(workdir / "shipped-ecds", None, 0, tls_dir, name="envoy", concurrency=1,
                              bootstrap=mesh.ecds_bootstrap(watched, emu.port, tls_dir))
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 2}}).encode()
        status, _, out = raw(envoy, "POST", "/model/claude-fast/converse", body,
                             {"authorization": "Bearer tg-demo-key", "content-type": "application/json"})
        assert status == 200, out
        [entry] = emu.ledger()
        assert entry["signature_valid"] is True
    finally:
        if envoy:
            envoy.stop()
        emu.stop()
