# Quickstart targets: `make run` and `make test` create the venv when it is missing.
# The venv is built with the first Python >= 3.11 found on PATH (python3.11, python3.12,
# python3.13, python3, python); `make PYTHON=/path/to/python3.x` picks one, `VENV=DIR` another
# venv (.ci/run tests each Python version in its own).
FIND_PYTHON := for p in python3.11 python3.12 python3.13 python3.14 python3 python; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo "$$p"; break; }; done
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell $(FIND_PYTHON))
endif
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs the runtime dependencies only, `make test` the dev tools too.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint fuzz bench clean

# The engine's modules (build_info.COMPILED_MODULES) are compiled with mypyc at install time:
# editing one re-runs the install (a rebuild, about a minute on 2 cores).
ENGINE_SRC := $(shell grep -o '"llmservingsim\.[a-z_.]*"' src/llmservingsim/build_info.py | tr -d '"' | tr . / | sed 's|^|src/|; s|$$|.py|')

define make_venv
	@test -x $(BIN)/python || { \
		test -n "$(PYTHON)" || { echo "error: no Python >= 3.11 on PATH (make PYTHON=...)" >&2; exit 2; }; \
		echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) -V))"; \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
endef

$(RUN_STAMP): pyproject.toml setup.py mypyc.ini $(ENGINE_SRC)
	$(make_venv)
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

# The dev install is a superset of the runtime one: it marks both as done.
$(DEV_STAMP): pyproject.toml setup.py mypyc.ini $(ENGINE_SRC)
	$(make_venv)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(RUN_STAMP) $(DEV_STAMP)

# The name earlier instructions used for the full (dev) install.
$(VENV)/.installed: $(DEV_STAMP)
	@touch $@

run: $(RUN_STAMP)
	$(BIN)/llmservingsim run --out results/default

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples setup.py
	$(BIN)/ruff format --check src tests benchmarks scripts examples setup.py
	$(BIN)/mypy src

# Two passes: the installed build (compiled), then the tests that replace engine internals
# (marked patches_engine) on the same source interpreted.
test: lint
	$(BIN)/python -m pytest
	LLMSERVINGSIM_INTERPRETED=1 $(BIN)/python -m pytest -m patches_engine

# Long input fuzzing (>= 10,000 examples, about half an hour on 2 cores); `make test` runs a fast profile.
fuzz: $(DEV_STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --hypothesis-show-statistics \
		tests/config/test_fuzz_config.py tests/workload/test_fuzz_traces.py tests/config/test_fuzz_schema.py

bench: $(RUN_STAMP)
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) .venv-py3.* results .pytest_cache .mypy_cache .ruff_cache build
	find src -name '*.so' -delete
