"""What every scheduler shares: the queues, the block manager and preemption."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from llmservingsim.config import SchedulerConfig
from llmservingsim.registry import Registry
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.sequence import Sequence, Status

ScheduledEntry = tuple[Sequence, int]
"""A sequence and the number of tokens it computes this step."""


class Scheduler(ABC):
    """Decides, at each step, which sequences run and how many tokens each computes.

    Invariants every policy keeps (tests/test_scheduler_invariants.py): the tokens of a step
    never exceed its budget, at most ``max_num_seqs`` sequences run, and allocated KV blocks
    never exceed the cache.
    """

    def __init__(self, cfg: SchedulerConfig, blocks: BlockManager) -> None:
        self.cfg = cfg
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def max_blocks_needed(self, seq: Sequence) -> int:
        """KV blocks the request holds at its largest."""
        return self.blocks.blocks_needed(seq.max_kv_tokens)

    def preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the KV and put the request back at the queue head."""
        self.blocks.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def admit(self, seq: Sequence, num_tokens: int) -> None:
        self.waiting.popleft()
        self.blocks.allocate(seq, num_tokens)
        seq.status = Status.RUNNING
        self.running.append(seq)

    def drop_finished(self) -> None:
        """Release the blocks of sequences that finished in the last step."""
        still_running = []
        for seq in self.running:
            if seq.status is Status.RUNNING:
                still_running.append(seq)
            else:
                self.blocks.free(seq)
        self.running = still_running

    @abstractmethod
    def schedule(self) -> list[ScheduledEntry]:
        """The sequences of the next step; allocates their KV blocks."""


SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler policy")
