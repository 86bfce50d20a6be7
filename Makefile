# make setup: everything on a fresh Debian machine (as root): system packages, .venv, the
#             project with its test extras, and the small local test models.
# make test:  ruff, import boundaries, mypy, then the unit and integration tests (GPU tests skip
#             without a GPU).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel on this project's CI machines, the CUDA one from PyPI elsewhere.
TORCH  ?= torch==2.13.0

.PHONY: setup system venv node models protos proto-check release-proto test test-unit lint bench-quick clean

setup: system venv node models

system:
	./scripts/install-system-deps.sh

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"

# The Node.js example client's dependencies (@grpc/grpc-js, @grpc/proto-loader), from the
# committed package-lock.json; tests/test_client_service.py runs it against the service.
node:
	cd client/examples/node && npm ci --no-audit --no-fund

models:
	$(BIN)/asr-scheduler make-models models

protos:
	$(BIN)/python tools/gen_protos.py

# The public proto as a contract: buf lint, and buf breaking against the released copy.
proto-check:
	$(BIN)/buf lint
	rm -rf build/released-proto && mkdir -p build && cp -r protos/released build/released-proto
	$(BIN)/buf breaking --against build/released-proto

# On a release: the current public proto becomes the baseline of `buf breaking`.
release-proto:
	cp protos/asr/v1/asr.proto protos/released/asr/v1/asr.proto
	git rev-parse HEAD > protos/released/RELEASE_COMMIT

lint:
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-unit:
	$(BIN)/python -m pytest -q -m "not integration"

clean:
	rm -rf $(VENV) models build *.egg-info .pytest_cache .ruff_cache .mypy_cache
