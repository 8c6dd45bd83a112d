"""The MoE and PIM example configs run as shipped and show what they are about."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llmservingsim.cli import app

EXAMPLES = Path(__file__).parents[2] / "examples"
runner = CliRunner()


def _run(name: str, out: Path, *extra: str) -> dict[str, object]:
    result = runner.invoke(app, ["run", str(EXAMPLES / name), "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads((out / "summary.json").read_text())
    return summary


def test_moe_mixtral_example_runs_with_expert_parallelism(tmp_path: Path) -> None:
    summary = _run("moe_mixtral.yaml", tmp_path)
    assert summary["requests_completed"] == 300
    assert summary["pools"][0]["expert_parallel"] == 2  # type: ignore[index]


def test_pim_decode_example_runs_and_beats_the_gpu_alone(tmp_path: Path) -> None:
    with_pim = _run("pim_decode.yaml", tmp_path / "pim")
    without = _run("pim_decode.yaml", tmp_path / "gpu", "--set", "pim.enabled=false")
    assert with_pim["requests_completed"] == without["requests_completed"] == 512
    assert with_pim["memory"]["kv_cache_on"] == "pim"  # type: ignore[index]
    assert with_pim["output_tokens_per_s"] > without["output_tokens_per_s"]  # type: ignore[operator]
