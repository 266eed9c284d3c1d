# Two entry points, both safe on a brand-new machine: each first runs scripts/bootstrap.sh,
# which sets up .venv (a no-op when it is already up to date).
PY := .venv/bin/python

.PHONY: setup demo test lint format

setup:
	bash scripts/bootstrap.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .
