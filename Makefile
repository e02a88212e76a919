# Fruits! image pipeline. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= fruits-output

.DEFAULT_GOAL := help
.PHONY: help venv export-graph run serve load test test-fast lint format bench clean azurite azurite-stop

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/fruits: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0  # first, pinned: the CPU wheel (a range pulls CUDA)
	$(BIN)/pip install -q -e ".[spark,serve,azure,dev]"
	@touch $@

venv: $(BIN)/fruits  ## create .venv and install the package with every extra

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
