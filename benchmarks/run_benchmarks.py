"""Simulator speed: wall time per simulated iteration on a few fixed scenarios (`make bench`).

Scenarios (a) and (b) of issue #7; the large-scale ones (100k requests, 1M requests on 16
instances, 1,000 instances) need multi-instance routing and fast-forward and come with those
issues.
"""

from __future__ import annotations

import resource
import sys
import time

from rich.console import Console
from rich.table import Table

from llmservingsim.config import load_config
from llmservingsim.simulation import simulate

SCENARIOS: dict[str, list[str]] = {
    "(a) default scenario": [],
    "(b) 300 req @ 10/s, 8B, H100": [
        "workload.num_requests=300",
        "workload.arrival.rate=10",
    ],
    "(b') 2000 req at t=0, 7B, A100": [
        "model=llama-2-7b",
        "hardware=a100-80gb",
        "workload.num_requests=2000",
        "workload.arrival.rate=.inf",
    ],
}


def main() -> int:
    table = Table(title="llmservingsim benchmarks", header_style="bold")
    for col in ("scenario", "requests", "iterations", "wall s", "µs / iteration", "req / wall s"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, overrides in SCENARIOS.items():
        cfg = load_config(None, overrides)
        start = time.perf_counter()
        summary = simulate(cfg).summary
        wall = time.perf_counter() - start
        iterations = summary["iterations"]
        table.add_row(
            name,
            f"{summary['requests_completed']:,}",
            f"{iterations:,}",
            f"{wall:.2f}",
            f"{summary['sim_wall_s'] / iterations * 1e6:.1f}",
            f"{summary['requests_completed'] / wall:,.0f}",
        )
    console = Console()
    console.print(table)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"peak RSS of the benchmark process: {peak_rss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
