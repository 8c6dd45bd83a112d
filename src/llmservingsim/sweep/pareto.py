"""The Pareto front of points that minimize two objectives (cost and latency)."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (<= in both, < in one), by first objective.

    Sorting by (x, y) and sweeping keeps a point when its y beats every y before it: O(n log n).
    Exact duplicates are all kept (neither dominates the other).
    """
    order = sorted(range(len(points)), key=lambda i: points[i])
    front: list[int] = []
    best_y = float("inf")
    last: tuple[float, float] | None = None
    for i in order:
        x, y = points[i]
        if y < best_y or (last is not None and (x, y) == last):
            front.append(i)
            best_y = min(best_y, y)
            last = (x, y)
    return front
