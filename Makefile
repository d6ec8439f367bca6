# Two entry points, each building its own environment from nothing:
#   make serve   run the daemon on the embedded default root and socket
#   make test    lint, type-check and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Strict editable mode installs a tree of links that mypy can follow; the
# default mode uses an import hook that mypy cannot see through. It links files,
# not folders, so every run reinstalls (about a second) to pick up new modules.
EDITABLE := --no-build-isolation --config-settings editable_mode=strict
PIP := PYTHONWARNINGS=ignore $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: serve test lint env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip 'setuptools>=69'

env: $(BIN)/python
	$(PIP) $(EDITABLE) -e '.[dev]'

serve: $(BIN)/python
	$(PIP) $(EDITABLE) -e .
	$(BIN)/contentd serve $(ARGS)

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
# The benchmarks are scripts that import their siblings and the tests' support helpers.
	MYPYPATH=tests:benchmarks $(BIN)/mypy benchmarks/*.py

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The side-by-side benchmark against containerd (benchmarks/README.md), e.g. ARGS=--quick.
.PHONY: bench
bench: $(BIN)/python
	$(PIP) $(EDITABLE) -e .
	$(BIN)/python benchmarks/run.py $(ARGS)

# The registry face beside docker-registry 2.8 (benchmarks/README.md), e.g. ARGS=--quick.
.PHONY: bench-registry
bench-registry: $(BIN)/python
	$(PIP) $(EDITABLE) -e .
	$(BIN)/python benchmarks/registry.py $(ARGS)

# contentd pull beside skopeo copy and ctr content fetch (benchmarks/README.md), e.g. ARGS=--quick.
.PHONY: bench-pull
bench-pull: $(BIN)/python
	$(PIP) $(EDITABLE) -e .
	$(BIN)/python benchmarks/pull.py $(ARGS)
