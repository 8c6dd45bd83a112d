"""The lazy free list hands out the same block ids, in the same order, as a queue of all ids."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.serving.block_manager import FreeBlocks


@settings(max_examples=200, deadline=None)
@given(
    num_blocks=st.integers(0, 40),
    ops=st.lists(st.sampled_from(["pop", "pop", "append", "appendleft"]), max_size=120),
)
def test_free_blocks_behave_like_a_queue_of_all_ids(num_blocks: int, ops: list[str]) -> None:
    lazy, queue = FreeBlocks(num_blocks), deque(range(num_blocks))
    taken: list[int] = []
    for op in ops:
        if op == "pop" and queue:
            block = queue.popleft()
            assert lazy.popleft() == block
            taken.append(block)
        elif op == "append" and taken:
            queue.append(taken[-1])
            lazy.append(taken.pop())
        elif op == "appendleft" and taken:
            queue.appendleft(taken[-1])
            lazy.appendleft(taken.pop())
        assert len(lazy) == len(queue)
    assert list(lazy) == list(queue)
