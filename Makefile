# Tollgate: `make run` (gateway + Bedrock emulator on localhost) and `make test` (everything).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
ENVOY       := $(VENV)/bin/envoy
WASM        := target/wasm32-wasip1/release/tollgate_filter.wasm
EMULATOR    := target/release/tollgate-emulator
SPIN_WASM   := target/wasm32-wasip2/release/tollgate_spin.wasm
UPSTREAM    ?= emulator
AWS_REGION  ?= us-east-1

ROOT_TLS    := .run/tls

.PHONY: help build wasm emulator venv certs run test test-rust test-integration lint pricing hash-key clean
.PHONY: spin-build spin-up

help:
	@echo "make run        build, then start Envoy + Tollgate in front of the Bedrock emulator on :10000"
	@echo "                (UPSTREAM=bedrock: in front of real Bedrock, credentials from the environment)"
	@echo "make test       unit tests, then integration tests with boto3 against both hosts: real Envoy +"
	@echo "                filter, and the Spin component under real \`spin up\` (SQLite and Redis stores)"
	@echo "make spin-up    \`spin up --from host-spin/spin.toml\` in front of the emulator on :3000 (Spin >= 4.1;"
	@echo "                RUNTIME_CONFIG=host-spin/runtime-config.redis.toml for Redis)"
	@echo "make spin-build the Spin component ($(SPIN_WASM))"
	@echo "make lint       rustfmt --check and clippy -D warnings (native and wasm32)"
	@echo "make pricing    refresh pricing/ from the litellm wheel on PyPI (LITELLM_VERSION=x.y.z to pin)"
	@echo "make hash-key KEY=...   print the sha256 to put in a key's \"sha256\" field"

build: wasm emulator

wasm:
	cargo build -p tollgate-filter --target wasm32-wasip1 --release

emulator:
	cargo build -p tollgate-emulator --release

spin-build:
	cargo build -p tollgate-spin --target wasm32-wasip2 --release

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

certs:
	@bash tests/make-certs.sh $(ROOT_TLS)

run: build venv certs
	@bash tests/run.sh $(UPSTREAM) $(AWS_REGION)

spin-up: spin-build emulator certs
	@bash tests/spin-up.sh

test: test-rust test-integration bench-smoke

test-rust:
	cargo test --workspace

# The Spin half runs under real `spin up` (tests/find-spin.sh says which Spin, or why none).
test-integration: build spin-build venv
	@bash tests/find-spin.sh >/dev/null
	$(PY) -m pytest -q tests

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p tollgate-filter --target wasm32-wasip1 -- -D warnings
	cargo clippy -p tollgate-spin --target wasm32-wasip2 -- -D warnings

pricing:
	bash pricing/refresh.sh $(LITELLM_VERSION)

hash-key:
	@test -n "$(KEY)" || { echo "usage: make hash-key KEY=<api key>"; exit 2; }
	@printf '%s' "$(KEY)" | sha256sum | cut -d' ' -f1

clean:
	cargo clean
	rm -rf $(VENV) .run

# Benchmarks (bench/README.md): not tests, no timing assertions. `make bench` measures the
# emulator alone, bare Envoy, Envoy + Tollgate, LiteLLM and the Spin component (when built)
# and writes bench/results.json, bench/results.md and bench/latency.png (about 10 minutes; it
# first waits, bounded, for the machine to be quiet). `make bench-smoke` runs the same
# machinery for a few seconds and fails only if a gateway did not serve its requests.
.PHONY: bench bench-smoke
bench: build venv
	bash bench/setup.sh full
	bench/.venv/bin/python bench/bench.py

bench-smoke: build venv
	bash bench/setup.sh smoke
	bench/.venv/bin/python bench/bench.py --smoke
