# funcae: `make demo` trains, inverts and plots end to end; `make test` runs the tests.
# Each target installs first when needed (a .venv in the repo).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch requirement. The default is the CPU build this machine has on disk; a GPU user can run
#   make install TORCH='torch>=2.10' (or a CUDA index URL via PIP_EXTRA_INDEX_URL).
TORCH ?= torch==2.13.0
# onnx: `funcae export --format onnx` and its test (onnx builds the graphs, onnxruntime checks them)
# tracking: `--track tensorboard|mlflow` and its tests against the real libraries
EXTRAS ?= dev,images,onnx,tracking,amortized
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo lint format bench reproduce clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# one test process per core, at most 4 (each trains the shared fixtures once); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

demo: install
	$(BIN)/funcae train configs/demo.yaml --force
	$(BIN)/funcae invert --mu 2.4 --sigma 1.7
	$(BIN)/funcae plot
	@echo "demo done: see runs/demo/"

lint: install
	$(BIN)/ruff check funcae_cli tests benchmarks
	$(BIN)/ruff format --check funcae_cli tests benchmarks

format: install
	$(BIN)/ruff format funcae_cli tests benchmarks
	$(BIN)/ruff check --fix funcae_cli tests benchmarks

bench: install
	$(BIN)/python -m benchmarks.run

reproduce: install
	$(BIN)/python -m benchmarks.reproduce

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find runs -mindepth 1 ! -name .gitignore -exec rm -rf {} +
