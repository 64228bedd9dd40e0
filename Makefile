# Two commands do all the set-up on a fresh machine:
#   make demo   - installs into .venv, then runs the main job on the embedded data (no download)
#   make test   - installs into .venv, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test timm-suite

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nas-zoo list
	$(BIN)/python -m nas_zoo.demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# timm's own tests/test_models.py, run on every zoo model (fetches the matching timm sdist from PyPI once)
timm-suite: $(STAMP)
	$(BIN)/python tools/run_timm_suite.py
