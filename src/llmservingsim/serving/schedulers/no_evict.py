"""Continuous batching that never evicts: TensorRT-LLM's GUARANTEED_NO_EVICT capacity policy.

Like ``vllm`` (token budget, running requests first, chunked prefill), but a waiting request is
admitted only when the KV blocks for its *whole* lifetime (prompt + every output token) fit in
what is not already promised to running requests. Running requests can therefore always grow,
and preemption never happens; the price is a smaller batch when outputs are long.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import PrefixHit
from llmservingsim.serving.schedulers.base import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler


# A user's policy file may subclass it (docs/extending.md): the compiled class admits
# interpreted subclasses.
@mypyc_attr(allow_interpreted_subclasses=True)
class NoEvictScheduler(VllmScheduler):
    def promised_blocks(self) -> int:
        """Blocks running requests will still claim before they finish."""
        lifetime = sum(self.max_blocks_needed(s) for s in self.running)
        if self.steady is not None:
            # A plain block manager (no sharing): running requests hold every block in use,
            # the steady decoders' not yet named ones included.
            return lifetime - self.blocks.num_used
        return lifetime - sum(len(s.blocks) for s in self.running)

    def prefill_tokens(
        self, seq: Sequence, hit: PrefixHit, budget: int, step_is_empty: bool
    ) -> int:
        unpromised = self.blocks.num_free - self.promised_blocks()
        lifetime = seq.max_kv_tokens - hit.tokens
        if self.blocks.extra_blocks(seq, lifetime, hit) > unpromised:
            return 0
        return super().prefill_tokens(seq, hit, budget, step_is_empty)


SCHEDULERS.register("no_evict")(NoEvictScheduler)
