"""Median |error| per (reference set, metric family) of several `validate` runs, over the rows
every run compared (docs/accuracy.md, "Changes of issue 19").

    python scripts/compare_validations.py before=DIR after=DIR [kernel_db=DIR ...]

Each DIR is a `llmservingsim validate --out DIR` folder (its validation.csv).
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path


def reference_set(row_id: str) -> str:
    if row_id.startswith("aic_"):
        return "aiconfigurator"
    return "blis" if row_id.startswith("blis_") else "published"


def load(folder: Path) -> dict[str, tuple[str, float]]:
    with (folder / "validation.csv").open(newline="") as fh:
        return {
            r["id"]: (r["family"], abs(float(r["error_pct"])))
            for r in csv.DictReader(fh)
            if r["status"] == "compared" and r["error_pct"]
        }


def main(argv: list[str]) -> int:
    runs = []
    for arg in argv:
        name, sep, folder = arg.partition("=")
        if not sep:
            print(f"error: {arg!r}: expected NAME=DIR", file=sys.stderr)
            return 2
        runs.append((name, load(Path(folder))))
    if not runs:
        print(__doc__)
        return 2
    common = set.intersection(*(set(rows) for _, rows in runs))
    groups: dict[tuple[str, str], list[str]] = {}
    for row_id in common:
        groups.setdefault((reference_set(row_id), runs[0][1][row_id][0]), []).append(row_id)
    print(f"| set | family | rows | {' | '.join(name for name, _ in runs)} |")
    print(f"| --- | --- | ---: |{' ---: |' * len(runs)}")
    for key in sorted(groups):
        ids = groups[key]
        cells = [f"{statistics.median(rows[i][1] for i in ids):.1f} %" for _, rows in runs]
        print(f"| {key[0]} | {key[1]} | {len(ids)} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
