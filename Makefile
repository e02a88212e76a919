# Fruits! image pipeline. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= fruits-output
LOCK   ?= requirements-dev.lock
# `make lock` resolves torch against the CPU wheel here (torch-2.13.0+cpu); PyPI's torch is a CUDA
# build whose nvidia-* dependencies would land in the lock.
TORCH_WHEELS ?= /opt/wheels

.DEFAULT_GOAL := help
.PHONY: help venv lock export-graph run serve load test test-fast lint format bench clean azurite azurite-stop

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/fruits: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(LOCK)  # exact versions of every extra; torch==2.13.0+cpu
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

venv: $(BIN)/fruits  ## create .venv from requirements-dev.lock, package editable (spark,serve,azure,dev)

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv

lock: $(BIN)/uv  ## refresh requirements-dev.lock from pyproject.toml (uv), then `make venv`
	$(BIN)/uv pip compile pyproject.toml --extra spark --extra serve --extra azure --extra dev \
	  --python-version 3.11 --find-links $(TORCH_WHEELS) --custom-compile-command "make lock" \
	  -q -o $(LOCK)
	@grep -q '^torch==2.13.0+cpu$$' $(LOCK) && ! grep -qiE '^(nvidia-|triton)' $(LOCK) || \
	  { echo "$(LOCK): torch is not the CPU wheel 2.13.0+cpu (TORCH_WHEELS=$(TORCH_WHEELS))"; exit 1; }

export-graph: $(BIN)/fruits  ## regenerate src/fruits/data/efficientnet_lite0.onnx from the weights package
	$(BIN)/python -c "from fruits.features import export_bundled_graph as e; print(e())"

run: $(BIN)/fruits  ## run the pipeline on the bundled sample, outputs in ./fruits-output
	$(BIN)/fruits run --output $(OUT)

serve: $(BIN)/fruits  ## serve ./fruits-output (make run first) on http://127.0.0.1:8000
	$(BIN)/fruits serve --run $(OUT)

load: $(BIN)/fruits  ## load test of the API on ./fruits-output: 500 requests, 8 clients
	$(BIN)/python bench/load.py --run $(OUT)

test: $(BIN)/fruits  ## the whole test suite (what CI runs)
	$(BIN)/pytest

test-fast: $(BIN)/fruits  ## skip the slow tests
	$(BIN)/pytest -m "not slow"

lint: $(BIN)/fruits  ## ruff lint + format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(BIN)/fruits  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(BIN)/fruits  ## featurization benchmark on ../shared/datasets/fruits-360-dev
	$(BIN)/python bench/featurize.py

node_modules/.bin/azurite-blob: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

azurite: node_modules/.bin/azurite-blob  ## start Azurite (Azure Storage emulator) on 127.0.0.1, port AZURITE_BLOB_PORT or 10000
	scripts/azurite.sh start
	@echo "export AZURITE_BLOB_PORT=$${AZURITE_BLOB_PORT:-10000}  # tests then use this Azurite"

azurite-stop:  ## stop the Azurite started by `make azurite`
	scripts/azurite.sh stop

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache build dist src/*.egg-info spark-warehouse
