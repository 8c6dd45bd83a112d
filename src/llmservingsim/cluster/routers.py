"""Routers pick the instance that serves a request (a registry: one class per policy).

A router sees only what a real load balancer sees: the instances' queue lengths and free KV
blocks at the moment the request arrives.

With ``outputs.decisions`` the cluster sets ``explain`` on its routers, and ``route`` then
tells why it chose through :meth:`Router.report` (each candidate's score, a short reason):
the cluster logs it as the request's route decision (metrics/decisions.py). A router that
reports nothing still gets its rows, with every instance as a candidate and no scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence as SequenceOf
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
        self.explain = False
        """Whether ``route`` should :meth:`report` its scores (``outputs.decisions`` is on)."""
        self._scores: SequenceOf[float] | None = None
        self._candidates: SequenceOf[int] | None = None
        self._reason: str | None = None

    @abstractmethod
    def route(self, spec: RequestSpec) -> Instance:
        """The instance that serves ``spec``."""

    def report(
        self,
        scores: SequenceOf[float] | None,
        candidates: SequenceOf[int] | None = None,
        reason: str | None = None,
    ) -> None:
        """Why ``route`` chose, for the decision log; call it from ``route`` when
        ``self.explain`` (building scores costs time, so only then). ``scores``: one per
        candidate, with the policy's meaning (say in the class docstring which one wins);
        ``candidates``: positions in ``self.instances`` (default: every instance, in order);
        ``reason``: a short word on which rule decided. The last call before ``route``
        returns counts."""
        self._scores = scores
        self._candidates = candidates
        self._reason = reason

    def take_report(
        self,
    ) -> tuple[SequenceOf[float] | None, SequenceOf[int] | None, str | None]:
        """What the last ``route`` reported (scores, candidates, reason), cleared for the next
        one; all None when it reported nothing."""
        report = (self._scores, self._candidates, self._reason)
        self._scores = self._candidates = None
        self._reason = None
        return report

    def set_instances(self, instances: list[Instance]) -> None:
        """From now on route to ``instances`` only (autoscaling added or drained some: the
        router must never see an instance that does not take requests). A router that keeps
        per-instance state overrides this and carries the state of the instances kept."""
        if not instances:
            raise ValueError("a router needs at least one instance")
        self.instances = instances


ROUTERS: Registry[type[Router]] = Registry("router", "llmservingsim.routers")


class RoundRobinRouter(Router):
    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self._next = 0

    def route(self, spec: RequestSpec) -> Instance:
        instance = self.instances[self._next]
        self._next = (self._next + 1) % len(self.instances)
        return instance

    def set_instances(self, instances: list[Instance]) -> None:
        super().set_instances(instances)
        self._next %= len(instances)


ROUTERS.register("round_robin")(RoundRobinRouter)


class RandomRouter(Router):
    def route(self, spec: RequestSpec) -> Instance:
        return self.instances[int(self.rng.integers(len(self.instances)))]


ROUTERS.register("random")(RandomRouter)


@mypyc_attr(allow_interpreted_subclasses=True)
class LeastOutstandingRouter(Router):
    """Fewest requests assigned and not finished. Ties rotate (the search starts one past the
    last choice), so an idle cluster is filled evenly instead of always from instance 0.
    Score (decision log): each instance's outstanding requests; the smallest wins.

    Instances of a cluster publish their loads to one list of ints (``Instance.load_board``),
    which the compiled router scans without a call per instance: routing among a thousand
    instances costs microseconds.
    """

    def __init__(self, instances: list[Instance], rng: np.random.Generator) -> None:
        super().__init__(instances, rng)
        self._start = 0
        self._board: list[int] | None = None
        self._slots: list[int] | None = None
        self._bind()

    def _bind(self) -> None:
        """Where the loads of ``self.instances`` are read (the board, or some of its slots)."""
        instances = self.instances
        board: list[int] | None = getattr(instances[0], "load_board", None)
        if board is not None and any(
            getattr(inst, "load_board", None) is not board for inst in instances
        ):
            board = None
        self._board = board
        slots = [inst.index for inst in instances]
        whole = board is not None and slots == list(range(len(board)))
        self._slots = None if whole else slots

    def set_instances(self, instances: list[Instance]) -> None:
        super().set_instances(instances)
        self._bind()
        self._start %= len(instances)

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
        if self.explain:
            self.report(list(loads))  # a copy: the board changes, the log keeps the list
        self._start = (best + 1) % n
        return self.instances[best]


ROUTERS.register("least_outstanding")(LeastOutstandingRouter)


class LeastKvRouter(Router):
    """Most free KV blocks per block of capacity (so mixed pools compare fairly), then fewest
    outstanding requests: a KV-aware balancer. Score (decision log): the free fraction; the
    largest wins (ties: fewest outstanding, then the first)."""

    reads_kv_usage = True

    def route(self, spec: RequestSpec) -> Instance:
        chosen = max(
            self.instances,
            key=lambda inst: (inst.num_free_blocks / inst.num_blocks, -inst.num_outstanding),
        )
        if self.explain:
            self.report([inst.num_free_blocks / inst.num_blocks for inst in self.instances])
        return chosen


ROUTERS.register("least_kv")(LeastKvRouter)


class PowerOfTwoRouter(Router):
    """Two instances drawn at random; the one with fewer outstanding requests wins (ties: the
    first drawn). Decision log: the two drawn are the candidates, scored by outstanding
    requests."""

    def route(self, spec: RequestSpec) -> Instance:
        n = len(self.instances)
        if n == 1:
            if self.explain:
                self.report([float(self.instances[0].num_outstanding)])
            return self.instances[0]
        a, b = self.rng.choice(n, size=2, replace=False)
        first, second = self.instances[int(a)], self.instances[int(b)]
        if self.explain:
            self.report(
                [float(first.num_outstanding), float(second.num_outstanding)], [int(a), int(b)]
            )
        return second if second.num_outstanding < first.num_outstanding else first


ROUTERS.register("power_of_two_choices")(PowerOfTwoRouter)
