"""Steady decoders as a group equal the same requests stepped one by one.

The end-to-end check (every scheduler, routers, P/D, preemption) is
tests/serving/test_fast_forward.py; this drives :class:`SteadyDecoders` directly: free KV blocks
after every step, each request's
tokens, blocks and last-token time when synced, and who finishes at which step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.steady import SteadyDecoders
from llmservingsim.workload.request_spec import RequestSpec


def decoding(i: int, prompt: int, output: int, generated: int, blocks: BlockManager) -> Sequence:
    """A request that sampled ``generated`` tokens and decodes next (KV for all but the last)."""
    seq = Sequence(RequestSpec(i, 0.0, prompt, output))
    seq.generated = generated
    blocks.allocate(seq, prompt + generated - 1)
    seq.num_computed = prompt + generated - 1
    seq.status = Status.RUNNING
    seq.last_token_time = 0.0
    return seq


def step_one_by_one(seqs: list[Sequence], blocks: BlockManager, now: float) -> list[Sequence]:
    """The reference: allocate, then sample one token each; returns who finished."""
    for seq in seqs:
        assert blocks.try_allocate(seq, 1)
    done = []
    for seq in seqs:
        seq.num_computed += 1
        seq.generated += 1
        seq.last_token_time = now
        if seq.generated >= seq.spec.output_len:
            done.append(seq)
    return done


requests = st.lists(
    st.tuples(st.integers(1, 70), st.integers(2, 60), st.integers(1, 59)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(shapes=requests, block_size=st.sampled_from([1, 4, 16]), data=st.data())
def test_group_equals_one_by_one(
    shapes: list[tuple[int, int, int]], block_size: int, data: st.DataObject
) -> None:
    ref_blocks, blocks = BlockManager(4000, block_size), BlockManager(4000, block_size)
    ref = [decoding(i, p, o, min(g, o - 1), ref_blocks) for i, (p, o, g) in enumerate(shapes)]
    group = [decoding(i, p, o, min(g, o - 1), blocks) for i, (p, o, g) in enumerate(shapes)]
    steady = SteadyDecoders(blocks)
    itl, ref_itl = RepeatedSamples(), RepeatedSamples()
    # Requests join at random steps, in order; until then they are stepped by hand.
    joins = sorted(data.draw(st.lists(st.integers(0, 5), min_size=len(group), max_size=len(group))))
    outside, live_ref, now, step = list(group), list(ref), 0.0, 0
    while live_ref:
        while outside and joins[len(group) - len(outside)] <= step:
            assert steady.join(outside.pop(0))
        steady.begin_step()
        for seq in outside:
            assert blocks.try_allocate(seq, 1)
        previous, now = now, now + 0.5 + step % 3
        for _ in live_ref:
            ref_itl.add(now - previous)
        ref_done = step_one_by_one(live_ref, ref_blocks, now)
        finished = steady.end_step(now, itl)
        finished += step_one_by_one(outside, blocks, now)
        for _ in outside:
            itl.add(now - previous)
        assert sorted(s.id for s in finished) == sorted(s.id for s in ref_done)
        for seq in finished:
            seq.status = Status.FINISHED
            blocks.free(seq)
            if seq in outside:
                outside.remove(seq)
        for seq in ref_done:
            ref_blocks.free(seq)
            live_ref.remove(seq)
        assert blocks.num_free == ref_blocks.num_free
        steady.sync()
        by_id = {s.id: s for s in live_ref}
        for seq in group:
            if seq.status is Status.RUNNING:
                other = by_id[seq.id]
                assert (seq.num_computed, seq.generated, len(seq.blocks)) == (
                    other.num_computed,
                    other.generated,
                    len(other.blocks),
                )
                assert seq.last_token_time == other.last_token_time
        step += 1
    assert steady.count == 0 and blocks.reserved == 0
    assert blocks.num_free == blocks.num_blocks
    assert itl.stats() == ref_itl.stats() and len(itl) == len(ref_itl)


def test_blocks_reserved_far_ahead_stay_one_by_one() -> None:
    """A request holding KV for its whole output (static batching) never takes a block: it
    joins; one holding blocks it will outgrow after more than a block's worth of steps does
    not fit the per-residue pattern and stays out."""
    blocks = BlockManager(100, 4)
    steady = SteadyDecoders(blocks)
    whole = decoding(0, 10, 20, 1, blocks)
    blocks.allocate(whole, whole.max_kv_tokens - whole.num_computed)
    assert steady.join(whole)
    assert steady.blocks_due(steady.started) == 0
    ahead = decoding(1, 10, 40, 1, blocks)
    blocks.append_blocks(ahead, 3)
    assert not steady.join(ahead)


def test_a_policy_that_replaces_schedule_must_declare_steady_support() -> None:
    """Steady decoders need ``schedule`` to start with ``begin_steady_step``: a subclass of a
    supporting policy that replaces ``schedule`` does not inherit the support."""
    from llmservingsim.config import SchedulerConfig
    from llmservingsim.serving.schedulers.base import ScheduledEntry
    from llmservingsim.serving.schedulers.orca import OrcaScheduler
    from llmservingsim.serving.schedulers.vllm import VllmScheduler

    class OwnSchedule(VllmScheduler):
        def schedule(self) -> list[ScheduledEntry]:
            return [(seq, seq.remaining) for seq in self.running]

    cfg = SchedulerConfig()
    assert not OwnSchedule(cfg, BlockManager(10, 16)).keep_steady_decoders()
    assert OrcaScheduler(cfg, BlockManager(10, 16)).keep_steady_decoders()  # inherits schedule
