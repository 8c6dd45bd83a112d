"""Wall time of one 64-point sweep on each executor, end to end through the CLI.

4 rates × 4 max_num_seqs × 4 mean input lengths, 300 requests a point, default model and
device. Each run starts from an empty output directory and includes process (or Ray) start-up,
since that is what a user waits for. The rows of every run must agree apart from wall-time
columns; the script checks that too.

    .venv/bin/python benchmarks/sweep_executors.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from llmservingsim.sweep.rows import WALL_COLUMNS

GRID = [
    "--grid",
    "workload.arrival.rate=2,4,8,16",
    "--grid",
    "scheduler.max_num_seqs=8,32,128,256",
    "--grid",
    "workload.input_len.mean=128,256,512,1024",
    "--set",
    "workload.num_requests=300",
]
RUNS: dict[str, list[str]] = {
    "local, 1 worker (in-process)": ["--executor", "local", "--workers", "1"],
    "local, 2 workers (process pool)": ["--executor", "local", "--workers", "2"],
    "ray, local Ray on 2 CPUs": ["--executor", "ray", "--workers", "2"],
}


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = pq.read_table(path).to_pylist()
    return sorted(
        ({k: v for k, v in r.items() if k not in WALL_COLUMNS} for r in rows),
        key=lambda r: str(r["point_id"]),
    )


def main() -> int:
    cli = Path(sys.executable).with_name("llmservingsim")
    table = Table(title="64-point sweep, 300 requests a point", header_style="bold")
    for col in ("executor", "wall s", "Σ point wall s", "points", "load avg before"):
        table.add_column(col, justify="left" if col == "executor" else "right")
    reference: list[dict[str, Any]] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, args) in enumerate(RUNS.items()):
            out = Path(tmp) / f"run{index}"
            load = os.getloadavg()[0]
            start = time.perf_counter()
            subprocess.run([str(cli), "sweep", *GRID, *args, "--out", str(out), "-q"], check=True)
            wall = time.perf_counter() - start
            table_rows = pq.read_table(out / "sweep.parquet")
            busy = sum(table_rows.column("point_wall_s").to_pylist())
            rows = _rows(out / "sweep.parquet")
            if reference is None:
                reference = rows
            elif rows != reference:
                raise SystemExit(f"{name}: rows differ from the first run")
            table.add_row(name, f"{wall:.1f}", f"{busy:.1f}", str(len(rows)), f"{load:.2f}")
    Console().print(table)
    Console().print(f"cores: {os.cpu_count()}; rows identical across executors: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
