"""A workload's requests as numpy columns, handed out as ``RequestSpec`` objects one by one.

A million requests as a list of ``RequestSpec`` objects cost about 300 bytes each and seconds
to build; as columns (arrival, prompt and output lengths) they cost 24 bytes each and the
engine builds each request's object only when it arrives. Ids are the row numbers, rows are
in arrival order (:func:`load_workload <llmservingsim.workload.load_workload>` sorts them).

The table is a read-only ``Sequence[RequestSpec]``: ``len``, indexing, iteration and ``==``
against another sequence of requests work as they did on the list it replaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Sequence as SequenceOf
from typing import overload

import numpy as np
import numpy.typing as npt

from llmservingsim.row_sequence import RowSequence
from llmservingsim.workload.adapters import adapter_name
from llmservingsim.workload.request_spec import RequestSpec, TokenContent

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_BATCH = 4096
"""Rows converted to Python numbers at a time while iterating."""


class RequestTable(RowSequence[RequestSpec]):
    """Requests in arrival order: columns plus optional per-request content and adapters.

    ``contents[i]`` says what request i's tokens are (None: unknown); ``adapters[i]`` is the
    index of its LoRA adapter (named ``lora-<k>``), -1 for the base model.
    """

    def __init__(
        self,
        arrival_s: FloatArray,
        input_len: IntArray,
        output_len: IntArray,
        contents: SequenceOf[TokenContent | None] | None = None,
        loras: SequenceOf[str | None] | None = None,
    ) -> None:
        if np.any(np.diff(arrival_s) < 0):
            raise ValueError("RequestTable rows must be in arrival order")
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        self.input_len = np.asarray(input_len, dtype=np.int64)
        self.output_len = np.asarray(output_len, dtype=np.int64)
        self.contents = contents
        self.loras = loras

    @staticmethod
    def from_specs(specs: Iterable[RequestSpec]) -> RequestTable:
        """Requests in any order: sorted by arrival (ties keep their order), ids renumbered."""
        rows = list(specs)
        arrival = np.fromiter((r.arrival_s for r in rows), dtype=np.float64, count=len(rows))
        order = np.argsort(arrival, kind="stable").tolist()
        ordered = [rows[i] for i in order]
        contents = [r.content for r in ordered]
        loras = [r.lora for r in ordered]
        return RequestTable(
            arrival[order] if rows else arrival,
            np.fromiter((r.input_len for r in ordered), dtype=np.int64, count=len(rows)),
            np.fromiter((r.output_len for r in ordered), dtype=np.int64, count=len(rows)),
            contents if any(c is not None for c in contents) else None,
            loras if any(name is not None for name in loras) else None,
        )

    def with_adapters(self, picks: IntArray) -> RequestTable:
        """The same requests, request i running adapter ``picks[i]``."""
        return RequestTable(
            self.arrival_s,
            self.input_len,
            self.output_len,
            self.contents,
            AdapterNames(picks),
        )

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def _spec(self, i: int, arrival: float, input_len: int, output_len: int) -> RequestSpec:
        contents, loras = self.contents, self.loras
        return RequestSpec(
            id=i,
            arrival_s=arrival,
            input_len=input_len,
            output_len=output_len,
            content=None if contents is None else contents[i],
            lora=None if loras is None else loras[i],
        )

    def _row(self, index: int) -> RequestSpec:
        return self._spec(
            index,
            float(self.arrival_s[index]),
            int(self.input_len[index]),
            int(self.output_len[index]),
        )

    def __iter__(self) -> Iterator[RequestSpec]:
        contents, loras = self.contents, self.loras
        for start in range(0, len(self), _BATCH):
            end = min(start + _BATCH, len(self))
            rows = zip(
                range(start, end),
                self.arrival_s[start:end].tolist(),
                self.input_len[start:end].tolist(),
                self.output_len[start:end].tolist(),
                strict=True,
            )
            if contents is None and loras is None:
                # The common case (plain synthetic traffic), kept free of per-row branches.
                for i, arrival, input_len, output_len in rows:
                    yield RequestSpec(i, arrival, input_len, output_len)
            else:
                for i, arrival, input_len, output_len in rows:
                    yield self._spec(i, arrival, input_len, output_len)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestTable | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def first_with_lora(self) -> RequestSpec | None:
        """The first request that names a LoRA adapter, without building the others."""
        if self.loras is None:
            return None
        for i, name in enumerate(self.loras):
            if name is not None:
                return self[i]
        return None


class AdapterNames(SequenceOf[str]):
    """Adapter names by request, from adapter indices (a name is built when read)."""

    def __init__(self, picks: IntArray) -> None:
        self.picks = picks

    def __len__(self) -> int:
        return int(self.picks.size)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [adapter_name(k) for k in self.picks[index].tolist()]
        return adapter_name(int(self.picks[index]))


class PrefixContents(SequenceOf[TokenContent]):
    """Contents of synthetic requests behind shared system prompts, built when read.

    Request i's tokens are system prompt ``prompts[i]`` (``system_len`` tokens), then its own
    ``user[i]`` tokens (content id ``first_own_id + i``), cut to its clipped prompt length.
    """

    def __init__(
        self,
        namespace: str,
        prompts: IntArray,
        system_len: int,
        user: IntArray,
        input_len: IntArray,
        first_own_id: int,
    ) -> None:
        self.namespace = namespace
        self.prompts = prompts
        self.system_len = system_len
        self.user = user
        self.input_len = input_len
        self.first_own_id = first_own_id

    def __len__(self) -> int:
        return int(self.prompts.size)

    @overload
    def __getitem__(self, index: int) -> TokenContent: ...

    @overload
    def __getitem__(self, index: slice) -> list[TokenContent]: ...

    def __getitem__(self, index: int | slice) -> TokenContent | list[TokenContent]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        runs = (
            (int(self.prompts[index]), self.system_len),
            (self.first_own_id + index, int(self.user[index])),
        )
        return TokenContent(self.namespace, runs).truncated(int(self.input_len[index]))


def in_arrival_order(requests: Iterable[RequestSpec]) -> Iterator[RequestSpec]:
    """The requests by arrival time (ties in the given order), one at a time.

    A :class:`RequestTable` is already in that order and is walked lazily; anything else is
    sorted first.
    """
    if isinstance(requests, RequestTable):
        return iter(requests)
    return iter(sorted(requests, key=lambda r: r.arrival_s))


def first_with_lora(requests: Iterable[RequestSpec]) -> RequestSpec | None:
    """The first request that names a LoRA adapter (None: all run on the base model)."""
    if isinstance(requests, RequestTable):
        return requests.first_with_lora()
    return next((r for r in requests if r.lora is not None), None)
