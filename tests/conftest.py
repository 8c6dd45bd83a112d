"""Shared fixtures: the measured-data folder, and a small simulation written to an output dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from llmservingsim.build_info import engine_build, stale_sources
from llmservingsim.config import load_config
from llmservingsim.outputs.run_outputs import simulate_to_dir
from llmservingsim.simulation import SimulationResult

# Hypothesis profiles: "ci" (the library's defaults) for `make test`, "fuzz" for `make fuzz`
# (HYPOTHESIS_PROFILE=fuzz; the fuzz tests size themselves with fuzz_harness.examples).
settings.register_profile("ci")
settings.register_profile("fuzz", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Every simulation a test runs (subprocesses included) checks the runtime invariants.
os.environ.setdefault("LLMSERVINGSIM_CHECK_INVARIANTS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Never test a compiled engine older than its source (an editable install is rebuilt by
    ``make``); the interpreted build always runs the source as it is."""
    stale = stale_sources()
    if stale:
        pytest.exit(
            f"the compiled engine is older than {stale[0]} (and {len(stale) - 1} more): run "
            "`make .venv/.installed` (or `make test`) to rebuild it, or set "
            "LLMSERVINGSIM_INTERPRETED=1 to run the source interpreted",
            returncode=2,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that replace engine internals (monkeypatched methods, fake instances) cannot do so
    on compiled classes: they run in `make test`'s second, interpreted pass."""
    if engine_build() != "compiled":
        return
    skip = pytest.mark.skip(
        reason="replaces engine internals: runs in the interpreted pass "
        "(LLMSERVINGSIM_INTERPRETED=1 pytest -m patches_engine)"
    )
    for item in items:
        if "patches_engine" in item.keywords:
            item.add_marker(skip)


RunToDir = Callable[..., tuple[Path, SimulationResult]]


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository; tests using it skip when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"measured data folder {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture
def run_to_dir(tmp_path: Path) -> RunToDir:
    """``run_to_dir(*overrides)`` runs 60 requests of Llama-3.2-1B and writes every output file."""

    def run(*overrides: str, name: str = "out") -> tuple[Path, SimulationResult]:
        cfg = load_config(
            None, ["model=llama-3.2-1b", "workload.num_requests=60", "seed=1", *overrides]
        )
        out = tmp_path / name
        result, _ = simulate_to_dir(cfg, out)
        return out, result

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Under `make fuzz`: how the fuzzed CLI runs ended, per test file and exit code."""
    if os.environ.get("HYPOTHESIS_PROFILE") != "fuzz":
        return
    from fuzz_harness import OUTCOMES

    if not OUTCOMES:
        return
    terminalreporter.write_sep("-", "fuzzed CLI runs by exit code")
    for test in sorted({t for t, _ in OUTCOMES}):
        codes = {code: n for (t, code), n in OUTCOMES.items() if t == test}
        shown = ", ".join(f"exit {code}: {n:,}" for code, n in sorted(codes.items()))
        terminalreporter.write_line(f"{test}: {sum(codes.values()):,} runs ({shown})")
    terminalreporter.write_line(f"total: {sum(OUTCOMES.values()):,} runs")
