#!/usr/bin/env python3
"""Turn litellm's price list into Tollgate's Bedrock price table.

Python 3 standard library only. Two steps:

  generate.py vendor --from FULL.json --version X.Y.Z
      Keep the Bedrock runtime entries of litellm's
      model_prices_and_context_window_backup.json and write the committed
      snapshot pricing/litellm-bedrock.json (sorted keys, plus "_source").

  generate.py generate
      From the committed snapshot write pricing/table.rs (included by
      core/src/accounting/pricing.rs) and check pricing/supported-models.txt.

With no arguments it runs `generate`. Output is deterministic: same input,
byte-identical output. Any problem that would make a price wrong (a price
that is not a whole number of pico-USD, a supported model left without a
price, a malformed value) stops generation with a non-zero exit naming the
entry.

Units: every price in table.rs is an integer number of pico-USD
(1e-12 USD) per token. JSON is parsed with parse_float=decimal.Decimal and
scaled with Decimal.scaleb(12), which is exact; a price whose scaled value is
not an integer fails generation.

What is kept and what is skipped, and why
-----------------------------------------
Vendor step: only entries whose litellm_provider is "bedrock" or
"bedrock_converse" (both are models served by bedrock-runtime's InvokeModel /
Converse, which is all Tollgate proxies). Excluded:
  * "bedrock_mantle": Bedrock's OpenAI-compatible "Mantle" endpoint
    (bedrock-mantle.<region>.api.aws, keys "bedrock_mantle/..."). Different
    API surface and model-ID scheme; Tollgate does not serve it.
  * "sagemaker", "aws_polly" and every other provider: not Bedrock.

Generate step, by key shape (first match wins):
  * "<id>" (no "/"): a Bedrock model ID or inference-profile ID, cross-region
    prefixes included ("us.", "eu.", "apac.", "au.", "jp.", "global.",
    "us-gov.", ...). Each is its own MODELS row with its own price: litellm
    prices regional profiles differently from the base ID (e.g. "us." +10%).
  * "bedrock/<region>/<id>" where <region> looks like an AWS region
    (us-east-1, us-gov-west-1, ap-southeast-2, ...): a price that applies
    only in that region; becomes a REGIONAL row and wins over MODELS there.
  * "bedrock/<id>", "bedrock/invoke/<id>", "bedrock/converse/<id>": litellm
    routing prefixes in front of a plain ID. Used as a MODELS row for <id>
    only when litellm has no bare "<id>" entry; when it has one the bare entry
    wins (a warning is printed if their prices differ).
  * "bedrock/<region>/<N>-month-commitment/<id>", "bedrock/*/...-commitment/..":
    provisioned throughput, billed per model-unit hour, no per-token price.
    Skipped.
  * "bedrock/claude_platform/<name>": "Claude Platform on AWS" (Anthropic's
    own API billed through AWS), not a bedrock-runtime model ID. Skipped.
  * "<W>-x-<H>/<steps>/<id>" (or ".../bedrock/<id>"): a size/step variant of an image model's
    per-image price; see "Image models" below.
  * "bedrock/guardrails" and any other shape: skipped (listed on stderr).
By price:
  * Entries without both input_cost_per_token and output_cost_per_token are
    skipped (images, video, rerank priced per query; TwelveLabs Pegasus has
    an output price but bills input per video second; Marengo per second).
  * Entries whose per-token input and output prices are both zero are
    skipped (rerank models: priced per query, a zero row would bill nothing).
  * Chat-like entries with a zero input or output price are skipped (a chat
    request would be under-billed).
  Skipped IDs are unknown to Tollgate and are billed at the most expensive
  chat tier (over-count, never under).
  * Missing (or zero) cache_read_input_token_cost /
    cache_creation_input_token_cost: the row charges cache tokens at the
    input price, never zero.
  * Long-context tiers: litellm's "*_above_<N>k_tokens" prices (e.g. Claude
    Sonnet 4/4.5 above 200k input tokens) become the row's long_context tier,
    which applies to the whole request once its total input (input + cache
    read + cache write) exceeds N*1000 tokens. 1-hour cache-write prices
    (*_above_1hr*) are not carried: Usage does not tell them apart.
  * Service tiers: the "_priority" and "_flex" prices of a row (Bedrock's
    serviceTier / X-Amzn-Bedrock-Service-Tier "priority" and "flex") go to
    service_tiers.rs, one TIERS / REGIONAL_TIERS row per (model, tier), with
    the same cache rule (missing: the tier's input price). A tier of a model
    that also has a long-context tier fails generation (litellm has no
    long-context tier prices to carry); a tier price above MAX_CHAT_TIER too.
    "_batches" (batch inference, another API) and "_ultrafast" (not a Bedrock
    runtime tier) are not carried.
  * max_output_tokens (or max_tokens when missing) is carried as Option<u32>.
Image models (Stability, Titan Image Generator, Nova Canvas) are priced per image, from
output_cost_per_image (USD per image, scaled to pico-USD exactly like token prices), into the
IMAGES table. The bare "<id>" entry and every "<W>-x-<H>/<steps>/[bedrock/]<id>" variant of an
ID are one row: the highest of their prices (a request's size and steps are not read, so the
dearest variant is billed, never a cheaper one). An image price of zero is no price. Image
models without a row are refused by the gateway. input_cost_per_image (image inputs of
embedding models) is not carried.
The most expensive chat tier (MAX_CHAT_TIER: price of an unknown model) takes
the maximum of each of the four prices separately over every chat-like row,
MODELS and REGIONAL, long-context tiers included.
"""

import argparse
import decimal
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SNAPSHOT = os.path.join(HERE, "litellm-bedrock.json")
TABLE = os.path.join(HERE, "table.rs")
TIERS_TABLE = os.path.join(HERE, "service_tiers.rs")
SUPPORTED = os.path.join(HERE, "supported-models.txt")
README = os.path.join(HERE, "README.md")

SOURCE_FILE = "model_prices_and_context_window_backup.json"
PROVIDERS = ("bedrock", "bedrock_converse")
CHAT_LIKE = ("chat", "responses")
ROUTE_PREFIXES = ("bedrock/invoke/", "bedrock/converse/", "bedrock/")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
COMMITMENT_RE = re.compile(r"^[0-9]+-months?-commitment$")
IMAGE_SIZE_RE = re.compile(r"^([0-9]+|max)-x-([0-9]+|max)$")
LONG_CONTEXT_RE = re.compile(r"^input_cost_per_token_above_([0-9]+)k_tokens$")
# Bedrock service tiers litellm prices, as table.rs's ServiceTier variants.
SERVICE_TIERS = (("priority", "Priority"), ("flex", "Flex"))
PICO = 12
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

PRICE_FIELDS = (
    ("input", "input_cost_per_token"),
    ("output", "output_cost_per_token"),
    ("cache_read", "cache_read_input_token_cost"),
    ("cache_write", "cache_creation_input_token_cost"),
)


class GenerateError(Exception):
    pass


def warn(msg):
    print("generate.py: warning: " + msg, file=sys.stderr)


def load_json(path):
    def no_constants(name):
        raise GenerateError("%s: non-finite number %s" % (path, name))

    with open(path, "rb") as f:
        return json.loads(
            f.read().decode("utf-8"),
            parse_float=decimal.Decimal,
            parse_constant=no_constants,
        )


# ---------------------------------------------------------------- JSON out


def dump_json(value, indent=0):
    """JSON with sorted keys and numbers written exactly as parsed."""
    pad = "  " * (indent + 1)
    end = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            pad + json.dumps(k) + ": " + dump_json(value[k], indent + 1)
            for k in sorted(value)
        ]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [pad + dump_json(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise GenerateError("non-finite number %s" % value)
        return str(value)
    if isinstance(value, (int, str)):
        return json.dumps(value)
    raise GenerateError("cannot write %r as JSON" % (value,))


def write_if_changed(path, text):
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


# ------------------------------------------------------------------ vendor


def vendor(full_path, version):
    full = load_json(full_path)
    if not isinstance(full, dict):
        raise GenerateError("%s: top level is not an object" % full_path)
    kept = {
        k: v
        for k, v in full.items()
        if isinstance(v, dict) and v.get("litellm_provider") in PROVIDERS
    }
    if not kept:
        raise GenerateError("%s: no Bedrock entries found" % full_path)
    others = sorted(
        {
            v.get("litellm_provider")
            for v in full.values()
            if isinstance(v, dict)
            and "bedrock" in str(v.get("litellm_provider", ""))
            and v.get("litellm_provider") not in PROVIDERS
        }
    )
    if others:
        warn("not vendored (not bedrock-runtime): providers %s" % ", ".join(others))
    kept["_source"] = {"package": "litellm", "version": version, "file": SOURCE_FILE}
    write_if_changed(SNAPSHOT, dump_json(kept) + "\n")
    print("vendored %d Bedrock entries from litellm %s" % (len(kept) - 1, version))


# ---------------------------------------------------------------- generate


def pico(key, field, value):
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        raise GenerateError("%s: %s is not a number: %r" % (key, field, value))
    d = decimal.Decimal(value)
    if not d.is_finite() or d < 0:
        raise GenerateError("%s: %s is not a finite non-negative price: %s" % (key, field, value))
    scaled = d.scaleb(PICO)
    if scaled != scaled.to_integral_value():
        raise GenerateError(
            "%s: %s = %s USD/token is not a whole number of pico-USD" % (key, field, value)
        )
    n = int(scaled)
    if n > U64_MAX:
        raise GenerateError("%s: %s = %s does not fit u64 pico-USD" % (key, field, value))
    return n


def price_of(key, entry, suffix=""):
    """The four prices (pico-USD) of an entry, or of one of its tiers."""
    got = {}
    for name, field in PRICE_FIELDS:
        value = entry.get(field + suffix)
        got[name] = None if value is None else pico(key, field + suffix, value)
    if got["input"] is None or got["output"] is None:
        return None
    for name in ("cache_read", "cache_write"):
        if not got[name]:  # missing or zero: never bill cache tokens at zero
            got[name] = got["input"]
    return tuple(got[name] for name, _ in PRICE_FIELDS)


def max_output_of(key, entry):
    for field in ("max_output_tokens", "max_tokens"):
        value = entry.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U32_MAX:
            raise GenerateError("%s: %s is not a u32: %r" % (key, field, value))
        return value
    return None


def long_context_of(key, entry):
    tiers = []
    for field in entry:
        m = LONG_CONTEXT_RE.match(field)
        if m:
            tiers.append(int(m.group(1)))
    if not tiers:
        return None
    if len(tiers) > 1:
        raise GenerateError(
            "%s: several long-context tiers (%s); table.rs carries one"
            % (key, ", ".join("%dk" % t for t in sorted(tiers)))
        )
    k = tiers[0]
    price = price_of(key, entry, "_above_%dk_tokens" % k)
    if price is None:
        raise GenerateError("%s: long-context tier above %dk has no output price" % (key, k))
    return (k * 1000, price)


def classify(key):
    """('model', id) | ('regional', region, id) | ('alias', id) | ('skip', reason)."""
    if "/" not in key:
        return ("model", key)
    parts = key.split("/")
    if IMAGE_SIZE_RE.match(parts[0]):
        return ("skip", "image generation priced per image")
    if parts[0] != "bedrock":
        return ("skip", "unrecognised key shape")
    if len(parts) >= 3 and parts[1] == "claude_platform":
        return ("skip", "Claude Platform on AWS, not a bedrock-runtime model ID")
    if any(COMMITMENT_RE.match(p) for p in parts[1:-1]):
        return ("skip", "provisioned-throughput commitment, no per-token price")
    if len(parts) == 3 and REGION_RE.match(parts[1]):
        return ("regional", parts[1], parts[2])
    for prefix in ROUTE_PREFIXES:
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest and "/" not in rest:
            return ("alias", rest)
    return ("skip", "unrecognised key shape")


IMAGE_MODES = ("image_generation", "image_edit")


def image_price_of(key, entry):
    """(model ID, pico-USD per image) of an image model's entry, or None."""
    value = entry.get("output_cost_per_image")
    if value is None or entry.get("mode") not in IMAGE_MODES:
        return None
    parts = key.split("/")
    if len(parts) == 1:
        model_id = key
    elif len(parts) >= 3 and IMAGE_SIZE_RE.match(parts[0]):
        rest = parts[2:]
        if rest[0] == "bedrock":
            rest = rest[1:]
        if len(rest) != 1 or not rest[0]:
            return None
        model_id = rest[0]
    else:
        return None
    price = pico(key, "output_cost_per_image", value)
    return (model_id, price) if price > 0 else None


def row_of(key, entry):
    """(price, max_output, long_context, mode) or a skip reason string."""
    mode = entry.get("mode", "")
    price = price_of(key, entry)
    if price is None:
        return "no per-token input and output price"
    input_, output = price[0], price[1]
    if input_ == 0 and output == 0:
        return "per-token prices are zero (priced per query/unit)"
    if mode in CHAT_LIKE and (input_ == 0 or output == 0):
        return "chat model with a zero per-token price"
    return (price, max_output_of(key, entry), long_context_of(key, entry), mode, tiers_of(key, entry))


def tiers_of(key, entry):
    """{tier: price} of the service tiers litellm prices for this entry."""
    tiers = {}
    for tier, _ in SERVICE_TIERS:
        price = price_of(key, entry, "_" + tier)
        if price is not None:
            tiers[tier] = price
        elif entry.get("input_cost_per_token_" + tier) is not None:
            raise GenerateError("%s: %s tier has no output price" % (key, tier))
    return tiers


def read_supported():
    models = []
    seen = set()
    with open(SUPPORTED, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line in seen:
                raise GenerateError("%s:%d: %s listed twice" % (SUPPORTED, n, line))
            seen.add(line)
            models.append(line)
    return models


def rust_str(s):
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("\\u{%x}" % ord(ch))
    return '"' + "".join(out) + '"'


def rust_int(n):
    s = str(n)
    if len(s) <= 4:
        return s
    groups = []
    while s:
        groups.insert(0, s[-3:])
        s = s[:-3]
    return "_".join(groups)


def rust_price(p):
    return "Price { input: %s, output: %s, cache_read: %s, cache_write: %s }" % tuple(
        rust_int(x) for x in p
    )


def rust_row(model, row):
    """One `row(...)` call on one line: a refresh diffs one line per changed model."""
    price, max_out, long_ctx, mode = row[:4]
    lc = "None"
    if long_ctx is not None:
        lc = "Some(&LongContext { above_input_tokens: %s, price: %s })" % (
            rust_int(long_ctx[0]),
            rust_price(long_ctx[1]),
        )
    mo = "None" if max_out is None else "Some(%s)" % rust_int(max_out)
    args = [rust_str(model)] + [rust_int(x) for x in price] + [mo, lc]
    return "row(%s), // %s" % (", ".join(args), mode or "-")


def generate():
    snap = load_json(SNAPSHOT)
    source = snap.pop("_source", None)
    if not isinstance(source, dict) or not isinstance(source.get("version"), str):
        raise GenerateError("%s: missing _source.version" % SNAPSHOT)
    version = source["version"]

    models, aliases, regional, images = {}, {}, {}, {}
    skipped = {}
    for key in sorted(snap):
        entry = snap[key]
        if not isinstance(entry, dict):
            raise GenerateError("%s: entry is not an object" % key)
        image = image_price_of(key, entry)
        if image is not None:
            model_id, price = image
            images[model_id] = max(price, images.get(model_id, 0))
            continue
        kind = classify(key)
        if kind[0] == "skip":
            skipped.setdefault(kind[1], []).append(key)
            continue
        row = row_of(key, entry)
        if isinstance(row, str):
            skipped.setdefault(row, []).append(key)
            continue
        if kind[0] == "model":
            models[kind[1]] = row
        elif kind[0] == "alias":
            aliases.setdefault(kind[1], []).append((key, row))
        else:
            regional[(kind[1], kind[2])] = row

    for model_id in sorted(aliases):
        rows = aliases[model_id]
        if model_id in models:
            for key, row in rows:
                if row[:3] != models[model_id][:3]:
                    warn("%s differs from bare %s; the bare entry wins" % (key, model_id))
            continue
        # Several route aliases for one ID and no bare entry: they must agree.
        first_key, first = rows[0]
        for key, row in rows[1:]:
            if row[:3] != first[:3]:
                raise GenerateError("%s and %s price %s differently" % (first_key, key, model_id))
        models[model_id] = first

    for reason in sorted(skipped):
        print("skipped %3d: %s" % (len(skipped[reason]), reason), file=sys.stderr)

    missing = [m for m in read_supported() if m not in models]
    if missing:
        raise GenerateError(
            "supported models with no price in litellm %s: %s" % (version, ", ".join(missing))
        )

    every = list(models.values()) + list(regional.values())
    chat = [r for r in every if r[3] in CHAT_LIKE]
    if not chat:
        raise GenerateError("no chat models priced")
    tiers = [r[0] for r in chat] + [r[2][1] for r in chat if r[2] is not None]
    max_tier = tuple(max(t[i] for t in tiers) for i in range(4))

    out = []
    out.append("// generated by pricing/generate.py from litellm %s — do not edit" % version)
    out.append("// Source: litellm %s, %s (snapshot: pricing/litellm-bedrock.json)." % (version, SOURCE_FILE))
    out.append("// Prices are pico-USD (1e-12 USD) per token. Rows are sorted by key (byte order) for")
    out.append("// binary search. Included by core/src/accounting/pricing.rs. Refresh: make pricing.")
    out.append("")
    out.append("/// litellm version the prices come from.")
    out.append("pub const LITELLM_VERSION: &str = %s;" % rust_str(version))
    out.append("")
    out.append("/// Most expensive chat tier: each price is the maximum over every chat row (MODELS,")
    out.append("/// REGIONAL and their long-context tiers), taken separately. Billed for unknown models.")
    out.append("pub const MAX_CHAT_TIER: Price = %s;" % rust_price(max_tier))
    out.append("")
    out.append("// Rows: row(model, input, output, cache_read, cache_write, max_output_tokens, long_context),")
    out.append("// prices in pico-USD per token; the trailing comment is litellm's mode.")
    out.append("")
    out.append("/// Model and inference-profile IDs, sorted by model. %d rows." % len(models))
    out.append("static MODELS: &[Row] = &[")
    for model_id in sorted(models):
        out.append("    " + rust_row(model_id, models[model_id]))
    out.append("];")
    out.append("")
    out.append("/// Region-specific prices, sorted by (region, model); they win over MODELS. %d rows." % len(regional))
    out.append("static REGIONAL: &[(&str, Row)] = &[")
    for region, model_id in sorted(regional):
        line = rust_row(model_id, regional[(region, model_id)])
        call, comment = line.rsplit(", // ", 1)
        out.append("    (%s, %s), // %s" % (rust_str(region), call, comment))
    out.append("];")
    out.append("")
    out.append("/// Image models priced per image (litellm's output_cost_per_image), sorted by model: pico-USD")
    out.append("/// per image, the highest of a model's size/step variants. %d rows." % len(images))
    out.append("static IMAGES: &[(&str, u64)] = &[")
    for model_id in sorted(images):
        out.append("    (%s, %s)," % (rust_str(model_id), rust_int(images[model_id])))
    out.append("];")
    write_if_changed(TABLE, "\n".join(out) + "\n")
    write_tiers(version, models, regional, max_tier)
    update_readme(version)
    print(
        "table.rs: litellm %s, %d models, %d regional, %d image models, %d supported"
        % (version, len(models), len(regional), len(images), len(read_supported()))
    )


def write_tiers(version, models, regional, max_tier):
    """service_tiers.rs: the priority and flex prices of MODELS and REGIONAL rows."""
    variant = dict(SERVICE_TIERS)
    rows, regional_rows = [], []
    for where, table in (("model", models), ("regional", regional)):
        for k in sorted(table):
            row = table[k]
            for tier in sorted(row[4], key=lambda t: [n for n, _ in SERVICE_TIERS].index(t)):
                price = row[4][tier]
                name = k if where == "model" else "%s/%s" % k
                if row[2] is not None:
                    raise GenerateError(
                        "%s: has a long-context tier and a %s tier; service_tiers.rs carries no "
                        "long-context price for a service tier" % (name, tier)
                    )
                if any(p > m for p, m in zip(price, max_tier)):
                    raise GenerateError("%s: %s price above MAX_CHAT_TIER" % (name, tier))
                args = ", ".join(
                    ["ServiceTier::" + variant[tier]] + [rust_int(x) for x in price]
                )
                if where == "model":
                    rows.append("    tier_row(%s, %s)," % (rust_str(k), args))
                else:
                    regional_rows.append(
                        "    (%s, tier_row(%s, %s))," % (rust_str(k[0]), rust_str(k[1]), args)
                    )
    out = [
        "// generated by pricing/generate.py from litellm %s — do not edit" % version,
        "// The priority and flex service-tier prices of the rows of table.rs, pico-USD per token.",
        "// Sorted by (model, tier) and (region, model, tier) for binary search. Included by",
        "// core/src/accounting/pricing.rs. Refresh: make pricing.",
        "",
        "// tier_row(model, tier, input, output, cache_read, cache_write)",
        "",
        "/// Service-tier prices of MODELS rows. %d rows." % len(rows),
        "static TIERS: &[TierRow] = &[",
        *rows,
        "];",
        "",
        "/// Service-tier prices of REGIONAL rows. %d rows." % len(regional_rows),
        "static REGIONAL_TIERS: &[(&str, TierRow)] = &[",
        *regional_rows,
        "];",
    ]
    write_if_changed(TIERS_TABLE, "\n".join(out) + "\n")


README_RE = re.compile(r"(<!-- litellm-version -->).*?(<!-- /litellm-version -->)")


def update_readme(version):
    try:
        with open(README, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return
    new = README_RE.sub(lambda m: m.group(1) + version + m.group(2), text)
    write_if_changed(README, new)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    v = sub.add_parser("vendor", help="write litellm-bedrock.json from litellm's full JSON")
    v.add_argument("--from", dest="full", required=True, help="litellm's " + SOURCE_FILE)
    v.add_argument("--version", required=True, help="litellm version of that file")
    sub.add_parser("generate", help="write table.rs from litellm-bedrock.json")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "vendor":
            vendor(args.full, args.version)
        else:
            generate()
    except (GenerateError, OSError, ValueError) as e:
        print("generate.py: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
