"""Simulator speed and memory on fixed scenarios (`make bench`; docs/performance.md).

Each scenario runs in a fresh subprocess, so its peak RSS is its own. The table gives the
engine loop that ran, simulated iterations, wall time, µs per iteration, peak RSS and requests
per wall second; ``--compare`` also runs the chosen scenarios on the interpreted build of the
same engine source (``LLMSERVINGSIM_INTERPRETED=1``) and, compiled, without fast-forward
(``simulator.fast_forward=false``, one step and one request at a time), and prints the speed-ups.

    python benchmarks/run_benchmarks.py                  # (a) and (b), the quick ones
    python benchmarks/run_benchmarks.py --only a,b,c,d,e # every scenario (tens of minutes)
    python benchmarks/run_benchmarks.py --only b --compare
    python benchmarks/run_benchmarks.py --only d --requests 100000  # a cut-down (d)
    python benchmarks/run_benchmarks.py --only d --requests 100000 --set outputs.decisions=true

``--set KEY=VALUE`` adds a config override to every scenario. With ``outputs.decisions=true``
the decisions are streamed to a decisions.parquet in a temporary folder, as ``run`` writes it,
and the wall time includes closing that file. "cpu s" is the child's CPU time over the same
span (the table writer's thread included): steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Arrival rates sit just below each setup's measured throughput (docs/performance.md).
SCENARIOS: dict[str, tuple[str, list[str]]] = {
    "a": ("(a) default scenario", []),
    "b": ("(b) 300 ShareGPT-like, 8B, 1x H100", ["workload.num_requests=300"]),
    "c": (
        "(c) 100k, 70B TP4, A100, near saturation",
        [
            "model=llama-2-70b",
            "hardware=a100-80gb",
            "cluster.tensor_parallel=4",
            "workload.num_requests=100000",
            "workload.arrival.rate=6",
        ],
    ),
    "d": (
        "(d) 1M, 16x 8B H100, least_outstanding",
        [
            "cluster.instances=16",
            "cluster.router=least_outstanding",
            "workload.num_requests=1000000",
            "workload.arrival.rate=500",
        ],
    ),
    "e": (
        "(e) 1,000 instances, 100k requests",
        [
            "cluster.instances=1000",
            "cluster.router=least_outstanding",
            "workload.num_requests=100000",
            "workload.arrival.rate=2000",
        ],
    ),
}


MODES: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "interpreted": ([], {"LLMSERVINGSIM_INTERPRETED": "1"}),
    "step": (["simulator.fast_forward=false"], {}),
}
"""Engine settings compared by ``--compare`` (overrides, environment): the default (the
compiled build where it is installed), the same source interpreted, and the default build one
step at a time."""


def measure(key: str, mode: str, requests: int | None, extra: list[str]) -> dict[str, Any]:
    """Run one scenario in this process (the child) and return its numbers."""
    from llmservingsim.config import load_config
    from llmservingsim.metrics.collector import MetricsCollector
    from llmservingsim.metrics.decisions import DecisionLog
    from llmservingsim.outputs.tables import DecisionTableSink
    from llmservingsim.simulation import simulate

    _, overrides = SCENARIOS[key]
    if requests is not None:
        overrides = [*overrides, f"workload.num_requests={requests}"]
    cfg = load_config(None, [*overrides, *MODES[mode][0], *extra])
    with tempfile.TemporaryDirectory() as tmp:
        sink = DecisionTableSink(Path(tmp)) if cfg.outputs.decisions else None
        if sink is not None:
            # pyarrow imports pandas at its first numpy conversion (~0.5 s): `run` pays that
            # for requests.parquet whether or not it logs decisions, so it is paid off the clock.
            import numpy as np
            import pyarrow as pa

            pa.array(np.zeros(1))
        metrics = MetricsCollector(decisions=None if sink is None else DecisionLog([sink]))
        start, cpu_start = time.perf_counter(), time.process_time()
        fast_forward = cfg.simulator.fast_forward
        summary = simulate(cfg, metrics=metrics).summary
        if sink is not None:
            metrics.flush()
            sink.close()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "requests": summary["requests_completed"],
        "iterations": summary["iterations"],
        "wall_s": wall,
        "sim_wall_s": summary["sim_wall_s"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s": cpu,
        "loop": f"{summary['engine_build']}{'' if fast_forward else ' step'}",
    }


def in_subprocess(key: str, mode: str, requests: int | None, extra: list[str]) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", key, "--mode", mode]
    if requests is not None:
        args += ["--requests", str(requests)]
    for override in extra:
        args += ["--set", override]
    env = {**os.environ, **MODES[mode][1]}
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b", help="scenarios, e.g. a,b,c (default a,b)")
    parser.add_argument(
        "--compare", action="store_true", help="also run the Python engine, with and without FF"
    )
    parser.add_argument("--requests", type=int, help="override each scenario's request count")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each scenario N times (fresh processes) and keep the fastest: on a shared "
        "machine the minimum is the run least slowed by other jobs",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override added to every scenario (repeatable)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="default", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.mode, args.requests, args.set)))
        return 0
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    title = " ".join(["llmservingsim benchmarks", *args.set])
    table = Table(title=title, header_style="bold")
    columns = ("scenario", "engine", "requests", "iterations", "wall s", "cpu s", "µs / iter")
    for col in (*columns, "peak RSS MiB", "req / wall s"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    console = Console(width=150)
    for key in keys:
        modes = list(MODES) if args.compare else ["default"]
        walls = {}
        for mode in modes:
            runs = [
                in_subprocess(key, mode, args.requests, args.set)
                for _ in range(max(1, args.repeat))
            ]
            r = min(runs, key=lambda run: run["sim_wall_s"])
            walls[mode] = r["sim_wall_s"]
            table.add_row(
                SCENARIOS[key][0],
                r["loop"],
                f"{r['requests']:,.0f}",
                f"{r['iterations']:,.0f}",
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                f"{r['sim_wall_s'] / max(1, r['iterations']) * 1e6:.1f}",
                f"{r['peak_rss_mib']:,.0f}",
                f"{r['requests'] / r['wall_s']:,.0f}",
            )
        if args.compare:
            console.print(
                f"{SCENARIOS[key][0]}: compiled vs interpreted "
                f"{walls['interpreted'] / walls['default']:.2f}x; fast-forward on vs off "
                f"(compiled) {walls['step'] / walls['default']:.2f}x"
            )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
