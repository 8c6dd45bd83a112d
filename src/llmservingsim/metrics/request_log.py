"""Per-request rows of a run, kept column-wise: 81 bytes per request, no object each.

A million-request run used to keep a million ``RequestRecord`` objects (several hundred bytes
each, boxed floats included). Here an ended request is packed into one 81-byte row; every
``chunk_size`` rows the open rows are sealed into a :class:`RequestChunk` of numpy columns,
which the output sinks receive and the log keeps. The summary
reads whole-run numpy columns (:meth:`RequestLog.column`); code that wants objects reads
:class:`RequestRecords`, a sequence that builds ``RequestRecord`` rows on demand.

Strings (status, fail reason, LoRA adapter) are stored as small integer codes into tables
shared by all chunks.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmservingsim.perf.frontend import ClientClock
from llmservingsim.row_sequence import RowSequence
from llmservingsim.sequence import Sequence

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
AnyArray = npt.NDArray[Any]

STATUSES = ("finished", "failed", "rejected", "timed_out")
"""Status names by code (``RequestChunk.status``)."""
STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}
FINISHED = STATUS_CODE["finished"]


@dataclass(slots=True)
class RequestRecord:
    """One request's row, as an object (built on demand from the columns)."""

    id: int
    instance: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    input_tokens: int
    output_tokens: int
    cached_tokens: int  # prompt tokens the prefix cache supplied at the first admission
    preemptions: int
    status: str
    fail_reason: str = ""
    prefill_instance: int = -1
    kv_transfer_s: float = 0.0
    first_scheduled_s: float = -1.0
    """When the request first computed a token (end of queueing); -1 when it never ran."""
    lora: str | None = None
    """The LoRA adapter it ran with (None: the base model)."""

    @property
    def ttft(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def e2e(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def tpot(self) -> float | None:
        """vLLM benchmark_serving: (e2e − TTFT) / (output − 1), only for > 1 output token."""
        if self.output_tokens <= 1:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


# Column name -> struct/array typecode, in row order. Token counts fit int32 (a context window).
COLUMNS: dict[str, str] = {
    "id": "q",
    "instance": "i",
    "status": "b",
    "arrival_s": "d",
    "first_scheduled_s": "d",
    "first_token_s": "d",
    "finish_s": "d",
    "input_tokens": "i",
    "output_tokens": "i",
    "cached_tokens": "i",
    "preemptions": "i",
    "prefill_instance": "i",
    "kv_transfer_s": "d",
    "fail_reason": "i",  # code into RequestLog.reasons; -1: none
    "lora": "i",  # code into RequestLog.loras; -1: the base model
}
_NUMPY_TYPES = {"q": np.int64, "i": np.int32, "b": np.int8, "d": np.float64}
# One request is one packed row: native types, no padding, in column order.
_ROW = struct.Struct("=" + "".join(COLUMNS.values()))
_ROW_DTYPE = np.dtype([(name, _NUMPY_TYPES[t]) for name, t in COLUMNS.items()])
assert _ROW.size == _ROW_DTYPE.itemsize
_FINISH = struct.Struct("=d")
_FINISH_OFFSET = int(_ROW_DTYPE.fields["finish_s"][1])  # type: ignore[index]
"""One packed row as a numpy dtype (:meth:`RequestLog.extend` takes arrays of it)."""


class RequestChunk:
    """Consecutive request rows (in the order they ended) as numpy columns.

    ``reasons`` and ``loras`` are the log's string tables, which the codes index.
    """

    __slots__ = ("_columns", "loras", "reasons")

    def __init__(self, columns: dict[str, AnyArray], reasons: list[str], loras: list[str]) -> None:
        self._columns = columns
        self.reasons = reasons
        self.loras = loras

    def __len__(self) -> int:
        return int(self._columns["id"].size)

    def __getitem__(self, name: str) -> AnyArray:
        return self._columns[name]

    @property
    def finished(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self._columns["status"] == FINISHED)

    def status_names(self) -> list[str]:
        return [STATUSES[code] for code in self._columns["status"].tolist()]

    def reason_names(self) -> list[str | None]:
        """Each row's fail reason; None for none."""
        table = self.reasons
        return [table[c] if c >= 0 else None for c in self._columns["fail_reason"].tolist()]

    def lora_names(self) -> list[str | None]:
        table = self.loras
        return [table[c] if c >= 0 else None for c in self._columns["lora"].tolist()]

    def records(self, rows: npt.NDArray[np.bool_] | None = None) -> list[RequestRecord]:
        """The rows (all, or those selected by a boolean mask) as ``RequestRecord`` objects."""
        cols = self._columns
        if rows is not None:
            cols = {name: values[rows] for name, values in cols.items()}
        reasons, loras = self.reasons, self.loras
        return [
            RequestRecord(
                id=rid,
                instance=inst,
                arrival_s=arrival,
                first_token_s=first_token,
                finish_s=finish,
                input_tokens=inp,
                output_tokens=out,
                cached_tokens=cached,
                preemptions=preempt,
                status=STATUSES[status],
                fail_reason=reasons[reason] if reason >= 0 else "",
                prefill_instance=prefill,
                kv_transfer_s=transfer,
                first_scheduled_s=first_sched,
                lora=loras[lora] if lora >= 0 else None,
            )
            for (
                rid,
                inst,
                status,
                arrival,
                first_sched,
                first_token,
                finish,
                inp,
                out,
                cached,
                preempt,
                prefill,
                transfer,
                reason,
                lora,
            ) in zip(*(cols[name].tolist() for name in COLUMNS), strict=True)
        ]

    @staticmethod
    def from_records(records: SequenceOf[RequestRecord]) -> RequestChunk:
        """Rows given as objects (tests, callers that build records by hand)."""
        log = RequestLog()
        for r in records:
            log.append_row(r)
        return log.seal() or log.empty_chunk()


class RequestLog:
    """Append-only request rows: sealed chunks plus the open rows being filled.

    An ended request is packed into one byte row by a single ``struct`` call (cheaper than an
    append per column); sealing turns the open rows into numpy columns.
    """

    def __init__(self, chunk_size: int = 65_536) -> None:
        self.chunk_size = chunk_size
        self.chunks: list[RequestChunk] = []
        self.reasons: list[str] = []
        self.loras: list[str] = []
        self._reason_codes: dict[str, int] = {}
        self._lora_codes: dict[str, int] = {}
        self._sealed_rows = 0
        self._starts: list[int] = []  # first row index of each sealed chunk
        self._rows = bytearray()
        self._pack = _ROW.pack
        self._seal_at = chunk_size * _ROW.size
        self.client_clock: ClientClock | None = None
        """With a frontend (perf/frontend.py): rows hold the times the client sees."""

    def __len__(self) -> int:
        return self._sealed_rows + len(self._rows) // _ROW.size

    def _code(self, text: str | None, codes: dict[str, int], table: list[str]) -> int:
        if not text:
            return -1
        code = codes.get(text)
        if code is None:
            code = codes[text] = len(table)
            table.append(text)
        return code

    def append(self, seq: Sequence, instance: int, status: str) -> RequestChunk | None:
        """Add a request that ended; returns the chunk it sealed, if the open one filled up."""
        spec = seq.spec
        reason, lora = seq.fail_reason, spec.lora
        arrival, first_token, finish = spec.arrival_s, seq.first_token_time, seq.finish_time
        if self.client_clock is not None:
            arrival, first_token, finish = self.client_clock.times(
                spec.id,
                instance,
                arrival,
                seq.first_scheduled_time,
                first_token,
                finish,
                seq.generated,
                status == "finished",
            )
        rows = self._rows
        rows += self._pack(
            spec.id,
            instance,
            STATUS_CODE[status],
            arrival,
            seq.first_scheduled_time,
            first_token,
            finish,
            spec.input_len,
            seq.generated,
            seq.cached_tokens,
            seq.preemptions,
            seq.prefill_instance,
            seq.kv_transfer_s,
            self._code(reason, self._reason_codes, self.reasons) if reason else -1,
            self._code(lora, self._lora_codes, self.loras) if lora else -1,
        )
        if len(rows) >= self._seal_at:
            return self.seal()
        return None

    def append_row(self, r: RequestRecord) -> None:
        """Add a row given as an object (no chunk is sealed)."""
        self._rows += self._pack(
            r.id,
            r.instance,
            STATUS_CODE[r.status],
            r.arrival_s,
            r.first_scheduled_s,
            r.first_token_s,
            r.finish_s,
            r.input_tokens,
            r.output_tokens,
            r.cached_tokens,
            r.preemptions,
            r.prefill_instance,
            r.kv_transfer_s,
            self._code(r.fail_reason, self._reason_codes, self.reasons),
            self._code(r.lora, self._lora_codes, self.loras),
        )

    def seal(self) -> RequestChunk | None:
        """Close the open rows into a chunk (None when there are none) and start new rows."""
        if not self._rows:
            return None
        return self._seal_open()

    def _seal_open(self) -> RequestChunk:
        chunk = self._as_chunk(self._rows)
        self._rows = bytearray()
        self._starts.append(self._sealed_rows)
        self._sealed_rows += len(chunk)
        self.chunks.append(chunk)
        return chunk

    def _as_chunk(self, rows: bytes | bytearray) -> RequestChunk:
        """Packed rows as a chunk of contiguous columns (copies, so ``rows`` stays free)."""
        table = np.frombuffer(rows, dtype=_ROW_DTYPE)
        columns = {name: table[name].copy() for name in COLUMNS}
        del table  # (a bytearray cannot be resized while numpy views it)
        return RequestChunk(columns, self.reasons, self.loras)

    def empty_chunk(self) -> RequestChunk:
        return self._as_chunk(b"")

    def _parts(self) -> list[RequestChunk]:
        """Sealed chunks plus a copy of the open rows."""
        parts = list(self.chunks)
        if self._rows:
            parts.append(self._as_chunk(self._rows))
        return parts

    def column(self, name: str) -> AnyArray:
        """One column over every row so far, in the order the requests ended."""
        parts = [chunk[name] for chunk in self._parts()]
        if not parts:
            return np.zeros(0, dtype=_NUMPY_TYPES[COLUMNS[name]])
        return np.concatenate(parts)

    def whole(self) -> RequestChunk:
        """Every row so far as one chunk (copies the columns)."""
        parts = self._parts()
        if not parts:
            return self.empty_chunk()
        columns = {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}
        return RequestChunk(columns, self.reasons, self.loras)

    def finish_times(self, start: int, stop: int) -> list[float]:
        """``finish_s`` of rows ``start``..``stop - 1`` (recent rows: read without copying the
        log; the closed loop reads when the requests it sent ended)."""
        times: list[float] = []
        index = start
        while index < min(stop, self._sealed_rows):
            chunk, offset = self.row_chunk(index)
            assert chunk is not None
            part = chunk["finish_s"][offset : offset + stop - index].tolist()
            times.extend(part)
            index += len(part)
        rows, size, unpack = self._rows, _ROW.size, _FINISH.unpack_from
        for row in range(index - self._sealed_rows, stop - self._sealed_rows):
            times.append(unpack(rows, row * size + _FINISH_OFFSET)[0])
        return times

    def row_chunk(self, index: int) -> tuple[RequestChunk | None, int]:
        """The sealed chunk holding row ``index`` and the row's offset in it; (None, offset
        into the open rows) when the row is not sealed yet."""
        if index >= self._sealed_rows:
            return None, index - self._sealed_rows
        k = bisect_right(self._starts, index) - 1
        return self.chunks[k], index - self._starts[k]

    def open_record(self, offset: int) -> RequestRecord:
        size = _ROW.size
        return self._as_chunk(self._rows[offset * size : (offset + 1) * size]).records()[0]


class RequestRecords(RowSequence[RequestRecord]):
    """A read-only sequence of ``RequestRecord`` rows over a :class:`RequestLog`.

    Rows are built when read, so holding this view costs nothing; iterating a million rows
    builds a million short-lived objects, so whole-run numbers should read the log's columns.
    """

    def __init__(self, log: RequestLog) -> None:
        self._log = log

    def __len__(self) -> int:
        return len(self._log)

    def _row(self, index: int) -> RequestRecord:
        chunk, offset = self._log.row_chunk(index)
        if chunk is None:
            return self._log.open_record(offset)
        rows = np.zeros(len(chunk), dtype=bool)
        rows[offset] = True
        return chunk.records(rows)[0]

    def __iter__(self) -> Iterator[RequestRecord]:
        for chunk in self._log._parts():
            yield from chunk.records()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestRecords | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
