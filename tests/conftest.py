"""Fixtures: one emulator for the whole session, and Tollgate on each host in turn: Envoy (2
workers) with the filter, then the Spin component under real `spin up` with its key-value store
on SQLite ("spin-sqlite") and on Redis ("spin-redis"). Every test that uses `gateway` (or
`host_kind`) runs once per host; a case that differs between hosts says so with
`@pytest.mark.envoy_only(reason)` or `@pytest.mark.spin_only(reason)` (README: "Spin")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.config
import botocore.tokens
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
NOVA_LITE = "us.amazon.nova-lite-v1:0"
# A context window of 8192 tokens in litellm's data.
LLAMA3_8B = "meta.llama3-8b-instruct-v1:0"
GUARDRAIL = {"identifier": "gr0tollgate", "version": "7"}

KEYS = {
    "team-a": ("tg-test-key-team-a", ["*"]),
    "team-limited": ("tg-test-key-limited", ["claude-fast"]),
    # Every request carries the key's guardrail (tests/test_routing.py).
    "team-guarded": ("tg-test-key-guarded", ["*"]),
}
# Aliases of several targets (tests/test_routing.py).
ROUTED_ALIASES = {
    "fallback": [HAIKU, SONNET, NOVA_LITE],
    "split": [{"model": HAIKU, "weight": 3}, {"model": SONNET, "weight": 1}],
    "long-context": [LLAMA3_8B, HAIKU],
}
MAX_BODY = 64 * 1024

HOSTS = list(harness.HOST_KINDS)

# Whole modules that only make sense on one host (files owned elsewhere carry no marker).
ENVOY_ONLY_MODULES = {
    "test_metrics.py": "metrics are Envoy stats on the admin /stats/prometheus endpoint; "
                       "the Spin component has no metrics endpoint",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "envoy_only(reason): differs between hosts; runs against Envoy only")
    config.addinivalue_line(
        "markers", "spin_only(reason): differs between hosts; runs against the Spin component only")
    config.addinivalue_line(
        "markers", "spin_redis_only(reason): runs against the Spin component on Redis only")


def pytest_collection_modifyitems(config, items):
    """Skips, with its reason, the other host's variant of a host-specific case."""
    for item in items:
        kind = getattr(item, "callspec", None) and item.callspec.params.get("host_kind")
        if kind is None:
            continue
        reasons = {
            "envoy": [m.args[0] if m.args else "" for m in item.iter_markers("envoy_only")],
            "spin": [m.args[0] if m.args else "" for m in item.iter_markers("spin_only")],
            "spin-redis": [m.args[0] if m.args else "" for m in item.iter_markers("spin_redis_only")],
        }
        module_reason = ENVOY_ONLY_MODULES.get(item.path.name)
        if module_reason:
            reasons["envoy"].append(module_reason)
        for only, why in reasons.items():
            if why and kind != only and kind.split("-")[0] != only:
                item.add_marker(pytest.mark.skip(reason=f"differs between hosts ({only} only): {why[0]}"))


def plugin_config(upstream_port: int, **overrides) -> dict:
    cfg = {
        "region": harness.REGION,
        "upstream_host": f"127.0.0.1:{upstream_port}",
        "aliases": {"claude-fast": HAIKU, "claude-smart": SONNET, "nova-lite": NOVA_LITE, **ROUTED_ALIASES},
        "api_keys": [
            {"id": kid, "sha256": harness.sha256_hex(secret), "models": models,
             **({"guardrail": GUARDRAIL} if kid == "team-guarded" else {})}
            for kid, (secret, models) in KEYS.items()
        ],
        "credentials": {
            "type": "inline",
            "access_key_id": harness.ACCESS_KEY_ID,
            "secret_access_key": harness.SECRET_ACCESS_KEY,
            "session_token": harness.SESSION_TOKEN,
        },
        "max_request_body_bytes": MAX_BODY,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tollgate")


@pytest.fixture(scope="session")
def tls_dir(workdir) -> Path:
    d = workdir / "tls"
    subprocess.run(["bash", str(harness.ROOT / "tests/make-certs.sh"), str(d)], check=True, capture_output=True)
    return d


@pytest.fixture(scope="session")
def emulator(workdir):
    emu = harness.Emulator(workdir, "--session-token", harness.SESSION_TOKEN)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def redis_server(workdir):
    """One private redis-server for the session (each user takes its own DB number). Missing
    redis-server skips what needs it, unless TOLLGATE_REQUIRE_REDIS=1 (CI) makes that a failure."""
    try:
        redis = harness.Redis(workdir / "redis")
    except FileNotFoundError as e:
        if os.environ.get("TOLLGATE_REQUIRE_REDIS") == "1":
            raise
        pytest.skip(str(e))
    yield redis
    redis.stop()


@pytest.fixture(scope="session", params=HOSTS)
def host_kind(request) -> str:
    """Which host Tollgate runs on: "envoy", "spin-sqlite" or "spin-redis"."""
    return request.param


def redis_for(request, host_kind: str):
    """The session's Redis when `host_kind` needs one (skips without redis-server, see above)."""
    return request.getfixturevalue("redis_server") if host_kind == "spin-redis" else None


@pytest.fixture(scope="session")
def gateway(request, workdir, emulator, tls_dir, host_kind):
    gw = harness.start_gateway(host_kind, workdir / host_kind, plugin_config(emulator.port), emulator.port, tls_dir,
                               redis=redis_for(request, host_kind))
    yield gw
    gw.stop()


@pytest.fixture
def launch(request, workdir, tls_dir, host_kind):
    """Starts a gateway of its own on this test's host: `launch(name, config, upstream_port, **kw)`.
    The caller stops it."""
    def start(name: str, cfg, upstream_port: int, **kw):
        return harness.start_gateway(host_kind, workdir / host_kind / name, cfg, upstream_port, tls_dir,
                                     name=name, redis=redis_for(request, host_kind), **kw)
    return start


# boto3 picks bearer auth when AWS_BEARER_TOKEN_BEDROCK is set, as users do; it must be set
# before any client is made. Clients for other keys use botocore's own env-token provider
# reading that variable from their own environment.
os.environ["AWS_BEARER_TOKEN_BEDROCK"] = KEYS["team-a"][0]
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def bedrock_client(gateway, tls_dir, key: str | None = None, read_timeout: int = 30, max_pool_connections: int = 10):
    session = boto3.Session(region_name=harness.REGION)
    if key is not None:
        core = session._session
        env = {"AWS_BEARER_TOKEN_BEDROCK": key}
        core._components.register_component(
            "token_provider",
            botocore.tokens.TokenProviderChain([botocore.tokens.ScopedEnvTokenProvider(core, environ=env)]),
        )
    return session.client(
        "bedrock-runtime",
        endpoint_url=gateway.https_url,
        verify=str(tls_dir / "ca.pem"),
        config=botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=read_timeout,
            connect_timeout=5,
            max_pool_connections=max_pool_connections,
        ),
    )


@pytest.fixture(scope="session")
def client(gateway, tls_dir):
    return bedrock_client(gateway, tls_dir)


@pytest.fixture
def client_for(gateway, tls_dir):
    return lambda key, **kw: bedrock_client(gateway, tls_dir, key, **kw)
