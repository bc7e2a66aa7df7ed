#!/usr/bin/env bash
# `make spin-up`: `spin up --from host-spin/spin.toml` in the foreground, in front of the Bedrock
# emulator on 127.0.0.1:9100, listening on 127.0.0.1:3000. Spin >= 4.1 as tests/find-spin.sh
# finds it ($TOLLGATE_SPIN, `spin` on PATH, ../shared/tools/spin/spin).
#
# RUNTIME_CONFIG=host-spin/runtime-config.redis.toml  key-value store on Redis (shared state)
# SPIN_TLS=1                                         HTTPS with the dev CA .run/tls (boto3 + bearer key)
set -euo pipefail
spin=$(bash tests/find-spin.sh)
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

# The component's configuration and credentials, as Spin variables (secret ones included), and
# the emulator as the one origin besides Bedrock that the manifest lets it call.
SPIN_VARIABLE_TOLLGATE_CONFIG="$(cat host-spin/config.emulator.json)"
export SPIN_VARIABLE_TOLLGATE_CONFIG
export SPIN_VARIABLE_AWS_ACCESS_KEY_ID=AKIDEMULATOR
export SPIN_VARIABLE_AWS_SECRET_ACCESS_KEY=emulator-secret-key
export SPIN_VARIABLE_UPSTREAM_ORIGIN=http://127.0.0.1:9100

rc_args=()
[ -n "${RUNTIME_CONFIG:-}" ] && rc_args=(--runtime-config-file "$RUNTIME_CONFIG")
log=.run/spin.log
echo "Starting: $spin up --from host-spin/spin.toml --listen $listen ${tls_args[*]} ${rc_args[*]}"
"$spin" up --from host-spin/spin.toml --listen "$listen" "${tls_args[@]}" "${rc_args[@]}" > "$log" 2>&1 &
pids+=($!)

for _ in $(seq 1 300); do
  curl -s -o /dev/null ${SPIN_TLS:+--cacert .run/tls/ca.pem} "$scheme://$listen/usage" 2>/dev/null && break
  sleep 0.1
done
curl -s -o /dev/null ${SPIN_TLS:+--cacert .run/tls/ca.pem} "$scheme://$listen/usage" \
  || { echo "spin up did not start; see $log" >&2; exit 1; }

cat <<MSG

Tollgate (Spin component, \`spin up\`) is listening on $scheme://$listen (upstream: the emulator on 127.0.0.1:9100).
Log: $log (usage records are its "tollgate.usage" lines). Stop with Ctrl-C.

  curl -s ${SPIN_TLS:+--cacert .run/tls/ca.pem }$scheme://$listen/model/claude-fast/converse \\
    -H 'Authorization: Bearer tg-demo-key' -H 'content-type: application/json' \\
    -d '{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":16}}'

  curl -s ${SPIN_TLS:+--cacert .run/tls/ca.pem }$scheme://$listen/usage -H 'Authorization: Bearer tg-demo-key'

  # The admin API (dev admin key tg-dev-admin-key): create a key, list keys with their usage.
  curl -s ${SPIN_TLS:+--cacert .run/tls/ca.pem }$scheme://$listen/admin/keys -H 'Authorization: Bearer tg-dev-admin-key' \\
    -d '{"id": "team-x", "models": ["claude-fast"], "limits": {"budget": {"usd": "10", "period": "daily"}}}'
  curl -s ${SPIN_TLS:+--cacert .run/tls/ca.pem }$scheme://$listen/admin/keys -H 'Authorization: Bearer tg-dev-admin-key'

MSG
wait -n "${pids[@]}"
