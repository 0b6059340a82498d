# The two quick-start commands are `make run` and `make test`; everything else is a step of those.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888
DATA_DIR ?= ./data
# Two workers, one per core: each gets its own embedded MongoDB and Redis. `make test PYTEST_ARGS=` runs serially.
PYTEST_ARGS ?= -n 2

.PHONY: install run test lint typecheck check services bench-tools clean conformance migrate-media

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

# Artillery (npm) for tests/test_load_tools.py, into bench/artillery/node_modules (git-ignored). Artillery
# 2.0.21 is the last release that runs on Node.js 20; no install scripts run (they fetch browsers).
ARTILLERY_STAMP := bench/artillery/node_modules/.installed

bench-tools: $(ARTILLERY_STAMP)

$(ARTILLERY_STAMP): bench/artillery/package.json bench/artillery/package-lock.json
	@if command -v npm >/dev/null; then \
		cd bench/artillery && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the Artillery test of tests/test_load_tools.py will not run"; fi

test: install services bench-tools
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
