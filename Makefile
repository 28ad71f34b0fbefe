# The two commands the README promises: `make dev` runs the service on embedded defaults,
# `make test` runs lint (ruff, mypy) and the whole test suite (what CI runs). Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test test-oldest-pg lint install bench bench-oldest-pg

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

# The oldest supported PostgreSQL (README, "PostgreSQL"): `make test` runs the integration and
# plan tests a second time on it. Debian's postgresql-15 package installs it there.
PG_OLDEST_BIN ?= /usr/lib/postgresql/15/bin

test: lint
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-oldest-pg

# In CI a missing PostgreSQL 15 fails the build; elsewhere the second run is skipped, loudly.
test-oldest-pg: install
	@if [ -x "$(PG_OLDEST_BIN)/postgres" ]; then \
		echo "integration and plan tests on $(PG_OLDEST_BIN)"; \
		CRM_INGEST_PG_BIN="$(PG_OLDEST_BIN)" $(BIN)/pytest tests/integration tests/plans; \
	elif [ -n "$$CI" ]; then \
		echo "crm-ingest: error: no PostgreSQL in $(PG_OLDEST_BIN): install postgresql-15 (CI tests the oldest supported version)" >&2; \
		exit 1; \
	else \
		echo "NOT RUN: integration tests on PostgreSQL 15 (no $(PG_OLDEST_BIN); apt-get install postgresql-15)" >&2; \
	fi

bench: install
	$(BIN)/crm-ingest bench

# The same bench on the oldest supported PostgreSQL (the efficiency goal is held on both).
bench-oldest-pg: install
	CRM_INGEST_PG_BIN="$(PG_OLDEST_BIN)" $(BIN)/crm-ingest bench
