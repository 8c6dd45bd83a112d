"""Inter-token gaps stored as runs of equal values give the statistics of the expanded samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.metrics.samples import RepeatedSamples
from llmservingsim.metrics.summary import latency_stats


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from([0.001, 0.0125, 0.02, 0.3, 1e-5, 0.07]), st.integers(1, 40)),
        max_size=30,
    ),
    noise=st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=10),
)
def test_stats_equal_those_of_the_expanded_samples(
    runs: list[tuple[float, int]], noise: list[float]
) -> None:
    samples = RepeatedSamples()
    expanded: list[float] = []
    for value, count in runs:
        samples.add(value, count)
        expanded += [value] * count
    for value in noise:
        samples.add(value)
        expanded.append(value)
    assert list(samples) == expanded
    assert len(samples) == len(expanded)
    got, want = samples.stats(), latency_stats(expanded)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value is None:
            assert got[key] is None
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=0.0), key


def test_equal_neighbours_share_one_entry() -> None:
    samples = RepeatedSamples()
    for _ in range(1000):
        samples.add(0.01)
    samples.add(0.02, 500)
    assert len(samples) == 1500
    assert samples._runs()[1].tolist() == [1000, 500]


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.booleans(),
            st.lists(st.sampled_from([0.001, 0.02, -0.0, 0.0, 1e-5]), min_size=1, max_size=6),
            st.integers(0, 5),
        ),
        max_size=20,
    )
)
def test_runs_are_stored_as_a_merge_with_the_previous_value_stores_them(
    calls: list[tuple[bool, list[float], int]],
) -> None:
    """The runs, in order, are those of a list that merges a sample into the last run when
    equal to its value and stores an array's values as given: the sums over runs (the mean)
    add the same terms in the same order, whichever run is still open."""
    samples = RepeatedSamples()
    values: list[float] = []
    counts: list[int] = []
    for each, batch, count in calls:
        if each:
            samples.add_each(np.array(batch, dtype=np.float64), count)
            if count > 0:
                values += batch
                counts += [count] * len(batch)
            continue
        for value in batch:
            samples.add(value, count)
            if count <= 0:
                continue
            if values and values[-1] == value:
                counts[-1] += count
            else:
                values.append(value)
                counts.append(count)
    got_values, got_counts = samples._runs()
    assert got_values.tolist() == values
    assert [math.copysign(1.0, v) for v in got_values.tolist()] == [
        math.copysign(1.0, v) for v in values
    ]
    assert got_counts.tolist() == counts


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(st.sampled_from([0.001, 0.02, 0.3, 1e-5]), max_size=12), st.integers(0, 9)
        ),
        max_size=8,
    )
)
def test_adding_each_value_of_an_array_equals_adding_them_one_by_one(
    batches: list[tuple[list[float], int]],
) -> None:
    bulk, single = RepeatedSamples(), RepeatedSamples()
    for values, count in batches:
        bulk.add_each(np.array(values, dtype=np.float64), count)
        for value in values:
            single.add(value, count)
    assert list(bulk) == list(single)
    assert len(bulk) == len(single)
    got, want = bulk.stats(), single.stats()
    assert {k: v for k, v in got.items() if k != "mean"} == {
        k: v for k, v in want.items() if k != "mean"
    }
    if want["mean"] is None:
        assert got["mean"] is None
    else:
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)  # summed in another order


def test_runs_past_the_pending_list_are_stored_in_order() -> None:
    """Closed runs move from the pending lists to the arrays in batches: order and values
    are kept across the moves (and across an array of gaps added in between)."""
    samples = RepeatedSamples()
    values = [0.001 * (k % 7) for k in range(10_000)]
    for k, value in enumerate(values[:6000]):
        samples.add(value, 1 + k % 3)
    samples.add_each(np.array(values[6000:6010], dtype=np.float64), 2)
    for k, value in enumerate(values[6010:]):
        samples.add(value, 1 + k % 3)
    got_values, got_counts = samples._runs()
    assert got_values.tolist() == values
    assert got_counts.tolist() == [1 + k % 3 for k in range(6000)] + [2] * 10 + [
        1 + k % 3 for k in range(4000 - 10)
    ]
    assert len(samples) == sum(got_counts.tolist())
