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
from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt

from llmservingsim.row_sequence import RowSequence
from llmservingsim.workload.adapters import adapter_name
from llmservingsim.workload.request_spec import (
    RequestSpec,
    RequestStream,
    TokenContent,
    request_specs,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_T = TypeVar("_T")

_BATCH = 4096
"""Rows converted to Python numbers at a time while iterating."""


class RequestTable(RowSequence[RequestSpec]):
    """Requests in arrival order: columns plus optional per-request content and adapters.

    ``contents[i]`` says what request i's tokens are (None: unknown); ``loras[i]`` names its
    LoRA adapter (None: the base model).

    Columns for traffic classes and staged arrivals (None when the workload has none):

    * ``client[i]``: index of request i's client into ``client_names`` (``workload.clients``
      order), int32;
    * ``priority[i]``: its client's scheduling priority, lower first, int64;
    * ``stage[i]``: index of the ``workload.stages`` entry during which it arrived, int32.
    """

    def __init__(
        self,
        arrival_s: FloatArray,
        input_len: IntArray,
        output_len: IntArray,
        contents: SequenceOf[TokenContent | None] | None = None,
        loras: SequenceOf[str | None] | None = None,
        *,
        client: npt.NDArray[np.int32] | None = None,
        client_names: tuple[str, ...] = (),
        priority: IntArray | None = None,
        stage: npt.NDArray[np.int32] | None = None,
    ) -> None:
        if np.any(np.diff(arrival_s) < 0):
            raise ValueError("RequestTable rows must be in arrival order")
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        self.input_len = np.asarray(input_len, dtype=np.int64)
        self.output_len = np.asarray(output_len, dtype=np.int64)
        self.contents = contents
        self.loras = loras
        self.client = None if client is None else np.asarray(client, dtype=np.int32)
        self.client_names = client_names
        self.priority = None if priority is None else np.asarray(priority, dtype=np.int64)
        self.stage = None if stage is None else np.asarray(stage, dtype=np.int32)
        n = self.arrival_s.size
        for name in ("client", "priority", "stage"):
            column = getattr(self, name)
            if column is not None and column.size != n:
                raise ValueError(f"RequestTable column {name} has {column.size} rows, not {n}")
        if (
            self.client is not None
            and self.client.size
            and (self.client.min() < 0 or self.client.max() >= len(client_names))
        ):
            raise ValueError("RequestTable: a client index is outside client_names")

    def _labels(self) -> dict[str, object]:
        return {
            "client": self.client,
            "client_names": self.client_names,
            "priority": self.priority,
            "stage": self.stage,
        }

    @staticmethod
    def from_specs(
        specs: Iterable[RequestSpec], client_names: tuple[str, ...] = ()
    ) -> RequestTable:
        """Requests in any order: sorted by arrival (ties keep their order), ids renumbered.

        With ``client_names``, every request's ``client`` indexes them."""
        rows = list(specs)
        arrival = np.fromiter((r.arrival_s for r in rows), dtype=np.float64, count=len(rows))
        order = np.argsort(arrival, kind="stable").tolist()
        ordered = [rows[i] for i in order]
        contents = [r.content for r in ordered]
        loras = [r.lora for r in ordered]
        client = priority = None
        if client_names:
            count = len(rows)
            client = np.fromiter((r.client for r in ordered), dtype=np.int32, count=count)
            priority = np.fromiter((r.priority for r in ordered), dtype=np.int64, count=count)
        return RequestTable(
            arrival[order] if rows else arrival,
            np.fromiter((r.input_len for r in ordered), dtype=np.int64, count=len(rows)),
            np.fromiter((r.output_len for r in ordered), dtype=np.int64, count=len(rows)),
            contents if any(c is not None for c in contents) else None,
            loras if any(name is not None for name in loras) else None,
            client=client,
            client_names=client_names,
            priority=priority if priority is not None and priority.any() else None,
        )

    def head(self, count: int) -> RequestTable:
        """The first ``count`` requests (those a closed loop bounded by time got to send)."""
        return RequestTable(
            self.arrival_s[:count],
            self.input_len[:count],
            self.output_len[:count],
            None if self.contents is None else self.contents[:count],
            None if self.loras is None else self.loras[:count],
            client=None if self.client is None else self.client[:count],
            client_names=self.client_names,
            priority=None if self.priority is None else self.priority[:count],
            stage=None if self.stage is None else self.stage[:count],
        )

    def with_adapters(self, picks: IntArray) -> RequestTable:
        """The same requests, request i running adapter ``picks[i]``."""
        return self.with_loras(AdapterNames(picks))

    def with_loras(self, loras: SequenceOf[str | None] | None) -> RequestTable:
        """The same requests, request i running adapter ``loras[i]``."""
        return RequestTable(
            self.arrival_s,
            self.input_len,
            self.output_len,
            self.contents,
            loras,
            **self._labels(),  # type: ignore[arg-type]
        )

    def with_clients(
        self,
        client: npt.NDArray[np.int32],
        names: tuple[str, ...],
        priorities: SequenceOf[int],
    ) -> RequestTable:
        """The same requests labelled with their clients (and the clients' priorities)."""
        prio = np.asarray(list(priorities), dtype=np.int64)
        return RequestTable(
            self.arrival_s,
            self.input_len,
            self.output_len,
            self.contents,
            self.loras,
            client=client,
            client_names=names,
            priority=prio[client] if prio.any() else None,
            stage=self.stage,
        )

    def client_name(self, i: int) -> str | None:
        """The name of request i's client (None when the workload has no clients)."""
        return None if self.client is None else self.client_names[int(self.client[i])]

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
            priority=0 if self.priority is None else int(self.priority[i]),
            client=-1 if self.client is None else int(self.client[i]),
        )

    def _row(self, index: int) -> RequestSpec:
        return self._spec(
            index,
            float(self.arrival_s[index]),
            int(self.input_len[index]),
            int(self.output_len[index]),
        )

    def __iter__(self) -> Iterator[RequestSpec]:
        return RequestStream(self._batches())

    def _batches(self) -> Iterator[list[RequestSpec]]:
        """The requests, ``_BATCH`` rows at a time."""
        contents, loras = self.contents, self.loras
        client, priority = self.client, self.priority
        for start in range(0, len(self), _BATCH):
            end = min(start + _BATCH, len(self))
            yield request_specs(
                start,
                self.arrival_s[start:end].tolist(),
                self.input_len[start:end].tolist(),
                self.output_len[start:end].tolist(),
                None if contents is None else contents[start:end],
                None if loras is None else loras[start:end],
                None if priority is None else priority[start:end].tolist(),
                None if client is None else client[start:end].tolist(),
            )

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


class NamedAdapters(SequenceOf[str | None]):
    """Adapter names by request from codes into ``names`` (-1: the base model)."""

    def __init__(self, codes: IntArray, names: SequenceOf[str]) -> None:
        self.codes = codes
        self.names = names

    def __len__(self) -> int:
        return int(self.codes.size)

    @overload
    def __getitem__(self, index: int) -> str | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[str | None]: ...

    def __getitem__(self, index: int | slice) -> str | list[str | None] | None:
        if isinstance(index, slice):
            names = self.names
            return [names[k] if k >= 0 else None for k in self.codes[index].tolist()]
        code = int(self.codes[index])
        return self.names[code] if code >= 0 else None


class SyntheticContents(SequenceOf[TokenContent]):
    """Contents of synthetic requests, built when read.

    Request i's tokens are system prompt ``prompts[i]`` (``system_len`` tokens; none when
    ``prompts`` is None), then its own text ``own_id[i]`` of ``own_len[i]`` tokens, cut to its
    clipped prompt length ``input_len[i]``. Requests sending the same prompt of a prompt pool
    share ``own_id``; otherwise each request has an id of its own.
    """

    def __init__(
        self,
        namespace: str,
        prompts: IntArray | None,
        system_len: int,
        own_id: IntArray,
        own_len: IntArray,
        input_len: IntArray,
    ) -> None:
        self.namespace = namespace
        self.prompts = prompts
        self.system_len = system_len
        self.own_id = own_id
        self.own_len = own_len
        self.input_len = input_len

    def __len__(self) -> int:
        return int(self.own_id.size)

    @overload
    def __getitem__(self, index: int) -> TokenContent: ...

    @overload
    def __getitem__(self, index: slice) -> list[TokenContent]: ...

    def __getitem__(self, index: int | slice) -> TokenContent | list[TokenContent]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        own_len = int(self.own_len[index])
        own = (int(self.own_id[index]), own_len)
        if self.prompts is None:
            runs: tuple[tuple[int, int], ...] = (own,)
        else:
            runs = ((int(self.prompts[index]), self.system_len), own)
        content = TokenContent(self.namespace, runs)
        input_len = int(self.input_len[index])
        if input_len < own_len + (0 if self.prompts is None else self.system_len):
            return content.truncated(input_len)  # clipped to the context window
        return content


class MergedRows(SequenceOf[_T]):
    """Rows of several per-client sequences interleaved in arrival order, read lazily.

    Row i is ``parts[part[i]][row[i]]``; a part that is None has None in every row.
    """

    def __init__(
        self,
        parts: SequenceOf[SequenceOf[_T] | None],
        part: npt.NDArray[np.int32],
        row: IntArray,
    ) -> None:
        self.parts = parts
        self.part = part
        self.row = row

    def __len__(self) -> int:
        return int(self.part.size)

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        source = self.parts[int(self.part[index])]
        if source is None:
            return None  # type: ignore[return-value]
        return source[int(self.row[index])]


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
