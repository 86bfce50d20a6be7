# make setup: everything on a fresh Debian machine (as root): system packages, .venv, the
#             project with its test extras, and the small local test models.
# make test:  ruff, import boundaries, then the unit and integration tests (GPU tests skip
#             without a GPU).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel on this project's CI machines, the CUDA one from PyPI elsewhere.
TORCH  ?= torch==2.13.0

.PHONY: setup system venv models protos test test-unit lint bench-quick clean

setup: system venv models

system:
	./scripts/install-system-deps.sh

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"

models:
	$(BIN)/asr-scheduler make-models models

protos:
	$(BIN)/python tools/gen_protos.py

lint:
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest -q

test-unit:
	$(BIN)/python -m pytest -q -m "not integration"

clean:
	rm -rf $(VENV) models build *.egg-info .pytest_cache .ruff_cache
