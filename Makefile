# The two quick-start commands are `make run` and `make test`; everything else is a step of those.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888
DATA_DIR ?= ./data
# Two workers, one per core: each gets its own embedded MongoDB and Redis. `make test PYTEST_ARGS=` runs serially.
PYTEST_ARGS ?= -n 2

.PHONY: install run test lint typecheck check services clean conformance

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: install
	$(PY) server.py --port $(PORT) --data-dir $(DATA_DIR)

# System packages the tests use (real Redis, nginx, Chromium); installed when missing and root.
services:
	@bash scripts/ensure-system-packages.sh

test: install services
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
