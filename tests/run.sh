#!/usr/bin/env bash
# `make run`: Envoy + Tollgate in the foreground, in front of the emulator (default) or real Bedrock.
# `make run-ecds` (third argument `ecds`): the same in front of the emulator, the filter configured
# over ECDS from .run/ecds/ (envoy/envoy-ecds.yaml), updated live with envoy/ecds-update.sh.
# `make run-identity` (third argument `identity`): envoy/envoy-identity.yaml on :10443 only, with
# the dev identities of tests/make-identity.py in .run/identity/ (mTLS workloads, JWTs).
set -euo pipefail
upstream=${1:-emulator}
region=${2:-us-east-1}
mode=${3:-static}
mkdir -p .run
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

case "$upstream" in
  emulator)
    config=envoy/envoy-emulator.yaml
    target/release/tollgate-emulator --listen 127.0.0.1:9100 --region us-east-1 \
      --access-key-id AKIDEMULATOR --secret-access-key emulator-secret-key > .run/emulator.log 2>&1 &
    pids+=($!)
    ;;
  bedrock)
    : "${AWS_ACCESS_KEY_ID:?set AWS credentials in the environment to target real Bedrock}"
    : "${AWS_SECRET_ACCESS_KEY:?set AWS credentials in the environment to target real Bedrock}"
    config=.run/envoy-bedrock.yaml
    sed "s/us-east-1/${region}/g" envoy/envoy-bedrock.yaml > "$config"
    ;;
  *) echo "UPSTREAM must be emulator or bedrock" >&2; exit 2 ;;
esac

if [ "$mode" = identity ]; then
  [ "$upstream" = emulator ] || { echo "make run-identity runs in front of the emulator" >&2; exit 2; }
  config=envoy/envoy-identity.yaml
  .venv/bin/python tests/make-identity.py .run/identity >/dev/null
fi

if [ "$mode" = ecds ]; then
  [ "$upstream" = emulator ] || { echo "make run-ecds runs in front of the emulator" >&2; exit 2; }
  config=envoy/envoy-ecds.yaml
  mkdir -p .run/ecds
  cp envoy/ecds/tollgate.yaml .run/ecds/tollgate.yaml
fi

.venv/bin/envoy -c "$config" --concurrency 2 --log-path .run/envoy.log --file-flush-interval-msec 1000 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs http://127.0.0.1:9901/ready >/dev/null || { echo "Envoy did not start; see .run/envoy.log" >&2; exit 1; }

if [ "$mode" = identity ]; then
  cat <<MSG

Tollgate is listening on https://127.0.0.1:10443 (mTLS optional; dev identities in .run/identity/).
Logs: .run/envoy.log. Stop with Ctrl-C.

  # A workload, by its certificate's SPIFFE ID (spiffe://cluster.local/ns/team-a/sa/agent):
  curl -s https://127.0.0.1:10443/usage --cacert .run/identity/ca.pem \\
    --cert .run/identity/team-a-agent.pem --key .run/identity/team-a-agent.key

  # A person, by the email claim of a JWT from the dev identity provider:
  curl -s https://127.0.0.1:10443/usage --cacert .run/identity/ca.pem \\
    -H "Authorization: Bearer \$(.venv/bin/python tests/make-identity.py --token alice@example.com)"

MSG
  wait -n "${pids[@]}"
  exit
fi

cat <<MSG

Tollgate is listening on http://127.0.0.1:10000 and https://127.0.0.1:10443 (upstream: $upstream).
Logs: .run/envoy.log. The HTTPS certificate is signed by the dev CA .run/tls/ca.pem.
Usage records are the "tollgate.usage" lines of that log. Stop with Ctrl-C.
$( [ "$mode" = ecds ] && printf '%s\n' "Filter configuration: .run/ecds/tollgate.yaml; publish a new one with envoy/ecds-update.sh FILE." )

  curl -s http://127.0.0.1:10000/model/claude-fast/converse \\
    -H 'Authorization: Bearer tg-demo-key' -H 'content-type: application/json' \\
    -d '{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":16}}'

  curl -s http://127.0.0.1:10000/usage -H 'Authorization: Bearer tg-demo-key'

  AWS_BEARER_TOKEN_BEDROCK=tg-demo-key .venv/bin/python - <<'PY'
  import boto3
  # boto3 sends the bearer key only over HTTPS.
  client = boto3.client("bedrock-runtime", region_name="us-east-1",
                        endpoint_url="https://127.0.0.1:10443", verify=".run/tls/ca.pem")
  out = client.converse(modelId="claude-fast", messages=[{"role": "user", "content": [{"text": "Hello"}]}])
  print(out["output"]["message"]["content"][0]["text"], out["usage"])
  PY

MSG
wait -n "${pids[@]}"
