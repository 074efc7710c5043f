# Conflux: the two commands of the README's Quick start, and their helpers.
#   make dev   — install everything, start Kafka + Postgres + Dagster UI/daemon + demo events
#   make test  — install everything, start a separate test stack, run the whole test suite
#   make reliability — the full crash / outage / hostile-input run (~12 min; README)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install dev test test-unit reliability stack-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "make: java 17+ is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "make: mvn is required (apt-get install maven)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

dev: install
	$(BIN)/conflux dev

# The unit tests first; then two pytest processes at once: the tests of the shared test stack in
# this one, the tests that start a stack of their own (3-broker cluster, ...) in a second one
# whose report is printed after (tests/conftest.py marks them). The unit tests run alone: their
# process-stop timings failed under the load of a stack starting beside them.
# PARALLEL=0: everything in one process.
PARALLEL ?= 1
test: install
ifeq ($(PARALLEL),0)
	$(BIN)/python -m pytest -ra --durations=15
else
	@mkdir -p .conflux; rc=0; \
	$(BIN)/python -m pytest -ra --durations=5 -p no:cacheprovider tests/unit || rc=1; \
	$(BIN)/python -m pytest -ra --durations=5 -p no:cacheprovider -m "not shared_stack" \
		tests/integration tests/browser > .conflux/standalone-tests.log 2>&1 & pid=$$!; \
	$(BIN)/python -m pytest -ra --durations=15 -m shared_stack || rc=1; \
	wait $$pid || rc=1; \
	echo "==== own-stack tests (the second pytest, run meanwhile; .conflux/standalone-tests.log) ===="; \
	cat .conflux/standalone-tests.log; exit $$rc
endif

test-unit: install
	$(BIN)/python -m pytest -ra tests/unit

# The full reliability run on its own stack (.conflux/reliability; ports 27092/27093/27432/27000, apart from the test stacks):
# kills and outages while 100,000+ events stream, then 10,000 hostile records; SEED=N replays.
RELIABILITY_ENV := CONFLUX_HOME=$(CURDIR)/.conflux/reliability CONFLUX_KAFKA_PORT=27092 \
	CONFLUX_KAFKA_CONTROLLER_PORT=27093 CONFLUX_PG_PORT=27432 CONFLUX_DAGSTER_PORT=27000
reliability: install
	@rc=0; \
	$(RELIABILITY_ENV) $(BIN)/python -m reliability.chaos --events 100000 --kills 20 \
		--outage postgres:30 --outage kafka:30 $(if $(SEED),--seed $(SEED)) || rc=1; \
	$(RELIABILITY_ENV) $(BIN)/python -m reliability.fuzz --records 10000 $(if $(SEED),--seed $(SEED)) || rc=1; \
	$(RELIABILITY_ENV) $(BIN)/conflux stack down; exit $$rc

stack-down: install
	$(BIN)/conflux stack down

clean:
	rm -rf $(VENV) .pytest_cache
