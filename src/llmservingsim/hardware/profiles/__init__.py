"""Measured operator profiles: read Vidur, LLMServingSim and native tables into one list of points.

Every reader turns a measured row into the :class:`~llmservingsim.model.ops.Op` that the
simulator itself would build for that shape (same :class:`~llmservingsim.model.ops.OpGraph`
code), paired with the measured seconds. The ``profile`` perf backend looks ops up in these
points and ``llmservingsim calibrate`` fits the roofline to them, so both see exactly the ops a
simulation produces.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

from llmservingsim.errors import ConfigError
from llmservingsim.hardware.profiles import lss, native, vidur
from llmservingsim.hardware.profiles.points import ProfilePoint, canonical_dtype

__all__ = ["ProfilePoint", "canonical_dtype", "find_profile_files", "load_profiles"]

Reader = Callable[[Path, list[str]], list[ProfilePoint]]


def _reader_for(header: list[str]) -> Reader | None:
    """Pick the format from the header row; None for CSVs that are not operator profiles."""
    for matches, reader in (
        (vidur.is_mlp_header, vidur.read_mlp),
        (vidur.is_attention_header, vidur.read_attention),
        (native.is_native_header, native.read_native),
        (lss.is_dense_header, lss.read_dense),
        (lss.is_per_sequence_header, lss.read_per_sequence),
        (lss.is_attention_header, lss.read_attention),
    ):
        if matches(header):
            return reader
    return None


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read profile table: {exc}") from None


def find_profile_files(roots: Iterable[Path]) -> list[tuple[Path, Reader]]:
    """Every operator-profile CSV under the given files/folders (others, e.g. network
    profiles, are ignored)."""
    found: list[tuple[Path, Reader]] = []
    for root in roots:
        if not root.exists():
            raise ConfigError(f"profile path {str(root)!r} does not exist")
        files = [root] if root.is_file() else sorted(root.rglob("*.csv"))
        for path in files:
            reader = _reader_for(_header(path))
            if reader is not None:
                found.append((path, reader))
    return found


def load_profiles(roots: Iterable[Path]) -> list[ProfilePoint]:
    """All measured points under ``roots``; a ConfigError when there is none."""
    roots = list(roots)
    files = find_profile_files(roots)
    points: list[ProfilePoint] = []
    for path, reader in files:
        points.extend(reader(path, _header(path)))
    if not points:
        shown = ", ".join(str(r) for r in roots)
        raise ConfigError(
            f"no operator profile tables (Vidur mlp.csv / attention.csv, LLMServingSim "
            f"dense.csv / per_sequence.csv / attention.csv or native CSV, see "
            f"docs/profiles.md) found under {shown}"
        )
    return points
