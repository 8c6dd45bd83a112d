"""Every ready-made scenario in examples/ runs (shrunk to a few requests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmservingsim.config import load_config
from llmservingsim.simulation import simulate

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    cfg = load_config(path, ["workload.num_requests=40"])
    summary = simulate(cfg).summary
    assert summary["requests_completed"] + summary["requests_failed"] == 40
    assert summary["requests_completed"] > 0
