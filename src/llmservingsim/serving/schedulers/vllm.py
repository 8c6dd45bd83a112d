"""vLLM V1 scheduler: one token budget per step, running requests first, chunked prefill.

Each step spends ``max_num_batched_tokens``: first on running requests in admission order
(a decode needs one token, a partial prefill continues with as much as fits), then on waiting
requests in FCFS order, whose prompts are chunked to the remaining budget. When KV blocks run
out, the most recently admitted running request is preempted (recompute or swap, per
``scheduler.preemption``); a step that preempted admits nobody new. A waiting request starts
from its prefix-cache hit (or its swapped-out tokens) and is only charged the tokens after it.

The ``priority`` policy (priority.py) is this scheduler with other answers at its policy
points: which running request makes room (:meth:`VllmScheduler.victim_index`), whether a
waiting request may preempt one (:meth:`VllmScheduler.victim_for`), and whether the steady
decoders may stay a group this step (:meth:`VllmScheduler.group_is_safe`).
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import PrefixHit
from llmservingsim.serving.schedulers.base import (
    SCHEDULERS,
    ScheduledEntry,
    Scheduler,
    is_context,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class VllmScheduler(Scheduler):
    supports_steady = True

    def prefill_tokens(
        self, seq: Sequence, hit: PrefixHit, budget: int, step_is_empty: bool
    ) -> int:
        """Tokens a waiting request may start with after its ``hit`` (0 = it must wait).

        Chunked: any part of what is left. Without chunked prefill (``orca``,
        ``scheduler.enable_chunked_prefill: false``) the whole prompt or nothing: it joins only
        when it fits the step's remaining budget; a prompt longer than the whole budget may
        run alone in an otherwise empty step, or it would wait forever (vLLM V0 without
        chunked prefill refuses such prompts at start-up, TensorRT-LLM's trtllm-bench raises
        max_num_tokens to the longest prompt).
        """
        whole = seq.num_tokens - hit.tokens
        if self.chunked_prefill:
            return min(whole, budget)
        if whole <= budget or step_is_empty:
            return whole
        return 0

    def repeats_decode(self) -> bool:
        # A refused waiting request stays refused: decoding only shrinks the free pool (and
        # no_evict's unpromised pool stays put); budget and batch size do not change.
        # Held-back context requests (batch waiting) start after a count of steps.
        # Under a receive interval every pass counts towards the next intake.
        return self.blocks.fast_forward_safe and not self.held_context and self.recv_interval == 1

    # Policy points (the ``priority`` policy overrides them; here they are vLLM's FCFS rules).

    def group_is_safe(self) -> bool:
        """Whether this step may keep the steady decoders as a group (no preemption can reach
        into it): FCFS preempts from the back of the running list, after the group."""
        return True

    def victim_index(self) -> int:
        """Which running request makes room when one cannot grow: the last admitted."""
        return len(self.running) - 1

    def victim_for(self, seq: Sequence) -> Sequence | None:
        """A running request the waiting ``seq`` may preempt to start: none under FCFS."""
        return None

    def lower_blocks(self, seq: Sequence) -> int:
        """KV blocks the requests :meth:`victim_for` may take from hold (with a victim only)."""
        return 0

    def evict(
        self,
        victim: Sequence,
        entries: list[ScheduledEntry],
        cause: Sequence,
        reason: str = "kv_cache_full",
    ) -> int:
        """Preempt the running ``victim`` to make room for ``cause`` (``reason``: see
        :meth:`Scheduler.preempt`); the tokens it had been given this step (0 if none), whose
        entry leaves ``entries``."""
        running = self.running
        if running[-1] is victim:
            running.pop()  # FCFS: the last admitted, not scheduled yet this step
        else:
            running.remove(victim)
        tokens = 0
        for k, (seq, num) in enumerate(entries):
            if seq is victim:
                tokens = num
                del entries[k]
                break
        self.preempt(victim, cause, reason)
        return tokens

    def schedule(self) -> list[ScheduledEntry]:
        self.held_context = False
        if self.recv_interval > 1:
            self.receive()
        entries = self.fill_step()
        if self.batch_waiting:
            entries = self.wait_for_batch(entries)
        if self.recv_interval > 1:
            steady = self.steady
            ran = bool(entries) or (steady is not None and steady.in_flight > 0)
            self.last_pass = 2 if any(is_context(s) for s, _ in entries) else int(ran)
        return entries

    def receive(self) -> None:
        """SGLang's receive interval (``SchedulerRecvSkipper``, ``recv_requests`` at the top
        of each event-loop pass): the pass adds the weight of the last batch's forward mode
        to a count, 1 for a decode batch and 1000 for any other (extend, mixed), and takes in
        the requests that arrived once the count reaches ``recv_interval``, the count starting
        again. A pass after one that ran nothing adds 1 too, but such passes spin without GPU
        work: the arrivals are taken in at once here, as when this pass would run nothing
        else (no running request, none taken in waiting)."""
        if self.last_pass == 0 or (not self.running and len(self.waiting) == self.unreceived):
            self.recv_count = 0
            self.unreceived = 0
            return
        self.recv_count += 1 if self.last_pass == 1 else 1000
        if self.recv_count >= self.recv_interval:
            self.recv_count = 0
            self.unreceived = 0

    def wait_for_batch(self, entries: list[ScheduledEntry]) -> list[ScheduledEntry]:
        """Batch waiting (TensorRT-LLM's py_executor ``_waiting_requests``, applied in
        ``_schedule`` only when the step has both context and generation requests): the
        context requests are held back (:meth:`Scheduler.withdraw_context`) until the step's
        tokens, each context request's whole prompt plus one per generation token, reach
        ``batch_wait_max_tokens_ratio`` of the budget or they were held
        ``batch_wait_timeout_iters`` such steps; then they run and the count starts again."""
        steady = self.steady
        generation = 0 if steady is None else steady.in_flight
        context_tokens = 0
        for seq, num_new in entries:
            if is_context(seq):
                context_tokens += seq.spec.input_len + seq.generated
            else:
                generation += num_new
        if not context_tokens or not generation:
            return entries
        if (
            self.batch_wait_count >= self.batch_wait_timeout_iters
            or context_tokens + generation >= self.batch_wait_tokens
        ):
            self.batch_wait_count = 0
            return entries
        self.batch_wait_count += 1
        return self.withdraw_context(entries)

    def fill_step(self) -> list[ScheduledEntry]:
        """The step's entries by the token budget (see the module docstring). Without
        ``mixed_prefill`` (SGLang's default: ``get_next_batch_to_run`` runs a new prefill
        batch, the chunked request's next chunk included, before the running batch decodes
        again; its decodes join a prefill batch only with ``--enable-mixed-chunk``) a step
        with prompt work runs only prompts; one that would start none decodes. A waiting
        request that resumes with one token to compute (its KV handed over by a prefill
        instance, or swapped in) decodes: it joins the decodes (SGLang's PD decode server
        merges such requests into its running batch)."""
        if not self.mixed_prefill and self.prefill_pending():
            entries = self.fill(prefill_only=True)
            if entries:
                return entries
        return self.fill(prefill_only=False)

    def prefill_pending(self) -> bool:
        """Whether a running request still has prompt tokens to compute or the request at
        the head of the queue (taken in, with room in the running batch or a running request
        it may preempt) starts a prompt."""
        waiting = self.waiting
        if len(waiting) > self.unreceived:
            head = waiting[0]
            if (
                len(self.running) < self.max_num_seqs or self.victim_for(head) is not None
            ) and not (head.generated > 0 and self.resumes_decoding(head, self.lookup(head))):
                return True
        steady = self.steady
        start = 0 if steady is None else steady.count  # the steady decoders lead: no prompts
        running = self.running
        return any(is_context(running[k]) for k in range(start, len(running)))

    @staticmethod
    def resumes_decoding(seq: Sequence, hit: PrefixHit) -> bool:
        """Whether admitting the waiting ``seq`` from ``hit`` computes one token of a sequence
        that has generated already (KV handed over, swapped in): a decode, not prompt work."""
        return seq.generated > 0 and seq.spec.input_len + seq.generated - hit.tokens == 1

    def fill(self, prefill_only: bool) -> list[ScheduledEntry]:
        """The step's entries; ``prefill_only``: the running requests' decodes sit it out."""
        budget = self.max_num_batched_tokens
        group = self.steady
        if group is not None and not self.group_is_safe():
            group.dissolve()  # one by one, exactly as without the group
        if prefill_only:
            # The steady decoders lead the running list and sit the step out as a group
            # (SteadyDecoders.end_step): no step of theirs begins.
            i = 0 if group is None else group.count
            steady = 0
        else:
            # The steady decoders lead the running list: one token each, as a group.
            i = steady = self.begin_steady_step(budget)
            budget -= steady
        entries: list[ScheduledEntry] = []
        preempted = False
        running, blocks = self.running, self.blocks
        block_size = blocks.block_size
        sliding_kv = blocks.sliding_units > 0
        only_grows = self.blocks.allocation_only_grows
        lookahead = self.lookahead
        ahead = self.decode_slots_ahead
        while i < len(running) and budget > 0:
            seq = running[i]
            if prefill_only and not is_context(seq):
                i += 1  # decodes wait for the next step
                continue
            if lookahead:
                wanted = self.tokens_wanted(seq)
            else:  # seq.remaining, inlined (hot: every running request, every step)
                wanted = seq.spec.input_len + seq.generated - seq.num_computed
            num_new = wanted if wanted < budget else budget
            reserve = self.kv_tokens(seq, seq.num_computed, num_new) if ahead else num_new
            # Most decode steps need no new block: then try_allocate would do nothing.
            if sliding_kv:
                fits = only_grows and blocks.blocks_needed(seq.num_computed + reserve) <= len(
                    seq.blocks
                )
            else:
                fits = only_grows and seq.num_computed + reserve <= len(seq.blocks) * block_size
            preempted_itself = False
            while not (fits or blocks.try_allocate(seq, reserve)):
                k = self.victim_index()
                victim = running[k]
                if k < i:
                    i -= 1  # scheduled already this step: its tokens go back to the budget
                budget += self.evict(victim, entries, seq)
                preempted = True
                if victim is seq:
                    preempted_itself = True
                    break
            if preempted_itself:
                if entries:
                    break
                # Nothing scheduled yet (only ``priority`` gets here with requests left): vLLM
                # would run an empty step and schedule the rest in the next; it is done now.
                continue
            entries.append((seq, num_new))
            budget -= num_new
            i += 1
        if preempted or not self.waiting:
            return entries
        in_use = self.adapters_in_use()
        skipped: list[Sequence] = []  # their LoRA adapter has no slot this step
        max_num_seqs = self.max_num_seqs
        floor: int | None = None  # the smallest priority value preempted in this pass
        # (Arrivals not taken in yet wait at the tail: receive.)
        while len(self.waiting) > self.unreceived and budget > 0:
            seq = self.waiting[0]
            if floor is not None and seq.spec.priority >= floor:
                break  # never re-admit a victim (or its peers) in the step that preempted it
            if not self.mixed_prefill and prefill_only == (
                seq.generated > 0 and self.resumes_decoding(seq, self.lookup(seq))
            ):
                break  # decodes join the decodes, prompts run apart (fill_step)
            full = len(running) >= max_num_seqs
            making_room = self.victim_for(seq) if full else None
            if full and making_room is None:
                break
            if self.adapters is not None and not self.adapter_ready(seq, in_use):
                skipped.append(self.waiting.popleft())
                continue
            if making_room is not None:
                priority = making_room.spec.priority
                floor = priority if floor is None else min(floor, priority)
                budget += self.evict(making_room, entries, seq, "max_num_seqs")
                continue
            hit = self.lookup(seq)
            num_new = self.prefill_tokens(seq, hit, budget, step_is_empty=not (entries or steady))
            if num_new == 0:
                break
            # A request resuming with one token to compute (swapped in, KV handed over)
            # decodes: under multi-step it reserves the group's tokens too.
            reserve = self.kv_tokens(seq, hit.tokens, num_new) if ahead else num_new
            if not blocks.can_allocate(seq, reserve, hit):
                lower = self.victim_for(seq)
                if lower is None or blocks.extra_blocks(
                    seq, reserve, hit
                ) > blocks.num_free + self.lower_blocks(seq):
                    break
                floor = lower.spec.priority if floor is None else min(floor, lower.spec.priority)
                budget += self.evict(lower, entries, seq)
                continue
            self.admit(seq, reserve, hit)
            entries.append((seq, num_new))
            budget -= num_new
        if skipped:
            self.waiting.extendleft(reversed(skipped))
        return entries


SCHEDULERS.register("vllm")(VllmScheduler)
SCHEDULERS.register("sarathi")(VllmScheduler)
