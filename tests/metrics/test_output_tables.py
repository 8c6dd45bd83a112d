"""requests and timeseries tables: schemas round-trip, Parquet and CSV agree, rows stream."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import RunToDir
from llmservingsim.catalog import load_device
from llmservingsim.metrics.collector import MetricsCollector, RequestRecord
from llmservingsim.metrics.request_log import RequestChunk
from llmservingsim.outputs.tables import (
    REQUESTS_SCHEMA,
    TIMESERIES_SCHEMA,
    RequestTableSink,
    TableWriter,
    read_table,
    requests_batch,
)
from llmservingsim.sequence import Sequence
from llmservingsim.workload.request_spec import RequestSpec


def record(id_: int, status: str = "finished") -> RequestRecord:
    finished = status == "finished"
    return RequestRecord(
        id=id_,
        instance=0,
        arrival_s=1.0,
        first_token_s=1.5 if finished else -1.0,
        finish_s=3.5 if finished else 1.0,
        input_tokens=100,
        output_tokens=5 if finished else 0,
        cached_tokens=0,
        preemptions=0,
        status=status,
        fail_reason="" if finished else "needs 9 KV blocks, the cache has 4",
        first_scheduled_s=1.2 if finished else -1.0,
    )


def test_request_rows_round_trip_with_nulls_for_failed_requests(tmp_path: Path) -> None:
    sink = RequestTableSink(tmp_path, "parquet")
    sink.write_requests(RequestChunk.from_records([record(0), record(1, "failed")]))
    table = pq.read_table(sink.close())
    assert table.schema == REQUESTS_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["ttft_s"] == 0.5
    assert rows[0]["tpot_s"] == 0.5  # (3.5 - 1.5) / (5 - 1)
    assert rows[0]["e2e_s"] == 2.5
    assert rows[0]["first_scheduled_s"] == 1.2
    assert rows[0]["fail_reason"] is None
    failed = rows[1]
    assert failed["status"] == "failed"
    for key in ("ttft_s", "tpot_s", "e2e_s", "first_token_s", "first_scheduled_s"):
        assert failed[key] is None
    assert "KV blocks" in failed["fail_reason"]


def test_an_empty_run_still_writes_a_typed_table(tmp_path: Path) -> None:
    path = RequestTableSink(tmp_path, "csv").close()
    assert path.read_text().startswith('"id","instance","status"')
    cols = read_table(tmp_path, "requests", REQUESTS_SCHEMA)
    assert cols is not None
    assert cols["id"].size == 0


def test_rows_stream_in_chunks(tmp_path: Path) -> None:
    sink = RequestTableSink(tmp_path, "parquet")
    metrics = MetricsCollector(request_sinks=[sink], chunk_size=4)
    for i in range(10):
        seq = Sequence(RequestSpec(i, 1.0, 100, 5))
        seq.first_token_time, seq.generated = 1.5, 5
        metrics.on_finish(seq, 0, 3.5)
    assert len(metrics.requests.chunks) == 2  # two chunks of 4 already handed to the sink
    assert len(metrics.records) == 10
    metrics.flush()
    path = sink.close()
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert pq.read_table(path).column("id").to_pylist() == list(range(10))


def test_simulated_rows_match_the_collector(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir()
    table = pq.read_table(out / "requests.parquet")
    assert table.schema == REQUESTS_SCHEMA
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert len(by_id) == 60 == len(result.metrics.records)
    for rec in result.metrics.records:
        row = by_id[rec.id]
        assert row["ttft_s"] == rec.ttft
        assert row["e2e_s"] == rec.e2e
        assert row["input_tokens"] == rec.input_tokens
        assert row["output_tokens"] == rec.output_tokens
        assert row["cached_tokens"] == 0
        assert rec.arrival_s <= row["first_scheduled_s"] < row["first_token_s"] <= row["finish_s"]


def test_parquet_and_csv_hold_the_same_tables(run_to_dir: RunToDir) -> None:
    pq_dir, _ = run_to_dir(name="pq")
    csv_dir, _ = run_to_dir("outputs.format=csv", name="csv")
    for stem, schema in (("requests", REQUESTS_SCHEMA), ("timeseries", TIMESERIES_SCHEMA)):
        assert not (csv_dir / f"{stem}.parquet").exists()
        a = read_table(pq_dir, stem, schema)
        b = read_table(csv_dir, stem, schema)
        assert a is not None and b is not None
        assert list(a) == list(b) == schema.names
        for name in schema.names:
            if a[name].dtype.kind == "f":
                np.testing.assert_allclose(a[name], b[name], rtol=1e-12, equal_nan=True)
            else:
                assert a[name].tolist() == b[name].tolist()


def test_timeseries_rows_add_up_to_the_summary(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir()
    table = pq.read_table(out / "timeseries.parquet")
    assert table.schema == TIMESERIES_SCHEMA
    ts = {name: table.column(name).to_numpy() for name in table.column_names}
    s = result.summary
    assert len(ts["time_s"]) == s["iterations"]
    assert ts["prefill_tokens"].sum() == s["prefill_tokens_computed"]
    assert ts["decode_tokens"].sum() == s["decode_tokens_computed"]
    assert ts["batch_size"].max() == s["max_batch_size"]
    assert np.all(np.diff(ts["time_s"]) > 0)
    assert math.isclose(ts["kv_util"].max(), s["kv_cache_peak_util"], rel_tol=1e-12)
    # Busy energy plus idle power over the idle time is the run's energy.
    idle_w = load_device("h100-sxm").power.idle_w
    idle_s = s["simulated_time_s"] - ts["busy_s"].sum()
    assert math.isclose(ts["energy_j"].sum() + idle_w * idle_s, s["energy_j"], rel_tol=1e-9)


def test_batches_written_in_the_background_make_the_same_file(tmp_path: Path) -> None:
    chunks = [RequestChunk.from_records([record(i + 10 * k) for i in range(10)]) for k in range(5)]
    sink = RequestTableSink(tmp_path, "parquet")
    for chunk in chunks:
        sink.write_requests(chunk)
    path = sink.close()
    with pq.ParquetWriter(tmp_path / "direct.parquet", REQUESTS_SCHEMA, compression="zstd") as w:
        for chunk in chunks:
            w.write_batch(requests_batch(chunk))
    assert path.read_bytes() == (tmp_path / "direct.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.parquet", "requests.parquet"]


def test_a_failed_background_write_is_raised_and_leaves_no_file(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path, "requests", REQUESTS_SCHEMA, "parquet")
    writer.write(pa.RecordBatch.from_pylist([{"time_s": 1.0}], schema=TIMESERIES_SCHEMA))
    with pytest.raises(ValueError, match="schema"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
