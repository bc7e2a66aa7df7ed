#!/usr/bin/env bash
# `make spin-up`: Tollgate's Spin component in the foreground, in front of the Bedrock emulator
# on 127.0.0.1:9100, listening on 127.0.0.1:3000. Runs `spin up --from host-spin/spin.toml` when
# a Spin >= 4.1 is on PATH; otherwise says so and runs the component on the test host
# (tests/spin-host: Spin 4.1 semantics for one component, built on first use).
#
# RUNTIME_CONFIG=host-spin/runtime-config.redis.toml  key-value store on Redis (shared state)
# SPIN_TLS=1                                         HTTPS with the dev CA .run/tls (boto3 + bearer key)
set -euo pipefail
mkdir -p .run
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

listen=127.0.0.1:3000
scheme=http
tls_args=()
if [ "${SPIN_TLS:-}" = 1 ]; then
  scheme=https
  tls_args=(--tls-cert .run/tls/cert.pem --tls-key .run/tls/key.pem)
fi

target/release/tollgate-emulator --listen 127.0.0.1:9100 --region us-east-1 \
  --access-key-id AKIDEMULATOR --secret-access-key emulator-secret-key > .run/emulator.log 2>&1 &
pids+=($!)

# The component's configuration and credentials, as Spin variables (secret ones included).
SPIN_VARIABLE_TOLLGATE_CONFIG="$(cat host-spin/config.emulator.json)"
export SPIN_VARIABLE_TOLLGATE_CONFIG
export SPIN_VARIABLE_AWS_ACCESS_KEY_ID=AKIDEMULATOR
export SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY=emulator-secret-key

# `spin --version` prints e.g. "spin 4.1.0 (abc1234 2026-08-21)".
spin_ok=
if command -v spin >/dev/null 2>&1; then
  version=$(spin --version 2>/dev/null | awk '{print $2}')
  major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}
  if [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] && (( major > 4 || (major == 4 && minor >= 1) )); then
    spin_ok=1
  else
    echo "Found spin ${version:-?} on PATH; Tollgate's component (spin-sdk 7, WASI 0.3.0) needs Spin >= 4.1."
  fi
else
  echo "No \`spin\` on PATH (Tollgate's component needs Spin >= 4.1)."
fi

log=.run/spin.log
if [ -n "$spin_ok" ]; then
  rc_args=()
  [ -n "${RUNTIME_CONFIG:-}" ] && rc_args=(--runtime-config-file "$RUNTIME_CONFIG")
  echo "Starting: spin up --from host-spin/spin.toml ${rc_args[*]}"
  spin up --from host-spin/spin.toml --listen "$listen" "${tls_args[@]}" "${rc_args[@]}" > "$log" 2>&1 &
  pids+=($!)
else
  echo "Running the component on the test host instead: tollgate-spin-host (Spin 4.1 semantics; tests/spin-host/README.md)."
  if [ ! -x target/spin-host/release/tollgate-spin-host ]; then
    echo "Building the test host first (wasmtime; about 8 minutes the first time)..."
    make --no-print-directory spin-host
  fi
  store=memory
  if [ -n "${RUNTIME_CONFIG:-}" ]; then
    store=$(sed -n 's/^url *= *"\(.*\)"/\1/p' "$RUNTIME_CONFIG" | head -n1)
    [ -n "$store" ] || { echo "no url = \"redis://...\" in $RUNTIME_CONFIG" >&2; exit 2; }
  fi
  target/spin-host/release/tollgate-spin-host \
    --component target/wasm32-wasip2/release/tollgate_spin.wasm --listen "$listen" "${tls_args[@]}" \
    --allowed-outbound-host http://127.0.0.1:9100 --key-value-store "default=$store" > "$log" 2>&1 &
  pids+=($!)
fi

for _ in $(seq 1 100); do
  curl -s -o /dev/null ${SPIN_TLS:+--cacert .run/tls/ca.pem} "$scheme://$listen/usage" 2>/dev/null && break
  sleep 0.1
done
curl -s -o /dev/null ${SPIN_TLS:+--cacert .run/tls/ca.pem} "$scheme://$listen/usage" \
  || { echo "The Spin component did not start; see $log" >&2; exit 1; }

cat <<MSG

Tollgate (Spin component) is listening on $scheme://$listen (upstream: the emulator on 127.0.0.1:9100).
Log: $log (usage records are its "tollgate.usage" lines). Stop with Ctrl-C.

  curl -s ${SPIN_TLS:+--cacert .run/tls/ca.pem }$scheme://$listen/model/claude-fast/converse \\
    -H 'Authorization: Bearer tg-demo-key' -H 'content-type: application/json' \\
    -d '{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":16}}'

  curl -s ${SPIN_TLS:+--cacert .run/tls/ca.pem }$scheme://$listen/usage -H 'Authorization: Bearer tg-demo-key'

MSG
wait -n "${pids[@]}"
