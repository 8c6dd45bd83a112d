"""vLLM V1 scheduler: one token budget per step, running requests first, chunked prefill.

Each step spends ``max_num_batched_tokens``: first on running requests in admission order
(a decode needs one token, a partial prefill continues with as much as fits), then on waiting
requests in FCFS order, whose prompts are chunked to the remaining budget. When KV blocks run
out, the most recently admitted running request is preempted (recompute or swap, per
``scheduler.preemption``); a step that preempted admits nobody new. A waiting request starts
from its prefix-cache hit (or its swapped-out tokens) and is only charged the tokens after it.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from llmservingsim.serving.block_manager import PrefixHit
from llmservingsim.serving.schedulers.base import SCHEDULERS, ScheduledEntry, Scheduler
from llmservingsim.serving.sequence import Sequence


@mypyc_attr(allow_interpreted_subclasses=True)
class VllmScheduler(Scheduler):
    supports_steady = True

    def prefill_tokens(
        self, seq: Sequence, hit: PrefixHit, budget: int, step_is_empty: bool
    ) -> int:
        """Tokens a waiting request may start with after its ``hit`` (0 = it must wait).

        Chunked: any part of what is left.
        """
        return min(seq.num_tokens - hit.tokens, budget)

    def repeats_decode(self) -> bool:
        # A refused waiting request stays refused: decoding only shrinks the free pool (and
        # no_evict's unpromised pool stays put); budget and batch size do not change.
        return self.blocks.fast_forward_safe

    def schedule(self) -> list[ScheduledEntry]:
        budget = self.max_num_batched_tokens
        # The steady decoders lead the running list: one token each, as a group.
        i = steady = self.begin_steady_step(budget)
        budget -= steady
        entries: list[ScheduledEntry] = []
        preempted = False
        running, blocks = self.running, self.blocks
        block_size = blocks.block_size
        only_grows = self.blocks.allocation_only_grows
        count, lookahead = len(running), self.lookahead
        while i < count and budget > 0:
            seq = running[i]
            if lookahead:
                wanted = self.tokens_wanted(seq)
            else:  # seq.remaining, inlined (hot: every running request, every step)
                wanted = seq.spec.input_len + seq.generated - seq.num_computed
            num_new = wanted if wanted < budget else budget
            # Most decode steps need no new block: then try_allocate would do nothing.
            fits = only_grows and seq.num_computed + num_new <= len(seq.blocks) * block_size
            preempted_itself = False
            while not (fits or blocks.try_allocate(seq, num_new)):
                victim = running.pop()
                count -= 1
                self.preempt(victim)
                preempted = True
                if victim is seq:
                    preempted_itself = True
                    break
            if preempted_itself:
                break  # the sequence itself was the last one left to preempt
            entries.append((seq, num_new))
            budget -= num_new
            i += 1
        if preempted or not self.waiting:
            return entries
        in_use = self.adapters_in_use()
        skipped: list[Sequence] = []  # their LoRA adapter has no slot this step
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self.adapters is not None and not self.adapter_ready(seq, in_use):
                skipped.append(self.waiting.popleft())
                continue
            hit = self.lookup(seq)
            num_new = self.prefill_tokens(seq, hit, budget, step_is_empty=not (entries or steady))
            if num_new == 0 or not self.blocks.can_allocate(seq, num_new, hit):
                break
            self.admit(seq, num_new, hit)
            entries.append((seq, num_new))
            budget -= num_new
        if skipped:
            self.waiting.extendleft(reversed(skipped))
        return entries


SCHEDULERS.register("vllm")(VllmScheduler)
SCHEDULERS.register("sarathi")(VllmScheduler)
