"""Docs that must not drift: the generated config reference and the output schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmservingsim.outputs.tables import DECISIONS_SCHEMA, REQUESTS_SCHEMA, TIMESERIES_SCHEMA

ROOT = Path(__file__).resolve().parents[2]


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
    for name in (*REQUESTS_SCHEMA.names, *TIMESERIES_SCHEMA.names, *DECISIONS_SCHEMA.names):
        assert f"| `{name}` |" in text, f"docs/outputs.md does not document column {name!r}"


def test_docs_cite_no_file_outside_the_repository() -> None:
    """The docs stand alone: no design document, shared data file or machine path from outside
    the repository is cited (the optional shared data folder is described, not cited)."""
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text()
        for outside in ("DESIGN.md", "../", "/work/"):
            assert outside not in text, f"{doc.name} cites {outside!r}, outside the repository"


def test_docs_index_links_every_doc() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        if doc.name != "index.md":
            assert f"]({doc.name})" in index, f"docs/index.md does not link {doc.name}"
