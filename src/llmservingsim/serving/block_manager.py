"""Paged KV cache: fixed-size blocks handed out from a free list (vLLM's PagedAttention)."""

from __future__ import annotations

from collections import deque

from llmservingsim.serving.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def extra_blocks(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks ``seq`` must gain to hold KV for ``num_new_tokens`` more computed tokens."""
        return max(0, self.blocks_needed(seq.num_computed + num_new_tokens) - len(seq.blocks))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.extra_blocks(seq, num_new_tokens) <= len(self.free_blocks)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        for _ in range(self.extra_blocks(seq, num_new_tokens)):
            seq.blocks.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(reversed(seq.blocks))
        seq.blocks.clear()
