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
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
OCI_LAYOUT  := target/oci/tollgate-filter
# Image timestamps from the last commit, so the same module always packs to the same digests.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: help build wasm emulator venv certs run test test-rust test-integration lint pricing hash-key clean
.PHONY: spin-build spin-up
.PHONY: run-ecds oci istio-manifests identity-dev run-identity claude-code

# Claude Code, pinned, for tests/test_claude_code.py (which finds it in .run/npm).
CLAUDE_CODE_VERSION := 2.1.197

help:
	@echo "make run        build, then start Envoy + Tollgate in front of the Bedrock emulator on :10000"
	@echo "                (UPSTREAM=bedrock: in front of real Bedrock, credentials from the environment)"
	@echo "make test       unit tests, then integration tests with boto3 against both hosts: real Envoy +"
	@echo "                filter, and the Spin component under real \`spin up\` (SQLite and Redis stores)"
	@echo "make spin-up    \`spin up --from host-spin/spin.toml\` in front of the emulator on :3000 (Spin >= 4.1;"
	@echo "                RUNTIME_CONFIG=host-spin/runtime-config.redis.toml for Redis)"
	@echo "make spin-build the Spin component ($(SPIN_WASM))"
	@echo "make lint       rustfmt --check and clippy -D warnings (native and wasm32)"
	@echo "make fuzz       every cargo-fuzz target for FUZZ_SECONDS each (default 60; nightly + cargo-fuzz)"
	@echo "make soak       10 minutes of mixed load through Envoy and Spin: memory, keys, the books"
	@echo "make pricing    refresh pricing/ from the litellm wheel on PyPI (LITELLM_VERSION=x.y.z to pin)"
	@echo "make hash-key KEY=...   print the sha256 to put in a key's \"sha256\" field"
	@echo "make claude-code  the Claude Code CLI (npm, pinned) into .run/npm, for its tests"
	@echo "make run-ecds   as make run, the filter configured over ECDS from .run/ecds/: live updates"
	@echo "                with envoy/ecds-update.sh (README \"Live configuration on Envoy\")"
	@echo "make run-identity  envoy/envoy-identity.yaml on :10443: callers by mTLS SPIFFE ID or JWT"
	@echo "                (dev CA, certificates and identity provider from \`make identity-dev\`)"
	@echo "make oci        the filter as an OCI image layout in $(OCI_LAYOUT) (CNCF Wasm artifact + Istio)"
	@echo "make istio-manifests TOLLGATE_WASM_IMAGE=oci://REGISTRY/REPO:TAG"
	@echo "                envoy/istio/*.yaml with the module location filled in, in target/istio/"

build: wasm emulator

wasm:
	cargo build -p tollgate-filter --target wasm32-wasip1 --release

emulator:
	cargo build -p tollgate-emulator --release

spin-build:
	cargo build -p tollgate-spin --target wasm32-wasip2 --release

claude-code:
	npm install --prefix .run/npm --no-audit --no-fund --no-save @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	.run/npm/node_modules/.bin/claude --version

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

run-ecds: build venv certs
	@bash tests/run.sh emulator $(AWS_REGION) ecds

# The dev identities envoy/envoy-identity.yaml reads, in .run/identity/ (tests/make-identity.py).
identity-dev: venv
	@$(PY) tests/make-identity.py .run/identity

run-identity: build venv identity-dev
	@bash tests/run.sh emulator $(AWS_REGION) identity

# The filter as an OCI image layout (envoy/wasm_oci.py says what is in it), ready to push with
# `oras cp --from-oci-layout` or `skopeo copy --preserve-digests`.
oci: wasm
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) python3 envoy/wasm_oci.py $(WASM) $(OCI_LAYOUT) --version $(VERSION)

istio-manifests: oci
	@test -n "$(TOLLGATE_WASM_IMAGE)" || { echo "usage: make istio-manifests TOLLGATE_WASM_IMAGE=oci://REGISTRY/REPO:TAG (or https://.../tollgate_filter.wasm)"; exit 2; }
	python3 envoy/istio/render.py --image '$(TOLLGATE_WASM_IMAGE)' --layout $(OCI_LAYOUT) --version $(VERSION) --out target/istio

spin-up: spin-build emulator certs
	@bash tests/spin-up.sh

test: test-rust test-integration bench-smoke soak-smoke

test-rust:
	cargo test --workspace

# The Spin half runs under real `spin up` (tests/find-spin.sh says which Spin, or why none).
test-integration: build spin-build venv
	@bash tests/find-spin.sh >/dev/null
	$(PY) -m pytest -q tests

lint:
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
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
# BENCH_ARGS passes options to bench/bench.py (`--no-spin`, `--rounds 5`: bench/bench.py --help).
.PHONY: bench bench-smoke
bench: build venv
	bash bench/setup.sh full
	bench/.venv/bin/python bench/bench.py $(BENCH_ARGS)

bench-smoke: build venv
	bash bench/setup.sh smoke
	bench/.venv/bin/python bench/bench.py --smoke

# Fuzzing (README "Fuzzing"): each target of fuzz/ for FUZZ_SECONDS, from the committed seeds
# (fuzz/seeds/<target>) plus the corpus it grows (fuzz/corpus/<target>, not committed), with
# debug assertions (overflow checks) on. A crash stops the run; its input is in fuzz/artifacts/.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= eventstream meter request_body config route exchange \
  openai_request anthropic_request translate_stream
.PHONY: fuzz fuzz-seeds
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz: cargo install cargo-fuzz"; exit 2; }
	@mkdir -p target/fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  cargo +nightly fuzz run -a $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -rss_limit_mb=4096 2>&1 \
	    | tee target/fuzz/$$t.log | grep -E "^(Done|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# Rewrites fuzz/seeds from fuzz/seeds.py (after a target's input format changed).
fuzz-seeds:
	python3 fuzz/seeds.py

# Soak (tests/soak.py): mixed load through Envoy and Spin (on Redis), sampling memory and store
# keys, then the books against the emulator's ledger; fails if anything grows or a count is off.
# The report is target/soak/report.{json,md}. `make soak-smoke` runs it for 30 s (in `make test`).
SOAK_SECONDS ?= 600
.PHONY: soak soak-smoke
soak: build spin-build venv
	@bash tests/find-spin.sh >/dev/null
	$(PY) tests/soak.py --seconds $(SOAK_SECONDS) --out target/soak

soak-smoke: build spin-build venv
	@bash tests/find-spin.sh >/dev/null
	$(PY) tests/soak.py --seconds 30 --out target/soak-smoke
