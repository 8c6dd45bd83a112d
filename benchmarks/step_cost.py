"""Wall time of the per-step constant work: ``IterationTimer.step`` and the step record.

Scenario (c)'s instance (Llama-2-70B, TP4, A100s, roofline): a decode step of 100 sequences and
a mixed step (the same decode batch plus one 412-token prefill chunk), each attending 100 more
tokens than the step before, as a decode run does; and ``MetricsCollector.on_step`` with a sink.
Best of five repeats (the machine is shared, so the minimum is the least disturbed number).

    python benchmarks/step_cost.py
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable

from llmservingsim.build import build_cluster
from llmservingsim.config import load_config
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.steps import StepChunk
from llmservingsim.perf.iteration import BatchShape, StepCost
from llmservingsim.scenario import resolve

SCENARIO_C = ["model=llama-2-70b", "hardware=a100-80gb", "cluster.tensor_parallel=4"]
DECODE = 100


class DropSteps:
    def write_steps(self, steps: StepChunk) -> None:
        pass


def best_us(call: Callable[[], object], number: int) -> float:
    call()
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def stepper(batch: BatchShape) -> Callable[[], StepCost]:
    cfg = load_config(None, SCENARIO_C)
    timer = build_cluster(resolve(cfg), MetricsCollector()).instances[0].timer

    def step() -> StepCost:
        batch.decode_context += DECODE
        return timer.step(batch)

    return step


def main() -> int:
    decode = BatchShape([], DECODE, DECODE * 700, DECODE)
    mixed = BatchShape([(412, 0)], DECODE, DECODE * 700, DECODE + 1)
    metrics = MetricsCollector(step_sinks=[DropSteps()])

    def record() -> None:
        metrics.on_step(0, 0, 1.0, 0.02, DECODE, 0, DECODE, 500, 1000, 3, 400.0)

    rows = [
        (f"step(): decode, {DECODE} sequences", best_us(stepper(decode), 20_000)),
        (f"step(): {DECODE} decode + a 412-token chunk", best_us(stepper(mixed), 20_000)),
        ("MetricsCollector.on_step", best_us(record, 200_000)),
    ]
    for name, us in rows:
        print(f"{name:<42} {us:6.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
