"""A request as the engine sees it while it is served."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from llmservingsim.workload.request_spec import RequestSpec


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    TRANSFERRING = "transferring"  # prefilled; its KV cache is moving to a decode instance
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(slots=True, eq=False)
class Sequence:
    """Token bookkeeping of one request.

    ``num_tokens`` (prompt + generated so far) is what the KV cache must eventually hold;
    ``num_computed`` of them already have KV. A step that brings ``num_computed`` up to
    ``num_tokens`` samples one new token. Preemption by recompute resets ``num_computed`` to 0,
    so the prompt *and* the tokens generated so far are prefilled again (less what the prefix
    cache still holds); preemption by swap keeps it and parks ``swapped_blocks`` in host memory.

    Prefix-cache state: ``nodes`` names the cached content of the first full blocks (see
    serving/prefix_cache.py), ``block_keys`` is the content of every full block the request's
    token description covers (computed once, dropped when the request leaves).
    ``cached_tokens`` is what the first admission found in the cache; ``max_computed`` and
    ``pass_start`` let the scheduler count tokens computed twice.
    """

    spec: RequestSpec
    status: Status = Status.WAITING
    num_computed: int = 0
    generated: int = 0
    blocks: list[int] = field(default_factory=list)
    first_scheduled_time: float = -1.0
    first_token_time: float = -1.0
    last_token_time: float = -1.0
    finish_time: float = -1.0
    preemptions: int = 0
    fail_reason: str = ""
    prefill_instance: int = -1  # P/D disaggregation: where the prompt was computed
    kv_transfer_s: float = 0.0  # time its KV cache spent moving to the decode instance
    admissions: int = 0  # times a scheduler admitted it (preemption and P/D hand-off re-admit)
    cached_tokens: int = 0
    swapped_blocks: int = 0
    max_computed: int = 0
    pass_start: int = 0
    nodes: list[int] = field(default_factory=list)
    block_keys: list[tuple[int, ...]] | None = None

    @property
    def id(self) -> int:
        return self.spec.id

    @property
    def num_tokens(self) -> int:
        return self.spec.input_len + self.generated

    @property
    def remaining(self) -> int:
        """Tokens still to compute before the next token can be sampled."""
        return self.num_tokens - self.num_computed

    @property
    def max_kv_tokens(self) -> int:
        """Tokens whose KV the request holds at its largest (the last token's is never written)."""
        return self.spec.input_len + self.spec.output_len - 1

    @property
    def is_done(self) -> bool:
        return self.generated >= self.spec.output_len
