"""Give every instance a contiguous range of global device ids.

Pools start on a fresh node; an instance that fits in one node never straddles two, so its
tensor-parallel group stays on NVLink. Device ids are what the network model uses to decide
which link level two devices share.
"""

from __future__ import annotations


def place_instances(
    start: int, count: int, devices_per_instance: int, devices_per_node: int
) -> tuple[list[int], int]:
    """First device of each of ``count`` instances placed from ``start`` (rounded up to a node
    boundary); returns them and the first free device after the pool (also node-aligned)."""
    node = devices_per_node
    cursor = -(-start // node) * node
    firsts = []
    for _ in range(count):
        offset = cursor % node
        if offset and offset + devices_per_instance > node:
            cursor += node - offset
        firsts.append(cursor)
        cursor += devices_per_instance
    return firsts, -(-cursor // node) * node
