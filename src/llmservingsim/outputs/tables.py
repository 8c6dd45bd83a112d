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
from llmservingsim.metrics.request_log import RequestChunk
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


def _masked(
    values: np.ndarray[Any, Any], null: np.ndarray[Any, Any], kind: pa.DataType
) -> pa.Array:
    """``values`` as an Arrow array with nulls where ``null`` is set."""
    return pa.array(values, type=kind, mask=null if null.any() else None)


def _strings(names: list[str | None]) -> pa.Array:
    return pa.array(names, type=pa.string())


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
            names = pa.array(self.client_names, type=pa.string())
            codes = pa.array(self.client[ids], type=pa.int32())
            client = pa.DictionaryArray.from_arrays(codes, names).cast(pa.string())
        if self.stage is None:
            stage = pa.nulls(ids.size, type=pa.int32())
        else:
            stage = pa.array(self.stage[ids], type=pa.int32())
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
        pa.array(chunk["id"], type=pa.int64()),
        pa.array(chunk["instance"], type=pa.int32()),
        _strings(list(chunk.status_names())),
        pa.array(arrival, type=pa.float64()),
        _masked(first_scheduled, first_scheduled < 0, pa.float64()),
        _masked(first_token, first_token < 0, pa.float64()),
        pa.array(finish, type=pa.float64()),
        pa.array(chunk["input_tokens"], type=pa.int64()),
        pa.array(output, type=pa.int64()),
        pa.array(chunk["cached_tokens"], type=pa.int64()),
        pa.array(chunk["preemptions"], type=pa.int32()),
        _masked(first_token - arrival, unserved, pa.float64()),
        _masked(tpot, no_tpot, pa.float64()),
        _masked(finish - arrival, unserved, pa.float64()),
        _strings(chunk.reason_names()),
        _masked(prefill, not_handed_off, pa.int32()),
        _masked(chunk["kv_transfer_s"], not_handed_off, pa.float64()),
        _strings(chunk.lora_names()),
        *(labels or RequestLabels()).columns(chunk["id"]),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=REQUESTS_SCHEMA)


def _coded(codes: np.ndarray[Any, Any], names: list[str]) -> pa.Array:
    """String column from codes into ``names`` (-1: null), built without a Python loop."""
    null = codes < 0
    indices = pa.array(codes, type=pa.int32(), mask=null if null.any() else None)
    dictionary = pa.array(names if names else [""], type=pa.string())
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())


def decisions_batch(chunk: DecisionChunk) -> pa.RecordBatch:
    """Arrow rows of decisions (metrics/decisions.py); candidates and scores as list columns."""
    offsets = pa.array(chunk.offsets.astype(np.int32), type=pa.int32())
    unscored = chunk["scored"] == 0
    columns = [
        pa.array(chunk["time_s"], type=pa.float64()),
        _coded(chunk["kind"].astype(np.int32), list(KINDS)),
        _masked(chunk["request_id"], chunk["request_id"] < 0, pa.int64()),
        _masked(chunk["instance"], chunk["instance"] < 0, pa.int32()),
        _coded(chunk["policy"], chunk.strings),
        pa.ListArray.from_arrays(offsets, pa.array(chunk.candidate_values, type=pa.int64())),
        pa.ListArray.from_arrays(
            offsets,
            pa.array(chunk.score_values, type=pa.float64()),
            mask=pa.array(unscored) if unscored.any() else None,
        ),
        _masked(chunk["chosen"], chunk["chosen"] < 0, pa.int64()),
        _coded(chunk["outcome"], chunk.strings),
        _coded(chunk["reason"], chunk.strings),
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
                self.write(pa.RecordBatch.from_pylist([], schema=self.schema))
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
    writer = TableWriter(out_dir, stem, schema, fmt, metadata)
    writer.write(pa.RecordBatch.from_pydict(columns, schema=writer.schema))
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
            table = pq.read_table(parquet, columns=columns)
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
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
