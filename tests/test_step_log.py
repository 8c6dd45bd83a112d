"""StepLog: steps appended one by one, as decode-run arrays or as packed rows (the compiled
loop) come back as the same columns, and reach the sinks in the same chunks."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulk_helpers import pieces
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.steps import _ROW_DTYPE, ROW_SIZE, STEP_FIELDS, StepChunk, StepLog

counts = st.integers(0, 2**40)
times = st.floats(allow_nan=False, allow_infinity=False, width=64)
step = st.tuples(
    counts, counts, times, times, counts, counts, counts, counts, counts, counts, times
)
run_rows = st.lists(st.tuples(times, times, counts, times), min_size=1, max_size=5)
run = st.tuples(counts, counts, run_rows, counts, counts, counts)  # one decode run (extend)


@given(st.lists(st.one_of(step, run), max_size=12))
def test_rows_and_runs_come_back_exactly(entries: list[tuple[Any, ...]]) -> None:
    log, want = StepLog(), []
    for entry in entries:
        if len(entry) == len(STEP_FIELDS):
            assert log.append(*entry) == len(want) + 1
            want.append(entry)
            continue
        instance, engine, rows, seqs, total, waiting = entry
        start, duration, used, power = (np.array(c) for c in zip(*rows, strict=True))
        log.extend(instance, engine, start, duration, seqs, used, total, waiting, power)
        for s, d, u, p in rows:
            want.append((instance, engine, s, d, seqs, 0, seqs, u, total, waiting, p))
    assert len(log) == len(want)
    chunk = log.take_chunk()
    assert len(log) == 0 and len(chunk) == len(want)
    for index, name in enumerate(STEP_FIELDS):
        column = getattr(chunk, name)
        assert column.dtype == (
            np.float64 if name in ("start_s", "duration_s", "power_w") else np.int64
        )
        assert column.flags.c_contiguous
        assert column.tolist() == [row[index] for row in want], name


def test_an_empty_log_gives_empty_columns_and_the_buffer_is_reusable() -> None:
    log = StepLog()
    assert len(log.take_chunk()) == 0
    log.append(1, 0, 0.5, 0.01, 3, 10, 2, 7, 100, 0, 300.0)
    assert len(StepChunk.concat([log.take_chunk(), log.take_chunk()])) == 1
    with pytest.raises(struct.error):  # a count must be an integer
        log.append(1, 0, 0.5, 0.01, 3.5, 10, 2, 7, 100, 0, 300.0)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.chunks: list[StepChunk] = []

    def write_steps(self, steps: StepChunk) -> None:
        self.chunks.append(steps)


def same_chunks(got: list[StepChunk], want: list[StepChunk]) -> bool:
    return [len(c) for c in got] == [len(c) for c in want] and all(
        getattr(a, name).tobytes() == getattr(b, name).tobytes()
        for a, b in zip(got, want, strict=True)
        for name in STEP_FIELDS
    )


@given(st.data(), st.lists(step, max_size=12))
def test_packed_rows_equal_rows_appended_one_by_one(
    data: st.DataObject, steps: list[tuple[Any, ...]]
) -> None:
    single, bulk = StepLog(), StepLog()
    for entry in steps:
        single.append(*entry)
    packed = b"".join(struct.pack("=qqddqqqqqqd", *entry) for entry in steps)
    for start, stop in data.draw(pieces(len(steps))):
        assert bulk.extend_packed(packed[start * ROW_SIZE : stop * ROW_SIZE]) == stop
    assert same_chunks([bulk.take_chunk()], [single.take_chunk()])


def test_packed_rows_must_be_whole_rows() -> None:
    with pytest.raises(ValueError, match="not whole step rows"):
        StepLog().extend_packed(bytes(ROW_SIZE + 3))


@given(st.data(), st.lists(step, max_size=14), st.integers(1, 5))
def test_the_collector_hands_packed_steps_over_in_the_same_chunks(
    data: st.DataObject, steps: list[tuple[Any, ...]], chunk_size: int
) -> None:
    """A chunk is handed over when it fills up, whether rows came one by one or packed."""
    single, bulk = Recorder(), Recorder()
    one_by_one = MetricsCollector(step_sinks=[single], chunk_size=chunk_size)
    packed = MetricsCollector(step_sinks=[bulk], chunk_size=chunk_size)
    for entry in steps:
        one_by_one.on_step(*entry)
    rows = np.array([tuple(entry) for entry in steps], dtype=_ROW_DTYPE).tobytes()
    for start, stop in data.draw(pieces(len(steps))):
        if data.draw(st.booleans()):  # a step of the Python engine between packed ones
            packed.on_packed_steps(rows[start * ROW_SIZE : stop * ROW_SIZE])
        else:
            for entry in steps[start:stop]:
                packed.on_step(*entry)
    one_by_one.flush()
    packed.flush()
    assert same_chunks(bulk.chunks, single.chunks)


def test_packed_steps_without_step_sinks_are_dropped() -> None:
    metrics = MetricsCollector()
    metrics.on_packed_steps(bytes(3 * ROW_SIZE))
    assert len(metrics._step_log) == 0
