"""The real Claude Code CLI (`claude -p`) through Tollgate on every host, in both of its modes:
the Anthropic API (`ANTHROPIC_BASE_URL` + `ANTHROPIC_API_KEY`: `/v1/messages`) and Bedrock
(`CLAUDE_CODE_USE_BEDROCK=1` + `AWS_BEARER_TOKEN_BEDROCK`: the `/model/…` routes, with its
start-up probes). The emulator's answer must reach Claude Code's output, and every request
must be billed to the key, exactly as the emulator served it.

The CLI comes from npm (`@anthropic-ai/claude-code`, pinned in `make claude-code`, which `.ci/run`
runs) into `.run/npm`; `$TOLLGATE_CLAUDE` names another binary. Without one these tests are
skipped, unless `TOLLGATE_REQUIRE_CLAUDE=1` (CI) makes that a failure. Each run has its own
`HOME`, no telemetry or other traffic, and a time bound: Claude Code retries failed requests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import harness
from conftest import HAIKU, plugin_config, redis_for
from test_bedrock_api import Observed, ledger_usage, record_usage

CLAUDE = Path(os.environ.get("TOLLGATE_CLAUDE") or harness.ROOT / ".run/npm/node_modules/.bin/claude")
RUN_TIMEOUT_S = 180

KEYS = {"claude-code": "tg-claude-code", "claude-code-haiku": "tg-claude-code-haiku"}


def claude_binary() -> Path:
    if CLAUDE.exists():
        return CLAUDE
    why = f"Claude Code is not installed at {CLAUDE} (make claude-code)"
    if os.environ.get("TOLLGATE_REQUIRE_CLAUDE") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def cc_gateway(workdir, emulator, tls_dir, host_kind, request):
    claude_binary()
    # Claude Code's requests carry its system prompt and tool definitions: about 80 KB.
    cfg = plugin_config(emulator.port, max_request_body_bytes=1 << 20)
    cfg["api_keys"] = [
        {"id": "claude-code", "sha256": harness.sha256_hex(KEYS["claude-code"]), "models": ["*"]},
        {"id": "claude-code-haiku", "sha256": harness.sha256_hex(KEYS["claude-code-haiku"]),
         "models": ["claude-fast"]},
    ]
    gw = harness.start_gateway(host_kind, workdir / host_kind / "claude-code", cfg, emulator.port, tls_dir,
                               name="claude-code", redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


def run_claude(tmp_path: Path, gateway, env: dict, prompt: str) -> str:
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("ANTHROPIC_", "CLAUDE_", "AWS_"))}
    base.update({
        "HOME": str(home),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # The gateway's dev certificate, for its HTTPS listener.
        "NODE_EXTRA_CA_CERTS": str(gateway.ca),
    })
    base.update(env)
    out = subprocess.run([str(claude_binary()), "-p", prompt, "--model", "claude-fast"], cwd=home,
                         env=base, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"claude exited {out.returncode}: {out.stdout}\n{out.stderr}"
    return out.stdout


def assert_billed_to(records: list[dict], entries: list[dict], key_id: str, dialect: str):
    """Every record is the key's, in `dialect`; each request that reached the emulator is billed
    exactly what the emulator served it."""
    assert records and {(r["key_id"], r["dialect"]) for r in records} == {(key_id, dialect)}
    served = {dict(e["headers"])["x-request-id"]: e for e in entries}
    forwarded = [r for r in records if r["forwarded"]]
    assert sorted(r["request_id"] for r in forwarded) == sorted(served)
    for r in forwarded:
        e = served[r["request_id"]]
        assert (r["status"], r["usage_source"]) == (e["status"], "reported" if e["status"] == 200 else "none")
        if e["status"] == 200:
            assert record_usage(r) == ledger_usage(e) and r["cost_pico_usd"] > 0


def settle(seen: Observed, gateway, emulator):
    """Every record and ledger entry since `seen`, once both are quiet."""
    gateway.settled_record_count()
    records = gateway.usage_records()[seen.records_start:]
    entries = emulator.ledger()[seen.ledger_start:]
    return records, entries


def test_claude_code_on_the_anthropic_api(cc_gateway, emulator, tmp_path):
    seen = Observed(cc_gateway, emulator)
    out = run_claude(tmp_path, cc_gateway, {
        "ANTHROPIC_BASE_URL": cc_gateway.url,
        "ANTHROPIC_API_KEY": KEYS["claude-code"],
    }, "Say hello. [[emu:output=5]]")
    assert "w0 w1 w2 w3 w4" in out
    records, entries = settle(seen, cc_gateway, emulator)
    assert_billed_to(records, entries, "claude-code", "anthropic")
    # Its answer was streamed from InvokeModelWithResponseStream, on the model asked for.
    answer = [e for e in entries if e["operation"] == "invoke-with-response-stream"]
    assert answer and {e["model_id"] for e in answer} == {HAIKU}
    assert all(e["status"] == 200 for e in answer), [e.get("error") for e in answer]
    # Claude Code's own beta flags that Bedrock lacks were left out, and said so.
    assert any("beta:claude-code-20250219" in r.get("dropped", []) for r in records)


@pytest.mark.parametrize("key_id", ["claude-code", "claude-code-haiku"])
def test_claude_code_in_bedrock_mode(cc_gateway, emulator, tmp_path, key_id):
    seen = Observed(cc_gateway, emulator)
    out = run_claude(tmp_path, cc_gateway, {
        "CLAUDE_CODE_USE_BEDROCK": "1",
        "ANTHROPIC_BEDROCK_BASE_URL": cc_gateway.https_url,
        "AWS_REGION": harness.REGION,
        "AWS_BEARER_TOKEN_BEDROCK": KEYS[key_id],
    }, "Say hello. [[emu:output=4]]")
    assert "w0 w1 w2 w3" in out
    records, entries = settle(seen, cc_gateway, emulator)
    assert_billed_to(records, entries, key_id, "bedrock")
    streamed = [e for e in entries if e["operation"] == "invoke-with-response-stream"]
    assert streamed and streamed[-1]["model_id"] == HAIKU and streamed[-1]["status"] == 200
    if key_id == "claude-code-haiku":
        # Its start-up probes of other models were refused by the gateway (403), never sent.
        assert {e["model_id"] for e in entries} == {HAIKU}
