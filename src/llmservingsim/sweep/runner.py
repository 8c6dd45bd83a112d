"""Run the points of a sweep that are not done yet, saving each row as it arrives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from llmservingsim.errors import ConfigError
from llmservingsim.sweep.executors import Executor
from llmservingsim.sweep.points import SweepPoint, run_point
from llmservingsim.sweep.rows import PointInterrupted, Row
from llmservingsim.sweep.store import ResultStore

RowHook = Callable[[Row], None]


@dataclass
class SweepOutcome:
    ran: int
    skipped: int
    stopped: str | None = None
    """Why the sweep ended early (finished rows are saved either way), None when complete."""


def pending_points(points: Sequence[SweepPoint], store: ResultStore) -> list[SweepPoint]:
    """Points without a row yet; refuses rows of another base config (a different sweep)."""
    if points:
        others = store.base_ids() - {points[0].base_id}
        if others:
            raise ConfigError(
                f"{store.path} holds points of another base config (CONFIG or --set differ); "
                "resume with the same base or write to another --out"
            )
    done = store.done_ids()
    return [p for p in points if p.point_id not in done]


def run_sweep(
    points: Sequence[SweepPoint],
    store: ResultStore,
    executor: Executor,
    on_row: RowHook | None = None,
) -> SweepOutcome:
    """Simulate the pending points; Ctrl-C keeps every finished row and reports interrupted."""
    todo = pending_points(points, store)
    ran = 0
    stopped = None
    try:
        for row in executor.imap_unordered(run_point, todo):
            store.add(row)
            ran += 1
            if on_row is not None:
                on_row(row)
    except (KeyboardInterrupt, PointInterrupted):
        stopped = "interrupted"
    except BrokenProcessPool:
        stopped = "a worker process died (killed, or out of memory)"
    finally:
        store.flush()
    return SweepOutcome(ran=ran, skipped=len(points) - len(todo), stopped=stopped)
