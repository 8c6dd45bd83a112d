"""A request as the engine sees it while it is served."""

from __future__ import annotations

from enum import Enum

from llmservingsim.workload.request_spec import RequestSpec


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    TRANSFERRING = "transferring"  # prefilled; its KV cache is moving to a decode instance
    FINISHED = "finished"
    FAILED = "failed"


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
    status: Status
    num_computed: int
    generated: int
    blocks: list[int]
    first_scheduled_time: float
    first_token_time: float
    last_token_time: float
    finish_time: float
    preemptions: int
    fail_reason: str
    prefill_instance: int  # P/D disaggregation: where the prompt was computed
    kv_transfer_s: float  # time its KV cache spent moving to the decode instance
    admissions: int  # times a scheduler admitted it (preemption and P/D hand-off re-admit)
    cached_tokens: int
    swapped_blocks: int
    max_computed: int
    pass_start: int
    nodes: list[int]
    block_keys: list[tuple[int, ...]] | None

    def __init__(
        self,
        spec: RequestSpec,
        status: Status = Status.WAITING,
        num_computed: int = 0,
        generated: int = 0,
        blocks: list[int] | None = None,
        first_scheduled_time: float = -1.0,
        first_token_time: float = -1.0,
        last_token_time: float = -1.0,
        finish_time: float = -1.0,
        preemptions: int = 0,
        fail_reason: str = "",
        prefill_instance: int = -1,
        kv_transfer_s: float = 0.0,
        admissions: int = 0,
        cached_tokens: int = 0,
        swapped_blocks: int = 0,
        max_computed: int = 0,
        pass_start: int = 0,
        nodes: list[int] | None = None,
        block_keys: list[tuple[int, ...]] | None = None,
    ) -> None:
        self.spec = spec
        self.status = status
        self.num_computed = num_computed
        self.generated = generated
        self.blocks: list[int] = list() if blocks is None else blocks
        self.first_scheduled_time = first_scheduled_time
        self.first_token_time = first_token_time
        self.last_token_time = last_token_time
        self.finish_time = finish_time
        self.preemptions = preemptions
        self.fail_reason = fail_reason
        self.prefill_instance = prefill_instance
        self.kv_transfer_s = kv_transfer_s
        self.admissions = admissions
        self.cached_tokens = cached_tokens
        self.swapped_blocks = swapped_blocks
        self.max_computed = max_computed
        self.pass_start = pass_start
        self.nodes: list[int] = list() if nodes is None else nodes
        self.block_keys = block_keys

    def __repr__(self) -> str:
        return (
            f"Sequence("
            f"spec={self.spec!r}, "
            f"status={self.status!r}, "
            f"num_computed={self.num_computed!r}, "
            f"generated={self.generated!r}, "
            f"blocks={self.blocks!r}, "
            f"first_scheduled_time={self.first_scheduled_time!r}, "
            f"first_token_time={self.first_token_time!r}, "
            f"last_token_time={self.last_token_time!r}, "
            f"finish_time={self.finish_time!r}, "
            f"preemptions={self.preemptions!r}, "
            f"fail_reason={self.fail_reason!r}, "
            f"prefill_instance={self.prefill_instance!r}, "
            f"kv_transfer_s={self.kv_transfer_s!r}, "
            f"admissions={self.admissions!r}, "
            f"cached_tokens={self.cached_tokens!r}, "
            f"swapped_blocks={self.swapped_blocks!r}, "
            f"max_computed={self.max_computed!r}, "
            f"pass_start={self.pass_start!r}, "
            f"nodes={self.nodes!r}, "
            f"block_keys={self.block_keys!r}"
            ")"
        )

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
