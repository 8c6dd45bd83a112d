"""Orca-style iteration-level batching: like vLLM V1 but prompts are never chunked.

A waiting request joins only when its whole prompt fits the step's remaining token budget.
A prompt longer than the whole budget may run alone in an otherwise empty step, or it would
wait forever (vLLM V0 without chunked prefill refuses such prompts at start-up instead).
"""

from __future__ import annotations

from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import PrefixHit
from llmservingsim.serving.schedulers.base import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler


class OrcaScheduler(VllmScheduler):
    def prefill_tokens(
        self, seq: Sequence, hit: PrefixHit, budget: int, step_is_empty: bool
    ) -> int:
        whole = seq.num_tokens - hit.tokens
        if whole <= budget or step_is_empty:
            return whole
        return 0


SCHEDULERS.register("orca")(OrcaScheduler)
