#!/usr/bin/env bash
# Refresh Tollgate's Bedrock price table from the litellm wheel on PyPI.
#
#   bash pricing/refresh.sh            # latest litellm
#   bash pricing/refresh.sh 1.109.1    # a given version
#   bash pricing/refresh.sh path/to/litellm-X.Y.Z-....whl   # an already-downloaded wheel
#
# Downloads the wheel (no dependencies, binary only), extracts
# litellm/model_prices_and_context_window_backup.json with Python's zipfile, then runs
# pricing/generate.py: `vendor` rewrites pricing/litellm-bedrock.json, `generate` rewrites
# pricing/table.rs and fails if a model in pricing/supported-models.txt has no price.
# The litellm version used is read from the wheel's METADATA and recorded in the snapshot's
# "_source", in table.rs (LITELLM_VERSION) and in pricing/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
arg="${1:-}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [[ -n "$arg" && -f "$arg" ]]; then
    wheel="$arg"
else
    spec="litellm"
    if [[ -n "$arg" ]]; then
        spec="litellm==$arg"
    fi
    "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/dl" "$spec"
    shopt -s nullglob
    wheels=("$tmp"/dl/litellm-*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -ne 1 ]]; then
        echo "refresh.sh: expected one litellm wheel, got ${#wheels[@]}" >&2
        exit 1
    fi
    wheel="${wheels[0]}"
fi

version="$("$python" - "$wheel" "$tmp/prices.json" <<'PY'
import sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    member = "litellm/model_prices_and_context_window_backup.json"
    if member not in names:
        sys.exit("refresh.sh: %s not in %s" % (member, wheel))
    with open(out, "wb") as f:
        f.write(z.read(member))
    meta = [n for n in names if n.endswith(".dist-info/METADATA") and "/" not in n[: -len("/METADATA")]]
    if len(meta) != 1:
        sys.exit("refresh.sh: no single .dist-info/METADATA in %s" % wheel)
    for line in z.read(meta[0]).decode("utf-8").splitlines():
        if line.startswith("Version:"):
            print(line.split(":", 1)[1].strip())
            break
    else:
        sys.exit("refresh.sh: no Version in %s" % meta[0])
PY
)"

if [[ -n "$arg" && ! -f "$arg" && "$version" != "$arg" ]]; then
    echo "refresh.sh: asked for litellm $arg, got $version" >&2
    exit 1
fi

"$python" "$here/generate.py" vendor --from "$tmp/prices.json" --version "$version"
"$python" "$here/generate.py" generate
