"""Shared checks for command-line tests."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llmservingsim.cli import app


def assert_one_line_error(sets: list[str], message: str, tmp_path: Path) -> None:
    """`run` with these --set overrides fails with exit 2 and one line naming ``message``."""
    args = ["run", "--out", str(tmp_path), "--set", "workload.num_requests=2"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
