# m2-workbench — every target creates/refreshes .venv itself (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU set-ups pin the local CPU torch wheel; pyproject keeps torch>=2.9.
CONSTRAINTS ?= constraints-cpu.txt
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-gpu lint format clean

setup: $(STAMP)
	@scripts/ensure_bwrap.sh

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	@touch $(STAMP)

# The demo works in ./workbench-demo (fresh each time). Its state folder is linked as
# ./.workbench (unless a real one exists) so `workbench review list --json` finds its items.
demo: setup
	rm -rf workbench-demo
	$(VENV)/bin/workbench demo --dir workbench-demo
	@if [ ! -e .workbench ] || [ -L .workbench ]; then ln -sfn workbench-demo/.workbench .workbench; fi
	$(VENV)/bin/workbench review list

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run

bench-gpu: setup
	$(PY) bench/kernels.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
