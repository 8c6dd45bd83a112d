"""Start-up cost of the command line, as whole processes (docs/performance.md, "Start-up").

Runs each command ``--repeat`` times (after one warm-up run that also writes the bytecode
caches) and prints the wall and CPU (user + sys) times: minimum and median. Wall time on a
shared machine includes waiting for a core; CPU time does not, so both are shown with the load
average.

    python benchmarks/startup.py               # --help and scenario (b), 10 runs each
    python benchmarks/startup.py --repeat 20
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Scenario (b) of benchmarks/run_benchmarks.py: 300 ShareGPT-like requests, Llama-3.1-8B, 1x H100.
SCENARIO_B = ["run", "--set", "workload.num_requests=300", "-q"]


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "llmservingsim --help": ["--help"],
        "run (b), summary + Parquet tables": [
            *SCENARIO_B,
            "--no-report",
            "--no-trace",
            "--out",
            str(out / "lean"),
        ],
        "run (b), every output file": [*SCENARIO_B, "--out", str(out / "all")],
    }


def measure(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``llmservingsim ARGS`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "llmservingsim", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    opts = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in commands(Path(tmp)).items():
            measure(args)  # warm-up: bytecode caches, file system
            runs = [measure(args) for _ in range(opts.repeat)]
            walls = [w for w, _ in runs]
            cpus = [c for _, c in runs]
            print(
                f"{label}: wall min {min(walls):.3f} s, median {statistics.median(walls):.3f} s;"
                f" CPU min {min(cpus):.3f} s, median {statistics.median(cpus):.3f} s"
                f" ({opts.repeat} runs)"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
