"""What ``outputs.decisions`` costs: scenario (d) of run_benchmarks.py with and without it,
alternating in one process (docs/performance.md, "Decision log").

On a shared machine two separate runs can differ by more than the cost measured, so the runs
alternate (off, on, off, on, ...) in one warm process and the ratios of the minimum and of
the median CPU and wall times are printed. "On" streams decisions.parquet to a temporary
folder as ``run`` does and includes closing it.

    python benchmarks/decisions_cost.py                   # 100k requests, 5 pairs
    python benchmarks/decisions_cost.py --requests 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmservingsim.config import load_config
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.decisions import DecisionLog
from llmservingsim.outputs.tables import DecisionTableSink
from llmservingsim.simulation import simulate

SCENARIO = [
    "cluster.instances=16",
    "cluster.router=least_outstanding",
    "workload.arrival.rate=500",
]


def one_run(overrides: list[str], decisions: bool) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one simulation, files closed."""
    cfg = load_config(None, [*overrides, f"outputs.decisions={str(decisions).lower()}"])
    with tempfile.TemporaryDirectory() as tmp:
        sink = DecisionTableSink(Path(tmp)) if decisions else None
        metrics = MetricsCollector(decisions=None if sink is None else DecisionLog([sink]))
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        simulate(cfg, metrics=metrics)
        if sink is not None:
            metrics.flush()
            sink.close()
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="pairs of runs (off, on)")
    args = parser.parse_args()
    # pyarrow imports pandas at its first numpy conversion: `run` pays that for
    # requests.parquet with or without decisions, so it is paid before any clock starts.
    pa.array(np.zeros(1))
    overrides = [*SCENARIO, f"workload.num_requests={args.requests}"]
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(max(1, args.repeat)):
        for decisions in (False, True):
            runs[decisions].append(one_run(overrides, decisions))
    for decisions, label in ((False, "off"), (True, "on")):
        cpu = " ".join(f"{c:.2f}" for c, _ in runs[decisions])
        wall = " ".join(f"{w:.2f}" for _, w in runs[decisions])
        print(f"decisions {label:>3}: cpu s {cpu} | wall s {wall}")
    for name, pick in (("min", min), ("median", statistics.median)):
        cpu = pick(c for c, _ in runs[True]) / pick(c for c, _ in runs[False])
        wall = pick(w for _, w in runs[True]) / pick(w for _, w in runs[False])
        print(f"on / off, {name}: cpu {cpu:.3f}, wall {wall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
