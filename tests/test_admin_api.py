"""The admin API on the Spin component (real `spin up`, its store on SQLite and on Redis): keys
created, listed with their usage, changed and revoked at runtime, next to the document's keys;
two instances on one Redis see every change at once. On Envoy keys are the document's: the same
operations are a new document through live configuration (tests/test_live_config.py)."""

from __future__ import annotations

import json

import pytest

import harness
from conftest import KEYS, bedrock_client, plugin_config
from test_bedrock_api import MESSAGES

ADMIN_KEY = "tg-admin-test-key"
# 2026-11-22T12:00:00Z: requests that count against a per-minute limit use the test clock.
CLOCK = {"x-tollgate-test-now-ms": "1795348800000"}
DOC_KEY = KEYS["team-a"][0]


def admin_config(upstream_port: int) -> dict:
    return plugin_config(upstream_port, admin_keys=[{"id": "ops", "sha256": harness.sha256_hex(ADMIN_KEY)}],
                         test_hooks=True)


def admin(gw, method: str, path: str, body: dict | None = None, key: str = ADMIN_KEY) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {key}"}
    if body is not None:
        headers["content-type"] = "application/json"
    status, _, out = gw.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
    return status, json.loads(out) if out else {}


def converse(gw, key: str, extra: dict | None = None) -> tuple[int, dict, bytes]:
    body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
    return gw.request("POST", "/model/claude-fast/converse", body,
                      {"authorization": f"Bearer {key}", "content-type": "application/json", **(extra or {})})


def audit_lines(gw) -> list[dict]:
    return [json.loads(line.split("tollgate.admin ", 1)[1]) for line in gw.log().splitlines()
            if "tollgate.admin " in line]


@pytest.mark.spin_only("the admin API is Spin's: on Envoy, keys change through the configuration (ECDS)")
def test_keys_created_changed_and_revoked_at_runtime(launch, emulator, tls_dir, host_kind):
    gw = launch("admin", admin_config(emulator.port), emulator.port)
    try:
        status, created = admin(gw, "POST", "/admin/keys", {"id": "team-x", "models": ["claude-fast"]})
        assert status == 201, created
        key = created["key"]
        assert key.startswith("tg-") and created["sha256"] == harness.sha256_hex(key)
        assert created["source"] == "runtime" and created["models"] == ["claude-fast"]
        # The new key works with boto3 as any key, next to the document's keys.
        out = bedrock_client(gw, tls_dir, key).converse(modelId="claude-fast", messages=MESSAGES,
                                                       inferenceConfig={"maxTokens": 3})
        assert out["usage"]["outputTokens"] == 3
        assert converse(gw, DOC_KEY)[0] == 200
        status, _, out = gw.request("POST", "/model/nova-lite/converse", b"{}", {"authorization": f"Bearer {key}"})
        assert status == 403, out
        [record] = [r for r in gw.usage_records() if r["key_id"] == "team-x"]
        assert record["status"] == 200 and record["output_tokens"] == 3

        # Listed with usage; the plaintext is nowhere but in the create's answer.
        status, listed = admin(gw, "GET", "/admin/keys")
        assert status == 200
        by_id = {k["id"]: k for k in listed["keys"]}
        assert set(by_id) == {k["id"] for k in admin_config(emulator.port)["api_keys"]} | {"team-x"}
        assert by_id["team-x"]["usage"]["requests"] == 1 and by_id["team-x"]["usage"]["cost_pico_usd"] > 0
        assert by_id["team-a"]["source"] == "configuration"
        assert key not in json.dumps(listed) and key not in gw.log()

        # Limits change from the next request.
        status, changed = admin(gw, "PATCH", "/admin/keys/team-x", {"limits": {"requests_per_minute": 1}})
        assert status == 200 and changed["limits"] == {"requests_per_minute": 1}, changed
        assert converse(gw, key, CLOCK)[0] == 200
        status, headers, out = converse(gw, key, CLOCK)
        assert status == 429 and headers["x-amzn-errortype"] == "ThrottlingException", out
        status, one = admin(gw, "GET", "/admin/keys/team-x")
        assert one["usage"]["requests"] == 2 and one["usage"]["requests_per_minute"]["limit"] == 1

        # Revoked: refused at its next request; the id can be issued again.
        status, revoked = admin(gw, "DELETE", "/admin/keys/team-x")
        assert (status, revoked) == (200, {"id": "team-x", "revoked": True})
        status, headers, _ = converse(gw, key)
        assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
        assert admin(gw, "DELETE", "/admin/keys/team-x")[0] == 404

        assert [(a["admin"], a["action"], a["key_id"]) for a in audit_lines(gw)] == [
            ("ops", "create", "team-x"), ("ops", "update", "team-x"), ("ops", "revoke", "team-x")]
    finally:
        gw.stop()


@pytest.mark.spin_only("the admin API is Spin's")
def test_admin_keys_and_api_keys_never_stand_in_for_each_other(launch, emulator, host_kind):
    gw = launch("admin-auth", admin_config(emulator.port), emulator.port)
    try:
        # An API key on the admin API, no key, a wrong key: 401, JSON errors.
        for key in (DOC_KEY, "", "tg-not-admin"):
            status, e = admin(gw, "GET", "/admin/keys", key=key)
            assert status == 401 and e["error"]["type"] == "authentication_error", (key, e)
        status, created = admin(gw, "POST", "/admin/keys", {"id": "runtime-1", "models": ["*"]})
        assert status == 201
        assert admin(gw, "GET", "/admin/keys", key=created["key"])[0] == 401
        # The admin key on a model route.
        status, headers, _ = converse(gw, ADMIN_KEY)
        assert status == 401 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
        # The document's keys change only in the document; a taken id is a conflict.
        status, e = admin(gw, "DELETE", "/admin/keys/team-a")
        assert status == 409 and "configuration" in e["error"]["message"]
        assert admin(gw, "POST", "/admin/keys", {"id": "team-a", "models": ["*"]})[0] == 409
        assert admin(gw, "POST", "/admin/keys", {"id": "runtime-1", "models": ["*"]})[0] == 409
        # Bad input: 400 naming what is wrong; unknown routes 404; all JSON.
        status, e = admin(gw, "POST", "/admin/keys", {"id": "x", "models": ["no-such-alias"]})
        assert status == 400 and "no-such-alias" in e["error"]["message"]
        status, e = admin(gw, "PATCH", "/admin/keys/runtime-1", {"limits": {"budget": {"usd": "ten", "period": "daily"}}})
        assert status == 400 and "budget" in e["error"]["message"]
        assert admin(gw, "PUT", "/admin/keys")[0] == 404
    finally:
        gw.stop()


@pytest.mark.spin_redis_only("instances share runtime keys through Redis")
def test_two_instances_on_one_redis_see_every_change_at_once(workdir, emulator, tls_dir, redis_server, host_kind):
    db = redis_server.new_db()
    a, b = (harness.Spin(workdir / "admin-shared", admin_config(emulator.port), emulator.port, tls_dir,
                         name=f"admin-{n}", redis=redis_server, redis_db=db) for n in "ab")
    try:
        status, created = admin(a, "POST", "/admin/keys", {"id": "fleet", "models": ["*"]})
        assert status == 201
        key = created["key"]
        assert converse(b, key)[0] == 200
        assert converse(a, key)[0] == 200
        # Changed on B, enforced on A at once.
        assert admin(b, "PATCH", "/admin/keys/fleet", {"limits": {"requests_per_minute": 1}})[0] == 200
        assert converse(a, key, CLOCK)[0] == 200
        assert converse(b, key, CLOCK)[0] == 429
        # Both list it with the usage both served.
        for gw in (a, b):
            [listed] = [k for k in admin(gw, "GET", "/admin/keys")[1]["keys"] if k["id"] == "fleet"]
            assert listed["usage"]["requests"] == 3
        # Revoked on A, refused on B at its next request.
        assert admin(a, "DELETE", "/admin/keys/fleet")[0] == 200
        assert converse(b, key)[0] == 401
        assert all(k["id"] != "fleet" for k in admin(b, "GET", "/admin/keys")[1]["keys"])
    finally:
        a.stop()
        b.stop()


@pytest.mark.envoy_only("on Envoy keys are the document's; the admin API is Spin's")
def test_envoy_has_no_admin_api(gateway, host_kind):
    status, headers, _ = gateway.request("GET", "/admin/keys", None, {"authorization": f"Bearer {DOC_KEY}"})
    assert status == 404 and headers["x-amzn-errortype"] == "UnknownOperationException"


@pytest.mark.spin_only("the admin API is Spin's")
def test_the_readme_s_admin_commands_on_the_demo_configuration(workdir, emulator, tls_dir, host_kind):
    """host-spin/config.emulator.json (what `make spin-up` runs) with its dev admin key, driven
    with the README's requests (curl's `-d` sends a form content type; the API reads JSON)."""
    cfg = json.loads((harness.ROOT / "host-spin/config.emulator.json").read_text())
    cfg["upstream_host"] = f"127.0.0.1:{emulator.port}"
    gw = harness.Spin(workdir / "spin", cfg, emulator.port, tls_dir, name="demo-admin", variables={
        "aws_access_key_id": harness.ACCESS_KEY_ID, "aws_secret_access_key": harness.SECRET_ACCESS_KEY,
        "aws_session_token": harness.SESSION_TOKEN})
    try:
        dev_admin = {"authorization": "Bearer tg-dev-admin-key",
                     "content-type": "application/x-www-form-urlencoded"}
        body = b'{"id": "team-x", "models": ["claude-fast"], "limits": {"budget": {"usd": "10", "period": "daily"}}}'
        status, _, out = gw.request("POST", "/admin/keys", body, dev_admin)
        assert status == 201, out
        key = json.loads(out)["key"]
        assert converse(gw, key)[0] == 200
        status, _, out = gw.request("GET", "/admin/keys", None, dev_admin)
        [x] = [k for k in json.loads(out)["keys"] if k["id"] == "team-x"]
        assert x["usage"]["requests"] == 1 and x["usage"]["budget"]["limit_usd"] == "10.00"
        status, _, _ = gw.request("PATCH", "/admin/keys/team-x", b'{"limits": {"requests_per_minute": 30}}', dev_admin)
        assert status == 200
        assert gw.request("DELETE", "/admin/keys/team-x", None, dev_admin)[0] == 200
        assert converse(gw, key)[0] == 401
    finally:
        gw.stop()
