# twinkles: every target works from a fresh clone and runs `setup` when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo demo-external test bench lint clean services-stop

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

# The same on images twinkles did not simulate: a scene written with GalSim directly
# (examples/external_scene.py) into runs/external_sky/, run from runs/external.yaml.
demo-external: setup
	scripts/services.sh start chromium || echo "make demo-external: no Chromium, so the Note will have no PDF"
	test -d runs/external_sky/eimages || $(BIN)/python examples/external_scene.py runs/external_sky --preset demo
	$(BIN)/twinkles run runs/external.yaml
	$(BIN)/twinkles note runs/external

# Service tests (real Slurm) must run, not skip: `make test` starts the services (root, Debian)
# and requires them. `make test SERVICES=none` leaves them out explicitly.
test: setup
ifeq ($(SERVICES),none)
	$(BIN)/python -m pytest -m "not slurm and not postgres and not browser"
else
	scripts/services.sh start
	set -a && . .services/services.env && set +a && \
		TWINKLES_REQUIRE_SERVICES=1 $(BIN)/python -m pytest --durations=25
endif

services-stop:
	scripts/services.sh stop

bench: setup
	scripts/services.sh start
	set -a && . .services/services.env && set +a && $(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check lib tests benchmarks cookbook examples
	$(BIN)/ruff format --check lib tests benchmarks cookbook examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
