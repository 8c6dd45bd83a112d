"""Sweep points: validated up front, each run as one full simulation in any worker process."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmservingsim.config import SimConfig
from llmservingsim.errors import DoesNotFitError, UserError
from llmservingsim.sweep.grid import Assignment
from llmservingsim.sweep.rows import Row, simulate_row
from llmservingsim.sweep.scenario import Scenario, check_runnable, point_id, resolved_value


@dataclass(frozen=True)
class SweepPoint:
    """A fully validated config and the identity columns of its row."""

    point_id: str
    base_id: str
    values: dict[str, Any]
    config: SimConfig

    def identity(self) -> Row:
        return {"point_id": self.point_id, "base_id": self.base_id, **self.values}


def build_points(scenario: Scenario, grid: Sequence[Sequence[Assignment]]) -> list[SweepPoint]:
    """Build and check every point's config before any simulation runs.

    A typo in the 60th value must not surface after an hour of simulating the first 59, so
    each config goes through everything ``simulate`` checks before its first step.
    """
    points: list[SweepPoint] = []
    seen: dict[str, SweepPoint] = {}
    for assignments in grid:
        cfg = scenario.config(assignments)
        check_runnable(cfg)
        values = {key: resolved_value(cfg, key) for key, _ in assignments}
        pid = point_id(values)
        if pid in seen:
            continue  # e.g. 8 and 8.0: the same point, simulated once
        point = SweepPoint(pid, scenario.base_id, values, cfg)
        seen[pid] = point
        points.append(point)
    return points


def run_point(point: SweepPoint) -> Row:
    """The row of one point. A model that does not fit, or any other user-level problem found
    while running, is recorded in the row (status + error) so one bad point does not end the
    sweep; bugs still raise."""
    start = time.perf_counter()
    row: Row = point.identity()
    try:
        metrics = simulate_row(point.config)
    except DoesNotFitError as exc:
        row.update(status="does_not_fit", error=str(exc))
    except UserError as exc:
        row.update(status="error", error=str(exc))
    else:
        row.update(status="ok", **metrics, error=None)
    row["point_wall_s"] = time.perf_counter() - start
    return row
