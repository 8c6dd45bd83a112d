"""sweep.parquet: rows appended as points finish, every flush an atomic file replace.

Parquet files cannot be appended to in place, so each flush writes the whole table to a
temporary file next to the target and ``os.replace``s it: an interrupt at any moment leaves
either the previous complete file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmservingsim.errors import UserError
from llmservingsim.outputs.files import atomic_path
from llmservingsim.sweep.rows import Row

_LEADING = ("point_id", "base_id")
_TRAILING = ("point_wall_s", "error")


def rows_to_table(rows: Iterable[Row]) -> pa.Table:
    """Columns in first-seen order (identity first, wall time and error last); a row without
    a column (a point that did not fit has no latency) gets null there."""
    rows = list(rows)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    middle = [n for n in names if n not in _LEADING and n not in _TRAILING]
    ordered = [n for n in _LEADING if n in names] + middle + [n for n in _TRAILING if n in names]
    return pa.table({name: [row.get(name) for row in rows] for name in ordered})


def write_table_atomic(table: pa.Table, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``path`` whole or not at all; ``metadata`` is stored as JSON under
    ``llmservingsim`` in the Parquet schema."""
    if metadata is not None:
        table = table.replace_schema_metadata({"llmservingsim": json.dumps(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_rows(path: Path) -> list[Row]:
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read results: {exc}") from None
    return rows


class ResultStore:
    """The rows of one sweep, in memory and on disk."""

    def __init__(self, path: Path, rows: list[Row], flush_interval_s: float = 1.0) -> None:
        self.path = path
        self.rows = rows
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self._dirty = False

    @classmethod
    def open(cls, path: Path, resume: bool, flush_interval_s: float = 1.0) -> ResultStore:
        """A new store, or with ``resume`` the rows already in ``path``."""
        if path.exists() and not resume:
            raise UserError(
                f"{path} already exists: pass --resume to finish that sweep, or another --out"
            )
        rows = read_rows(path) if resume and path.exists() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, rows, flush_interval_s)

    def done_ids(self) -> set[str]:
        return {str(row["point_id"]) for row in self.rows}

    def base_ids(self) -> set[str]:
        return {str(row["base_id"]) for row in self.rows if row.get("base_id") is not None}

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if self._dirty or not self.path.exists():
            write_table_atomic(rows_to_table(self.rows), self.path)
        self._dirty = False
        self._last_flush = time.monotonic()
