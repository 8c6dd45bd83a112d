"""One simulation → one flat row of scalars (the shape of sweep.parquet and plan.parquet)."""

from __future__ import annotations

from typing import Any

from llmservingsim import simulation
from llmservingsim.config import SimConfig
from llmservingsim.preflight import check_kv_fits, check_run_cost
from llmservingsim.scenario import resolve

Scalar = bool | int | float | str | None
Row = dict[str, Any]

WALL_COLUMNS = ("sim_wall_s", "point_wall_s")
"""Columns that measure this machine, not the simulated system: they differ between runs."""

_SKIPPED = {"config", "interrupted", "partial"}


class PointInterrupted(Exception):
    """Ctrl-C stopped a simulation mid-way: its partial numbers must not become a row."""


def flatten_summary(summary: dict[str, Any]) -> dict[str, Scalar]:
    """Every scalar of summary.json; nested stats become ``<name>_<stat>`` (ttft_s_p99), and a
    client's or a stage's numbers ``clients_<name>_<stat>`` / ``stages_<index>_<stat>``
    (clients_chat_ttft_s_p99, stages_1_goodput)."""
    flat: dict[str, Scalar] = {}
    for key, value in summary.items():
        if key in _SKIPPED:
            continue
        groups: dict[str, Any] = {}
        if key == "clients" and isinstance(value, dict):
            groups = value
        elif key == "stages" and isinstance(value, list):
            groups = {str(i): stage for i, stage in enumerate(value)}
        if groups:
            for name, group in groups.items():
                for sub, item in flatten_summary(group).items():
                    flat[f"{key}_{name}_{sub}"] = item
        elif isinstance(value, dict):
            for sub, item in value.items():
                if isinstance(item, bool | int | float | str) or item is None:
                    flat[f"{key}_{sub}"] = item
        elif isinstance(value, bool | int | float | str) or value is None:
            flat[key] = value
    return flat


def simulate_row(cfg: SimConfig) -> dict[str, Scalar]:
    """Run one full simulation and flatten its summary (DoesNotFitError passes through)."""
    check_run_cost(cfg)
    scenario = resolve(cfg)
    requests = simulation.load_requests(scenario)
    check_kv_fits(scenario, requests, warn=False)  # no request fits: the point does not fit
    summary = simulation.simulate(scenario, requests=requests).summary
    if summary.get("interrupted"):
        raise PointInterrupted("interrupted")
    return flatten_summary(summary)
