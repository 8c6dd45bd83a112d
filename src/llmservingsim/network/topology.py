"""Where devices sit and how fast they talk: nodes inside racks inside a cluster.

Devices are numbered 0..N−1 in placement order; device ``d`` is in node ``d // devices_per_node``
and rack ``d // (devices_per_node * nodes_per_rack)``. A group of devices communicates over the
lowest level that contains all of them, and pays that level's (slower) links: the alpha-beta
parameters come from the device YAML (calibrated, docs/calibration.md), optionally overridden
in the config's ``cluster.network`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from llmservingsim.hardware.device import DeviceSpec, DirectAllReduce, Link


@dataclass(frozen=True, slots=True)
class Level:
    """One level of the hierarchy, as seen by one device."""

    name: str
    span: int  # devices in one group of this level
    bandwidth: float  # achieved bytes/s per device per direction
    hop_latency: float  # seconds per algorithm hop
    call_latency: float  # seconds: cap on one call's latency (inf = none)
    links_per_node: int  # parallel links a node drives at this level (NICs); 1 inside a node

    def latency(self, hops: int) -> float:
        return min(hops * self.hop_latency, self.call_latency)


def _level(
    name: str, span: int, link: Link, links_per_node: int, oversubscription: float = 1.0
) -> Level:
    cap = math.inf if link.call_latency_us is None else link.call_latency_us * 1e-6
    return Level(
        name=name,
        span=span,
        bandwidth=link.bandwidth_gbps * 1e9 * link.efficiency / oversubscription,
        hop_latency=link.latency_us * 1e-6,
        call_latency=cap,
        links_per_node=links_per_node,
    )


class MeasuredCollectives(Protocol):
    """Collective times from measured tables (a perf backend's, e.g. kernel_db): seconds, or
    None where the tables do not cover the call (the alpha-beta model then times it).
    ``intra_node`` says whether the group sits inside one node."""

    def collective(
        self, name: str, nbytes: float, count: int, intra_node: bool
    ) -> float | None: ...


@dataclass(frozen=True)
class Topology:
    devices_per_node: int
    levels: tuple[Level, ...]  # node, rack, cluster: growing spans
    direct_allreduce: DirectAllReduce | None = None
    measured: MeasuredCollectives | None = None
    """Measured collective tables asked first (None: the alpha-beta model alone)."""

    @classmethod
    def build(
        cls,
        device: DeviceSpec,
        *,
        devices_per_node: int | None = None,
        nodes_per_rack: int = 32,
        oversubscription: float = 1.0,
        intra_node: Link | None = None,
        inter_node: Link | None = None,
        custom_allreduce: bool = True,
    ) -> Topology:
        per_node = devices_per_node or device.devices_per_node
        per_rack = per_node * nodes_per_rack
        intra = intra_node or device.links.intra_node
        inter = inter_node or device.links.inter_node
        nics = inter.links_per_node or per_node
        levels = (
            _level("node", per_node, intra, 1),
            _level("rack", per_rack, inter, nics),
            _level("cluster", 2**62, inter, nics, oversubscription),
        )
        direct = device.links.direct_allreduce if custom_allreduce else None
        return cls(per_node, levels, direct)

    def level_of(self, first: int, count: int) -> Level:
        """The lowest level whose group holds devices ``first .. first+count−1``."""
        last = first + max(count, 1) - 1
        for level in self.levels:
            if first // level.span == last // level.span:
                return level
        return self.levels[-1]

    def level_between(self, a: int, b: int) -> Level:
        return self.level_of(min(a, b), abs(a - b) + 1)

    def links_used(self, level: Level, first: int, count: int) -> int:
        """Parallel links a group drives at ``level``: its devices per node, up to the NICs."""
        per_node = min(count, self.devices_per_node - first % self.devices_per_node)
        return min(per_node, level.links_per_node)
