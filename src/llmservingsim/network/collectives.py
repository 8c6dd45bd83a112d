"""Alpha-beta cost of collectives inside one node."""

from __future__ import annotations

from llmservingsim.hardware.device import Link


def ring_allreduce_time(message_bytes: float, world_size: int, link: Link) -> float:
    """Ring all-reduce: 2(p−1) latency hops and 2(p−1)/p of the message over each link."""
    if world_size <= 1 or message_bytes <= 0:
        return 0.0
    p = world_size
    latency = 2 * (p - 1) * link.latency_us * 1e-6
    transfer = 2 * (p - 1) / p * message_bytes / (link.bandwidth_gbps * 1e9)
    return latency + transfer
