# One command surface: the README, CI (.ci/run) and pre-commit all call these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Serve the bundled demo models, send them sample images, print the results.
demo: install
	$(BIN)/cvdeploy demo

## Everything CI runs: lint, types, and the whole test suite (slow tests included).
test: install lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The quick inner loop: unit and in-process tests only.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -x -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

## Speed figures (print a table, write JSON under benchmarks/results/).
bench: install
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
