"""A cluster: pools of instances, the routers in front of them and the KV transfers between
prefill and decode pools (Splitwise / DistServe style disaggregation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmservingsim.cluster.routers import ROUTERS, Router
from llmservingsim.errors import plugin_base_error
from llmservingsim.metrics.decisions import DECODE_ROUTE, ROUTE, DecisionLog, DecisionSite
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology
from llmservingsim.sequence import Sequence
from llmservingsim.serving.instance import Instance
from llmservingsim.workload.request_spec import RequestSpec


@dataclass
class Pool:
    name: str
    role: str
    instances: list[Instance]
    topology: Topology
    kv_bytes_per_token: float  # whole model (all layers, all KV heads)


def _make_router(
    key: str, name: str, instances: list[Instance], rng: np.random.Generator
) -> Router:
    """The router ``name`` over ``instances``; a user's router class that extends a compiled
    router which does not accept Python subclasses is a one-line error, not a TypeError."""
    try:
        return ROUTERS.get(name)(instances, rng)
    except TypeError as exc:
        error = plugin_base_error(key, name, exc)
        if error is None:
            raise
        raise error from None


class Cluster:
    """Routes arrivals to the entry pools (mixed or prefill) and prefilled requests to decode."""

    def __init__(self, pools: list[Pool], router: str, decode_router: str, seed: int) -> None:
        self.pools = pools
        self.instances = [inst for pool in pools for inst in pool.instances]
        board = [0] * len(self.instances)
        for inst in self.instances:
            inst.attach_load_board(board)
        self._pool_of = {inst.index: pool for pool in pools for inst in pool.instances}
        entry = [i for p in pools if p.role != "decode" for i in p.instances]
        decode = [i for p in pools if p.role == "decode" for i in p.instances]
        rng = np.random.default_rng([seed, 0x5EED])
        self.router: Router = _make_router("cluster.router", router, entry, rng)
        self.decode_router: Router | None = (
            _make_router("cluster.decode_router", decode_router, decode, rng) if decode else None
        )
        routers = [self.router] if self.decode_router is None else [self.router, self.decode_router]
        self._routes_by_kv_usage = any(r.reads_kv_usage for r in routers)
        self._router_names = (router, decode_router)
        self.decisions: DecisionLog | None = None
        self._policies = (0, 0)  # the routers' names as codes of the decision log
        # Per router: its instances' indices (the candidates of a router that reports none).
        self._candidates = ([inst.index for inst in entry], [inst.index for inst in decode])

    def log_decisions(self, log: DecisionLog) -> None:
        """Log every route and preemption decision to ``log`` from now on
        (``outputs.decisions``); until called, none is and no router explains itself."""
        self.decisions = log
        self._policies = (log.code(self._router_names[0]), log.code(self._router_names[1]))
        self.router.explain = True
        if self.decode_router is not None:
            self.decode_router.explain = True
        for inst in self.instances:
            for ve in inst.virtual_engines:
                scheduler = ve.scheduler
                scheduler.decisions = DecisionSite(log, inst.index, scheduler.cfg.policy)

    def _log_route(
        self, log: DecisionLog, kind: int, spec_id: int, now: float, chosen: Instance, where: int
    ) -> None:
        """One route decision; ``where``: the prefill instance handing off (-1: an arrival)."""
        decode = kind == DECODE_ROUTE
        router = self.router
        if decode and self.decode_router is not None:
            router = self.decode_router
        scores, positions, reason = router.take_report()
        if positions is None:
            candidates = self._candidates[1 if decode else 0]
        else:
            instances = router.instances
            candidates = [instances[p].index for p in positions]
        log.record(
            kind,
            now,
            spec_id,
            where,
            self._policies[1 if decode else 0],
            candidates,
            scores,
            chosen.index,
            -1,
            log.code(reason),
        )

    @property
    def disaggregated(self) -> bool:
        return self.decode_router is not None

    @property
    def routes_by_kv_usage(self) -> bool:
        return self._routes_by_kv_usage

    def route(self, spec: RequestSpec) -> Instance:
        """The instance an arriving request goes to (routed when it arrives)."""
        chosen = self.router.route(spec)
        if self.decisions is not None:
            self._log_route(self.decisions, ROUTE, spec.id, spec.arrival_s, chosen, -1)
        return chosen

    def route_to(self, instances: list[Instance]) -> None:
        """The entry instances the router chooses from from now on (autoscaling)."""
        self.router.set_instances(instances)

    def hand_off(self, seq: Sequence, source: Instance, now: float) -> tuple[Instance, float]:
        assert self.decode_router is not None, "only prefill instances hand requests off"
        target = self.decode_router.route(seq.spec)
        if self.decisions is not None:
            self._log_route(self.decisions, DECODE_ROUTE, seq.spec.id, now, target, source.index)
        target.incoming += 1
        seconds = self.kv_transfer_time(source, target, seq.num_computed)
        seq.prefill_instance = source.index
        seq.kv_transfer_s = seconds
        return target, seconds

    def kv_transfer_time(self, source: Instance, target: Instance, num_tokens: int) -> float:
        """KV of ``num_tokens`` tokens (all layers) from the source's devices to the target's.

        Every device holding the request (its heads of its layers; with attention DP ranks,
        those of one rank) sends its slice over its own link, so min(those of source, those of
        target) streams run in parallel; the slower side's links set the pace.
        """
        src_pool, dst_pool = self._pool_of[source.index], self._pool_of[target.index]
        nbytes = num_tokens * src_pool.kv_bytes_per_token
        streams = min(source.kv_devices, target.kv_devices)
        src, dst = source.first_device, target.first_device
        return max(
            collectives.send(src_pool.topology, nbytes, src, dst, streams),
            collectives.send(dst_pool.topology, nbytes, src, dst, streams),
        )
