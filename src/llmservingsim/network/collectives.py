"""Alpha-beta cost of collectives and point-to-point sends over a :class:`Topology`.

A group is ``count`` devices starting at global device ``first`` (instances own contiguous
device ranges). Each function returns seconds. The algorithm with the lowest cost is used,
as NCCL's tuner does: ring (2(p−1) hops, 2(p−1)/p of the bytes per device) or double binary
tree (2⌈log2 p⌉ hops, 2× the bytes) for all-reduce; inside a node, serving engines' one-kernel
"direct" all-reduce when the device has one and the message is small enough.

A topology with ``measured`` tables (perf backend kernel_db) takes a collective's time from
them where they cover it; the alpha-beta model stays the fallback and the source for groups
that span nodes.
"""

from __future__ import annotations

import math

from llmservingsim.network.topology import Level, Topology


def _bandwidth(topo: Topology, level: Level, first: int, count: int) -> float:
    return level.bandwidth * topo.links_used(level, first, count)


def _measured(topo: Topology, name: str, nbytes: float, level: Level, count: int) -> float | None:
    if topo.measured is None:
        return None
    return topo.measured.collective(name, nbytes, count, level is topo.levels[0])


def all_reduce(topo: Topology, nbytes: float, first: int, count: int) -> float:
    if count <= 1:
        return 0.0
    p = count
    level = topo.level_of(first, p)
    measured = _measured(topo, "all_reduce", nbytes, level, p)
    if measured is not None:
        return measured
    bw = _bandwidth(topo, level, first, p)
    ring = level.latency(2 * (p - 1)) + 2 * (p - 1) / p * nbytes / bw
    tree = level.latency(2 * math.ceil(math.log2(p))) + 2 * nbytes / bw
    best = min(ring, tree)
    direct = topo.direct_allreduce
    if direct is not None and level is topo.levels[0] and nbytes <= direct.max_bytes:
        one_kernel = (direct.latency_us + direct.hop_latency_us * (p - 1)) * 1e-6 + 2 * (
            p - 1
        ) / p * nbytes / (direct.bandwidth_gbps * 1e9)
        best = min(best, one_kernel)
    return best


def _p_minus_1_steps(
    topo: Topology, nbytes: float, first: int, count: int, name: str = "all_gather"
) -> float:
    """p − 1 hops, each device moving (p − 1)/p of ``nbytes``: the cost shape shared by ring
    all-gather / reduce-scatter and the pairwise all-to-all exchange."""
    if count <= 1:
        return 0.0
    p = count
    level = topo.level_of(first, p)
    measured = _measured(topo, name, nbytes, level, p)
    if measured is not None:
        return measured
    return level.latency(p - 1) + (p - 1) / p * nbytes / _bandwidth(topo, level, first, p)


def all_gather(topo: Topology, nbytes: float, first: int, count: int) -> float:
    """Ring all-gather; ``nbytes`` is the gathered (output) size per device."""
    return _p_minus_1_steps(topo, nbytes, first, count, "all_gather")


def reduce_scatter(topo: Topology, nbytes: float, first: int, count: int) -> float:
    """Ring reduce-scatter; ``nbytes`` is the input size per device. Mirror of all-gather."""
    return _p_minus_1_steps(topo, nbytes, first, count, "reduce_scatter")


def all_to_all(topo: Topology, nbytes: float, first: int, count: int) -> float:
    """Pairwise exchange; ``nbytes`` is what one device sends in total (1/p of it stays)."""
    return _p_minus_1_steps(topo, nbytes, first, count, "all_to_all")


def send(topo: Topology, nbytes: float, src: int, dst: int, streams: int = 1) -> float:
    """Point-to-point: ``streams`` device pairs each moving ``nbytes / streams`` in parallel
    (e.g. every TP shard sends its own slice of the KV cache)."""
    if src == dst:
        return 0.0
    level = topo.level_between(src, dst)
    return level.latency(1) + nbytes / (level.bandwidth * max(1, streams))
