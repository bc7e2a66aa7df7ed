"""Expected cost, computed independently of the gateway from the vendored litellm snapshot."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

_SNAPSHOT = json.loads(
    (Path(__file__).resolve().parent.parent / "pricing/litellm-bedrock.json").read_text(),
    parse_float=Decimal,
)
PICO = Decimal(10) ** 12


def prices(model_id: str, tier: str | None = None) -> dict:
    """litellm's prices of `model_id`, or of its service tier (`priority`, `flex`)."""
    entry = _SNAPSHOT[model_id]
    s = "" if tier is None else "_" + tier
    inp = Decimal(entry["input_cost_per_token" + s])
    return {
        "input": inp,
        "output": Decimal(entry["output_cost_per_token" + s]),
        # Tollgate charges cache tokens at the input price when litellm lists no cache price.
        "cache_read": Decimal(entry.get("cache_read_input_token_cost" + s, inp)),
        "cache_write": Decimal(entry.get("cache_creation_input_token_cost" + s, inp)),
    }


def cost_pico_usd(model_id: str, usage: dict, tier: str | None = None) -> int:
    p = prices(model_id, tier)
    total = (
        usage["input_tokens"] * p["input"]
        + usage["output_tokens"] * p["output"]
        + usage["cache_read_tokens"] * p["cache_read"]
        + usage["cache_write_tokens"] * p["cache_write"]
    ) * PICO
    assert total == total.to_integral_value(), "prices must be exact in pico-USD"
    return int(total)


def guardrail_cost_pico_usd(units: dict) -> int:
    """The cost of a guardrail's policy units ({"contentPolicyUnits": n, ...}) at litellm's
    per-unit prices (`bedrock/guardrails`)."""
    per_unit = _SNAPSHOT["bedrock/guardrails"]["guardrail_cost_per_unit"]
    total = sum(Decimal(n) * Decimal(per_unit[name]) for name, n in units.items()) * PICO
    assert total == total.to_integral_value(), "prices must be exact in pico-USD"
    return int(total)
