# Tollgate: `make run` (gateway + Bedrock emulator on localhost) and `make test` (everything).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
ENVOY       := $(VENV)/bin/envoy
WASM        := target/wasm32-wasip1/release/tollgate_filter.wasm
EMULATOR    := target/release/tollgate-emulator
UPSTREAM    ?= emulator
AWS_REGION  ?= us-east-1

ROOT_TLS    := .run/tls

.PHONY: help build wasm emulator venv certs run test test-rust test-integration lint pricing hash-key clean

help:
	@echo "make run        build, then start Envoy + Tollgate in front of the Bedrock emulator on :10000"
	@echo "                (UPSTREAM=bedrock: in front of real Bedrock, credentials from the environment)"
	@echo "make test       unit tests, then integration tests against real Envoy with boto3"
	@echo "make lint       rustfmt --check and clippy -D warnings (native and wasm32)"
	@echo "make pricing    refresh pricing/ from the litellm wheel on PyPI (LITELLM_VERSION=x.y.z to pin)"
	@echo "make hash-key KEY=...   print the sha256 to put in a key's \"sha256\" field"

build: wasm emulator

wasm:
	cargo build -p tollgate-filter --target wasm32-wasip1 --release

emulator:
	cargo build -p tollgate-emulator --release

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

test: test-rust test-integration

test-rust:
	cargo test --workspace

test-integration: build venv
	$(PY) -m pytest -q tests

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p tollgate-filter --target wasm32-wasip1 -- -D warnings

pricing:
	bash pricing/refresh.sh $(LITELLM_VERSION)

hash-key:
	@test -n "$(KEY)" || { echo "usage: make hash-key KEY=<api key>"; exit 2; }
	@printf '%s' "$(KEY)" | sha256sum | cut -d' ' -f1

clean:
	cargo clean
	rm -rf $(VENV) .run
