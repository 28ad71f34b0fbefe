# The two commands the README promises: `make dev` runs the service on embedded defaults,
# `make test` runs lint (ruff, mypy) and the whole test suite (what CI runs). Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint install bench

$(BIN)/crm-ingest: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/crm-ingest

dev: install
	$(BIN)/crm-ingest dev

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/crm-ingest bench
