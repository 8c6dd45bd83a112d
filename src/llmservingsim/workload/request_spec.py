"""The unit of work the simulator serves: one request's arrival, token counts and content."""

from __future__ import annotations

from dataclasses import dataclass

ContentRun = tuple[int, int]
"""(content id, token count): ``count`` tokens of the piece of text named ``id``."""


@dataclass(frozen=True, slots=True)
class TokenContent:
    """What a request's tokens are, so requests with a common prefix can share KV blocks.

    ``runs`` describe the tokens from the first one on, as (content id, token count) pairs.
    A run names a piece of text by id; two runs with the same id hold the same tokens, and a
    shorter run of an id is the start of a longer one. So two requests whose runs agree up to
    token N have the same first N tokens. Ids are compared only within one ``namespace`` (a
    trace's hash ids never match a generator's ids). Runs may cover the prompt alone, or the
    prompt and the output (a multi-turn session resends the answer in its next prompt); tokens
    past the runs are unknown and never shared.
    """

    namespace: str
    runs: tuple[ContentRun, ...]

    @property
    def num_tokens(self) -> int:
        return sum(count for _, count in self.runs)

    def truncated(self, num_tokens: int) -> TokenContent:
        """The description of the first ``num_tokens`` tokens (after context clipping)."""
        runs: list[ContentRun] = []
        left = num_tokens
        for cid, count in self.runs:
            if left <= 0:
                break
            runs.append((cid, min(count, left)))
            left -= count
        return TokenContent(self.namespace, tuple(runs))


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the workload describes it, before any serving decision.

    Lengths are already clipped to the model's context window, so the serving side can trust
    ``input_len + output_len <= max_context`` without re-checking. ``content`` is None when
    the workload does not say what the tokens are: such a request never shares KV blocks.
    """

    id: int
    arrival_s: float
    input_len: int
    output_len: int
    content: TokenContent | None = None
    lora: str | None = None
    """The LoRA adapter the request runs with; None = the base model (docs/lora.md)."""
    priority: int = 0
    """Scheduling priority of the request's client, lower first (vLLM's convention)."""
    client: int = -1
    """Index of the request's client in ``workload.clients``; -1 when there are none."""
