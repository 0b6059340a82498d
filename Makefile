# The two quick-start commands are `make run` and `make test`; everything else is a step of those.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888
DATA_DIR ?= ./data
# Two workers, one per core: each gets its own embedded MongoDB and Redis. `make test PYTEST_ARGS=` runs serially.
PYTEST_ARGS ?= -n 2

.PHONY: install run test lint typecheck check services bench-tools a11y-tools clean conformance migrate-media

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: install
	$(PY) server.py --port $(PORT) --data-dir $(DATA_DIR)

# Uploaded files kept under $(DATA_DIR)/media (before media moved into MongoDB), copied into the database:
# run it with the node's settings (MONGODB_URL...) on each node that has such a folder; it can run again.
migrate-media: install
	$(PY) server.py migrate-media --data-dir $(DATA_DIR)

# System packages the tests use (real Redis, nginx, Chromium); installed when missing and root.
services:
	@bash scripts/ensure-system-packages.sh

# `npm ci` in $(1) (its package.json and package-lock.json), into its node_modules; $(2): what cannot run without npm.
define npm-ci
	@if command -v npm >/dev/null; then \
		cd $(1) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: $(2)"; fi
endef

# Artillery (npm) for tests/test_load_tools.py, into bench/artillery/node_modules (git-ignored). Artillery
# 2.0.21 is the last release that runs on Node.js 20; no install scripts run (they fetch browsers).
ARTILLERY_STAMP := bench/artillery/node_modules/.installed

bench-tools: $(ARTILLERY_STAMP)

$(ARTILLERY_STAMP): bench/artillery/package.json bench/artillery/package-lock.json
	$(call npm-ci,bench/artillery,the Artillery test of tests/test_load_tools.py will not run)

# axe-core (npm) for tests/test_demo_a11y.py, into tests/a11y/node_modules (git-ignored), as above.
AXE_STAMP := tests/a11y/node_modules/.installed

a11y-tools: $(AXE_STAMP)

$(AXE_STAMP): tests/a11y/package.json tests/a11y/package-lock.json
	$(call npm-ci,tests/a11y,tests/test_demo_a11y.py will not run)

test: install services bench-tools a11y-tools
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

# WebSocket protocol conformance (Autobahn|Testsuite, Python 2.7 via pyenv): not part of `make test`.
conformance: install
	bash scripts/conformance.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
