"""Configuration failures fail closed; other upstream credential modes work end to end."""

from __future__ import annotations

import json

import harness
from conftest import KEYS, plugin_config
from test_bedrock_api import MESSAGES, raw


def test_bad_configuration_fails_closed_naming_the_field(workdir, emulator, tls_dir):
    cfg = plugin_config(emulator.port)
    cfg["api_keys"][1]["sha256"] = "not-a-hash"
    envoy = harness.Envoy(workdir / "badcfg", cfg, emulator.port, tls_dir, concurrency=1, name="badcfg")
    try:
        body = json.dumps({"messages": MESSAGES}).encode()
        status, headers, out = raw(envoy, "POST", "/model/claude-fast/converse", body,
                                   {"authorization": f"Bearer {KEYS['team-a'][0]}"})
        assert status == 500
        assert headers["x-amzn-errortype"] == "InternalServerException"
        assert "api_keys[1].sha256" in json.loads(out)["message"]
        assert "api_keys[1].sha256" in envoy.log()
    finally:
        envoy.stop()


def test_unknown_field_is_rejected(workdir, emulator, tls_dir):
    cfg = plugin_config(emulator.port)
    cfg["budgets"] = {}
    envoy = harness.Envoy(workdir / "unknownfield", cfg, emulator.port, tls_dir, concurrency=1, name="unknownfield")
    try:
        status, _, out = raw(envoy, "POST", "/model/claude-fast/converse", b"{}",
                             {"authorization": f"Bearer {KEYS['team-a'][0]}"})
        assert status == 500 and "budgets" in json.loads(out)["message"]
    finally:
        envoy.stop()


def test_bedrock_api_key_upstream(workdir, tls_dir):
    """credentials.type = bedrock_api_key: the upstream sees Tollgate's Bedrock key, not the client's."""
    upstream_key = "ABSKdGVzdC1iZWRyb2NrLWFwaS1rZXk="
    emu = harness.Emulator(workdir / "bearer", "--bearer-token", upstream_key)
    envoy = None
    try:
        cfg = plugin_config(emu.port, credentials={"type": "bedrock_api_key", "api_key": upstream_key})
        envoy = harness.Envoy(workdir / "bearer", cfg, emu.port, tls_dir, concurrency=1, name="bearer")
        body = json.dumps({"messages": MESSAGES, "inferenceConfig": {"maxTokens": 3}}).encode()
        status, _, out = raw(envoy, "POST", "/model/claude-fast/converse", body,
                             {"authorization": f"Bearer {KEYS['team-a'][0]}", "content-type": "application/json"})
        assert status == 200, out
        [entry] = emu.ledger()
        assert entry["auth"] == "bearer"
        assert dict(entry["headers"])["authorization"] == f"Bearer {upstream_key}"
        record = harness.wait_until(envoy.usage_records, 10, "a usage record")[0]
        assert record["output_tokens"] == 3 and record["status"] == 200
    finally:
        if envoy:
            envoy.stop()
        emu.stop()


def test_shipped_envoy_configs_validate(workdir, tls_dir):
    """Both shipped Envoy configurations load in Envoy 1.40 as written (only the dev
    certificate paths are pointed at this run's certificates)."""
    import subprocess

    for name in ("envoy-emulator.yaml", "envoy-bedrock.yaml"):
        text = (harness.ROOT / "envoy" / name).read_text()
        text = text.replace(".run/tls/", f"{tls_dir}/").replace(
            "target/wasm32-wasip1/release/tollgate_filter.wasm", str(harness.WASM)
        )
        path = workdir / f"validate-{name}"
        path.write_text(text)
        out = subprocess.run(
            [str(harness.ENVOY), "--mode", "validate", "-c", str(path)],
            capture_output=True, text=True, timeout=60,
            env={"AWS_ACCESS_KEY_ID": "AKIDVALIDATE", "AWS_SECRET_ACCESS_KEY": "validate", "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, f"{name}: {out.stdout[-2000:]} {out.stderr[-2000:]}"
