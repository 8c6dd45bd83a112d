"""A user's scheduler and router (Python classes loaded with ``plugins:``) against the built-in
ones, on the installed build (docs/performance.md, "User policies").

Each run is scenario (b) (300 ShareGPT-like requests, Llama-3.1-8B, 1x H100) or its 4-instance
variant, repeated; the table gives the best loop time per simulated iteration of each and the
ratio to the built-in policy. ``unchanged_vllm`` is a user subclass of the vLLM scheduler that
changes nothing: the cost of running user code at all.

    python benchmarks/user_policies.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llmservingsim.config import load_config
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler
from llmservingsim.simulation import simulate

POLICIES = Path(__file__).resolve().parents[1] / "examples" / "policies" / "my_policies.py"


class UnchangedVllm(VllmScheduler):
    """A user's scheduler that changes nothing."""


SCHEDULERS.register("unchanged_vllm")(UnchangedVllm)

CASES: list[tuple[str, str, list[str]]] = [
    ("scheduler", "vllm", ["scheduler.policy=vllm"]),
    ("scheduler", "unchanged_vllm", ["scheduler.policy=unchanged_vllm"]),
    ("scheduler", "shortest_prompt_first", ["scheduler.policy=shortest_prompt_first"]),
    ("router (4 instances)", "least_outstanding", ["cluster.router=least_outstanding"]),
    ("router (4 instances)", "least_waiting", ["cluster.router=least_waiting"]),
]


def best_us_per_iter(overrides: list[str], repeat: int) -> tuple[float, str]:
    cfg = load_config(None, overrides)
    best, build = float("inf"), ""
    for _ in range(repeat):
        summary = simulate(cfg, check_invariants=False).summary
        best = min(best, summary["sim_wall_s"] / summary["iterations"] * 1e6)
        build = summary["engine_build"]
    return best, build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    table = Table(title="user policies vs built-in (best of runs)", header_style="bold")
    for col in ("kind", "policy", "engine", "µs / iter", "vs built-in"):
        table.add_column(col, justify="left" if col in ("kind", "policy") else "right")
    baseline: dict[str, float] = {}
    for kind, name, overrides in CASES:
        base = [f"plugins=[{POLICIES}]", "workload.num_requests=300"]
        if kind.startswith("router"):
            base += ["cluster.instances=4", "workload.arrival.rate=30"]
        us, build = best_us_per_iter([*base, *overrides], args.repeat)
        baseline.setdefault(kind, us)
        table.add_row(kind, name, build, f"{us:.2f}", f"{us / baseline[kind]:.2f}x")
    Console(width=110).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
