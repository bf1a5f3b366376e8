# twinkles: every target works from a fresh clone and runs `setup` when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench lint clean services-stop

setup: $(STAMP)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The Note's PDF is printed by headless Chromium (Debian's package, installed as root); without
# it the Note is HTML only.
demo: setup
	scripts/services.sh start chromium || echo "make demo: no Chromium, so the Note will have no PDF"
	$(BIN)/twinkles run runs/demo.yaml
	$(BIN)/twinkles note runs/demo

# Service tests (real Slurm) must run, not skip: `make test` starts the services (root, Debian)
# and requires them. `make test SERVICES=none` leaves them out explicitly.
test: setup
ifeq ($(SERVICES),none)
	$(BIN)/python -m pytest -m "not slurm and not postgres and not browser"
else
	scripts/services.sh start
	set -a && . .services/services.env && set +a && \
		TWINKLES_REQUIRE_SERVICES=1 $(BIN)/python -m pytest
endif

services-stop:
	scripts/services.sh stop

bench: setup
	scripts/services.sh start
	set -a && . .services/services.env && set +a && $(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check lib tests benchmarks cookbook
	$(BIN)/ruff format --check lib tests benchmarks cookbook

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
