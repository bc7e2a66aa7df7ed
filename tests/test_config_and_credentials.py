"""Configuration failures fail closed; other upstream credential modes work end to end. Each case
starts its own gateway, on each host."""

from __future__ import annotations

import json

import pytest

import harness
from conftest import KEYS, plugin_config
from test_bedrock_api import MESSAGES, raw


GENERIC_500 = "the gateway is misconfigured; the reason is in the gateway's log"


def test_bad_configuration_fails_closed_naming_the_field_in_the_log_only(launch, emulator):
    cfg = plugin_config(emulator.port)
    cfg["api_keys"][1]["sha256"] = "not-a-hash"
    gw = launch("badcfg", cfg, emulator.port, concurrency=1)
    try:
        body = json.dumps({"messages": MESSAGES}).encode()
        status, headers, out = raw(gw, "POST", "/model/claude-fast/converse", body,
                                   {"authorization": f"Bearer {KEYS['team-a'][0]}"})
        assert status == 500
        assert headers["x-amzn-errortype"] == "InternalServerException"
        # The caller (here not even authenticated yet) learns nothing about the configuration.
        assert json.loads(out)["message"] == GENERIC_500
        assert "api_keys[1].sha256" in gw.log()
    finally:
        gw.stop()


def test_unknown_field_is_rejected(launch, emulator):
    cfg = plugin_config(emulator.port)
    cfg["budgets"] = {}
    gw = launch("unknownfield", cfg, emulator.port, concurrency=1)
    try:
        status, _, out = raw(gw, "POST", "/model/claude-fast/converse", b"{}",
                             {"authorization": f"Bearer {KEYS['team-a'][0]}"})
        assert status == 500 and json.loads(out)["message"] == GENERIC_500
        assert "budgets" in gw.log()
    finally:
        gw.stop()


def test_bedrock_api_key_upstream(workdir, launch, host_kind):
    """credentials.type = bedrock_api_key: the upstream sees Tollgate's Bedrock key, not the client's."""
    upstream_key = "ABSKdGVzdC1iZWRyb2NrLWFwaS1rZXk="
    emu = harness.Emulator(workdir / host_kind / "bearer", "--bearer-token", upstream_key)
    gw = None
    try:
        cfg = plugin_config(emu.port, credentials={"type": "bedrock_api_key", "api_key": upstream_key})
        gw = launch("bearer", cfg, emu.port, concurrency=1)
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
        status, _, out = raw(gw, "POST", "/model/claude-fast/converse", body,
                             {"authorization": f"Bearer {KEYS['team-a'][0]}", "content-type": "application/json"})
        assert status == 200, out
        [entry] = emu.ledger()
        assert entry["auth"] == "bearer"
        assert dict(entry["headers"])["authorization"] == f"Bearer {upstream_key}"
        record = harness.wait_until(gw.usage_records, 10, "a usage record")[0]
        assert record["output_tokens"] == 3 and record["status"] == 200
    finally:
        if gw:
            gw.stop()
        emu.stop()


def test_unreachable_upstream_is_503_unbilled_and_releases_its_slot(launch, host_kind):
    """Nothing listens upstream: the client gets 503, the record says so and bills nothing, and the
    reservation (here the key's one concurrency slot) is released: the next request gets 503 again,
    not 429. Differs between hosts in the body: Envoy answers with its own plain-text 503; the Spin
    component, which opens the connection itself, with Bedrock's ServiceUnavailableException."""
    closed = harness.free_port()
    cfg = plugin_config(closed)
    cfg["api_keys"][0]["limits"] = {"max_concurrent_requests": 1, "budget": {"usd": "1", "period": "total"}}
    gw = launch("unreachable", cfg, closed, concurrency=1)
    try:
        key = {"authorization": f"Bearer {KEYS['team-a'][0]}", "content-type": "application/json"}
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
        for _ in range(2):
            status, headers, out = raw(gw, "POST", "/model/claude-fast/converse", body, key)
            assert status == 503, out
            if host_kind != "envoy":
                assert headers["x-amzn-errortype"] == "ServiceUnavailableException"
                assert "could not reach" in json.loads(out)["message"]
        records = harness.wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(gw.usage_records()),
                                     10, "two usage records")
        assert [(r["status"], r["cost_pico_usd"], r["usage_source"]) for r in records] == [(503, 0, "none")] * 2
        status, _, out = raw(gw, "GET", "/usage", None, key)
        usage = json.loads(out)
        assert usage["concurrent_requests"]["used"] == 0
        assert usage["budget"]["spent_pico_usd"] == 0
    finally:
        gw.stop()


def test_environment_credentials_from_spin_variables(workdir, emulator, tls_dir):
    """Spin only (Envoy reads them from vm_config environment_variables): `credentials:
    environment` on Spin: AWS_ACCESS_KEY_ID is the (secret) variable aws_access_key_id, and so on,
    given to `spin up` as `--variable` or SPIN_VARIABLE_*."""
    cfg = plugin_config(emulator.port, credentials={"type": "environment"})
    gw = harness.Spin(
        workdir / "spin", cfg, emulator.port, tls_dir, name="envcreds",
        variables={"aws_access_key_id": harness.ACCESS_KEY_ID},
        env={"SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY": harness.SECRET_ACCESS_KEY,
             "SPIN_VARIABLE_AWS_SESSION_TOKEN": harness.SESSION_TOKEN},
    )
    try:
        start = len(emulator.ledger())
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 2}}).encode()
        status, _, out = raw(gw, "POST", "/model/claude-fast/converse", body,
                             {"authorization": f"Bearer {KEYS['team-a'][0]}", "content-type": "application/json"})
        assert status == 200, out
        [entry] = harness.wait_until(lambda: emulator.ledger()[start:], 10, "the ledger entry")
        assert entry["signature_valid"] is True
        assert dict(entry["headers"])["x-amz-security-token"] == harness.SESSION_TOKEN
    finally:
        gw.stop()


def test_missing_configuration_fails_closed_on_spin(workdir, emulator, tls_dir):
    """Spin only (the configuration is the Spin variable tollgate_config): without it `spin up`
    refuses to start, naming the variable (the manifest declares it required); with credentials
    of type `environment` but no credential variables, every request gets 500 naming them."""
    with pytest.raises(RuntimeError) as refused:
        harness.Spin(workdir / "spin", None, emulator.port, tls_dir, name="noconfig")
    assert "tollgate_config" in str(refused.value)
    cfg = plugin_config(emulator.port, credentials={"type": "environment"})
    gw = harness.Spin(workdir / "spin", cfg, emulator.port, tls_dir, name="nocreds")
    try:
        status, headers, out = raw(gw, "POST", "/model/claude-fast/converse", b"{}",
                                   {"authorization": f"Bearer {KEYS['team-a'][0]}"})
        assert status == 500 and headers["x-amzn-errortype"] == "InternalServerException"
        assert json.loads(out)["message"] == GENERIC_500
        assert "AWS_ACCESS_KEY_ID" in gw.log()
    finally:
        gw.stop()

def test_shipped_envoy_configs_validate(workdir, tls_dir):
    """The shipped Envoy configurations load in Envoy 1.40 as written (only the dev
    certificate paths are pointed at this run's certificates)."""
    import subprocess

    for name in ("envoy-emulator.yaml", "envoy-bedrock.yaml", "envoy-ec2.yaml", "envoy-ecs.yaml",
                 "envoy-eks.yaml"):
        text = (harness.ROOT / "envoy" / name).read_text()
        text = text.replace(".run/tls/", f"{tls_dir}/").replace(
            "target/wasm32-wasip1/release/tollgate_filter.wasm", str(harness.WASM)
        )
        path = workdir / f"validate-{name}"
        path.write_text(text)
        out = subprocess.run(
            [str(harness.ENVOY), "--mode", "validate", "-c", str(path)],
            capture_output=True, text=True, timeout=60,
            # Instance metadata off: envoy-eks.yaml's signer must never look for 169.254.169.254.
            env={"AWS_ACCESS_KEY_ID": "AKIDVALIDATE", "AWS_SECRET_ACCESS_KEY": "validate", "PATH": "/usr/bin:/bin",
                 "AWS_EC2_METADATA_DISABLED": "true"},
        )
        assert out.returncode == 0, f"{name}: {out.stdout[-2000:]} {out.stderr[-2000:]}"


def test_spin_manifest_matches_the_component():
    """host-spin/spin.toml (which every Spin test runs) points at the built component, lets it
    reach Bedrock and one more origin whose default is no local address, grants the `default`
    store, and maps exactly the Spin variables the component reads (`tollgate_config` and core's
    ENVIRONMENT_NAMES, lower-cased), secret."""
    import re
    import tomllib

    manifest = tomllib.loads((harness.ROOT / "host-spin/spin.toml").read_text())
    assert manifest["spin_manifest_version"] == 2
    [trigger] = manifest["trigger"]["http"]
    assert (trigger["route"], trigger["component"]) == ("/...", "tollgate")
    component = manifest["component"]["tollgate"]
    assert (harness.ROOT / "host-spin" / component["source"]).resolve() == harness.SPIN_COMPONENT.resolve()
    assert component["key_value_stores"] == ["default"]
    assert set(component["allowed_outbound_hosts"]) == {
        "https://bedrock-runtime.{{ aws_region }}.amazonaws.com", "{{ upstream_origin }}",
        "{{ credentials_origin }}"}
    # Unset, the extra origins name nothing that resolves (RFC 2606 `.invalid`).
    assert manifest["variables"]["upstream_origin"]["default"].endswith(".invalid")
    assert manifest["variables"]["credentials_origin"]["default"].endswith(".invalid")
    core_config = (harness.ROOT / "core/src/config/mod.rs").read_text()
    block = re.search(r"pub const ENVIRONMENT_NAMES: &\[&str\] = &\[(.*?)\];", core_config, re.S).group(1)
    expected = {"tollgate_config"} | {name.lower() for name in re.findall(r'"([A-Z0-9_]+)"', block)}
    assert len(expected) == 10
    assert set(component["variables"]) == expected
    assert set(manifest["variables"]) == expected | {"aws_region", "upstream_origin", "credentials_origin"}
    declared = manifest["variables"]
    for name in expected:
        assert component["variables"][name] == "{{ %s }}" % name
        assert declared[name]["secret"] is True, name
        assert re.fullmatch(r"[a-z](?:[a-z0-9]|_(?!_))*[a-z0-9]", name), name  # Spin's name rules
    assert declared["tollgate_config"]["required"] is True
    for rc in ("runtime-config.sqlite.toml", "runtime-config.redis.toml"):
        store = tomllib.loads((harness.ROOT / "host-spin" / rc).read_text())["key_value_store"]["default"]
        assert store["type"] in {"spin", "redis"}, rc


def test_spin_demo_configuration_works(workdir, emulator, tls_dir):
    """host-spin/config.emulator.json (what `make spin-up` runs) parses and serves, with its
    credentials from Spin variables (pointed at this session's emulator)."""
    cfg = json.loads((harness.ROOT / "host-spin/config.emulator.json").read_text())
    cfg["upstream_host"] = f"127.0.0.1:{emulator.port}"
    gw = harness.Spin(workdir / "spin", cfg, emulator.port, tls_dir, name="demo", variables={
        "aws_access_key_id": harness.ACCESS_KEY_ID, "aws_secret_access_key": harness.SECRET_ACCESS_KEY,
        "aws_session_token": harness.SESSION_TOKEN})
    try:
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 2}}).encode()
        headers = {"authorization": "Bearer tg-demo-key", "content-type": "application/json"}
        status, _, out = raw(gw, "POST", "/model/claude-fast/converse", body, headers)
        assert status == 200, out
        status, _, out = raw(gw, "GET", "/usage", None, headers)
        assert status == 200 and json.loads(out)["budget"]["limit_usd"] == "1.00"
    finally:
        gw.stop()
