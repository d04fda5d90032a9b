# The two commands of the quick start: `make serve` and `make test`. Everything else is set up here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve test lint typecheck unit bench-micro clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The edge listener on :8787 and the admin API on :8788, with the samples of isolate.toml deployed.
serve: install
	$(VENV)/bin/isolate serve --manifest isolate.toml

lint: install
	$(PY) -m ruff check isolate tests bench

typecheck: install
	$(PY) -m mypy

unit: install
	$(PY) -m pytest

test: lint typecheck unit

bench-micro: install
	$(PY) bench/micro.py

clean:
	rm -rf $(VENV) .isolate .pytest_cache .mypy_cache .ruff_cache
