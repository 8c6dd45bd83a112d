"""Every examples/*.yaml runs end to end through the CLI, shortened with --set like a user would.

New examples are picked up automatically; a trace-driven one is cut with
``workload.trace.max_requests`` instead of ``workload.num_requests``.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmservingsim.cli import app

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
NUM_REQUESTS = 20


def shorten(example: Path) -> list[str]:
    raw = yaml.safe_load(example.read_text()) or {}
    if raw.get("workload", {}).get("kind") == "trace":
        return ["--set", f"workload.trace.max_requests={NUM_REQUESTS}"]
    if raw.get("workload", {}).get("stages"):
        # Stages set the request count: two short ones, about NUM_REQUESTS / 2 requests each.
        stage = f"{{duration_s: 1, rate: {NUM_REQUESTS // 4}}}"
        return ["--set", f"workload.stages=[{stage}, {stage}]"]
    return ["--set", f"workload.num_requests={NUM_REQUESTS}"]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


def scalesim_options(example: Path, tmp_path: Path) -> list[str]:
    """An example on the SCALE-Sim backend runs with a fresh cache (skipped without the
    optional package)."""
    raw = yaml.safe_load(example.read_text()) or {}
    if raw.get("perf", {}).get("backend") != "scalesim":
        return []
    try:
        metadata.version("scalesim")
    except metadata.PackageNotFoundError:
        pytest.skip("scalesim (the optional extra llmservingsim[scalesim]) is not installed")
    return ["--set", f"perf.cache_dir={tmp_path / 'scalesim-cache'}"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    args = ["run", str(example), *shorten(example), "--out", str(tmp_path / "out"), "--quiet"]
    args += scalesim_options(example, tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["requests_completed"] > 0
    assert summary["requests_completed"] + summary["requests_failed"] == summary["requests_total"]
    assert summary["requests_total"] <= NUM_REQUESTS
    assert (tmp_path / "out" / "report.html").exists()
