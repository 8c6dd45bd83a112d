"""Request rows kept as columns: the object view, the summary and the memory they cost."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.config import SloConfig
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.request_log import (
    COLUMNS,
    RequestChunk,
    RequestLog,
    RequestRecord,
    RequestRecords,
)
from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.metrics.summary import FAILED_LISTED, latency_stats, meets_slo, request_metrics
from llmservingsim.sequence import Sequence
from llmservingsim.workload.request_spec import RequestSpec

times = st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def records(draw: st.DrawFn) -> list[RequestRecord]:
    """Rows in the shape the engine writes: unique ids, ordered times, codes for the strings."""
    n = draw(st.integers(0, 60))
    ids = draw(st.permutations(range(n)))
    rows = []
    for rid in ids:
        status = draw(st.sampled_from(["finished", "finished", "failed", "rejected", "timed_out"]))
        arrival = draw(times)
        first_token = arrival + draw(times)
        finish = first_token + draw(times)
        prefill = draw(st.integers(-1, 3))
        rows.append(
            RequestRecord(
                id=rid,
                instance=draw(st.integers(0, 3)),
                arrival_s=arrival,
                first_token_s=first_token if status == "finished" else -1.0,
                finish_s=finish,
                input_tokens=draw(st.integers(1, 5000)),
                output_tokens=draw(st.integers(1, 6)) if status == "finished" else 0,
                cached_tokens=draw(st.integers(0, 64)),
                preemptions=draw(st.integers(0, 3)),
                status=status,
                fail_reason="" if status == "finished" else draw(st.sampled_from(["full", "late"])),
                prefill_instance=prefill,
                kv_transfer_s=draw(times) if prefill >= 0 else 0.0,
                first_scheduled_s=arrival if status == "finished" else -1.0,
                lora=draw(st.sampled_from([None, "lora-0", "lora-7"])),
            )
        )
    return rows


def log_of(rows: list[RequestRecord], chunk_size: int) -> RequestLog:
    """The rows in a log sealed every ``chunk_size`` rows (the last ones left open)."""
    log = RequestLog(chunk_size)
    for i, row in enumerate(rows, 1):
        log.append_row(row)
        if i % chunk_size == 0:
            log.seal()
    return log


@settings(max_examples=60, deadline=None)
@given(rows=records(), chunk_size=st.integers(1, 9))
def test_the_view_gives_back_every_row_across_chunks(
    rows: list[RequestRecord], chunk_size: int
) -> None:
    view = RequestRecords(log_of(rows, chunk_size))
    assert len(view) == len(rows)
    assert list(view) == rows
    assert view == rows
    assert [view[i] for i in range(len(rows))] == rows
    assert view[1:-1:2] == rows[1:-1:2]
    if rows:
        assert view[-1] == rows[-1]
    with pytest.raises(IndexError):
        view[len(rows)]
    assert RequestChunk.from_records(rows).records() == rows


def reference_metrics(rows: list[RequestRecord], slo: SloConfig) -> dict[str, Any]:
    """summary.json's request numbers computed record by record (the definitions)."""
    done = [r for r in rows if r.status == "finished"]
    unserved = sorted((r for r in rows if r.status != "finished"), key=lambda r: r.id)
    first = min((r.arrival_s for r in done), default=0.0)
    duration = max((r.finish_s for r in done), default=0.0) - first
    rate = 1.0 / duration if duration > 0 else 0.0
    inp, out = sum(r.input_tokens for r in done), sum(r.output_tokens for r in done)
    return {
        "requests_completed": len(done),
        "requests_failed": sum(r.status == "failed" for r in unserved),
        "requests_rejected": sum(r.status == "rejected" for r in unserved),
        "requests_timed_out": sum(r.status == "timed_out" for r in unserved),
        "failed": [
            {"id": r.id, "status": r.status, "reason": r.fail_reason}
            for r in unserved[:FAILED_LISTED]
        ],
        "input_tokens": inp,
        "output_tokens": out,
        "benchmark_duration_s": duration,
        "request_throughput": len(done) * rate,
        "output_tokens_per_s": out * rate,
        "total_tokens_per_s": (inp + out) * rate,
        "ttft_s": latency_stats(r.ttft for r in done),
        "tpot_s": latency_stats(t for r in done if (t := r.tpot) is not None),
        "itl_s": RepeatedSamples().stats(),
        "e2e_s": latency_stats(r.e2e for r in done),
        "goodput": sum(meets_slo(r, slo) for r in done) * rate if slo.given else None,
    }


@settings(max_examples=60, deadline=None)
@given(
    rows=records(),
    chunk_size=st.integers(1, 9),
    ttft=st.sampled_from([None, 1.0, 500.0]),
    tpot=st.sampled_from([None, 0.5, 2000.0]),
    e2e=st.sampled_from([None, 3000.0]),
)
def test_column_summary_equals_the_per_record_definitions_exactly(
    rows: list[RequestRecord],
    chunk_size: int,
    ttft: float | None,
    tpot: float | None,
    e2e: float | None,
) -> None:
    slo = SloConfig(ttft_s=ttft, tpot_s=tpot, e2e_s=e2e)
    got = request_metrics(log_of(rows, chunk_size), RepeatedSamples(), slo)
    assert got == reference_metrics(rows, slo)  # ==, not approx: same values, same order


def test_a_finished_request_costs_tens_of_bytes() -> None:
    n = 20_000
    sequences = []
    for i in range(n):
        seq = Sequence(RequestSpec(i, 0.5, 100 + i, 7))
        seq.first_token_time, seq.generated = 1.0, 7
        sequences.append(seq)
    metrics = MetricsCollector(chunk_size=4096)
    now = 2.0
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for seq in sequences:
        metrics.on_finish(seq, 0, now)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown / n < 100, f"{grown / n:.0f} bytes per finished request"
    assert metrics.records[n - 1].input_tokens == 100 + n - 1
    assert np.array_equal(metrics.requests.column("id"), np.arange(n))


class Recorder:
    def __init__(self) -> None:
        self.chunks: list[RequestChunk] = []

    def write_requests(self, chunk: RequestChunk) -> None:
        self.chunks.append(chunk)


def end_one(metrics: MetricsCollector, r: RequestRecord) -> None:
    """The Python engine's way: a served request reaches its end with these fields."""
    spec = RequestSpec(r.id, r.arrival_s, r.input_tokens, max(r.output_tokens, 1), lora=r.lora)
    seq = Sequence(spec)
    seq.first_scheduled_time, seq.first_token_time = r.first_scheduled_s, r.first_token_s
    seq.generated, seq.cached_tokens, seq.preemptions = (
        r.output_tokens,
        r.cached_tokens,
        r.preemptions,
    )
    seq.prefill_instance, seq.kv_transfer_s = r.prefill_instance, r.kv_transfer_s
    if r.status == "finished":
        metrics.on_finish(seq, r.instance, r.finish_s)
    else:
        metrics.on_drop(seq, r.instance, r.finish_s, r.status, r.fail_reason)


def same_chunks(got: list[RequestChunk], want: list[RequestChunk]) -> bool:
    return [len(c) for c in got] == [len(c) for c in want] and all(
        a[name].tobytes() == b[name].tobytes()
        for a, b in zip(got, want, strict=True)
        for name in COLUMNS
    )
