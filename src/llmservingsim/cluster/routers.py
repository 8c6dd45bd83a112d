"""Routers pick the instance that serves a request (a registry: one class per policy).

A router sees only what a real load balancer sees: the instances' queue lengths and free KV
blocks at the moment the request arrives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from llmservingsim.registry import Registry
from llmservingsim.serving.instance import Instance
from llmservingsim.workload.request_spec import RequestSpec


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


ROUTERS: Registry[type[Router]] = Registry("router")


@ROUTERS.register("round_robin")
class RoundRobinRouter(Router):
    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self._next = 0

    def route(self, spec: RequestSpec) -> Instance:
        instance = self.instances[self._next]
        self._next = (self._next + 1) % len(self.instances)
        return instance


@ROUTERS.register("random")
class RandomRouter(Router):
    def route(self, spec: RequestSpec) -> Instance:
        return self.instances[int(self.rng.integers(len(self.instances)))]


@ROUTERS.register("least_outstanding")
class LeastOutstandingRouter(Router):
    """Fewest requests assigned and not finished. Ties rotate (the search starts one past the
    last choice), so an idle cluster is filled evenly instead of always from instance 0."""

    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self._start = 0

    def route(self, spec: RequestSpec) -> Instance:
        instances = self.instances
        n = len(instances)
        best_index, best_load = self._start, instances[self._start].num_outstanding
        for offset in range(1, n):
            index = (self._start + offset) % n
            load = instances[index].num_outstanding
            if load < best_load:
                best_index, best_load = index, load
        self._start = (best_index + 1) % n
        return instances[best_index]


@ROUTERS.register("least_kv")
class LeastKvRouter(Router):
    """Most free KV blocks per block of capacity (so mixed pools compare fairly), then fewest
    waiting requests: a KV-aware balancer."""

    reads_kv_usage = True

    def route(self, spec: RequestSpec) -> Instance:
        return max(
            self.instances,
            key=lambda inst: (inst.num_free_blocks / inst.num_blocks, -inst.num_outstanding),
        )


@ROUTERS.register("power_of_two_choices")
class PowerOfTwoRouter(Router):
    """Two instances drawn at random; the one with fewer outstanding requests wins."""

    def route(self, spec: RequestSpec) -> Instance:
        n = len(self.instances)
        if n == 1:
            return self.instances[0]
        a, b = self.rng.choice(n, size=2, replace=False)
        first, second = self.instances[int(a)], self.instances[int(b)]
        return second if second.num_outstanding < first.num_outstanding else first
