"""plan.html: cost vs latency of every feasible candidate, the Pareto front joined by a line.

Self-contained (plotly.js inlined), so it opens offline. ``plan_figure`` takes plan.parquet's
rows, so the HTML report can show the same figure from the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from llmservingsim.outputs.files import atomic_path
from llmservingsim.sweep.rows import Row

_MAX_LABELLED = 20
"""Up to this many candidates, each point carries its values as a label; beyond, hover only."""


def plan_figure(
    rows: Sequence[Row], keys: Sequence[str], cost_column: str, latency_column: str
) -> go.Figure:
    """``keys``: the search keys, shown when hovering over a candidate."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(cost_column) is not None]
    front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r[cost_column])
    others = [r for r in ok if not r.get("pareto")]
    fig = go.Figure()
    labelled = len(ok) <= _MAX_LABELLED
    traces = (("other", others, "markers"), ("Pareto front", front, "lines+markers"))
    for name, group, mode in traces:
        fig.add_trace(
            go.Scatter(
                name=name,
                x=[r[latency_column] * 1e3 for r in group],
                y=[r[cost_column] for r in group],
                mode=mode + "+text" if labelled else mode,
                text=[_label(r, keys) for r in group],
                textposition="top center",
                hovertext=[_hover(r, keys) for r in group],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    cost_title = {
        "usd_per_million_output_tokens": "$ per million output tokens (at the max rate)",
        "cost_per_hour_usd": "$ per hour",
    }.get(cost_column, cost_column)
    infeasible = len(rows) - len(ok)
    fig.update_layout(
        title=f"capacity plan: {len(ok)} feasible candidates, {infeasible} infeasible",
        xaxis_title=f"{latency_column.replace('_s_', ' ')} (ms)",
        yaxis_title=cost_title,
        template="plotly_white",
    )
    return fig


def _label(row: Row, keys: Sequence[str]) -> str:
    """Short: a name value as is (h100-sxm), a number with its key's last part (tp: 2)."""
    parts = []
    for key in keys:
        value = row.get(key)
        parts.append(str(value) if isinstance(value, str) else f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)


def _hover(row: Row, keys: Sequence[str]) -> str:
    lines = [f"{k}={row.get(k)}" for k in keys]
    rate = row.get("rate_req_s")
    if isinstance(rate, int | float):
        lines.append(f"rate={rate:.3g} req/s")
    return "<br>".join(lines)


def write_plan_html(
    path: Path, rows: Sequence[Row], keys: Sequence[str], cost_column: str, latency_column: str
) -> None:
    figure = plan_figure(rows, keys, cost_column, latency_column)
    with atomic_path(path) as tmp:
        figure.write_html(tmp, include_plotlyjs=True, full_html=True)
