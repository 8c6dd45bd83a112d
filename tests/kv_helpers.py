"""Shared test helpers for the KV tiers: a shrunken cache and a record of what steps charged."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import llmservingsim.simulation as simulation
from llmservingsim.perf.iteration import BatchShape, IterationTimer, StepCost
from llmservingsim.serving import instance as instance_module
from llmservingsim.serving.instance import Instance


@dataclasses.dataclass
class StepLog:
    """Per engine step: the duration the engine got and the compute time the timer gave."""

    durations: list[float] = dataclasses.field(default_factory=list)
    compute: list[float] = dataclasses.field(default_factory=list)

    @property
    def charged_transfer_s(self) -> float:
        return sum(self.durations) - sum(self.compute)


@contextmanager
def kv_run(num_blocks: int | None = None) -> Iterator[StepLog]:
    """Shrink the KV cache to ``num_blocks`` (None: as planned) and log every step's time
    (durations only without pipeline parallelism)."""
    log = StepLog()
    plan = simulation.plan_instance_memory
    timer_step = IterationTimer.step
    start_step = Instance.start_step

    def small_plan(cfg: Any, pool: Any = None) -> Any:
        real = plan(cfg, pool)
        return real if num_blocks is None else dataclasses.replace(real, num_blocks=num_blocks)

    def spy_timer(self: IterationTimer, batch: BatchShape) -> StepCost:
        cost = timer_step(self, batch)
        log.compute.append(cost.seconds)
        return cost

    def spy_start(self: Instance, now: float) -> tuple[float, int] | None:
        started = start_step(self, now)
        if started is not None and self.pp == 1:  # with a pipeline, finish − start overlaps
            log.durations.append(started[0] - now)
        return started

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulation, "plan_instance_memory", small_plan)
        mp.setattr(IterationTimer, "step", spy_timer)
        mp.setattr(Instance, "start_step", spy_start)
        # Every step is timed and logged: no fast-forward runs.
        mp.setattr(instance_module, "plan_decode_run", lambda *args: None)
        yield log
