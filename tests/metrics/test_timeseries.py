"""The time series stays bounded: buckets conserve every total and match direct bucketing."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunToDir
from llmservingsim.metrics.steps import StepChunk
from llmservingsim.metrics.timeseries import Buckets, TimeSeries, bucketize, group


def random_steps(rng: np.random.Generator, n: int, instances: int) -> StepChunk:
    """n steps spread over ``instances``, starts non-decreasing as the engine emits them."""
    duration = rng.uniform(0.001, 0.05, n)
    start = np.cumsum(rng.uniform(0.0, 0.03, n))
    return StepChunk(
        instance=rng.integers(0, instances, n),
        engine=np.zeros(n, dtype=np.int64),
        start_s=start,
        duration_s=duration,
        num_seqs=rng.integers(1, 64, n),
        prefill_tokens=rng.integers(0, 2048, n),
        decode_tokens=rng.integers(0, 64, n),
        kv_blocks_used=rng.integers(0, 1000, n),
        kv_blocks_total=np.full(n, 1000),
        waiting=rng.integers(0, 30, n),
        power_w=rng.uniform(90, 700, n),
    )


def feed(ts: TimeSeries, steps: StepChunk, cuts: list[int]) -> dict[str, Any]:
    bounds = [0, *sorted(set(cuts)), len(steps)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            ts.write_steps(steps.take(np.arange(lo, hi)))
    return ts.columns()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    instances=st.integers(1, 4),
    max_rows=st.integers(1, 400),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
)
def test_rows_are_bounded_and_totals_conserved(
    seed: int, n: int, instances: int, max_rows: int, cuts: list[int]
) -> None:
    steps = random_steps(np.random.default_rng(seed), n, instances)
    ts = TimeSeries(max_rows)
    cols = feed(ts, steps, [c for c in cuts if c < n])
    assert len(cols["time_s"]) <= max(max_rows, instances)
    assert cols["iterations"].sum() == n
    assert cols["prefill_tokens"].sum() == steps.prefill_tokens.sum()
    assert cols["decode_tokens"].sum() == steps.decode_tokens.sum()
    np.testing.assert_allclose(cols["busy_s"].sum(), steps.duration_s.sum())
    np.testing.assert_allclose(
        cols["energy_j"].sum(), (steps.power_w * steps.duration_s).sum(), rtol=1e-9
    )
    np.testing.assert_allclose(
        (cols["batch_size"] * cols["iterations"]).sum(), steps.num_seqs.sum(), rtol=1e-9
    )
    assert cols["kv_blocks_used"].max() == steps.kv_blocks_used.max()
    if ts.bucketed:
        # Regrouping while the width doubled gives exactly what bucketing at the end would.
        direct = group([bucketize(steps, ts.width)])
        assert cols["iterations"].tolist() == direct.iterations.tolist()
        assert cols["kv_blocks_used"].tolist() == direct.kv_blocks_used.tolist()
        np.testing.assert_allclose(cols["time_s"], direct.index * ts.width)
        assert np.all(cols["duration_s"] == ts.width)
    else:
        assert n <= max_rows
        assert cols["time_s"].tolist() == steps.start_s.tolist()


def test_fixed_bucket_width_from_the_start() -> None:
    steps = random_steps(np.random.default_rng(0), 500, 2)
    cols = feed(TimeSeries(max_rows=10_000, bucket_s=0.5), steps, [])
    assert np.all(cols["duration_s"] == 0.5)
    assert np.all(np.isclose(cols["time_s"] / 0.5, np.round(cols["time_s"] / 0.5)))
    keys = list(zip(cols["time_s"].tolist(), cols["instance"].tolist(), strict=True))
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_a_run_past_max_rows_is_bucketed(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir("outputs.timeseries_max_rows=50")
    table = pq.read_table(out / "timeseries.parquet")
    assert 0 < table.num_rows <= 50
    assert sum(table.column("iterations").to_pylist()) == result.summary["iterations"]
    width = table.column("duration_s").to_pylist()[0]
    assert width > 0 and np.log2(width) == round(np.log2(width))  # a power of two


def group_by_unique_rows(parts: list[Buckets], coarsen: int = 1) -> Buckets:
    """The straightforward grouping (np.unique over (index, instance) rows, sums with bincount
    in input order): what :func:`group` must reproduce bit for bit."""
    instance = np.concatenate([p.instance for p in parts])
    index = np.concatenate([p.index for p in parts]) // coarsen
    unique, inverse = np.unique(np.stack([index, instance], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = len(unique)
    columns: dict[str, Any] = {"index": unique[:, 0], "instance": unique[:, 1]}
    for name in ("iterations", "busy_s", "seqs", "prefill_tokens", "decode_tokens", "waiting"):
        values = np.concatenate([getattr(p, name) for p in parts])
        total = np.bincount(inverse, weights=values, minlength=n)
        columns[name] = total if values.dtype.kind == "f" else np.rint(total).astype(np.int64)
    values = np.concatenate([p.energy_j for p in parts])
    columns["energy_j"] = np.bincount(inverse, weights=values, minlength=n)
    for name in ("kv_blocks_used", "kv_blocks_total"):
        values = np.concatenate([getattr(p, name) for p in parts])
        peak = np.zeros(n, dtype=values.dtype)
        np.maximum.at(peak, inverse, values)
        columns[name] = peak
    return Buckets(**columns)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4),
    instances=st.integers(1, 20),
    spread=st.sampled_from([3, 1000]),
    scale=st.sampled_from([1, 2**60]),  # 2**60: (index, instance) too wide for one int64
    coarsen=st.sampled_from([1, 2]),
)
def test_group_matches_unique_rows_bit_for_bit(
    seed: int, sizes: list[int], instances: int, spread: int, scale: int, coarsen: int
) -> None:
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        b = bucketize(random_steps(rng, n, instances), 0.01)
        index = np.sort(rng.integers(0, spread, n)) * scale  # in time order, as steps come
        parts.append(dataclasses.replace(b, index=index))
    fast, reference = group(parts, coarsen), group_by_unique_rows(parts, coarsen)
    for field in dataclasses.fields(Buckets):
        got, want = getattr(fast, field.name), getattr(reference, field.name)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), field.name


class RegroupEverything(TimeSeries):
    """The time series as first written: every chunk regrouped with all buckets so far."""

    def write_steps(self, steps: StepChunk) -> None:
        if not self.bucketed:
            self._steps.append(steps)
            self._num_steps += len(steps)
            if self._num_steps <= self.max_rows:
                return
            steps = StepChunk.concat(self._steps)
            self._steps = []
            self.width = self._first_width(steps)
        parts = [bucketize(steps, self.width)]
        if self._buckets is not None:
            parts.append(self._buckets)
        buckets = group_by_unique_rows(parts)
        while len(buckets) > self.max_rows and buckets.index.max() > 0:
            self.width *= 2
            buckets = group_by_unique_rows([buckets], coarsen=2)
        self._buckets = buckets


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    instances=st.integers(1, 5),
    max_rows=st.integers(1, 400),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    late=st.integers(0, 50),
)
def test_chunks_regroup_only_their_tail_bit_for_bit(
    seed: int, n: int, instances: int, max_rows: int, cuts: list[int], late: int
) -> None:
    """Same table as regrouping every bucket for every chunk, also when steps arrive late
    (fast-forward logs a run's steps when it is applied)."""
    rng = np.random.default_rng(seed)
    steps = random_steps(rng, n, instances)
    order = np.argsort(np.arange(n) + rng.integers(0, late + 1, n), kind="stable")
    steps = steps.take(order)
    cuts = [c for c in cuts if c < n]
    fast = feed(TimeSeries(max_rows), steps, cuts)
    reference = feed(RegroupEverything(max_rows), steps, cuts)
    assert fast.keys() == reference.keys()
    for name, column in fast.items():
        assert column.dtype == reference[name].dtype, name
        assert column.tobytes() == reference[name].tobytes(), name
