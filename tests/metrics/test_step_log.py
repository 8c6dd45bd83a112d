"""StepLog: steps appended one by one, as decode-run arrays or as packed rows (the compiled
loop) come back as the same columns, and reach the sinks in the same chunks."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmservingsim.metrics.steps import STEP_FIELDS, StepChunk, StepLog

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
    with pytest.raises((struct.error, TypeError)):  # a count must be an integer
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
