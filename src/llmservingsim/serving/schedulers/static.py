"""Request-level (static) batching, as in FasterTransformer before continuous batching.

When the engine is idle it forms a batch of up to ``max_num_seqs`` waiting requests (FCFS,
prompts summing to at most ``max_num_batched_tokens``, except a single over-long one) and
reserves each request's KV for its whole output up front, so it never preempts. The batch
prefills together, then decodes until its *last* request finishes; no request joins a running
batch.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from llmservingsim.serving.schedulers.base import SCHEDULERS, ScheduledEntry, Scheduler


# A user's policy file may subclass it (docs/extending.md): the compiled class admits
# interpreted subclasses.
@mypyc_attr(allow_interpreted_subclasses=True)
class StaticScheduler(Scheduler):
    supports_steady = True

    def _form_batch(self) -> None:
        budget = self.max_num_batched_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hit = self.lookup(seq)
            # Reserve the KV of the whole lifetime now; a cached prefix is shared, not computed.
            lifetime = seq.max_kv_tokens - hit.tokens
            prompt = seq.num_tokens - hit.tokens
            if not self.blocks.can_allocate(seq, lifetime, hit) or (
                prompt > budget and self.running
            ):
                break
            self.admit(seq, lifetime, hit)
            budget -= prompt

    def repeats_decode(self) -> bool:
        # Nobody joins a running batch, and its KV was reserved up front.
        return self.blocks.fast_forward_safe

    def schedule(self) -> list[ScheduledEntry]:
        if not self.running:
            self._form_batch()
        steady = self.begin_steady_step(None)  # its KV was reserved: the group never dissolves
        return [(seq, seq.remaining) for seq in self.running[steady:]]


SCHEDULERS.register("static")(StaticScheduler)
