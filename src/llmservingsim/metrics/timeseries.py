"""The time series of a run: one row per engine step, or per time bucket for huge runs.

Rows stay per step while there are at most ``max_rows`` of them. Past that, steps are summed
into buckets of ``width`` seconds (aligned to t = 0, a step counted in the bucket where it
starts), and the width doubles whenever the buckets would again exceed ``max_rows`` (or until
one bucket per instance is left, when ``max_rows`` is below the instance count). Sums,
counts and maxima regroup exactly when the width doubles, so the rows equal a direct bucketing
of all steps at the final width, and memory stays O(max_rows) however long the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from llmservingsim.metrics.steps import FloatArray, IntArray, StepChunk

_SUMS = ("iterations", "busy_s", "seqs", "prefill_tokens", "decode_tokens", "waiting", "energy_j")
_MAXES = ("kv_blocks_used", "kv_blocks_total")
_MIN_WIDTH_S = 2.0**-20


@dataclass(frozen=True, slots=True)
class Buckets:
    """Steps summed per (instance, bucket); bucket ``index`` starts at ``index * width``."""

    instance: IntArray
    index: IntArray
    iterations: IntArray
    busy_s: FloatArray
    seqs: IntArray
    prefill_tokens: IntArray
    decode_tokens: IntArray
    waiting: IntArray
    energy_j: FloatArray
    kv_blocks_used: IntArray
    kv_blocks_total: IntArray

    def __len__(self) -> int:
        return int(self.index.size)

    def split(self, at: int) -> tuple[Buckets, Buckets]:
        """The rows before ``at`` and the rows from it."""
        fields = self.__dataclass_fields__
        head = Buckets(**{name: getattr(self, name)[:at] for name in fields})
        tail = Buckets(**{name: getattr(self, name)[at:] for name in fields})
        return head, tail

    @staticmethod
    def concat(first: Buckets, second: Buckets) -> Buckets:
        fields = first.__dataclass_fields__
        return Buckets(
            **{
                name: np.concatenate([getattr(first, name), getattr(second, name)])
                for name in fields
            }
        )


def bucketize(steps: StepChunk, width: float) -> Buckets:
    """Each step as a one-step bucket of ``width`` seconds (ungrouped)."""
    return Buckets(
        instance=steps.instance,
        index=np.floor(steps.start_s / width).astype(np.int64),
        iterations=np.ones(len(steps), dtype=np.int64),
        busy_s=steps.duration_s,
        seqs=steps.num_seqs,
        prefill_tokens=steps.prefill_tokens,
        decode_tokens=steps.decode_tokens,
        waiting=steps.waiting,
        energy_j=steps.power_w * steps.duration_s,
        kv_blocks_used=steps.kv_blocks_used,
        kv_blocks_total=steps.kv_blocks_total,
    )


def group(parts: list[Buckets], coarsen: int = 1) -> Buckets:
    """Merge rows of the same (instance, index // coarsen): sums add, maxima take the max.

    Rows come out in (index, instance) order. Each sum adds its rows in input order, so the
    floats are the same whatever the grouping found. The keys are sorted by a stable sort of
    one integer per row: the rows are nearly in time order already, which a merge sort finds.
    """
    instance = np.concatenate([p.instance for p in parts])
    index = np.concatenate([p.index for p in parts]) // coarsen
    order, starts, inverse = _runs_of_equal_keys(index, instance)
    n = len(starts)
    first = order[starts]
    columns: dict[str, Any] = {"index": index[first], "instance": instance[first]}
    for name in _SUMS:
        values = np.concatenate([getattr(p, name) for p in parts])
        total = np.bincount(inverse, weights=values, minlength=n)
        columns[name] = total if values.dtype.kind == "f" else np.rint(total).astype(np.int64)
    for name in _MAXES:
        values = np.concatenate([getattr(p, name) for p in parts])
        columns[name] = np.maximum.reduceat(values[order], starts) if n else values
    return Buckets(**columns)


def _runs_of_equal_keys(
    index: IntArray, instance: IntArray
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows sorted by (index, instance): the order, where each distinct key starts in it, and
    each row's key number (0, 1, ... in key order). Instances are numbered from 0."""
    if index.size == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, empty
    instances = int(instance.max()) + 1
    limit = np.iinfo(np.int64).max // instances - instances
    if index.min() >= -limit and index.max() <= limit:
        key = index * instances + instance  # one int per row, ordered as (index, instance)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        new_key = sorted_key[1:] != sorted_key[:-1]
    else:  # indices too large to combine with the instance: sort on both (slower)
        order = np.lexsort((instance, index))
        new_key = (np.diff(index[order]) != 0) | (np.diff(instance[order]) != 0)
    starts = np.flatnonzero(np.concatenate(([True], new_key)))
    inverse = np.empty(index.size, dtype=np.intp)
    inverse[order] = np.cumsum(np.concatenate(([0], new_key)))
    return order, starts, inverse


def _ratio(num: np.ndarray[Any, Any], den: np.ndarray[Any, Any]) -> FloatArray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


class TimeSeries:
    """A :class:`~llmservingsim.metrics.collector.StepSink` building the timeseries table."""

    def __init__(self, max_rows: int, bucket_s: float = 0.0) -> None:
        self.max_rows = max_rows
        self.width = bucket_s  # 0: one row per step (until there are too many)
        self._steps: list[StepChunk] = []
        self._num_steps = 0
        self._buckets: Buckets | None = None

    @property
    def bucketed(self) -> bool:
        return self.width > 0

    def write_steps(self, steps: StepChunk) -> None:
        if not self.bucketed:
            self._steps.append(steps)
            self._num_steps += len(steps)
            if self._num_steps <= self.max_rows:
                return
            steps = StepChunk.concat(self._steps)
            self._steps = []
            self.width = self._first_width(steps)
        new = bucketize(steps, self.width)
        if self._buckets is None:
            buckets = group([new])
        else:
            # Buckets before the first one these steps fall in are final; only the rest are
            # regrouped with them (rows are in (index, instance) order), so a chunk costs
            # O(its steps), not O(max_rows).
            at = int(np.searchsorted(self._buckets.index, new.index.min()))
            final, open_ = self._buckets.split(at)
            buckets = Buckets.concat(final, group([new, open_]))
        # One bucket per instance spanning the whole run cannot shrink further.
        while len(buckets) > self.max_rows and buckets.index.max() > 0:
            self.width *= 2
            buckets = group([buckets], coarsen=2)
        self._buckets = buckets

    def _first_width(self, steps: StepChunk) -> float:
        """A power-of-two width leaving room to grow: about half of max_rows buckets so far."""
        end = float(np.max(steps.start_s + steps.duration_s))
        instances = len(np.unique(steps.instance))
        wanted = max(2.0 * instances * end / self.max_rows, _MIN_WIDTH_S)
        return float(2.0 ** math.ceil(math.log2(wanted)))

    def columns(self) -> dict[str, np.ndarray[Any, Any]]:
        """The table (docs/outputs.md: timeseries), rows in time order then instance."""
        if not self.bucketed:
            s = StepChunk.concat(self._steps)
            # Fast-forward logs a run's steps when it is applied, not when each step starts.
            s = s.take(np.lexsort((s.engine, s.instance, s.start_s)))
            energy = s.power_w * s.duration_s
            return {
                "time_s": s.start_s,
                "duration_s": s.duration_s,
                "instance": s.instance,
                "iterations": np.ones(len(s), dtype=np.int64),
                "busy_s": s.duration_s,
                "batch_size": s.num_seqs.astype(np.float64),
                "prefill_tokens": s.prefill_tokens,
                "decode_tokens": s.decode_tokens,
                "kv_blocks_used": s.kv_blocks_used,
                "kv_util": _ratio(s.kv_blocks_used, s.kv_blocks_total),
                "queue_len": s.waiting.astype(np.float64),
                "power_w": s.power_w,
                "energy_j": energy,
            }
        b = self._buckets
        assert b is not None
        return {
            "time_s": b.index * self.width,
            "duration_s": np.full(len(b), self.width),
            "instance": b.instance,
            "iterations": b.iterations,
            "busy_s": b.busy_s,
            "batch_size": _ratio(b.seqs, b.iterations),
            "prefill_tokens": b.prefill_tokens,
            "decode_tokens": b.decode_tokens,
            "kv_blocks_used": b.kv_blocks_used,
            "kv_util": _ratio(b.kv_blocks_used, b.kv_blocks_total),
            "queue_len": _ratio(b.waiting, b.iterations),
            "power_w": _ratio(b.energy_j, b.busy_s),
            "energy_j": b.energy_j,
        }
