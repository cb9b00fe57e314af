# ModelOps Stack developer commands. `make up` and `make test` are the two-command quick start.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export MODELOPS_HOME ?= $(CURDIR)/.modelops

.PHONY: help setup up down status test lint unit fmt bench clean tools e2e-containers chart-docs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed  ## create .venv and install the package with dev tools

up: setup  ## start the local platform (MLflow + model server) and keep it serving
	$(BIN)/modelops up

down: setup  ## stop a detached local platform
	$(BIN)/modelops down

status: setup  ## show the local platform's state
	$(BIN)/modelops status

tools: setup  ## install the tools the tests need (helm)
	$(PY) -m tests.tools

lint: setup  ## ruff (lint + format check) and mypy on src/
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src

test: setup tools lint  ## the whole suite
	$(BIN)/pytest

e2e-containers: setup tools  ## the chart's workloads in podman containers, end to end (root + podman)
	$(BIN)/pytest tests/containers -v

chart-docs: setup  ## regenerate the chart's values.schema.json and README values table
	$(PY) scripts/values_schema.py

unit: setup  ## fast tests only
	$(BIN)/pytest tests/unit

fmt: setup  ## format the code
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

bench: setup  ## serving benchmark against `mlflow models serve` (writes docs/benchmarks.md)
	$(PY) benchmarks/serving.py --write docs/benchmarks.md

clean:  ## remove the virtualenv and caches (not .modelops)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
