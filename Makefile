# Quickstart targets: `make run` and `make test` create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fuzz bench clean

# The engine's modules (build_info.COMPILED_MODULES) are compiled with mypyc at install time:
# editing one re-runs the install (a rebuild, about a minute on 2 cores).
ENGINE_SRC := $(shell grep -o '"llmservingsim\.[a-z_.]*"' src/llmservingsim/build_info.py | tr -d '"' | tr . / | sed 's|^|src/|; s|$$|.py|')

$(STAMP): pyproject.toml setup.py mypyc.ini $(ENGINE_SRC)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmservingsim run --out results/default

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples setup.py
	$(BIN)/ruff format --check src tests benchmarks scripts examples setup.py
	$(BIN)/mypy src

# Two passes: the installed build (compiled), then the tests that replace engine internals
# (marked patches_engine) on the same source interpreted.
test: lint
	$(BIN)/python -m pytest
	LLMSERVINGSIM_INTERPRETED=1 $(BIN)/python -m pytest -m patches_engine

# Long input fuzzing (>= 10,000 examples, a few minutes); `make test` runs a fast profile.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/test_fuzz_config.py tests/test_fuzz_traces.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache build
	find src -name '*.so' -delete
