# Two commands set everything up on a fresh machine (Python 3.11 and Java 17 present):
#   make demo   - run the main job on the embedded defaults
#   make test   - run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever the pins change.
$(STAMP): setup.py pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aura demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python bench/bench_simulator.py
	$(BIN)/python bench/bench_beam.py
	$(BIN)/python bench/bench_features.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) output .pytest_cache .hypothesis *.egg-info
