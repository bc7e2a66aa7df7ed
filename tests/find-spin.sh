#!/usr/bin/env bash
# Prints the path of a Spin CLI that can run Tollgate's component (Spin >= 4.1: spin-sdk 7, WASI
# 0.3.0), or explains on stderr and exits 1. Used by the tests, `make spin-up` and `.ci/run`.
#
# Looked for, in order:
#   1. $TOLLGATE_SPIN (must be >= 4.1, or this fails: an explicit choice is never overridden);
#   2. `spin` on PATH, if it is >= 4.1;
#   3. ../shared/tools/spin/spin beside this checkout (a Spin 4.1 build for these machines),
#      copied to .run/spin/spin with the run bit if the shared copy has lost it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# `spin --version` prints "spin 4.1.0 (abc1234 2026-08-21)" or "spin 4.1.0-pre0 (...)".
at_least_4_1() {
  local version major minor rest
  version=$("$1" --version 2>/dev/null | awk 'NR == 1 {print $2}') || return 1
  major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  (( major > 4 || (major == 4 && minor >= 1) ))
}

if [ -n "${TOLLGATE_SPIN:-}" ]; then
  if [ -x "$TOLLGATE_SPIN" ] && at_least_4_1 "$TOLLGATE_SPIN"; then
    echo "$TOLLGATE_SPIN"; exit 0
  fi
  echo "TOLLGATE_SPIN=$TOLLGATE_SPIN is not an executable Spin >= 4.1" >&2
  exit 1
fi

if on_path=$(command -v spin 2>/dev/null) && at_least_4_1 "$on_path"; then
  echo "$on_path"; exit 0
fi

shared="$(dirname "$root")/shared/tools/spin/spin"
if [ -f "$shared" ]; then
  candidate=$shared
  if [ ! -x "$shared" ]; then
    mkdir -p "$root/.run/spin"
    candidate="$root/.run/spin/spin"
    if ! cmp -s "$shared" "$candidate" 2>/dev/null; then
      rm -f "$candidate.tmp"
      cp "$shared" "$candidate.tmp" && chmod u+wx "$candidate.tmp" && mv -f "$candidate.tmp" "$candidate"
    fi
  fi
  if at_least_4_1 "$candidate"; then
    echo "$candidate"; exit 0
  fi
fi

cat >&2 <<MSG
No Spin >= 4.1 found: Tollgate's Spin component (spin-sdk 7, WASI 0.3.0) needs it.
Looked at \$TOLLGATE_SPIN (unset), \`spin\` on PATH (${on_path:-none}${on_path:+, older than 4.1}) and $shared.
Install Spin >= 4.1 (https://spinframework.dev) or point TOLLGATE_SPIN at one.
MSG
exit 1
