# Quickstart targets: `make run` and `make test` create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fuzz bench clean

# loop.c is compiled at install time: editing it re-runs the install (a rebuild).
KERNEL_SRC := src/llmservingsim/native/loop.c

$(STAMP): pyproject.toml $(KERNEL_SRC)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmservingsim run --out results/default

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/ruff format --check src tests benchmarks scripts examples
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest

# Long input fuzzing (>= 10,000 examples, about half an hour on 2 cores); `make test` runs a fast profile.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --hypothesis-show-statistics \
		tests/test_fuzz_config.py tests/test_fuzz_traces.py tests/test_fuzz_schema.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache build
	rm -f src/llmservingsim/native/_loop*.so src/llmservingsim/native/_loop*.pyd
