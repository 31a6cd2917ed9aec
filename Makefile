# The front door. `make run` starts the suite, `make test` runs every test tier.
# Everything the targets need is installed on first use and cached under .cache/.

SHELL := /bin/bash
export UV_CACHE_DIR := $(CURDIR)/.cache/uv
export UV_PYTHON_DOWNLOADS := never
# The system's own CPython 3.11 when there is one: Debian's links libpython statically and ran
# the suite's Python up to a tenth faster than a shared-library build such as pyenv's
# (docs/benchmark.md#the-interpreter); otherwise the first python3.11 on the PATH.
export UV_PYTHON := $(or $(wildcard /usr/bin/python3.11),python3.11)
BOOTSTRAP := .cache/bootstrap
UV := $(BOOTSTRAP)/bin/uv
PY := .venv/bin/python
UV_VERSION := 0.13.8

.PHONY: help deps run start stop status test test-unit test-integration test-e2e pitfalls lint typecheck schema-check schemas fmt docs up down bench load load-ui clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(UV):
	@echo "==> bootstrapping uv $(UV_VERSION) into $(BOOTSTRAP)"
	@python3.11 -m venv $(BOOTSTRAP)
	@$(BOOTSTRAP)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

deps: $(UV) ## install the Python packages from uv.lock into .venv
	@$(UV) sync --frozen --quiet

run: deps ## start Postgres, Kafka, Jaeger and the three services in the foreground (Ctrl-C stops all)
	@$(PY) -m infra run

start: deps ## the same, detached (idempotent: starts whatever is not running)
	@$(PY) -m infra start

stop: deps ## stop everything `make start` started
	@$(PY) -m infra stop

status: deps ## what is running, with pids and ports
	@$(PY) -m infra status

test: deps lint typecheck schema-check ## every tier; starts the real Postgres, Kafka and Jaeger it needs
	@$(PY) -m infra install-browser
	@$(PY) -m infra start --infra-only
	@$(PY) -m pytest -q --durations=15 shared/tests services tests

test-unit: deps ## unit tier only: no I/O, seconds
	@$(PY) -m pytest -q -m "not integration and not e2e" shared/tests services tests

test-integration: deps
	@$(PY) -m infra start --infra-only
	@$(PY) -m pytest -q -m integration shared/tests services tests

test-e2e: deps
	@$(PY) -m infra install-browser
	@$(PY) -m infra start --infra-only
	@$(PY) -m pytest -q -m e2e tests

pitfalls: deps ## each delivery fault with its protection on, then off (pitfall mode): see docs/pitfalls.md
	@$(PY) -m infra start --infra-only
	@$(PY) -m pytest -v tests/faults

lint: deps ## ruff check + ruff format --check
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

fmt: deps
	@$(PY) -m ruff format .
	@$(PY) -m ruff check --fix .

typecheck: deps ## mypy --strict
	@$(PY) -m mypy shared/src services/order/src services/inventory/src services/shipping/src infra load
	@$(PY) -m mypy shared/tests services/order/tests services/inventory/tests services/shipping/tests tests

schema-check: deps ## the schema gate: the event models against their first committed JSON Schemas (git history)
	@$(PY) -m infra.schemas --check

schemas: deps ## write the JSON Schema of every event version into shared/schemas
	@$(PY) -m infra.schemas

docs: deps ## regenerate the tables in docs/ from the code (python -m infra.docs)
	@$(PY) -m infra.docs

load: deps ## Locust customers + chaos nemesis + consistency check, headless; report in reports/load/ (LOAD_ARGS="--duration 600 --rate 15")
	@$(PY) -m load run $(LOAD_ARGS)

load-ui: deps ## the same run with Locust's web UI on http://127.0.0.1:8089 (nemesis off unless LOAD_ARGS=--nemesis)
	@$(PY) -m load ui $(LOAD_ARGS)

up: ## the suite under docker compose (needs a Docker engine)
	docker compose up --build -d

down:
	docker compose down -v

bench: deps ## the benchmark: rising open-model load, table + JSON + plot in reports/bench (BENCH_ARGS=--help)
	@$(PY) -m load.bench $(BENCH_ARGS)

clean: stop ## stop and delete state (data, logs); keeps the download cache
	rm -rf .state
