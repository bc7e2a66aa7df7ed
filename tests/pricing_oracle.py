"""Expected cost, computed independently of the gateway from the vendored litellm snapshot."""

import json
from decimal import Decimal
from pathlib import Path

_SNAPSHOT = json.loads(
    (Path(__file__).resolve().parent.parent / "pricing/litellm-bedrock.json").read_text(),
    parse_float=Decimal,
)
PICO = Decimal(10) ** 12


def prices(model_id: str) -> dict:
    entry = _SNAPSHOT[model_id]
    inp = Decimal(entry["input_cost_per_token"])
    return {
        "input": inp,
        "output": Decimal(entry["output_cost_per_token"]),
        # Tollgate charges cache tokens at the input price when litellm lists no cache price.
        "cache_read": Decimal(entry.get("cache_read_input_token_cost", inp)),
        "cache_write": Decimal(entry.get("cache_creation_input_token_cost", inp)),
    }


def cost_pico_usd(model_id: str, usage: dict) -> int:
    p = prices(model_id)
    total = (
        usage["input_tokens"] * p["input"]
        + usage["output_tokens"] * p["output"]
        + usage["cache_read_tokens"] * p["cache_read"]
        + usage["cache_write_tokens"] * p["cache_write"]
    ) * PICO
    assert total == total.to_integral_value(), "prices must be exact in pico-USD"
    return int(total)
