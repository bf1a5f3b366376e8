# twinkles: every target works from a fresh clone and runs `setup` when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/twinkles simulate runs/demo.yaml

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check lib tests benchmarks cookbook
	$(BIN)/ruff format --check lib tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
