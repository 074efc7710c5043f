# Conflux: the two commands of the README's Quick start, and their helpers.
#   make dev   — install everything, start Kafka + Postgres + Dagster UI/daemon + demo events
#   make test  — install everything, start a separate test stack, run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install dev test test-unit stack-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "make: java 17+ is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "make: mvn is required (apt-get install maven)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

dev: install
	$(BIN)/conflux dev

test: install
	$(BIN)/python -m pytest -ra --durations=15

test-unit: install
	$(BIN)/python -m pytest -ra tests/unit

stack-down: install
	$(BIN)/conflux stack down

clean:
	rm -rf $(VENV) .pytest_cache
