"""The README's client snippets run as written against `make run`'s own configuration, so they
cannot rot: every fenced block preceded by `<!-- readme-test -->` is extracted and executed
(`python` blocks with the project's Python, `sh` blocks with bash) against Envoy loaded with
envoy/envoy-emulator.yaml — its plugin configuration untouched (the demo key `tg-demo-key`, the
aliases) — and an emulator started with `make run`'s credentials (tests/run.sh). Only what
`make run` fixes on the machine is mapped: its ports (10000, 10443) to the ones the OS gave,
`.run/tls/ca.pem` to the tests' CA, and the Claude Code binary to the one installed. Each
snippet must exit 0, print the emulator's answer, and be billed to the demo key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import harness
from test_claude_code import CLAUDE

README = harness.ROOT / "README.md"
MARKER = "<!-- readme-test -->"
MAKE_RUN = {"access_key_id": "AKIDEMULATOR", "secret_access_key": "emulator-secret-key", "upstream": "127.0.0.1:9100"}
CLAUDE_IN_README = ".run/npm/node_modules/.bin/claude"
TIMEOUT_S = 180


def snippets() -> list[tuple[str, str, str]]:
    """(id, language, code) of every marked block, in README order."""
    out = []
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1]
        m = re.fullmatch(r"```(\w+)", fence.strip())
        assert m, f"README line {i + 2}: a fenced block must follow {MARKER}"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        heading = next(lines[k] for k in range(i, -1, -1) if lines[k].startswith("## "))
        out.append((f"L{i + 2}-{heading[3:].split()[-2].lower()}-{m.group(1)}", m.group(1),
                    "\n".join(lines[i + 2:end]) + "\n"))
    return out


SNIPPETS = snippets()


def test_the_readme_has_the_client_snippets():
    """The marker is not silently lost: each client section keeps its tested blocks."""
    code = "\n".join(c for _, _, c in SNIPPETS)
    for must in ("OpenAI(base_url=", "/v1/chat/completions", "anthropic.Anthropic(base_url=", "/v1/messages",
                 "ANTHROPIC_BASE_URL=", "CLAUDE_CODE_USE_BEDROCK=1"):
        assert must in code, must


@pytest.fixture(scope="module")
def make_run(workdir, tls_dir):
    """Envoy + the emulator as `make run` configures them, on ports the OS picks."""
    emu = harness.Emulator(workdir / "readme", "--access-key-id", MAKE_RUN["access_key_id"],
                           "--secret-access-key", MAKE_RUN["secret_access_key"])
    shipped = yaml.safe_load((harness.ROOT / "envoy/envoy-emulator.yaml").read_text())
    doc = shipped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
    assert MAKE_RUN["upstream"] in doc and MAKE_RUN["access_key_id"] in doc
    gw = harness.Envoy(workdir / "readme", doc.replace(MAKE_RUN["upstream"], f"127.0.0.1:{emu.port}"),
                       emu.port, tls_dir, name="make-run")
    yield gw, emu
    gw.stop()
    emu.stop()


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_a_readme_snippet_runs_as_written(make_run, tls_dir, tmp_path, snippet):
    gw, emu = make_run
    _id, lang, code = snippet
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "AWS_", "OPENAI_"))}
    if CLAUDE_IN_README in code:
        if not CLAUDE.exists():
            why = f"Claude Code is not installed at {CLAUDE} (make claude-code)"
            if os.environ.get("TOLLGATE_REQUIRE_CLAUDE") == "1":
                pytest.fail(why)
            pytest.skip(why)
        code = code.replace(CLAUDE_IN_README, str(CLAUDE))
        home = tmp_path / "home"
        home.mkdir()
        env.update({"HOME": str(home), "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})
    code = (code.replace("http://127.0.0.1:10000", gw.http_url)
            .replace("https://127.0.0.1:10443", gw.https_url)
            .replace(".run/tls/ca.pem", str(tls_dir / "ca.pem")))
    assert "10000" not in code and "10443" not in code, "a port the mapping missed"
    records_before = len(gw.usage_records())
    ledger_before = len(emu.ledger())
    script = tmp_path / ("snippet.py" if lang == "python" else "snippet.sh")
    script.write_text(code)
    argv = [sys.executable, str(script)] if lang == "python" else ["bash", "-euo", "pipefail", str(script)]
    # No stdin: `claude -p` would read it.
    out = subprocess.run(argv, capture_output=True, text=True, cwd=harness.ROOT, env=env,
                         timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    # The emulator's answer (`w0 w1 …`) reached the snippet's output.
    assert "w0" in out.stdout, out.stdout + out.stderr
    gw.settled_record_count()
    records = gw.usage_records()[records_before:]
    served = [e for e in emu.ledger()[ledger_before:] if e["status"] == 200]
    assert served, "nothing reached the emulator"
    billed = [r for r in records if r["forwarded"] and r["status"] == 200]
    assert billed and {r["key_id"] for r in billed} == {"demo"}
    assert sorted(r["request_id"] for r in billed) == sorted(dict(e["headers"])["x-request-id"] for e in served)
    # The snippets' model is priced: each of its answers cost something (a token count is free).
    assert all(r["cost_pico_usd"] > 0 for r in billed if r["model"] == "claude-fast" and r["output_tokens"])
