#!/usr/bin/env bash
# Build the Spin-compatible test host and the probe component, then run the host's
# integration tests. Uses $CARGO_TARGET_DIR (default: <repo>/target/spin-host) so the heavy
# wasmtime build never shares a lock with the main workspace's target dir.
# Redis-backed tests need `redis-server` on PATH (apt-get install -y redis-server); without it
# they print SKIPPED and pass.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/spin-host}"

cargo build --release --locked --manifest-path "$here/Cargo.toml"
cargo build --release --locked --target wasm32-wasip2 --manifest-path "$here/probe/Cargo.toml"
cargo test --release --locked --manifest-path "$here/Cargo.toml" "$@"
