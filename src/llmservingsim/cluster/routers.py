"""Routers pick the instance that serves a request (a registry: one class per policy).

A router sees only what a real load balancer sees: the instances' queue lengths and free KV
blocks at the moment the request arrives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from mypy_extensions import mypyc_attr

from llmservingsim.registry import Registry
from llmservingsim.serving.instance import Instance
from llmservingsim.workload.request_spec import RequestSpec


@mypyc_attr(allow_interpreted_subclasses=True)
class Router(ABC):
    reads_kv_usage: ClassVar[bool] = False
    """Whether routing reads the instances' free KV blocks, which change inside a fast-forward
    run: the engine then settles every instance up to the arrival first."""

    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        if not instances:
            raise ValueError("a router needs at least one instance")
        self.instances = instances
        self.rng = rng

    @abstractmethod
    def route(self, spec: RequestSpec) -> Instance:
        """The instance that serves ``spec``."""


ROUTERS: Registry[type[Router]] = Registry("router", "llmservingsim.routers")


class RoundRobinRouter(Router):
    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self._next = 0

    def route(self, spec: RequestSpec) -> Instance:
        instance = self.instances[self._next]
        self._next = (self._next + 1) % len(self.instances)
        return instance


ROUTERS.register("round_robin")(RoundRobinRouter)


class RandomRouter(Router):
    def route(self, spec: RequestSpec) -> Instance:
        return self.instances[int(self.rng.integers(len(self.instances)))]


ROUTERS.register("random")(RandomRouter)


@mypyc_attr(allow_interpreted_subclasses=True)
class LeastOutstandingRouter(Router):
    """Fewest requests assigned and not finished. Ties rotate (the search starts one past the
    last choice), so an idle cluster is filled evenly instead of always from instance 0.

    Instances of a cluster publish their loads to one list of ints (``Instance.load_board``),
    which the compiled router scans without a call per instance: routing among a thousand
    instances costs microseconds.
    """

    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self._start = 0
        board: list[int] | None = getattr(instances[0], "load_board", None)
        if board is not None and any(
            getattr(inst, "load_board", None) is not board for inst in instances
        ):
            board = None
        self._board = board
        slots = [inst.index for inst in instances]
        whole = board is not None and slots == list(range(len(board)))
        self._slots: list[int] | None = None if whole else slots

    def _loads(self) -> list[int]:
        board, slots = self._board, self._slots
        if board is None:
            return [inst.num_outstanding for inst in self.instances]
        return board if slots is None else [board[i] for i in slots]

    def route(self, spec: RequestSpec) -> Instance:
        loads, start = self._loads(), self._start
        n = len(loads)
        # The first least-loaded instance in the order start, start + 1, ..., start - 1.
        best, best_load = start, loads[start]
        for index in range(start + 1, n):
            load = loads[index]
            if load < best_load:
                best, best_load = index, load
        for index in range(start):
            load = loads[index]
            if load < best_load:
                best, best_load = index, load
        self._start = (best + 1) % n
        return self.instances[best]


ROUTERS.register("least_outstanding")(LeastOutstandingRouter)


class LeastKvRouter(Router):
    """Most free KV blocks per block of capacity (so mixed pools compare fairly), then fewest
    waiting requests: a KV-aware balancer."""

    reads_kv_usage = True

    def route(self, spec: RequestSpec) -> Instance:
        return max(
            self.instances,
            key=lambda inst: (inst.num_free_blocks / inst.num_blocks, -inst.num_outstanding),
        )


ROUTERS.register("least_kv")(LeastKvRouter)


class PowerOfTwoRouter(Router):
    """Two instances drawn at random; the one with fewer outstanding requests wins."""

    def route(self, spec: RequestSpec) -> Instance:
        n = len(self.instances)
        if n == 1:
            return self.instances[0]
        a, b = self.rng.choice(n, size=2, replace=False)
        first, second = self.instances[int(a)], self.instances[int(b)]
        return second if second.num_outstanding < first.num_outstanding else first


ROUTERS.register("power_of_two_choices")(PowerOfTwoRouter)
