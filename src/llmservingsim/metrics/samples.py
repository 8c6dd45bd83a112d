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


class RepeatedSamples:
    def __init__(self) -> None:
        self._values = array("d")
        self._counts = array("q")
        self._total = 0

    def add(self, value: float, count: int = 1) -> None:
        """Add ``count`` samples equal to ``value``."""
        if count <= 0:
            return
        self._total += count
        if self._values and self._values[-1] == value:
            self._counts[-1] += count
        else:
            self._values.append(value)
            self._counts.append(count)

    def add_each(self, values: npt.NDArray[np.float64], count: int) -> None:
        """Add ``count`` samples equal to each of ``values`` (a fast-forward run's gaps).

        Runs are stored as given (equal neighbours are not merged): the samples, hence every
        statistic, are the same as one :meth:`add` per value.
        """
        if count <= 0 or not len(values):
            return
        self._total += count * len(values)
        self._values.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
        self._counts.frombytes(np.full(len(values), count, dtype=np.int64).tobytes())

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[float]:
        for value, count in zip(self._values, self._counts, strict=True):
            yield from repeat(value, count)

    def stats(self) -> dict[str, float | None]:
        """{mean, p50, p90, p99, max} of the expanded samples, as ``np.percentile`` (linear)
        and ``mean`` compute them; None for each when there is no sample."""
        if self._total == 0:
            return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
        values = np.frombuffer(self._values, dtype=np.float64)
        counts = np.frombuffer(self._counts, dtype=np.int64)
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
