"""Shared test helpers for the KV tiers: a shrunken cache and a record of what steps charged."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import llmservingsim.scenario as scenario
import llmservingsim.simulation as simulation
from llmservingsim.engine import EngineHooks
from llmservingsim.serving.instance import Instance


class StepLog(EngineHooks):
    """Engine hooks that log every step: how long the engine waits for it, and its forward
    pass (durations only without pipeline parallelism, where they overlap)."""

    every_step = True  # no fast-forward runs: every step is seen

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.compute: list[float] = []

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is not None and instance.pp == 1:
            self.durations.append(started[0] - now)
            self.compute.append(instance.last_compute_s)

    @property
    def charged_transfer_s(self) -> float:
        """What steps waited beyond their forward pass: the host-link copies."""
        return sum(self.durations) - sum(self.compute)


@contextmanager
def kv_run(num_blocks: int | None = None) -> Iterator[StepLog]:
    """Shrink the KV cache to ``num_blocks`` (None: as planned) and log every step's charged
    host-link time, for every simulate() inside the block."""
    log = StepLog()
    plan = scenario.plan_pool_memory

    def small_plan(*args: Any) -> Any:
        real = plan(*args)
        return real if num_blocks is None else dataclasses.replace(real, num_blocks=num_blocks)

    with pytest.MonkeyPatch.context() as mp, simulation.observing(log):
        mp.setattr(scenario, "plan_pool_memory", small_plan)
        yield log
