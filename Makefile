# twinkles: every target works from a fresh clone and runs `setup` when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup lab-setup lab demo demo-external test bench lint clean services-stop

setup: $(STAMP)

# Reinstall whenever the dependency list changes.
$(STAMP): pyproject.toml
	scripts/make-venv.sh $(PYTHON) $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The Note's PDF is printed by headless Chromium (Debian's package, installed as root); without
# it the Note is HTML only.
# JupyterLab for the people who edit recipes, in an environment of its own (.venv-lab) with
# the `twinkles` kernel (.venv's Python) registered in it: Lab's jsonschema format extras make
# `import papermill` about a second slower, which every pipeline task would pay in .venv.
LAB_VENV := .venv-lab
LAB_STAMP := $(LAB_VENV)/.installed-stamp
LAB_ARGS ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab-setup: $(LAB_STAMP)

$(LAB_STAMP): pyproject.toml $(STAMP)
	scripts/make-venv.sh $(PYTHON) $(LAB_VENV)
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["lab"]))' \
		| xargs -d '\n' $(LAB_VENV)/bin/python -m pip install --quiet
	$(BIN)/python -m ipykernel install --prefix $(LAB_VENV) --name twinkles --display-name twinkles
	# the recipes name the kernel python3 (as papermill runs them): there too, .venv's Python
	$(BIN)/python -m ipykernel install --prefix $(LAB_VENV) --name python3 \
		--display-name "Python 3 (twinkles)"
	touch $@

# Opens the cookbook; LAB_ARGS="--no-browser --port 8890" for a remote or headless machine.
lab: lab-setup
	$(LAB_VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) \
		--LabApp.default_url=/lab/tree/cookbook $(ROOT_FLAG) $(LAB_ARGS)

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
test: setup lab-setup
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
	rm -rf $(VENV) $(LAB_VENV) .pytest_cache .ruff_cache
