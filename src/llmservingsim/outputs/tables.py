"""Tabular outputs (requests, timeseries, decisions) as Parquet or CSV, written in chunks
through Arrow (decisions: Parquet only, its candidates and scores are list columns).

Both formats go through one Arrow schema, so a CSV has exactly the Parquet columns (a missing
value is an empty CSV field, a null in Parquet). Files open lazily: a run that fails before its
first row leaves nothing behind. The schemas are documented in docs/outputs.md.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from llmservingsim.errors import UserError
from llmservingsim.metrics.decisions import KINDS, DecisionChunk
from llmservingsim.metrics.request_log import STATUSES, RequestChunk
from llmservingsim.outputs.files import temp_path
from llmservingsim.workload.request_table import RequestTable

TableFormat = Literal["parquet", "csv"]

REQUESTS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("instance", pa.int32()),
        ("status", pa.string()),
        ("arrival_s", pa.float64()),
        ("first_scheduled_s", pa.float64()),
        ("first_token_s", pa.float64()),
        ("finish_s", pa.float64()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("preemptions", pa.int32()),
        ("ttft_s", pa.float64()),
        ("tpot_s", pa.float64()),
        ("e2e_s", pa.float64()),
        ("fail_reason", pa.string()),
        ("prefill_instance", pa.int32()),
        ("kv_transfer_s", pa.float64()),
        ("lora", pa.string()),
        ("client", pa.string()),
        ("stage", pa.int32()),
    ]
)

TIMESERIES_SCHEMA = pa.schema(
    [
        ("time_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("instance", pa.int32()),
        ("iterations", pa.int64()),
        ("busy_s", pa.float64()),
        ("batch_size", pa.float64()),
        ("prefill_tokens", pa.int64()),
        ("decode_tokens", pa.int64()),
        ("kv_blocks_used", pa.int64()),
        ("kv_util", pa.float64()),
        ("queue_len", pa.float64()),
        ("power_w", pa.float64()),
        ("energy_j", pa.float64()),
    ]
)

DECISIONS_SCHEMA = pa.schema(
    [
        ("time_s", pa.float64()),
        ("kind", pa.string()),
        ("request_id", pa.int64()),
        ("instance", pa.int32()),
        ("policy", pa.string()),
        ("candidates", pa.list_(pa.int64())),
        ("scores", pa.list_(pa.float64())),
        ("chosen", pa.int64()),
        ("outcome", pa.string()),
        ("reason", pa.string()),
    ]
)


# Columns are built from their numpy buffers (``pa.Array.from_buffers``), never with
# ``pa.array``: pyarrow's conversion asks its pandas shim whether the input is a pandas object,
# and the shim imports pandas to answer when pandas is installed (0.3 s of CPU, a third of a
# short run's start-up; docs/performance.md, "Start-up").
_NUMPY_TYPES: dict[pa.DataType, type[np.generic]] = {
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float64(): np.float64,
}


def _validity(null: npt.NDArray[np.bool_] | None) -> tuple[pa.Buffer | None, int]:
    """Arrow's validity bitmap (bit set: a value) and null count of a null mask."""
    if null is None:
        return None, 0
    nulls = int(np.count_nonzero(null))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(~null, bitorder="little")), nulls


def _column(
    values: np.ndarray[Any, Any], kind: pa.DataType, null: npt.NDArray[np.bool_] | None = None
) -> pa.Array:
    """``values`` as an Arrow array of ``kind`` (int32, int64 or float64), null where ``null``
    is set."""
    data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[kind])
    validity, nulls = _validity(null)
    return pa.Array.from_buffers(
        kind, int(data.size), [validity, pa.py_buffer(data)], null_count=nulls
    )


def _named(codes: np.ndarray[Any, Any], names: SequenceOf[str]) -> pa.Array:
    """The string ``names[code]`` of each row; null where ``code`` is negative.

    Built byte by byte with numpy (a dictionary array decoded by Arrow would import
    pyarrow.compute, 0.03 s): each row's bytes are its name's slice of the joined names."""
    encoded = [name.encode() for name in names]
    # Name k's bytes are pool[start[k]:start[k + 1]]; the extra last name is the empty null.
    start = np.zeros(len(encoded) + 2, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=start[1:-1])
    start[-1] = start[-2]
    absent = codes < 0
    which = np.where(absent, len(encoded), codes)
    length = start[which + 1] - start[which]
    offsets = np.zeros(which.size + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    assert offsets[-1] < 2**31, "a string column of one batch over 2 GiB"
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], length)
    pool = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    data = pool[np.repeat(start[which], length) + within]
    validity, nulls = _validity(absent)
    return pa.Array.from_buffers(
        pa.string(),
        int(which.size),
        [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
        null_count=nulls,
    )


@dataclass(frozen=True)
class RequestLabels:
    """Workload columns by request id joined onto the request rows (client, stage)."""

    client: npt.NDArray[np.int32] | None = None
    client_names: tuple[str, ...] = ()
    stage: npt.NDArray[np.int32] | None = None

    @staticmethod
    def of(requests: object) -> RequestLabels:
        """The labels of a workload's ``RequestTable`` (none for a plain list of requests)."""
        if not isinstance(requests, RequestTable):
            return RequestLabels()
        return RequestLabels(requests.client, requests.client_names, requests.stage)

    def columns(self, ids: npt.NDArray[np.int64]) -> tuple[pa.Array, pa.Array]:
        if self.client is None:
            client = pa.nulls(ids.size, type=pa.string())
        else:
            client = _named(self.client[ids], self.client_names)
        if self.stage is None:
            stage = pa.nulls(ids.size, type=pa.int32())
        else:
            stage = _column(self.stage[ids], pa.int32())
        return client, stage


def requests_batch(chunk: RequestChunk, labels: RequestLabels | None = None) -> pa.RecordBatch:
    """Arrow rows of finished/failed requests; latencies are null for failed requests."""
    unserved = ~chunk.finished
    arrival, first_token, finish = chunk["arrival_s"], chunk["first_token_s"], chunk["finish_s"]
    output = chunk["output_tokens"]
    no_tpot = unserved | (output <= 1)
    # Denominator 1 where there is no TPOT (masked anyway), so nothing divides by zero.
    tpot = (finish - first_token) / (np.where(no_tpot, 2, output) - 1)
    first_scheduled = chunk["first_scheduled_s"]
    prefill = chunk["prefill_instance"]
    not_handed_off = prefill < 0
    columns = [
        _column(chunk["id"], pa.int64()),
        _column(chunk["instance"], pa.int32()),
        _named(chunk["status"], STATUSES),
        _column(arrival, pa.float64()),
        _column(first_scheduled, pa.float64(), first_scheduled < 0),
        _column(first_token, pa.float64(), first_token < 0),
        _column(finish, pa.float64()),
        _column(chunk["input_tokens"], pa.int64()),
        _column(output, pa.int64()),
        _column(chunk["cached_tokens"], pa.int64()),
        _column(chunk["preemptions"], pa.int32()),
        _column(first_token - arrival, pa.float64(), unserved),
        _column(tpot, pa.float64(), no_tpot),
        _column(finish - arrival, pa.float64(), unserved),
        _named(chunk["fail_reason"], chunk.reasons),
        _column(prefill, pa.int32(), not_handed_off),
        _column(chunk["kv_transfer_s"], pa.float64(), not_handed_off),
        _named(chunk["lora"], chunk.loras),
        *(labels or RequestLabels()).columns(chunk["id"]),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=REQUESTS_SCHEMA)


def decisions_batch(chunk: DecisionChunk) -> pa.RecordBatch:
    """Arrow rows of decisions (metrics/decisions.py); candidates and scores as list columns."""
    offsets = _column(chunk.offsets, pa.int32())
    unscored = np.asarray(chunk["scored"] == 0)
    unscored_mask = pa.Array.from_buffers(
        pa.bool_(),
        int(unscored.size),
        [None, pa.py_buffer(np.packbits(unscored, bitorder="little"))],
    )
    columns = [
        _column(chunk["time_s"], pa.float64()),
        _named(chunk["kind"], KINDS),
        _column(chunk["request_id"], pa.int64(), chunk["request_id"] < 0),
        _column(chunk["instance"], pa.int32(), chunk["instance"] < 0),
        _named(chunk["policy"], chunk.strings),
        pa.ListArray.from_arrays(offsets, _column(np.asarray(chunk.candidate_values), pa.int64())),
        pa.ListArray.from_arrays(
            offsets,
            _column(np.asarray(chunk.score_values), pa.float64()),
            mask=unscored_mask if unscored.any() else None,
        ),
        _column(chunk["chosen"], pa.int64(), chunk["chosen"] < 0),
        _named(chunk["outcome"], chunk.strings),
        _named(chunk["reason"], chunk.strings),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=DECISIONS_SCHEMA)


class _BackgroundWrite(threading.Thread):
    """One batch handed to the file writer off the calling thread; :meth:`finish` waits for it
    and raises what the write raised."""

    def __init__(self, writer: pq.ParquetWriter | pacsv.CSVWriter, batch: pa.RecordBatch) -> None:
        super().__init__(name="llmservingsim-table-write")
        self._writer = writer
        self._batch = batch
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._writer.write_batch(self._batch)
        except BaseException as exc:  # re-raised in the caller's thread by finish()
            self._error = exc

    def finish(self) -> None:
        self.join()
        if self._error is not None:
            raise self._error


class TableWriter:
    """Appends record batches to ``<stem>.parquet`` or ``<stem>.csv``; opens on the first batch.

    Rows stream into a hidden temporary file renamed into place by :meth:`close`, so a run
    stopped midway never leaves a truncated table (:meth:`abort` deletes the temporary).

    Arrow encodes and compresses a batch without holding the GIL, so each batch is written by a
    thread while the caller goes on (the simulation, producing the next batch): writing a
    million request rows takes ~1.5 s, nearly all of it hidden on a second core. One batch is
    in flight at a time and batches are written in order, so the file is the same.
    """

    def __init__(
        self,
        out_dir: Path,
        stem: str,
        schema: pa.Schema,
        fmt: TableFormat,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.path = out_dir / f"{stem}.{fmt}"
        # Parquet keeps ``metadata`` (version, resolved config) as JSON under "llmservingsim".
        if metadata is not None and fmt == "parquet":
            schema = schema.with_metadata({"llmservingsim": json.dumps(metadata)})
        self.schema = schema
        self.format = fmt
        self._tmp = temp_path(self.path)
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        self._in_flight: _BackgroundWrite | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        self._wait()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
            else:
                self._writer = pacsv.CSVWriter(self._tmp, self.schema)
        self._in_flight = _BackgroundWrite(self._writer, batch)

    def _wait(self) -> None:
        """Wait for the batch in flight, if any; raises what its write raised."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.finish()

    def close(self) -> Path:
        """Finish the file (an empty table when nothing was written) and return its path."""
        try:
            if self._writer is None:
                empty = [pa.nulls(0, type=field.type) for field in self.schema]
                self.write(pa.RecordBatch.from_arrays(empty, schema=self.schema))
            self._wait()
            writer, self._writer = self._writer, None
            assert writer is not None
            writer.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the rows written so far (the run failed): no file is left behind."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.join()  # its error, if any, no longer matters
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)


class RequestTableSink:
    """A :class:`~llmservingsim.metrics.collector.RequestSink` that streams requests to a file."""

    def __init__(
        self,
        out_dir: Path,
        fmt: TableFormat,
        metadata: dict[str, Any] | None = None,
        labels: RequestLabels | None = None,
    ) -> None:
        self.writer = TableWriter(out_dir, "requests", REQUESTS_SCHEMA, fmt, metadata)
        self.labels = labels

    def write_requests(self, chunk: RequestChunk) -> None:
        self.writer.write(requests_batch(chunk, self.labels))

    def close(self) -> Path:
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class DecisionTableSink:
    """A :class:`~llmservingsim.metrics.decisions.DecisionSink` that streams decisions.parquet
    (one row group per chunk)."""

    def __init__(self, out_dir: Path, metadata: dict[str, Any] | None = None) -> None:
        self.writer = TableWriter(out_dir, "decisions", DECISIONS_SCHEMA, "parquet", metadata)

    def write_decisions(self, chunk: DecisionChunk) -> None:
        self.writer.write(decisions_batch(chunk))

    def close(self) -> Path:
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def write_table(
    out_dir: Path,
    stem: str,
    schema: pa.Schema,
    columns: dict[str, Any],
    fmt: TableFormat,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """A table of ``columns`` (named by ``schema``) in one batch. Numeric columns (numpy) are
    built from their buffers; others (strings, e.g. compare's deltas) through ``pa.array``."""
    writer = TableWriter(out_dir, stem, schema, fmt, metadata)
    arrays = [
        _column(columns[field.name], field.type)
        if field.type in _NUMPY_TYPES
        else pa.array(columns[field.name], type=field.type)
        for field in schema
    ]
    writer.write(pa.RecordBatch.from_arrays(arrays, schema=writer.schema))
    return writer.close()


def read_table(
    out_dir: Path, stem: str, schema: pa.Schema, columns: list[str] | None = None
) -> dict[str, np.ndarray[Any, Any]] | None:
    """``<stem>.parquet`` (or, failing that, ``<stem>.csv``) as numpy columns; None if absent.

    Nulls become NaN in float columns, so a failed request's latency reads as NaN. ``columns``
    reads only those (a million-row table's string columns alone are tens of MiB as objects).
    """
    parquet, csv = out_dir / f"{stem}.parquet", out_dir / f"{stem}.csv"
    try:
        if parquet.exists():
            # One file: ParquetFile reads it without the datasets layer (pq.read_table's), whose
            # import imports pandas.
            with pq.ParquetFile(parquet) as file:
                table = file.read(columns=columns)
        elif csv.exists():
            types = pacsv.ConvertOptions(
                column_types=dict(zip(schema.names, schema.types, strict=True)),
                strings_can_be_null=True,
                include_columns=columns,
            )
            table = pacsv.read_csv(csv, convert_options=types)
        else:
            return None
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(
            f"{parquet if parquet.exists() else csv}: unreadable table: {exc}"
        ) from None
    return {name: _numpy(table.column(name)) for name in table.column_names}


def _numpy(column: pa.ChunkedArray) -> np.ndarray[Any, Any]:
    """A column as numpy, as ``to_numpy(zero_copy_only=False)`` gives it (nulls: NaN, an integer
    column with nulls as float64); numeric columns are read from their buffers, since Arrow's
    conversion imports pandas (the strings still go through it)."""
    dtype = _NUMPY_TYPES.get(column.type)
    if dtype is None:
        strings: np.ndarray[Any, Any] = column.to_numpy(zero_copy_only=False)
        return strings
    parts = [np.empty(0, dtype=dtype)]
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=dtype, count=chunk.offset + len(chunk))[chunk.offset :]
        if chunk.null_count:
            bits = np.frombuffer(validity, dtype=np.uint8)
            valid = np.unpackbits(bits, count=chunk.offset + len(chunk), bitorder="little")
            values = np.where(valid[chunk.offset :].astype(bool), values, np.nan)
        parts.append(values)
    return np.concatenate(parts)
