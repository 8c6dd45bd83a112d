"""Orca-style iteration-level batching: like vLLM V1 but prompts are never chunked.

A waiting request joins only when its whole prompt fits the step's remaining token budget
(:meth:`VllmScheduler.prefill_tokens` without chunked prefill). A prompt longer than the whole
budget may run alone in an otherwise empty step, or it would wait forever (vLLM V0 without
chunked prefill refuses such prompts at start-up instead).
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from llmservingsim.config import SchedulerConfig
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.schedulers.base import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler
from llmservingsim.serving.swap import SwapSpace


# A user's policy file may subclass it (docs/extending.md): the compiled class admits
# interpreted subclasses.
@mypyc_attr(allow_interpreted_subclasses=True)
class OrcaScheduler(VllmScheduler):
    def __init__(
        self, cfg: SchedulerConfig, blocks: BlockManager, swap: SwapSpace | None = None
    ) -> None:
        super().__init__(cfg, blocks, swap)
        self.chunked_prefill = False


SCHEDULERS.register("orca")(OrcaScheduler)
