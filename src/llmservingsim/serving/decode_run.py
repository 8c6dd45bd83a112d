"""Fast-forward: a run of identical pure-decode steps, laid out ahead and applied in bulk.

When every running request of an engine is a steady decoder (serving/steady.py) and nothing
else can change the batch (no request finishes, none is admitted or preempted, no KV copy is
due), the next steps differ only in the attended context, which grows by the batch size each
step. A :class:`DecodeRun` times those steps up front, so the engine sees one step end instead
of hundreds, and applies their effects (steps begun and ended, new KV blocks, step records)
when the run ends or when something reaches the instance earlier: then the steps that ended
before that moment are applied and the one in progress becomes an ordinary in-flight step.
Every number equals stepping one iteration at a time (tests/serving/test_fast_forward.py).
"""

from __future__ import annotations

from typing import Final, Literal

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
from llmservingsim.serving.steady import SteadyDecoders

MIN_RUN_STEPS: Final = 16
"""Shorter runs cost more to lay out (numpy calls on short arrays) than stepping them one by
one costs with steady decoders (measured: docs/performance.md)."""


class DecodeRun:
    """Steps 0..n-1 of one batch; step 0 was started (and recorded) the ordinary way.

    ``applied`` steps have had their end applied; step ``applied`` is the one in flight.
    ``new_blocks[s]`` is what the start of step ``s`` takes from the KV cache.
    """

    batch: BatchShape  # step 0's; later steps attend num_decode more tokens each
    costs: StepCosts
    ends: FloatArray  # when each step ends
    lookups_per_step: int  # perf-model memo lookups and hits one step makes
    hits_per_step: int
    new_blocks: npt.NDArray[np.int64]
    applied: int
    cut: bool  # ended early by something reaching the instance

    def __init__(
        self,
        batch: BatchShape,
        costs: StepCosts,
        ends: FloatArray,
        lookups_per_step: int,
        hits_per_step: int,
        new_blocks: npt.NDArray[np.int64],
        applied: int = 0,
        cut: bool = False,
    ) -> None:
        self.batch = batch
        self.costs = costs
        self.ends = ends
        self.lookups_per_step = lookups_per_step
        self.hits_per_step = hits_per_step
        self.new_blocks = new_blocks
        self.applied = applied
        self.cut = cut

    def __repr__(self) -> str:
        return (
            f"DecodeRun("
            f"batch={self.batch!r}, "
            f"costs={self.costs!r}, "
            f"ends={self.ends!r}, "
            f"lookups_per_step={self.lookups_per_step!r}, "
            f"hits_per_step={self.hits_per_step!r}, "
            f"new_blocks={self.new_blocks!r}, "
            f"applied={self.applied!r}, "
            f"cut={self.cut!r}"
            ")"
        )

    @property
    def finish(self) -> float:
        return float(self.ends[-1])

    def steps_ended_by(self, now: float, inclusive: bool) -> int:
        """Steps that ended before ``now``; a step ending at ``now`` counts as ended when
        ``inclusive`` (the engine has already taken this instance's step ends at ``now``), else
        it is in flight. Never the last step: its end is the run's own end event."""
        side: Literal["left", "right"] = "right" if inclusive else "left"
        ended = self.applied + int(np.searchsorted(self.ends[self.applied :], now, side=side))
        return min(ended, len(self.ends) - 1)

    def truncate(self, last: int) -> None:
        """Make step ``last`` the run's final step."""
        self.cut = True
        self.costs = self.costs.take(slice(0, last + 1))
        self.ends = self.ends[: last + 1]

    def apply(self, upto: int, steady: SteadyDecoders, itl: RepeatedSamples) -> tuple[int, int]:
        """Apply the ends of steps ``applied``..``upto-1`` and the starts that followed them.

        Returns the range (first, stop) of the steps that started meanwhile.
        """
        first, stop = self.applied + 1, upto + 1  # upto >= applied: the in-flight step
        started = stop - first
        blocks = int(self.new_blocks[first:stop].sum()) if started else 0
        steady.advance(started, blocks, self.ends[self.applied : upto], itl)
        self.applied = upto
        return first, stop


def plan_decode_run(
    steady: SteadyDecoders,
    first: BatchShape,
    first_cost: StepCost,
    first_end: float,
    timer: IterationTimer,
    max_steps: int,
) -> DecodeRun | None:
    """The run that starts with the steady decoders' step ``first`` (already begun and timed),
    or None when fewer than ``MIN_RUN_STEPS`` steps are certain to repeat it.

    It stops at the step where a member samples its last token (that step still belongs to the
    run: its end is an ordinary step end) and before the step whose new KV blocks would not
    fit, where stepping would preempt.
    """
    step0 = steady.started - 1
    until = steady.steps_until_a_finish()
    steps = max_steps if until is None else min(max_steps, until)
    if steps < MIN_RUN_STEPS:
        return None
    due = np.array(steady.due_per_residue(), dtype=np.int64)
    per_step = due[(step0 + np.arange(steps)) % steady.block_size]
    per_step[0] = 0  # step 0 has begun: its blocks are taken
    fits = int(np.searchsorted(np.cumsum(per_step), steady.blocks.num_free, side="right"))
    steps = min(steps, fits)
    if steps < MIN_RUN_STEPS:
        return None
    later, lookups, hits = timer.repeat_decode_costs(first, steps)
    costs = StepCosts.of([first_cost]).concat(later)
    # Each step starts when the previous one ends (one engine, no host-link copies); the
    # accumulation is sequential, the same additions as stepping.
    ends = np.cumsum(np.concatenate(([first_end], later.seconds)))
    return DecodeRun(first, costs, ends, lookups, hits, per_step[:steps])
