# The two commands a new user needs: `make run` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: run test faults install services lint typecheck bench bench-quick bench-api bench-burst bench-real-jobs bench-soak bench-oneliner bench-scale-out fuzz clean

## What `make run` needs (the service and its drivers); `make test` adds the test tools (pytest, mypy...).
RUNTIME := $(VENV)/.runtime-installed
$(RUNTIME): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[mysql,kafka]'
	touch $(RUNTIME)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[mysql,kafka,test]'
	touch $(STAMP) $(RUNTIME)

install: $(STAMP)

## Start the service on its embedded default (SQLite file ./chronos.db, in-process bus). The command is
## .venv/bin/chronos (or `source .venv/bin/activate`, then `chronos`).
run: $(RUNTIME)
	$(VENV)/bin/chronos serve --host $(HOST) --port $(PORT)

## Install, start what the tests need (MariaDB if it is down; the tests start Kafka and SMTP), run them.
test: $(STAMP) services lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

services:
	@bash scripts/start-services

## The fault suite (tests/faults, about 7 minutes, 11 on a busy machine; not in `make test`): a deployment on a private MariaDB and
## Tansu broker under kill -9, SIGSTOP, a database outage and a broker that loses its data; plus the
## scale-out fault tests of tests/e2e (marked faults: broker outage, kill -9 of a worker and of a scheduler).
faults: $(STAMP)
	$(PY) -m pytest -m faults tests/faults tests/e2e $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[mysql,bench]'
	touch $(BENCH_STAMP)

## Chronos and APScheduler 3.11 side by side, then the API beside bare Starlette (see BENCHMARKS.md), then
## issue 18's six targets one line each (bench.targets, from the result files just written);
## bench-quick takes about 5 minutes (without the API).
bench: $(BENCH_STAMP) services
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.burst $(BENCH_BURST_ARGS)
	$(PY) -m bench.real_jobs $(BENCH_REAL_ARGS)
	$(PY) -m bench.api $(BENCH_API_ARGS)
	$(PY) -m bench.targets

## The REST API (chronos serve, SQLite) beside a bare Starlette app serving the same bytes, with wrk if
## installed (apt-get install wrk), else a bundled load generator; SSE fan-out. BENCH_API_ARGS=--quick.
bench-api: $(BENCH_STAMP)
	$(PY) -m bench.api $(BENCH_API_ARGS)

bench-quick: $(BENCH_STAMP) services
	$(PY) -m bench.run --quick $(BENCH_ARGS)
	$(PY) -m bench.burst --quick $(BENCH_BURST_ARGS)
	$(PY) -m bench.real_jobs --quick $(BENCH_REAL_ARGS)

## 10,000 jobs due at one instant (with and without jitter), Chronos and APScheduler, every store, 3
## repetitions (about 25 minutes on a busy machine); BENCH_BURST_ARGS=--quick: memory and SQLite once.
bench-burst: $(BENCH_STAMP) services
	$(PY) -m bench.burst $(BENCH_BURST_ARGS)

## chronos serve on SQLite running 1,000 HTTP jobs/s (local server) and 200 shell jobs/s (`true`), CPU per
## run by component (py-spy); 3 repetitions, about 3 minutes. BENCH_REAL_ARGS=--quick: once, 5 s windows.
bench-real-jobs: $(BENCH_STAMP)
	$(PY) -m bench.real_jobs $(BENCH_REAL_ARGS)

## chronos serve on SQLite, 500 HTTP jobs/s for 30 minutes with retention by count and age: RSS, file size
## and stored runs every minute (not in `make bench`). BENCH_SOAK_ARGS="--minutes 5 --every 30".
bench-soak: $(BENCH_STAMP)
	$(PY) -m bench.soak $(BENCH_SOAK_ARGS)

## APScheduler add_job vs Chronos schedule (python jobs), 1k and 10k, memory and SQLite (BENCHMARKS.md)
bench-oneliner: $(BENCH_STAMP)
	$(PY) -m bench.oneliner $(BENCH_ARGS)

## Scheduler + 1 and 2 worker processes on MariaDB + Tansu (BENCHMARKS.md); BENCH_ARGS=--quick: under 2 min.
bench-scale-out: $(BENCH_STAMP) services
	$(PY) -m bench.scale_out $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check chronos_core chronos_adapters chronos_app tests bench

## Fuzz the REST API from its own OpenAPI document (schemathesis): no 500s, no off-schema responses.
fuzz: $(STAMP)
	CHRONOS_FUZZ_EXAMPLES=$${CHRONOS_FUZZ_EXAMPLES:-300} $(PY) -m pytest -q tests/api/test_fuzz.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
