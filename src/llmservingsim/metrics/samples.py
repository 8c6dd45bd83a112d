"""Samples stored as runs of equal values: what inter-token gaps look like.

Every request of a decode step waited the same gap since its previous token, so a run's gaps
are a few distinct values per step. Keeping (value, count) runs instead of one float per token
turns the largest per-token array of a long run (8 bytes × every output token) into one entry
per step, and the statistics stay exact: they are those of the expanded samples.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from itertools import repeat

import numpy as np
import numpy.typing as npt

_PENDING = 4096
"""Closed runs kept in Python lists before they move to the arrays in one call."""


class RepeatedSamples:
    """Runs of (value, count). The run being extended lives in two plain fields, so adding
    to it touches no array; a closed run waits in a list (a native append in the compiled
    build) and moves to the arrays with ``_PENDING`` others."""

    def __init__(self) -> None:
        self._values = array("d")
        self._counts = array("q")
        self._pending_values: list[float] = []
        self._pending_counts: list[int] = []
        self._total = 0
        self._last = 0.0  # the open run (not stored yet); none while _last_count is 0
        self._last_count = 0

    def add(self, value: float, count: int = 1) -> None:
        """Add ``count`` samples equal to ``value``."""
        if count <= 0:
            return
        self._total += count
        if self._last_count:
            if self._last == value:
                self._last_count += count
                return
            self._close_run()
        self._last = value
        self._last_count = count

    def _close_run(self) -> None:
        self._pending_values.append(self._last)
        self._pending_counts.append(self._last_count)
        self._last_count = 0
        if len(self._pending_values) >= _PENDING:
            self._store_pending()

    def _store_pending(self) -> None:
        self._values.extend(self._pending_values)
        self._counts.extend(self._pending_counts)
        self._pending_values.clear()
        self._pending_counts.clear()

    def add_each(self, values: npt.NDArray[np.float64], count: int) -> None:
        """Add ``count`` samples equal to each of ``values`` (a fast-forward run's gaps).

        Runs are stored as given (equal neighbours are not merged): the samples, hence every
        statistic, are the same as one :meth:`add` per value.
        """
        if count <= 0 or not len(values):
            return
        self._total += count * len(values)
        if self._last_count:
            self._close_run()
        self._store_pending()
        values = np.ascontiguousarray(values, dtype=np.float64)
        self._values.frombytes(values[:-1].tobytes())
        self._counts.frombytes(np.full(len(values) - 1, count, dtype=np.int64).tobytes())
        self._last = float(values[-1])
        self._last_count = count

    def __len__(self) -> int:
        return self._total

    def _runs(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Every run, the open one included, as (values, counts) arrays (read-only)."""
        self._store_pending()
        values = np.frombuffer(self._values, dtype=np.float64)
        counts = np.frombuffer(self._counts, dtype=np.int64)
        if not self._last_count:
            return values, counts
        return np.append(values, self._last), np.append(counts, self._last_count)

    def __iter__(self) -> Iterator[float]:
        values, counts = self._runs()
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            yield from repeat(value, count)

    def stats(self) -> dict[str, float | None]:
        """{mean, p50, p90, p99, max} of the expanded samples, as ``np.percentile`` (linear)
        and ``mean`` compute them; None for each when there is no sample."""
        if self._total == 0:
            return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
        values, counts = self._runs()
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        del order  # (a long run has millions of runs: keep the peak to the sorted copies)
        n = int(counts.sum())
        mean = float(np.dot(values, counts) / n)
        # Samples up to and including each value, in sorted order (in place: counts is a copy).
        ends = np.cumsum(counts, out=counts)

        def kth(k: int) -> float:
            """The k-th smallest sample (0-based)."""
            return float(values[int(np.searchsorted(ends, k, side="right"))])

        out: dict[str, float | None] = {"mean": mean}
        for q in (50, 90, 99):
            position = (q / 100) * (n - 1)
            below = math.floor(position)
            low, high = kth(below), kth(min(below + 1, n - 1))
            t = position - below
            # numpy's linear interpolation, including its form for t >= 1/2.
            out[f"p{q}"] = high - (high - low) * (1 - t) if t >= 0.5 else low + (high - low) * t
        out["max"] = float(values[-1])
        return out
