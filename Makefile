# trackgate: `make serve` and `make test` work on a fresh machine with Python 3.11+ and a Rust toolchain.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_QUIET := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all venv build serve test test-rust test-python lint format bench fuzz clean redis-server

all: build

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "maturin>=1.9.4,<2"

venv: $(PY)

# One release build of the extension per run (cargo keeps target/ between runs), plus the
# package's dependencies and the dev extras.
build: $(PY)
	$(BIN)/maturin develop --release --extras dev --quiet

serve: build
	$(BIN)/trackgate serve $(ARGS)

lint: build
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(PY) -m mypy.stubtest trackgate._core
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings

format: $(PY)
	$(BIN)/ruff check --fix python tests benches
	$(BIN)/ruff format python tests benches
	cargo fmt

test-rust:
	cargo test --quiet

# The event-bus tests start a real redis-server (Debian's package; CI runs as root).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server >/dev/null; } || \
		echo "redis-server could not be installed: the event-bus tests will be skipped"; }

test-python: build redis-server
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint test-rust test-python

bench: build
	$(PY) -m pytest benches --benchmark-enable --benchmark-columns=min,median,mean,ops --benchmark-sort=name $(PYTEST_ARGS)

# Long fuzzing: the proptest properties with many cases, then cargo-fuzz (coverage-guided, needs a
# nightly toolchain) on every decoder; on stable, the fuzz targets replay the seed corpus instead.
# The bounded run is part of `make test` (cargo test's fuzz_tests, tests/test_fuzz_http.py).
FUZZ_TARGETS := decompress validate protobuf_to_json json_to_protobuf ingest parse_partial_success sentry_envelope sentry_store
FUZZ_CASES ?= 100000
FUZZ_SECONDS ?= 60

fuzz: build
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --quiet --lib fuzz_tests
	$(PY) fuzz/seeds.py
	@if cargo +nightly --version >/dev/null 2>&1; then \
		cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked; \
		for t in $(FUZZ_TARGETS); do \
			cargo +nightly fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -dict=fuzz/otlp_json.dict || exit 1; \
		done; \
	else \
		echo "no nightly toolchain: replaying the seed corpus through the fuzz targets on stable"; \
		cargo build --manifest-path fuzz/Cargo.toml --release --bins && \
		for t in $(FUZZ_TARGETS); do fuzz/target/release/$$t -runs=0 fuzz/corpus/$$t || exit 1; done; \
	fi

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache
