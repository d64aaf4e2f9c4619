# Two commands set everything up on a fresh machine (Python 3.11 and Java 17 present):
#   make demo   - run the main job on the embedded defaults
#   make test   - run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow coverage bench chaos lint clean serve triton-venv flink-udf debs api

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever the pins change.
$(STAMP): setup.py pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The local tritonserver's own venv (nvidia-pytriton needs numpy<2).
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
$(TRITON_STAMP): triton_repo/server-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet -r triton_repo/server-requirements.txt
	touch $(TRITON_STAMP)

triton-venv: $(TRITON_STAMP)

# Debian packages the tests start for real (the service's alerts go to a real Alertmanager).
ALERTMANAGER := /usr/bin/prometheus-alertmanager
$(ALERTMANAGER):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager

# libfuse2 + fuse: the fault tests mount a slow disk (tests/slow_fs.py)
LIBFUSE := /usr/lib/x86_64-linux-gnu/libfuse.so.2
FUSERMOUNT := /usr/bin/fusermount
$(LIBFUSE) $(FUSERMOUNT):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libfuse2 fuse

# Debian's chromium: the dashboard tests drive a real headless browser (tests/chromium.py)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

# Debian's prometheus (with promtool): the rules in infra/prometheus/ are checked and unit-tested
# with promtool, and a real Prometheus scrapes a real aura api (tests/test_prometheus_*.py)
PROMETHEUS := /usr/bin/prometheus
PROMTOOL := /usr/bin/promtool
$(PROMETHEUS) $(PROMTOOL):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

debs: $(ALERTMANAGER) $(LIBFUSE) $(FUSERMOUNT) $(CHROMIUM) $(PROMETHEUS) $(PROMTOOL)

# The Flink job's Java functions (source, parser, windower), compiled from pipelines/flink/java (needs javac 11+)
# into a cache keyed by source hash; the job also builds it at first use.
flink-udf: $(STAMP)
	$(BIN)/python -m pipelines.flink.udf

serve: $(STAMP) $(TRITON_STAMP)
	$(BIN)/aura serve

demo: $(STAMP)
	$(BIN)/aura demo

api: $(STAMP)
	$(BIN)/aura api

test: $(STAMP) $(TRITON_STAMP) flink-udf $(ALERTMANAGER) $(LIBFUSE) $(FUSERMOUNT) $(CHROMIUM) $(PROMETHEUS) $(PROMTOOL)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The default suite with line coverage of pipelines/ and models/, subprocesses included
# ([tool.coverage] in pyproject.toml): prints the total, fails below its floor, writes
# output/coverage/html/index.html. Not part of `make test`: tracing costs 1.5-1.9x on the
# in-process engine tests on Python 3.11, past the suite's 20-minute budget (docs/BENCHMARKS.md).
coverage: $(STAMP) $(TRITON_STAMP) flink-udf $(ALERTMANAGER) $(LIBFUSE) $(FUSERMOUNT) $(CHROMIUM) $(PROMETHEUS) $(PROMTOOL)
	rm -rf output/coverage && mkdir -p output/coverage
	$(BIN)/python -m pytest --cov --cov-report=html --cov-report=term:skip-covered

test-slow: $(STAMP) $(TRITON_STAMP) $(ALERTMANAGER) $(LIBFUSE) $(FUSERMOUNT) $(CHROMIUM) $(PROMETHEUS) $(PROMTOOL)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP) $(TRITON_STAMP) $(ALERTMANAGER) $(CHROMIUM)
	$(BIN)/python bench/bench_simulator.py
	$(BIN)/python bench/bench_beam.py
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_predictors.py
	$(BIN)/python bench/bench_consensus.py
	$(BIN)/python bench/bench_graph_sink.py
	$(BIN)/python bench/bench_backtest.py
	$(BIN)/python bench/bench_flink.py
	$(BIN)/python bench/bench_ingest.py --rate 100
	$(BIN)/python bench/bench_span_mapping.py
	$(BIN)/python bench/bench_alert_latency.py
	$(BIN)/python bench/bench_testbed.py
	$(BIN)/python bench/bench_generalisation.py --models models/cascade_cfc_v1,models/cascade_cfc
	$(BIN)/python bench/bench_localisation.py --seeds 0-47 --agents 60,100,150
	$(BIN)/python bench/bench_closed_loop.py --val 36 --test 48
	$(BIN)/python bench/bench_chaos.py --load 150
	$(BIN)/python bench/bench_dashboard.py --agents 1000
	$(BIN)/python bench/bench_observability.py

# the whole service under load, each component killed once (bench/bench_chaos.py)
chaos: $(STAMP) $(TRITON_STAMP) $(ALERTMANAGER)
	$(BIN)/python bench/bench_chaos.py --load 150 --json output/chaos.json

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(TRITON_VENV) output .pytest_cache .hypothesis *.egg-info
