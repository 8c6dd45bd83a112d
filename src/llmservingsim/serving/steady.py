"""Steady decoders: the running requests that decode one token every step, kept as sums.

Once a request decodes one token in every step of its engine, its state after the engine's
``t``-th step is a straight line in ``t``: computed tokens, generated tokens and attended
context each grow by one per step, its KV blocks by ``full_units`` every ``block_size`` steps
(once its sliding-window layers hold all the blocks they will, BlockManager), and its
inter-token gap is the engine's step-to-step gap. So a step needs only the sums over these
requests (how many, their summed context, how many new blocks they take) and the few of them
that finish at that step; nothing per request. A request's own fields are brought up to date
(:meth:`SteadyDecoders.sync`) only when something looks at them: when it finishes, when a
step cannot treat the group as a whole (KV blocks run short, or more decoders than the token
budget) and the scheduler takes every request one by one again, and for invariant checks.

Steps are numbered per engine: ``started`` steps have begun (their KV blocks are taken) and
``ended`` have ended; a member that joined before step ``t0`` with ``c`` computed and ``g``
generated tokens has, after step ``e`` ended, ``c + e − t0`` computed and ``g + e − t0``
generated tokens. KV blocks the group takes are reserved in the block manager by count
(:meth:`BlockManager.reserve`) and handed to a request as block ids when it is synced.
"""

from __future__ import annotations

import heapq

import numpy as np

from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.perf.iteration import FloatArray
from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import BlockManager


class _Member:
    t0: int  # the first step it decodes in as a member
    computed: int  # num_computed, generated and blocks held when it joined
    generated: int
    blocks: int
    last_step: int  # the step that samples its last token

    def __init__(
        self,
        t0: int,
        computed: int,
        generated: int,
        blocks: int,
        last_step: int,
    ) -> None:
        self.t0 = t0
        self.computed = computed
        self.generated = generated
        self.blocks = blocks
        self.last_step = last_step

    def __repr__(self) -> str:
        return (
            f"_Member("
            f"t0={self.t0!r}, "
            f"computed={self.computed!r}, "
            f"generated={self.generated!r}, "
            f"blocks={self.blocks!r}, "
            f"last_step={self.last_step!r}"
            ")"
        )


class SteadyDecoders:
    """The steady decoders of one scheduler, in admission order (they lead its running list)."""

    __slots__ = (
        "_context_base",
        "_due",
        "_finish_steps",
        "_finishing",
        "_local_base",
        "_members",
        "block_size",
        "blocks",
        "chunk",
        "ended",
        "in_flight",
        "in_flight_context",
        "in_flight_local_context",
        "last_end",
        "sat_out",
        "started",
        "window",
    )

    def __init__(self, blocks: BlockManager, window: int = 0, chunk: int = 0) -> None:
        self.blocks = blocks
        # The model's sliding window (0: none). Only requests past it join: their
        # sliding-window layers then attend ``window`` tokens every step, so the group's sum
        # of min(context, window) is ``window`` per member, exact without per-request state.
        self.window = window
        # The model's attention chunk (0: none). Only requests that finish before their
        # chunk ends join: their chunked layers' context ((context − 1) mod chunk + 1) then
        # grows by one per step, a straight line like the context itself.
        self.chunk = chunk
        self.block_size = blocks.block_size
        self.started = 0
        self.ended = 0
        self.last_end = 0.0  # when the engine's latest step ended
        self.in_flight = 0  # members decoding in the step in flight (0: the group sat it out)
        # Whether the group, with members, sat out the latest step that ended (a prefill-only
        # step, VllmScheduler.fill): its members' last token is older than that step's end,
        # so none joins at it (step_done).
        self.sat_out = False
        self.in_flight_context = 0
        self.in_flight_local_context = 0  # what the local-attention layers attend in it
        self._members: dict[Sequence, _Member] = {}
        self._context_base = 0  # sum of (computed - t0 + 1): context at step t = base + n * t
        self._local_base = 0  # the same of (computed mod chunk - t0 + 1) (chunked layers)
        self._due = [0] * self.block_size  # members taking a block at steps t ≡ r (mod size)
        self._finishing: dict[int, list[Sequence]] = {}
        self._finish_steps: list[int] = []  # heap of the keys of _finishing

    @property
    def count(self) -> int:
        return len(self._members)

    # ------------------------------------------------------------------ membership

    def join(self, seq: Sequence) -> bool:
        """Make a running request that just sampled a token (and decodes next) a member;
        False when its KV blocks do not follow the ``full_units``-blocks-per-``block_size``-
        steps pattern (it holds blocks reserved far ahead that it will outgrow: it stays one by
        one, or its sliding-window layers still take blocks), or when it attends fewer tokens
        than the model's sliding window."""
        t0, size, blocks = self.started, self.block_size, self.blocks
        computed, generated, held = seq.num_computed, seq.generated, len(seq.blocks)
        if computed + 1 < self.window:
            return False  # inside the window: its min(context, window) still grows
        tokens_held = blocks.tokens_held(held)
        if tokens_held < blocks.sliding_tokens:
            return False  # its sliding-window layers still take blocks
        last_step = t0 + seq.spec.output_len - generated - 1
        chunk = self.chunk
        if chunk and computed % chunk + last_step - t0 >= chunk:
            return False  # it decodes past its chunk's end: its chunk context falls back
        first_block = tokens_held - computed  # steps until it writes past its last block
        if first_block >= size and t0 + first_block <= last_step:
            return False
        if t0 + first_block <= last_step:
            due, residue = self._due, (t0 + first_block) % size
            due[residue] = due[residue] + blocks.full_units  # (augmented: generic compiled)
        self._members[seq] = _Member(t0, computed, generated, held, last_step)
        self._context_base += computed - t0 + 1
        if chunk:
            self._local_base += computed % chunk - t0 + 1
        finishing = self._finishing.get(last_step)
        if finishing is None:
            self._finishing[last_step] = [seq]
            heapq.heappush(self._finish_steps, last_step)
        else:
            finishing.append(seq)
        return True

    def _leave(self, seq: Sequence) -> _Member:
        member = self._members.pop(seq)
        first_block = self.blocks.tokens_held(member.blocks) - member.computed
        if member.t0 + first_block <= member.last_step:
            due, residue = self._due, (member.t0 + first_block) % self.block_size
            due[residue] = due[residue] - self.blocks.full_units
        self._context_base -= member.computed - member.t0 + 1
        if self.chunk:
            self._local_base -= member.computed % self.chunk - member.t0 + 1
        return member

    def sync(self) -> None:
        """Bring every member's own fields (tokens, last token time, KV block ids) up to now."""
        for seq, member in self._members.items():
            self._sync(seq, member)

    def _sync(self, seq: Sequence, member: _Member, claim: bool = True) -> None:
        """Bring ``seq``'s fields up to now; its reserved KV blocks become block ids it holds
        (``claim``), or, for a request that is leaving, go back to the free pool."""
        done = self.ended - member.t0
        seq.num_computed = member.computed + done
        seq.generated = member.generated + done
        if done > 0:
            seq.last_token_time = self.last_end
        written = member.computed + self.started - member.t0  # KV of started steps included
        missing = self.blocks.blocks_needed(written) - len(seq.blocks)
        if missing <= 0:
            return
        if claim:
            self.blocks.claim(seq, missing)
        else:
            self.blocks.reserved -= missing

    def has(self, seq: Sequence) -> bool:
        return seq in self._members

    def remove(self, seq: Sequence) -> None:
        """Take ``seq`` out of the group now, also in the middle of a step (its client gave
        up): its fields are brought up to the last step that ended, it gets no token from the
        step in flight, and the KV blocks reserved for it go back to the free pool (its named
        ones it frees itself)."""
        member = self._members[seq]
        in_step = self.in_flight > 0  # it was in the step in flight: the step ends without it
        if in_step:
            self.in_flight -= 1
            self.in_flight_context -= member.computed - member.t0 + self.started
            if self.window:
                self.in_flight_local_context -= self.window
            elif self.chunk:
                local = member.computed % self.chunk - member.t0 + self.started
                self.in_flight_local_context -= local
        self._sync(seq, self._leave(seq), claim=False)
        if in_step and not self.in_flight:
            # It was the step's only member: the group sits that step out after all (only
            # steps with members are counted), so its end is not counted either.
            self.started -= 1
        # The step it would have finished at keeps its (maybe empty) entry, so the heap of
        # finishing steps stays in step with it.
        self._finishing[member.last_step].remove(seq)

    def dissolve(self) -> None:
        """Sync every member and end the group: the scheduler takes them one by one again."""
        self.sync()
        self._members.clear()
        self._context_base = self._local_base = 0
        self._due = [0] * self.block_size
        self._finishing.clear()
        self._finish_steps.clear()
        self.in_flight = self.in_flight_context = self.in_flight_local_context = 0
        self.sat_out = False

    # ------------------------------------------------------------------ steps

    def blocks_due(self, step: int) -> int:
        """KV blocks the members take when step ``step`` begins."""
        return self._due[step % self.block_size] if self._members else 0

    def begin_step(self) -> None:
        """The engine's next step begins and every member decodes in it: take its KV blocks
        (the caller checked they are free) and note the step's batch. Steps are counted only
        while there are members (every step that has members has them all)."""
        count = len(self._members)
        self.in_flight = count
        if not count:
            self.in_flight_context = self.in_flight_local_context = 0
            return
        step = self.started
        self.blocks.reserve(self._due[step % self.block_size])
        self.in_flight_context = self._context_base + count * step
        if self.window:
            self.in_flight_local_context = self.window * count
        elif self.chunk:
            self.in_flight_local_context = self._local_base + count * step
        self.started = step + 1

    def end_step(self, now: float, itl: RepeatedSamples) -> list[Sequence]:
        """The step in flight ended at ``now``: every member in it sampled a token. Returns
        the members that sampled their last one (synced, no longer members), in admission
        order. A step the members sat out leaves them as they were: their last token (and
        the start of their next inter-token gap) is that of the last step they decoded in."""
        if not self.in_flight:
            self.sat_out = bool(self._members)
            if not self.sat_out:
                self.last_end = now
            return []
        self.sat_out = False
        self.last_end, previous = now, self.last_end
        itl.add(now - previous, self.in_flight)
        self.in_flight = self.in_flight_context = self.in_flight_local_context = 0
        step = self.ended
        self.ended = step + 1
        finishing = self._finishing.get(step)
        if finishing is None:
            return []
        del self._finishing[step]
        heapq.heappop(self._finish_steps)
        # Members join in admission order (they lead the running list and newcomers join
        # behind them), so each step's list of finishers is in admission order too.
        for seq in finishing:
            self._sync(seq, self._leave(seq), claim=False)
        return finishing

    # ------------------------------------------------------------------ fast-forward

    def steps_until_a_finish(self) -> int | None:
        """Steps from the one in flight through the first at which a member samples its last
        token (None: no member)."""
        if not self._finish_steps:
            return None
        return self._finish_steps[0] - self.started + 2

    def repeats_for(self, steps: int) -> bool:
        """Whether no member finishes within the next ``steps`` steps (the one in flight
        included, the finishing step counted): a cheap test before laying out a run."""
        until = self.steps_until_a_finish()
        return until is None or until >= steps

    def due_per_residue(self) -> list[int]:
        return list(self._due)

    def advance(
        self, steps_started: int, blocks: int, ends: FloatArray, itl: RepeatedSamples
    ) -> None:
        """Apply a fast-forward run's progress: ``steps_started`` more steps began (taking
        ``blocks`` KV blocks in all) and steps ended at ``ends``, every member decoding in each."""
        if steps_started:
            self.blocks.reserve(blocks)
            self.started += steps_started
        if len(ends):
            count = len(self._members)
            itl.add(float(ends[0]) - self.last_end, count)
            itl.add_each(np.diff(ends), count)
            self.ended += len(ends)
            self.last_end = float(ends[-1])
