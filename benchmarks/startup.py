"""Start-up cost of the command line, as whole processes (docs/performance.md, "Start-up").

Runs each command ``--repeat`` times (after one warm-up run that also writes the bytecode
caches) and prints the wall and CPU (user + sys) times: minimum and median; first the
interpreter alone and the floor (the libraries a run needs, imported and nothing else). Wall
time on a shared machine includes waiting for a core; CPU time does not, so both are shown with
the load average.

    python benchmarks/startup.py               # the floor, --help and (b), 10 runs each
    python benchmarks/startup.py --repeat 20
    python benchmarks/startup.py --breakdown   # where the lean run's CPU time goes

``--breakdown`` runs the lean run of (b) as ``run`` does it, step by step in fresh processes,
and prints each step's CPU time (median over ``--repeat`` processes): the interpreter, the
command line's imports, the config, the engine's and the writers' imports, the workload, the
simulation and the files.
"""

from __future__ import annotations

import argparse
import json
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


FLOOR = "import numpy, pyarrow, pyarrow.parquet, pydantic.main, typer, rich.console, yaml"
"""The libraries a run cannot do without (arrays, Parquet, the config models' validation, the
command line, YAML), imported and nothing else: the floor under a run's start-up."""


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "python -c pass (the interpreter alone)": ["-c", "pass"],
        "python -c 'import numpy, pyarrow.parquet, pydantic, typer, rich, yaml' (floor)": [
            "-c",
            FLOOR,
        ],
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
    """Wall and CPU seconds of one ``llmservingsim ARGS`` process (``python -c ...`` for the
    interpreter alone and the floor)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = (
        [sys.executable, *args]
        if args[0] == "-c"
        else [sys.executable, "-m", "llmservingsim", *args]
    )
    subprocess.run(
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


BREAKDOWN_STEPS = (
    "interpreter start-up",
    "import the command line (typer, rich)",
    "import the config models (pydantic, yaml)",
    "load and validate the config",
    "import the engine and the writers (numpy, pyarrow)",
    "generate the workload",
    "simulate",
    "write summary.json and the tables",
)


def breakdown_child(out: str) -> None:
    """One lean run of (b), the steps of ``run``; prints each step's CPU seconds as JSON."""
    marks = [time.process_time()]  # the CPU time the interpreter spent starting
    import llmservingsim.cli  # noqa: F401

    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")  # as cli.main() does

    marks.append(time.process_time())
    from llmservingsim.config import load_config

    marks.append(time.process_time())
    cfg = load_config(
        None, ["workload.num_requests=300", "outputs.report=false", "outputs.trace=false"]
    )
    marks.append(time.process_time())
    from llmservingsim.outputs.run_outputs import RunOutputs
    from llmservingsim.simulation import load_requests, simulate

    marks.append(time.process_time())
    requests = load_requests(cfg)
    marks.append(time.process_time())
    outputs = RunOutputs(Path(out), cfg.outputs, len(requests))
    result = simulate(cfg, requests=requests, metrics=outputs.collector())
    marks.append(time.process_time())
    outputs.finish(result)
    marks.append(time.process_time())
    print(json.dumps([b - a for a, b in zip([0.0, *marks], marks, strict=False)]))


def breakdown(repeat: int) -> None:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeat + 1):  # the first is a warm-up
            child = [sys.executable, __file__, "--breakdown-child", str(Path(tmp) / str(k))]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            if k:
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    steps = [statistics.median(run[i] for run in runs) for i in range(len(BREAKDOWN_STEPS))]
    for name, seconds in zip(BREAKDOWN_STEPS, steps, strict=True):
        print(f"{name}: {seconds:.3f} s")
    total = statistics.median(sum(run) for run in runs)
    print(f"total (median of {repeat} processes): {total:.3f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--breakdown", action="store_true", help="CPU time per step of a run")
    parser.add_argument("--breakdown-child", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.breakdown_child:
        breakdown_child(opts.breakdown_child)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if opts.breakdown:
        breakdown(opts.repeat)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
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
