"""A second KV tier in host or CXL memory for prefix blocks the GPU cache evicts (LMCache-like).

When the GPU prefix cache evicts a block, its content moves here (LRU, finite capacity); a later
request whose prefix continues into such a block loads it over the link instead of computing
it again. Stores are not charged to a step: LMCache writes KV to the host asynchronously while
the GPU keeps computing, so only their bytes are counted. Loads are charged: the request's
prefill cannot start before its prefix KV is on the device.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container

from llmservingsim.perf.host_link import TransferLedger


class OffloadTier:
    def __init__(self, capacity_blocks: int, ledger: TransferLedger) -> None:
        self.capacity_blocks = capacity_blocks
        self.ledger = ledger
        self.resident: OrderedDict[int, None] = OrderedDict()  # cached content ids, LRU first
        self.stored_blocks = 0

    def __contains__(self, node: int) -> bool:
        return node in self.resident

    def __len__(self) -> int:
        return len(self.resident)

    def store(self, node: int, pinned: Container[int] = ()) -> list[int]:
        """Keep ``node``; returns the nodes evicted to make room (never a pinned one).

        When every resident node is pinned (a load in progress needs them), ``node`` is dropped
        instead and returned as evicted.
        """
        if node in self.resident:
            self.resident.move_to_end(node)
            return []
        evicted: list[int] = []
        while len(self.resident) >= self.capacity_blocks:
            victim = next((n for n in self.resident if n not in pinned), None)
            if victim is None:
                return [node]
            del self.resident[victim]
            evicted.append(victim)
        self.resident[node] = None
        self.stored_blocks += 1
        return evicted

    def load(self, node: int) -> None:
        """Copy ``node``'s block to the device (it stays here too, most recently used)."""
        self.resident.move_to_end(node)
        self.ledger.to_device(1)
