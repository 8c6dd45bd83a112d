"""Docs that must not drift: the generated config reference and the output schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmservingsim.outputs.tables import REQUESTS_SCHEMA, TIMESERIES_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_output_column_is_documented() -> None:
    text = (ROOT / "docs" / "outputs.md").read_text()
    for name in (*REQUESTS_SCHEMA.names, *TIMESERIES_SCHEMA.names):
        assert f"| `{name}` |" in text, f"docs/outputs.md does not document column {name!r}"
