# prfaas-bench. Every target works from a fresh clone with only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PB     := $(BIN)/prfaas-bench
SCENARIO ?= workloads/paper-case-study.toml

.PHONY: install install-test test lint plan bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## venv + editable install
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python  ## install with test extras and system test tools (Chromium when root)
	$(BIN)/pip install -q -e '.[test]'
	@bash scripts/install-system-deps.sh

test: install-test  ## the README's test command
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/ruff format --check harness tests benchmarks

plan: install
	$(PB) plan $(SCENARIO)

bench: install  ## the README's main command: plan, simulate, serve + replay, analyse, report
	$(PB) bench $(SCENARIO)

bench-quick: install  ## the same, small (about a minute)
	$(PB) bench --quick $(SCENARIO)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
