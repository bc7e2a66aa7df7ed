#!/usr/bin/env bash
# Publishes a new version of Tollgate's ECDS resource to a running Envoy (envoy/envoy-ecds.yaml):
#   envoy/ecds-update.sh NEW_RESOURCE.yaml [WATCHED_FILE]      (default .run/ecds/tollgate.yaml)
# The file is copied into the watched directory under a temporary name, then renamed over the
# watched file: Envoy reacts to the rename and never reads a half-written file. Envoy applies
# it without restarting, or rejects it (a bad document) and keeps the current one; the
# outcome is in the admin stats: extension_config_discovery.http_filter.tollgate.config_reload
# (applied) and .update_rejected (rejected, the reason in Envoy's log).
set -euo pipefail
src=${1:?usage: envoy/ecds-update.sh NEW_RESOURCE.yaml [WATCHED_FILE]}
dst=${2:-.run/ecds/tollgate.yaml}
dir=$(dirname "$dst")
[ -d "$dir" ] || { echo "no watched directory $dir" >&2; exit 2; }
tmp=$(mktemp "$dir/.tollgate.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$dst"
