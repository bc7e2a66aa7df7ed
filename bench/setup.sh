#!/usr/bin/env bash
# Installs what the benchmark needs (called by `make bench` / `make bench-smoke`):
#   - the load generator (bench/driver, its own Cargo workspace; built into target/bench);
#   - bench/.venv (PyYAML for the Envoy config, matplotlib for the plot);
#   - `full` only: bench/.venv-litellm with LiteLLM proxy (the comparison gateway).
# Each venv is rebuilt only when its requirements file changes (a stamp holds its hash).
set -euo pipefail
mode=${1:-full}
cd "$(dirname "$0")/.."

command -v taskset >/dev/null || { echo "bench needs taskset (util-linux)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "bench needs 2 cores" >&2; exit 2; }

CARGO_TARGET_DIR=target/bench cargo build --release --quiet --manifest-path bench/driver/Cargo.toml

venv() {  # venv DIR REQUIREMENTS
  local dir=$1 req=$2 stamp="$1/.installed"
  local want; want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "bench: installing $dir from $req"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --upgrade pip
  "$dir/bin/pip" install --quiet -r "$req"
  echo "$want" > "$stamp"
}

venv bench/.venv bench/requirements.txt
if [ "$mode" = full ]; then
  venv bench/.venv-litellm bench/requirements-litellm.txt
fi
