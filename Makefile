# Conflux: the two commands of the README's Quick start, and their helpers.
#   make dev   — install everything, start Kafka + Postgres + Dagster UI/daemon + demo events
#   make test  — install everything, start a separate test stack, run the whole test suite
#   make reliability — the full crash / outage / hostile-input run (~15 min; README)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make installs from the lock, not from pyproject.toml's ranges: a new release of any (transitive)
# dependency cannot change what a clean clone installs. The lock is for Linux x86_64, CPython 3.11.
#   requirements/bootstrap.lock  pip, setuptools, wheel (requirements/bootstrap.in): installed first
#   requirements/dev.lock        runtime + extras deploy, test (+ bootstrap): make, CI
#   requirements/runtime.lock    runtime + extra deploy (+ bootstrap): deploy/Dockerfile
LOCKS := requirements/bootstrap.lock requirements/dev.lock requirements/runtime.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) 2>/dev/null | cksum | cut -d' ' -f1)
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: install lock dev test test-unit reliability stack-down clean

install: $(STAMP)

# scripts/check_lock.py fails first if pyproject.toml's dependencies changed since `make lock`
$(STAMP): pyproject.toml $(LOCKS)
	@command -v java >/dev/null || { echo "make: java 17+ is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "make: mvn is required (apt-get install maven)"; exit 1; }
	$(PY) scripts/check_lock.py
	$(PY) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements/bootstrap.lock
	$(PIP) --require-hashes -r requirements/dev.lock
	$(PIP) --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*; touch $@

# After a change to pyproject.toml's dependencies: regenerate the locks and commit them with it.
# uv (pinned below, in a venv of its own under .conflux/) resolves for Linux x86_64 / CPython 3.11,
# keeping the versions already locked where they still fit (UPGRADE=1: newest allowed versions):
#   uv pip compile pyproject.toml requirements/bootstrap.in --extra dev --generate-hashes \
#       --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o requirements/dev.lock
# runtime.lock the same with --extra deploy, and bootstrap.lock from bootstrap.in alone, both
# constrained to dev.lock's versions; then scripts/check_lock.py --stamp records the digest of
# pyproject's dependencies in each (make install compares it first).
UV_VERSION := 0.13.8
LOCK_TOOL := .conflux/lock-tool
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock:
	@test -x $(LOCK_TOOL)/bin/uv && $(LOCK_TOOL)/bin/uv --version | grep -q " $(UV_VERSION)" || { \
		$(PY) -m venv $(LOCK_TOOL) && $(LOCK_TOOL)/bin/pip install --disable-pip-version-check -q uv==$(UV_VERSION); }
	$(LOCK_TOOL)/bin/uv pip compile -q pyproject.toml requirements/bootstrap.in --extra dev $(LOCK_FLAGS) \
		-o requirements/dev.lock
	$(LOCK_TOOL)/bin/uv pip compile -q pyproject.toml requirements/bootstrap.in --extra deploy $(LOCK_FLAGS) \
		-c requirements/dev.lock -o requirements/runtime.lock
	$(LOCK_TOOL)/bin/uv pip compile -q requirements/bootstrap.in $(LOCK_FLAGS) \
		-c requirements/dev.lock -o requirements/bootstrap.lock
	$(PY) scripts/check_lock.py --stamp

dev: install
	$(BIN)/conflux dev

# The unit tests first; then two pytest processes at once, each with a test stack of its own:
# this one runs the integration tests of the shared test stack; the second one the tests that
# start stacks of their own (3-broker cluster, ...) and then the browser tests on a second shared
# stack (TEST_STACK_B; ports apart), and its report is printed after (tests/conftest.py marks
# them). The unit tests run alone, on both cores (pytest-xdist): their process-stop timings
# failed under the load of a stack starting beside them. PARALLEL=0: everything in one process.
PARALLEL ?= 1
TEST_STACK_B := CONFLUX_HOME=$(CURDIR)/.conflux/test-b CONFLUX_KAFKA_PORT=22092 \
	CONFLUX_KAFKA_CONTROLLER_PORT=22093 CONFLUX_PG_PORT=22432 CONFLUX_DAGSTER_PORT=22300 \
	CONFLUX_NOTIFY_WEBHOOK_URL=http://127.0.0.1:22098/hook
# each phase's wall time and CPU use, and the slowest test files, are printed at the end
MARKS := .conflux/suite-marks
REPORT := $(BIN)/python scripts/suite_report.py
test: install
ifeq ($(PARALLEL),0)
	$(BIN)/python -m pytest -ra --durations=15
else
	@mkdir -p .conflux; rc=0; rm -f $(MARKS); $(REPORT) mark $(MARKS) unit; \
	$(BIN)/python -m pytest -ra --durations=5 -p no:cacheprovider --junitxml=.conflux/junit-unit.xml \
		-n 2 tests/unit || rc=1; \
	$(REPORT) mark $(MARKS) both; \
	$(TEST_STACK_B) $(BIN)/python -m pytest -ra --durations=10 -p no:cacheprovider \
		--junitxml=.conflux/junit-standalone.xml -m "not shared_stack or browser" \
		tests/integration tests/browser > .conflux/standalone-tests.log 2>&1 & pid=$$!; \
	$(BIN)/python -m pytest -ra --durations=15 -p no:cacheprovider --junitxml=.conflux/junit-shared.xml \
		-m "shared_stack and not browser" tests/integration || rc=1; \
	$(REPORT) mark $(MARKS) second-only; \
	wait $$pid || rc=1; \
	$(REPORT) mark $(MARKS) end; \
	echo "==== own-stack and browser tests (the second pytest, run meanwhile; .conflux/standalone-tests.log) ===="; \
	cat .conflux/standalone-tests.log; \
	$(REPORT) report $(MARKS) .conflux/junit-*.xml; exit $$rc
endif

test-unit: install
	$(BIN)/python -m pytest -ra -n 2 tests/unit

# The full reliability run on its own stack (.conflux/reliability; ports 27092/27093/27432/27000, apart from the test stacks):
# kills and outages while 100,000+ events stream, then 10,000 hostile records; SEED=N replays;
# passing (and, for chaos, complete) runs write their figures to docs/benchmark-results.md.
RELIABILITY_ENV := CONFLUX_HOME=$(CURDIR)/.conflux/reliability CONFLUX_KAFKA_PORT=27092 \
	CONFLUX_KAFKA_CONTROLLER_PORT=27093 CONFLUX_PG_PORT=27432 CONFLUX_DAGSTER_PORT=27000
reliability: install
	@rc=0; \
	$(RELIABILITY_ENV) $(BIN)/python -m reliability.chaos --events 100000 --kills 20 \
		--outage postgres:30 --outage kafka:30 --record $(if $(SEED),--seed $(SEED)) || rc=1; \
	$(RELIABILITY_ENV) $(BIN)/python -m reliability.fuzz --records 10000 --record $(if $(SEED),--seed $(SEED)) || rc=1; \
	$(RELIABILITY_ENV) $(BIN)/conflux stack down; exit $$rc

stack-down: install
	$(BIN)/conflux stack down

clean:
	rm -rf $(VENV) .pytest_cache

# The reference pages generated from the code (docs/cli.md from the argparse parser,
# docs/configuration.md from conflux/core/settings.py and the resources); tests/unit/test_docs.py
# fails when they are stale.
.PHONY: docs
docs: install
	$(BIN)/python docs/generate.py
