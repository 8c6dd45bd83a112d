"""Paged KV cache with automatic prefix caching (vLLM's APC).

A full block's content is named by a *node*: the pair (parent node, what the block holds).
The parent is the node of the block before it, so a node stands for the request's whole token
prefix up to the end of its block — a chained block hash, except that nodes are exact: the
dictionary compares the real (parent, content) key, and a node number is never reused, so
two different prefixes can never meet in one node, whatever their ids hash to.

* A request admitted with a token description (RequestSpec.content) reuses the longest run
  of its leading full blocks whose nodes are cached — at most all but its last token, which
  must be computed so a token can be sampled. Reused blocks are shared (reference counted).
* When a block of a running request is full and computed, it is registered under its node
  (several device blocks may hold one node; any of them serves a hit).
* A freed block that holds a node stays cached; it is evicted (least recently freed first)
  only when a block is needed and no empty block is left. With an offload tier, the evicted
  content moves there and can be loaded back instead of recomputed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import BlockManager, PrefixHit
from llmservingsim.serving.kv_offload import OffloadTier
from llmservingsim.workload.request_spec import TokenContent

NO_NODE = -1
BlockKey = tuple[int, ...]
NodeKey = tuple[int, BlockKey]


@dataclass(frozen=True, slots=True)
class WholeBlocks:
    """The whole blocks at the start of one run: keys ``(cid, s, s + block_size)`` for ``s``
    in ``range(0, count, block_size)``."""

    cid: int
    count: int


def block_key_parts(content: TokenContent, block_size: int) -> Iterator[WholeBlocks | BlockKey]:
    """:func:`block_keys` in order, a run's leading whole blocks as one :class:`WholeBlocks`
    (long runs: a system prompt, a 512-token Mooncake hash block) and every other block's key
    by itself."""
    pieces: list[int] = []
    filled = 0
    for cid, count in content.runs:
        start = 0
        if filled == 0 and count >= block_size:
            start = count - count % block_size
            yield WholeBlocks(cid, start)
        while start < count:
            take = min(count - start, block_size - filled)
            pieces.extend((cid, start, start + take))
            start += take
            filled += take
            if filled == block_size:
                yield tuple(pieces)
                pieces = []
                filled = 0


def block_keys(content: TokenContent, block_size: int) -> list[BlockKey]:
    """What each full block the description covers holds: (id, first, end) per run piece.

    A block inside one run is ``(id, first, end)``: tokens first..end-1 of that piece of text;
    a block spanning runs lists one triple per piece. The block's position is not part of the
    key: the parent node already fixes everything before it.
    """
    keys: list[BlockKey] = []
    for part in block_key_parts(content, block_size):
        if isinstance(part, WholeBlocks):
            cid = part.cid
            keys.extend((cid, s, s + block_size) for s in range(0, part.count, block_size))
        else:
            keys.append(part)
    return keys


class PrefixCachingBlockManager(BlockManager):
    # A decode step registers the blocks it fills: steps are applied one at a time.
    fast_forward_safe = False
    allocation_only_grows = False  # filling a block registers it in the cache

    def try_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        computed, size = seq.num_computed, self.block_size
        if (
            computed + num_new_tokens <= len(seq.blocks) * size
            and computed < (len(seq.nodes) + 1) * size
        ):
            # The common decode step: no block to take and no newly full block to name, so
            # allocate() would do nothing (register_computed returns at once).
            return True
        if not self.can_allocate(seq, num_new_tokens):
            return False
        self.allocate(seq, num_new_tokens)
        return True

    def __init__(
        self, num_blocks: int, block_size: int, offload: OffloadTier | None = None
    ) -> None:
        super().__init__(num_blocks, block_size)
        self.offload = offload
        self.ref_count = [0] * num_blocks
        self.block_node = [NO_NODE] * num_blocks
        # Free blocks that still hold a node, least recently freed first: the eviction order.
        self.cached: OrderedDict[int, None] = OrderedDict()
        self.node_of: dict[NodeKey, int] = {}
        # node → (its key, the device blocks holding its content; empty when only offloaded)
        self.node_info: dict[int, tuple[NodeKey, list[int]]] = {}
        self._roots: dict[str, int] = {}  # namespace → parent of its first blocks (negative)
        self._next_node = 0
        self.evicted_blocks = 0

    # ------------------------------------------------------------------ pool

    @property
    def num_free(self) -> int:
        return len(self.free_blocks) + len(self.cached)

    def _take_free(self, count: int, pinned: frozenset[int] = frozenset()) -> list[int]:
        """Empty blocks first, then the least recently freed cached ones (content evicted).

        ``pinned`` offloaded nodes are about to be loaded and must not be dropped meanwhile.
        """
        free = self.free_blocks
        taken = free.take(min(count, len(free)))
        for _ in range(count - len(taken)):
            block, _ = self.cached.popitem(last=False)
            self._evict(block, pinned)
            taken.append(block)
        ref_count = self.ref_count
        for block in taken:
            ref_count[block] = 1
        return taken

    def _evict(self, block: int, pinned: frozenset[int] = frozenset()) -> None:
        node = self.block_node[block]
        self.block_node[block] = NO_NODE
        self.evicted_blocks += 1
        holders = self.node_info[node][1]
        if len(holders) > 1:
            holders.remove(block)
            return
        holders.clear()
        if self.offload is None:
            self._forget(node)
            return
        for gone in self.offload.store(node, pinned):
            if not self.node_info[gone][1]:
                self._forget(gone)

    def _forget(self, node: int) -> None:
        """The node's content is nowhere any more: later lookups must miss."""
        key, _ = self.node_info.pop(node)
        del self.node_of[key]

    def _release(self, block: int) -> None:
        """A tail block past the computed tokens holds no node: it is simply empty again."""
        self.ref_count[block] -= 1
        if self.ref_count[block] == 0:
            self.free_blocks.appendleft(block)

    def _take(self, block: int) -> None:
        if self.ref_count[block] == 0:
            del self.cached[block]
        self.ref_count[block] += 1

    # ------------------------------------------------------------------ nodes

    def _keys(self, seq: Sequence) -> list[BlockKey] | None:
        content = seq.spec.content
        if content is None:
            return None
        if seq.block_keys is None:
            seq.block_keys = block_keys(content, self.block_size)
        return seq.block_keys

    def _root(self, seq: Sequence) -> int:
        namespace = seq.spec.content.namespace if seq.spec.content is not None else ""
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = -2 - len(self._roots)
        return root

    def register_computed(self, seq: Sequence) -> None:
        """Name the content of ``seq``'s newly full, computed blocks so others can reuse them.

        A block whose node exists already (another request computed the same prefix at the
        same time) becomes one more holder of that node.
        """
        nodes = seq.nodes
        if seq.num_computed < (len(nodes) + 1) * self.block_size:
            return  # no new full block (the common decode step)
        keys = self._keys(seq)
        if keys is None:
            return
        full = min(seq.num_computed // self.block_size, len(keys))
        if len(nodes) >= full:
            return
        node_of, node_info, block_node, blocks = (
            self.node_of,
            self.node_info,
            self.block_node,
            seq.blocks,
        )
        parent = nodes[-1] if nodes else self._root(seq)
        for i in range(len(nodes), full):
            key = (parent, keys[i])
            block = blocks[i]
            node = node_of.get(key)
            if node is None:
                node = self._next_node
                self._next_node += 1
                node_of[key] = node
                node_info[node] = (key, [block])
            else:
                node_info[node][1].append(block)
            block_node[block] = node
            nodes.append(node)
            parent = node

    # ------------------------------------------------------------------ BlockManager

    def lookup(self, seq: Sequence) -> PrefixHit:
        """The longest cached run of ``seq``'s leading blocks (query only: nothing is taken).

        A request that arrives with computed tokens (swapped out, or prefilled on another
        instance and handed off) starts from them instead.
        """
        keys = self._keys(seq)
        if seq.num_computed or keys is None:
            return PrefixHit(seq.num_computed)
        limit = min(len(keys), (seq.num_tokens - 1) // self.block_size)
        hit = PrefixHit()
        parent = self._root(seq)
        node_of = self.node_of
        for i in range(limit):
            node = node_of.get((parent, keys[i]))
            if node is None:
                break
            holders = self.node_info[node][1]
            if holders:
                block = holders[0]
                hit.evictable += self.ref_count[block] == 0
            elif self.offload is not None and node in self.offload:
                block = -1
            else:  # pragma: no cover - a live node is always held somewhere
                break
            hit.nodes.append(node)
            hit.blocks.append(block)
            parent = node
        hit.tokens = len(hit.nodes) * self.block_size
        return hit

    def allocate(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit | None = None) -> None:
        if hit is None:
            self.register_computed(seq)
        elif hit.nodes:
            self._reuse(seq, hit)
        super().allocate(seq, num_new_tokens, hit)

    def _reuse(self, seq: Sequence, hit: PrefixHit) -> None:
        """Share the hit's device blocks, then load its offloaded ones into fresh blocks."""
        for block in hit.blocks:
            if block >= 0:
                self._take(block)
        pinned = frozenset(n for n, b in zip(hit.nodes, hit.blocks, strict=True) if b < 0)
        blocks = list(hit.blocks)
        for i, node in enumerate(hit.nodes):
            if blocks[i] >= 0:
                continue
            (block,) = self._take_free(1, pinned)
            assert self.offload is not None
            self.offload.load(node)
            self.block_node[block] = node
            self.node_info[node][1].append(block)
            blocks[i] = block
        seq.blocks = blocks
        seq.nodes = list(hit.nodes)

    def kv_stats(self) -> dict[str, int | float]:
        stats = super().kv_stats()
        stats["prefix_cache_evicted_blocks"] = self.evicted_blocks
        if self.offload is not None:
            ledger = self.offload.ledger
            stats["kv_offload_stored_blocks"] = self.offload.stored_blocks
            stats["kv_offload_loaded_blocks"] = ledger.blocks_to_device
            stats["kv_offload_stored_bytes"] = ledger.link.bytes(self.offload.stored_blocks)
            stats["kv_offload_loaded_bytes"] = ledger.link.bytes(ledger.blocks_to_device)
            stats["host_transfer_time_s"] = ledger.seconds
        return stats

    def take_transfer_seconds(self) -> float:
        return self.offload.ledger.take_seconds() if self.offload is not None else 0.0

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; blocks holding a node stay cached (tail evicted first)."""
        self.register_computed(seq)
        for block in reversed(seq.blocks):
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                if self.block_node[block] == NO_NODE:
                    self.free_blocks.append(block)
                else:
                    self.cached[block] = None
        seq.blocks.clear()
        seq.nodes.clear()
