"""Host swap space for requests preempted by swap (vLLM's ``--swap-space``).

A preempted request's blocks are copied to host memory and freed on the device; it keeps its
computed tokens and, when it is admitted again, its blocks are copied back. The space is
finite: a request whose blocks do not fit is preempted by recompute instead.
"""

from __future__ import annotations

from llmservingsim.perf.host_link import TransferLedger
from llmservingsim.sequence import Sequence


class SwapSpace:
    def __init__(self, capacity_blocks: int, ledger: TransferLedger) -> None:
        self.capacity_blocks = capacity_blocks
        self.ledger = ledger
        self.used_blocks = 0
        self.peak_blocks = 0

    def swap_out(self, seq: Sequence) -> bool:
        """Copy ``seq``'s blocks to the host; False (nothing moved) when they do not fit."""
        num = len(seq.blocks)
        if num == 0 or self.used_blocks + num > self.capacity_blocks:
            return False
        self.used_blocks += num
        self.peak_blocks = max(self.peak_blocks, self.used_blocks)
        seq.swapped_blocks = num
        self.ledger.to_host(num)
        return True

    def swap_in(self, seq: Sequence) -> None:
        """Copy the blocks back (the caller allocates the device blocks they land in)."""
        self.used_blocks -= seq.swapped_blocks
        self.ledger.to_device(seq.swapped_blocks)
        seq.swapped_blocks = 0

    def discard(self, seq: Sequence) -> None:
        """Drop the host copy of a request that will never run again (its client gave up)."""
        self.used_blocks -= seq.swapped_blocks
        seq.swapped_blocks = 0
