"""Paged KV cache: fixed-size blocks handed out from a free list (vLLM's PagedAttention)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

from llmservingsim.sequence import Sequence


class PrefixHit:
    """Where a waiting request starts when it is admitted.

    ``tokens`` already have KV: the computed tokens a swapped-out request brings back, or the
    cached prefix of a new (or recompute-preempted) one. For a prefix hit, ``nodes`` names the
    content of each reused block and ``blocks`` the device block that holds it, or -1 where it
    must be loaded from the offload tier. ``evictable`` counts the reused device blocks that
    sit unreferenced in the cache: taking them shrinks the free pool.
    """

    tokens: int
    nodes: list[int]
    blocks: list[int]
    evictable: int

    def __init__(
        self,
        tokens: int = 0,
        nodes: list[int] | None = None,
        blocks: list[int] | None = None,
        evictable: int = 0,
    ) -> None:
        self.tokens = tokens
        self.nodes: list[int] = list() if nodes is None else nodes
        self.blocks: list[int] = list() if blocks is None else blocks
        self.evictable = evictable

    def __repr__(self) -> str:
        return (
            f"PrefixHit("
            f"tokens={self.tokens!r}, "
            f"nodes={self.nodes!r}, "
            f"blocks={self.blocks!r}, "
            f"evictable={self.evictable!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrefixHit):
            return NotImplemented
        return (self.tokens, self.nodes, self.blocks, self.evictable) == (
            other.tokens,
            other.nodes,
            other.blocks,
            other.evictable,
        )

    @property
    def num_on_device(self) -> int:
        blocks = self.blocks
        return sum(1 for b in blocks if b >= 0) if blocks else 0


class FreeBlocks:
    """Free block ids, first in first out: the never-used ids in order, then returned ones
    (blocks put back at the front, :meth:`appendleft`, come out first, last in first out).

    The never-used ids are a counter, not a list, so a large idle cache (a 1,000-instance
    cluster holds tens of millions of blocks) costs no memory; the order, hence every block id
    handed out, is the same as a queue that started with all ids. Returned ids wait in a list
    read from ``_head`` on (a request's blocks go in and come out as one slice each, not one
    call per block); the consumed part is dropped once it is the larger half.
    """

    __slots__ = ("_end", "_front", "_head", "_next_fresh", "_returned")

    def __init__(self, num_blocks: int) -> None:
        self._front: list[int] = []  # put back at the head, the last one first
        self._next_fresh = 0
        self._end = num_blocks
        self._returned: list[int] = []  # returned ids, in order, from _head on
        self._head = 0

    def __len__(self) -> int:
        return len(self._front) + self._end - self._next_fresh + len(self._returned) - self._head

    def __iter__(self) -> Iterator[int]:
        yield from reversed(self._front)
        yield from range(self._next_fresh, self._end)
        yield from self._returned[self._head :]

    def popleft(self) -> int:
        if self._front:
            return self._front.pop()
        if self._next_fresh < self._end:
            self._next_fresh += 1
            return self._next_fresh - 1
        return self._take_returned(1)[0]

    def take(self, count: int) -> list[int]:
        """The next ``count`` ids, as ``count`` calls of :meth:`popleft` would give them."""
        front = self._front
        taken = [front.pop() for _ in range(min(count, len(front)))] if front else []
        fresh = min(count - len(taken), self._end - self._next_fresh)
        if fresh > 0:
            first = self._next_fresh
            self._next_fresh = first + fresh
            taken.extend(range(first, first + fresh))
        rest = count - len(taken)
        if rest > 0:
            taken.extend(self._take_returned(rest))
        return taken

    def _take_returned(self, count: int) -> list[int]:
        head, returned = self._head, self._returned
        end = head + count
        if end > len(returned):
            raise IndexError("take from an empty pool of free blocks")
        taken = returned[head:end]
        if end == len(returned):
            returned.clear()
            end = 0
        elif end > 1024 and 2 * end > len(returned):
            del returned[:end]
            end = 0
        self._head = end
        return taken

    def append(self, block: int) -> None:
        self._returned.append(block)

    def appendleft(self, block: int) -> None:
        self._front.append(block)

    def extend(self, blocks: Iterable[int]) -> None:
        self._returned.extend(blocks)


class BlockManager:
    """Blocks without content: nothing is shared, a freed block is simply free again.

    With sliding-window KV (``sliding_units`` > 0, serving/memory.py ``sliding_kv_layout``)
    a block holds one group of layers: each ``block_size`` tokens of a sequence take
    ``full_units`` blocks, plus ``sliding_units`` for the first ``sliding_blocks`` token blocks
    only (its sliding-window layers keep no more, the engine frees the rest as the window
    moves). A sequence's block count still only grows with its tokens, so its blocks stay
    anonymous: it holds :meth:`blocks_needed` of its tokens.
    """

    fast_forward_safe: ClassVar[bool] = True
    """Whether a decode step's only effect here is new blocks for the growing sequences, so
    runs of decode steps may be applied in bulk (serving/decode_run.py)."""

    allocation_only_grows: ClassVar[bool] = True
    """Whether :meth:`try_allocate` does nothing but hand out new blocks, so a scheduler may
    skip the call when a running sequence's blocks already hold its next tokens."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        full_units: int = 1,
        sliding_units: int = 0,
        sliding_blocks: int = 0,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.full_units = full_units
        self.sliding_units = sliding_units
        self.sliding_blocks = sliding_blocks
        # Once a sequence's blocks hold this many tokens, its sliding-window layers hold all
        # the blocks they will: it grows by ``full_units`` per block_size tokens (0: none).
        self.sliding_tokens = sliding_blocks * block_size if sliding_units else 0
        self.free_blocks = FreeBlocks(num_blocks)
        # Free blocks promised to steady decoders (serving/steady.py) without ids yet.
        self.reserved = 0

    @property
    def num_free(self) -> int:
        return len(self.free_blocks) - self.reserved

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks a sequence holding KV for ``num_tokens`` tokens takes."""
        token_blocks = -(-num_tokens // self.block_size)
        if not self.sliding_units:
            return token_blocks
        window = token_blocks if token_blocks < self.sliding_blocks else self.sliding_blocks
        return self.full_units * token_blocks + self.sliding_units * window

    def tokens_held(self, num_blocks: int) -> int:
        """The most tokens whose KV ``num_blocks`` blocks of a sequence hold (the inverse of
        :meth:`blocks_needed`)."""
        size = self.block_size
        if not self.sliding_units:
            return num_blocks * size
        per_block = self.full_units + self.sliding_units
        if num_blocks <= per_block * self.sliding_blocks:
            return num_blocks // per_block * size
        past = num_blocks - per_block * self.sliding_blocks
        return (self.sliding_blocks + past // self.full_units) * size

    def lookup(self, seq: Sequence) -> PrefixHit:
        """Where ``seq`` would start if admitted now: it keeps what it has computed."""
        return PrefixHit(seq.num_computed)

    def extra_blocks(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit | None = None) -> int:
        """Blocks the free pool gives up so ``seq`` holds KV for ``num_new_tokens`` more tokens.

        With ``hit`` (admission), the tokens count from the hit, its device blocks are reused
        and those of them that sit free in the cache leave the pool too.
        """
        if hit is None:
            return max(0, self.blocks_needed(seq.num_computed + num_new_tokens) - len(seq.blocks))
        fresh = self.blocks_needed(hit.tokens + num_new_tokens) - hit.num_on_device
        return fresh + hit.evictable

    def can_allocate(
        self, seq: Sequence, num_new_tokens: int, hit: PrefixHit | None = None
    ) -> bool:
        return self.extra_blocks(seq, num_new_tokens, hit) <= self.num_free

    def allocate(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit | None = None) -> None:
        """Give ``seq`` the blocks for ``num_new_tokens`` more tokens (admission: from ``hit``)."""
        if hit is not None:
            seq.num_computed = hit.tokens
        need = self.blocks_needed(seq.num_computed + num_new_tokens) - len(seq.blocks)
        if need > 0:
            seq.blocks.extend(self._take_free(need))

    def release_tail(self, seq: Sequence) -> None:
        """Give back the blocks past ``seq``'s computed tokens (rejected speculative slots)."""
        keep = self.blocks_needed(seq.num_computed)
        while len(seq.blocks) > keep:
            self._release(seq.blocks.pop())

    def _release(self, block: int) -> None:
        self.free_blocks.appendleft(block)

    def try_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """:meth:`allocate` for a running ``seq`` if :meth:`can_allocate`; whether it did.

        One pass instead of two: the scheduler's hottest call (every running request, every
        step).
        """
        tokens = seq.num_computed + num_new_tokens
        if self.sliding_units:
            need = self.blocks_needed(tokens) - len(seq.blocks)
        else:
            need = -(-tokens // self.block_size) - len(seq.blocks)
        if need <= 0:
            return True
        if need > len(self.free_blocks) - self.reserved:
            return False
        seq.blocks.extend(self._take_free(need))
        return True

    def append_blocks(self, seq: Sequence, count: int) -> None:
        """Give a decoding ``seq`` ``count`` more blocks, as :meth:`allocate` would."""
        seq.blocks.extend(self._take_free(count))

    def reserve(self, count: int) -> None:
        """Take ``count`` free blocks without naming them yet (the caller checked they are
        free): the pool shrinks now, :meth:`claim` hands out their ids later."""
        self.reserved += count

    def claim(self, seq: Sequence, count: int) -> None:
        """Give ``seq`` ``count`` of the reserved blocks."""
        self.reserved -= count
        self.append_blocks(seq, count)

    def _take_free(self, count: int) -> list[int]:
        return self.free_blocks.take(count)

    def take_transfer_seconds(self) -> float:
        """Host-link time of KV loads since the last call (none without an offload tier)."""
        return 0.0

    def kv_stats(self) -> dict[str, int | float]:
        """Prefix-cache and offload counters for summary.json (zero without a prefix cache)."""
        return {
            "prefix_cache_evicted_blocks": 0,
            "kv_offload_stored_blocks": 0,
            "kv_offload_loaded_blocks": 0,
            "kv_offload_stored_bytes": 0.0,
            "kv_offload_loaded_bytes": 0.0,
        }

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(reversed(seq.blocks))
        seq.blocks.clear()
