"""summary.json (numbers in SI units, JSON-safe: inf as a string, NaN as null), and the
write-to-temp-then-rename rule every output file follows."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WALL_TIME_FIELDS = ("sim_wall_s",)
"""summary.json fields that measure this machine, not the simulated system: the only ones two
runs of the same config and seed may differ in (docs/robustness.md)."""


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (hidden, same folder)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename, on any
    error or interrupt it is deleted. So ``path`` is always complete or absent."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    path = out_dir / "summary.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    return path
