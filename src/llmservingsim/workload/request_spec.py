"""The unit of work the simulator serves: one request's arrival, token counts and content."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as SequenceOf

ContentRun = tuple[int, int]
"""(content id, token count): ``count`` tokens of the piece of text named ``id``."""


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

    def __init__(
        self,
        namespace: str,
        runs: tuple[ContentRun, ...],
    ) -> None:
        self.namespace = namespace
        self.runs = runs

    def __repr__(self) -> str:
        return f"TokenContent(namespace={self.namespace!r}, runs={self.runs!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenContent):
            return NotImplemented
        return (self.namespace, self.runs) == (other.namespace, other.runs)

    def __hash__(self) -> int:
        return hash((self.namespace, self.runs))

    @property
    def num_tokens(self) -> int:
        return sum(count for _, count in self.runs)

    def __reduce__(self) -> tuple[type[TokenContent], tuple[str, tuple[ContentRun, ...]]]:
        """Pickled by its fields."""
        return (TokenContent, (self.namespace, self.runs))

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


RequestFields = tuple[int, float, int, int, TokenContent | None, str | None, int, int]
"""A :class:`RequestSpec`'s fields: id, arrival_s, input_len, output_len, content, lora,
priority, client."""


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
    content: TokenContent | None
    lora: str | None
    """The LoRA adapter the request runs with; None = the base model (docs/lora.md)."""
    priority: int
    """Scheduling priority of the request's client, lower first (vLLM's convention)."""
    client: int
    """Index of the request's client in ``workload.clients``; -1 when there are none."""

    def __init__(
        self,
        id: int,
        arrival_s: float,
        input_len: int,
        output_len: int,
        content: TokenContent | None = None,
        lora: str | None = None,
        priority: int = 0,
        client: int = -1,
    ) -> None:
        self.id = id
        self.arrival_s = arrival_s
        self.input_len = input_len
        self.output_len = output_len
        self.content = content
        self.lora = lora
        self.priority = priority
        self.client = client

    def fields(self) -> RequestFields:
        """Every field, in ``__init__``'s order: what equality, hashing and pickling use."""
        return (
            self.id,
            self.arrival_s,
            self.input_len,
            self.output_len,
            self.content,
            self.lora,
            self.priority,
            self.client,
        )

    def __reduce__(self) -> tuple[type[RequestSpec], RequestFields]:
        """Pickled by its fields (sweep and plan workers receive request streams)."""
        return (RequestSpec, self.fields())

    def replaced(self, *, arrival_s: float) -> RequestSpec:
        """A copy arriving at ``arrival_s`` (a request is a value: never changed in place)."""
        return RequestSpec(
            self.id,
            arrival_s,
            self.input_len,
            self.output_len,
            self.content,
            self.lora,
            self.priority,
            self.client,
        )

    def __repr__(self) -> str:
        return (
            f"RequestSpec("
            f"id={self.id!r}, "
            f"arrival_s={self.arrival_s!r}, "
            f"input_len={self.input_len!r}, "
            f"output_len={self.output_len!r}, "
            f"content={self.content!r}, "
            f"lora={self.lora!r}, "
            f"priority={self.priority!r}, "
            f"client={self.client!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestSpec):
            return NotImplemented
        return self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash(self.fields())


def request_specs(
    first_id: int,
    arrival_s: list[float],
    input_len: list[int],
    output_len: list[int],
    contents: SequenceOf[TokenContent | None] | None = None,
    loras: SequenceOf[str | None] | None = None,
    priorities: list[int] | None = None,
    clients: list[int] | None = None,
) -> list[RequestSpec]:
    """Consecutive rows of a request table as requests, ids from ``first_id`` on (the label
    lists, where given, hold each row's content, adapter, priority and client)."""
    specs: list[RequestSpec] = []
    for k in range(len(arrival_s)):
        specs.append(
            RequestSpec(
                first_id + k,
                arrival_s[k],
                input_len[k],
                output_len[k],
                None if contents is None else contents[k],
                None if loras is None else loras[k],
                0 if priorities is None else priorities[k],
                -1 if clients is None else clients[k],
            )
        )
    return specs


class RequestStream:
    """The requests of batches of requests, one at a time. Compiled, so the engine's loop
    takes each next request without resuming a Python generator."""

    def __init__(self, batches: Iterator[list[RequestSpec]]) -> None:
        self._batches = batches
        self._batch: list[RequestSpec] = []
        self._next = 0

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> RequestSpec:
        while self._next >= len(self._batch):
            self._batch = next(self._batches)  # StopIteration when every batch was handed out
            self._next = 0
        spec = self._batch[self._next]
        self._next += 1
        return spec
