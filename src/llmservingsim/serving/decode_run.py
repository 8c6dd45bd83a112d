"""Fast-forward: a run of identical pure-decode steps, laid out ahead and applied in bulk.

When every running request of an instance decodes one token and nothing else can change the
batch (no request finishes, none is admitted or preempted, no KV copy is due), the next steps
differ only in the attended context, which grows by the batch size each step. A
:class:`DecodeRun` times those steps up front, so the engine sees one step end instead of
hundreds, and applies their effects (tokens, inter-token gaps, new KV blocks, step records)
when the run ends or when something reaches the instance earlier: then the steps that ended
before that moment are applied and the one in progress becomes an ordinary in-flight step.
Every number equals stepping one iteration at a time (tests/test_fast_forward.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.perf.iteration import (
    BatchShape,
    FloatArray,
    IterationTimer,
    StepCost,
    StepCosts,
)
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.schedulers.base import ScheduledEntry
from llmservingsim.serving.sequence import Sequence


@dataclass
class DecodeRun:
    """Steps 0..n-1 of one batch; step 0 was started (and recorded) the ordinary way.

    ``applied`` steps have had their end applied; step ``applied`` is the one in flight.
    ``growth[r]`` lists, in batch order, (first step, sequence) for the sequences that take a
    new KV block at the start of every step ``s >= first`` with ``s % block_size == r``.
    """

    entries: list[ScheduledEntry]
    batch: BatchShape  # step 0's; later steps attend num_decode more tokens each
    costs: StepCosts
    ends: FloatArray  # when each step ends
    growth: list[list[tuple[int, Sequence]]]
    lookups_per_step: int  # perf-model memo lookups and hits one step makes
    hits_per_step: int
    new_blocks: npt.NDArray[np.int64]  # KV blocks each step's start takes
    applied: int = 0
    cut: bool = False  # ended early by something reaching the instance

    @property
    def finish(self) -> float:
        return float(self.ends[-1])

    def steps_ended_before(self, now: float) -> int:
        """Steps that ended strictly before ``now`` (a step ending at ``now`` is in flight)."""
        return self.applied + int(np.searchsorted(self.ends[self.applied :], now, side="left"))

    def truncate(self, last: int) -> None:
        """Make step ``last`` the run's final step."""
        self.cut = True
        self.costs = self.costs.take(slice(0, last + 1))
        self.ends = self.ends[: last + 1]

    def grow(self, first: int, stop: int, blocks: BlockManager) -> None:
        """Hand out the KV blocks the starts of steps ``first``..``stop-1`` take, in order."""
        growth = self.growth
        for step in (np.flatnonzero(self.new_blocks[first:stop]) + first).tolist():
            for start, seq in growth[step % len(growth)]:
                if start <= step:
                    blocks.append_blocks(seq, 1)

    def end_steps(self, upto: int, itl: RepeatedSamples) -> None:
        """Apply the ends of steps ``applied``..``upto-1``: one token per sequence per step.

        ``itl`` receives the inter-token gaps in the order stepping would record them.
        """
        count = upto - self.applied
        if count <= 0:
            return
        ends = self.ends[self.applied : upto]
        first_end, last_end = float(ends[0]), float(ends[-1])
        for seq, _ in self.entries:
            itl.add(first_end - seq.last_token_time)
            seq.last_token_time = last_end
            seq.num_computed += count
            seq.generated += count
        batch_size = len(self.entries)
        for gap in np.diff(ends).tolist():
            itl.add(gap, batch_size)
        self.applied = upto


def plan_decode_run(
    entries: list[ScheduledEntry],
    first: BatchShape,
    first_cost: StepCost,
    first_end: float,
    blocks: BlockManager,
    timer: IterationTimer,
    max_steps: int,
) -> DecodeRun | None:
    """The run that starts with the decode step ``first`` (already scheduled and timed), or
    None when fewer than two steps are certain to repeat it.

    It stops at the step where a sequence samples its last token (that step still belongs to
    the run: its end is an ordinary step end) and before the step whose new KV blocks would not
    fit, where stepping would preempt.
    """
    steps = min(max_steps, min(seq.spec.output_len - seq.generated for seq, _ in entries))
    if steps < 2:
        return None
    block_size = blocks.block_size
    # A sequence holding b blocks with c computed tokens takes its next block at step b*bs - c.
    firsts = np.array(
        [len(seq.blocks) * block_size - seq.num_computed for seq, _ in entries], dtype=np.int64
    )
    padded = -(-steps // block_size) * block_size
    starting = np.bincount(firsts[firsts < steps], minlength=padded)
    per_step = starting.reshape(-1, block_size).cumsum(axis=0).ravel()[:steps]
    fits = int(np.searchsorted(np.cumsum(per_step), blocks.num_free, side="right"))
    steps = min(steps, fits)
    if steps < 2:
        return None
    per_step = per_step[:steps]
    later, lookups, hits = timer.repeat_decode_costs(first, steps)
    costs = StepCosts.of([first_cost]).concat(later)
    # Each step starts when the previous one ends (one engine, no host-link copies); the
    # accumulation is sequential, the same additions as stepping.
    ends = np.cumsum(np.concatenate(([first_end], later.seconds)))
    growth: list[list[tuple[int, Sequence]]] = [[] for _ in range(block_size)]
    for (seq, _), step in zip(entries, firsts.tolist(), strict=True):
        if step < steps:
            growth[step % block_size].append((step, seq))
    return DecodeRun(entries, first, costs, ends, growth, lookups, hits, per_step)
