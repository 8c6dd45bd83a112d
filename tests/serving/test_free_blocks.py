"""The lazy free list hands out the same block ids, in the same order, as a queue of all ids;
the block manager's allocation contract the scheduler relies on."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import BlockManager, FreeBlocks
from llmservingsim.workload.request_spec import RequestSpec


@settings(max_examples=200, deadline=None)
@given(
    num_blocks=st.integers(0, 40),
    ops=st.lists(st.sampled_from(["pop", "pop", "take", "append", "appendleft"]), max_size=120),
    sizes=st.lists(st.integers(0, 6), min_size=120, max_size=120),
)
def test_free_blocks_behave_like_a_queue_of_all_ids(
    num_blocks: int, ops: list[str], sizes: list[int]
) -> None:
    lazy, queue = FreeBlocks(num_blocks), deque(range(num_blocks))
    taken: list[int] = []
    for op, size in zip(ops, sizes, strict=False):
        if op == "pop" and queue:
            block = queue.popleft()
            assert lazy.popleft() == block
            taken.append(block)
        elif op == "take" and len(queue) >= size:
            blocks = [queue.popleft() for _ in range(size)]
            assert lazy.take(size) == blocks
            taken.extend(blocks)
        elif op == "append" and taken:
            queue.append(taken[-1])
            lazy.append(taken.pop())
        elif op == "appendleft" and taken:
            queue.appendleft(taken[-1])
            lazy.appendleft(taken.pop())
        assert len(lazy) == len(queue)
    assert list(lazy) == list(queue)


@settings(max_examples=200, deadline=None)
@given(
    block_size=st.integers(1, 32),
    prompt=st.integers(1, 300),
    steps=st.lists(st.integers(1, 40), max_size=30),
)
def test_allocation_only_grows_means_a_covered_step_changes_nothing(
    block_size: int, prompt: int, steps: list[int]
) -> None:
    """The scheduler skips ``try_allocate`` when a sequence's blocks already hold its next
    tokens (``allocation_only_grows``); the call would then leave everything as it was."""
    blocks = BlockManager(64, block_size)
    assert blocks.allocation_only_grows
    seq = Sequence(RequestSpec(id=0, arrival_s=0.0, input_len=prompt, output_len=1))
    for num_new in steps:
        held, free = list(seq.blocks), blocks.num_free
        covered = seq.num_computed + num_new <= len(held) * block_size
        if not blocks.try_allocate(seq, num_new):
            break
        if covered:
            assert seq.blocks == held and blocks.num_free == free
        seq.num_computed += num_new
