# trackgate: `make serve` and `make test` work on a fresh machine with Python 3.11+ and a Rust toolchain.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_QUIET := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all venv build serve test test-rust test-python lint format bench clean

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

test-python: build
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint test-rust test-python

bench: build
	$(PY) -m pytest benches --benchmark-enable --benchmark-columns=min,median,mean,ops --benchmark-sort=name $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache
