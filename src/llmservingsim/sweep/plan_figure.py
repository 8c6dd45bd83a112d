"""plan.html: what each candidate costs for the rate it serves within the SLOs, at a glance.

Two panels, every value written on the figure (no hovering needed):

* top: cost against the SLO-feasible rate. With ``--max-rate`` each candidate is a labelled
  point at its highest rate within the SLOs, and the candidates that no other beats on both
  (more req/s for less) are joined by the Pareto front line. With ``--target-rate`` every
  candidate serves the same rate: bars of $/h, cheapest first, the cheapest marked.
* bottom: each SLO metric at that rate as a share of its limit (bars labelled in ms), with the
  SLO itself as the 100 % line.

Candidates that do not fit or cannot meet the SLOs are listed under the title. Self-contained
(plotly.js inlined), so it opens offline. ``plan_figure`` takes plan.parquet's rows, so a
report can redraw it from the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TypeGuard

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmservingsim.outputs.files import atomic_path
from llmservingsim.sweep.rows import Row

SloLine = tuple[str, float]
"""(summary column such as ``ttft_s_p99``, limit in seconds)."""

_COST_TITLE = {
    "usd_per_million_output_tokens": "$ per million output tokens",
    "cost_per_hour_usd": "$ per hour",
}
_STATUS_TEXT = {"does_not_fit": "does not fit", "slo_unreachable": "SLOs unmet"}
_FRONT, _OTHER, _CHEAPEST = "#d62728", "#1f77b4", "#ff7f0e"
_SLO_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rate_cost_front(rows: Sequence[Row], cost_column: str) -> list[Row]:
    """Candidates no other serves more req/s for at most the cost (or the same req/s for
    less), by rising rate."""
    front = []
    for row in rows:
        rate, cost = row["rate_req_s"], row[cost_column]
        beaten = any(
            o is not row
            and o["rate_req_s"] >= rate
            and o[cost_column] <= cost
            and (o["rate_req_s"] > rate or o[cost_column] < cost)
            for o in rows
        )
        if not beaten:
            front.append(row)
    return sorted(front, key=lambda r: (r["rate_req_s"], r[cost_column]))


def plan_figure(
    rows: Sequence[Row],
    keys: Sequence[str],
    cost_column: str,
    latency_column: str,
    slos: Sequence[SloLine] = (),
) -> go.Figure:
    """``keys``: the search keys, which name each candidate; ``slos``: the limits drawn."""
    ok = [
        r
        for r in rows
        if r.get("status") == "ok"
        and _is_number(r.get(cost_column))
        and _is_number(r.get("rate_req_s"))
    ]
    # cheapest first; at equal cost the one serving more, then the one with the lower latency
    ok.sort(
        key=lambda r: (
            r[cost_column],
            -r["rate_req_s"],
            float(r[latency_column]) if _is_number(r.get(latency_column)) else math.inf,
        )
    )
    target = cost_column == "cost_per_hour_usd"
    slos = list(slos) or [(latency_column, 0.0)]
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.2,
        row_heights=[0.58, 0.42],
        subplot_titles=(
            f"{_COST_TITLE.get(cost_column, cost_column)} at "
            + (
                f"the target rate, {ok[0]['rate_req_s']:g} req/s (cheapest first)"
                if target and ok
                else "each candidate's max rate"
            ),
            "latency at that rate, % of its SLO (the line: the SLO)",
        ),
    )
    labels = [_label(r, keys) for r in ok]
    if target:
        _cost_bars(fig, ok, labels, cost_column)
    else:
        _cost_scatter(fig, ok, labels, cost_column)
    _slo_bars(fig, ok, labels, slos)
    infeasible = [r for r in rows if r not in ok]
    subtitle = "; ".join(
        f"{_label(r, keys)}: {_STATUS_TEXT.get(str(r.get('status')), str(r.get('status')))}"
        for r in infeasible
    )
    fig.update_layout(
        title={
            "text": f"capacity plan: {len(ok)} candidates meet the SLOs, {len(infeasible)} do not"
            + (f"<br><sup>{subtitle}</sup>" if subtitle else ""),
            "x": 0.01,
        },
        template="plotly_white",
        height=920,
        margin={"l": 80, "r": 60, "t": 110, "b": 60},
        legend={"orientation": "h", "x": 0, "y": -0.08, "yanchor": "top"},
        barmode="group",
        uniformtext={"minsize": 9, "mode": "show"},
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True, rangemode="tozero")
    return fig


def _cost_scatter(fig: go.Figure, ok: list[Row], labels: list[str], cost_column: str) -> None:
    front = rate_cost_front(ok, cost_column)
    on_front = {id(r) for r in front}
    if front:
        fig.add_trace(
            go.Scatter(
                x=[r["rate_req_s"] for r in front],
                y=[r[cost_column] for r in front],
                mode="lines",
                line={"color": _FRONT, "dash": "dot"},
                name="Pareto front (more req/s for less)",
                hoverinfo="skip",
            ),
            1,
            1,
        )
    # Neighbours by rate take turns above and below their point, so labels do not overprint.
    by_rate = sorted(range(len(ok)), key=lambda i: ok[i]["rate_req_s"])
    position = {i: ("top center", "bottom center")[n % 2] for n, i in enumerate(by_rate)}
    for name, color, members in (
        ("on the front", _FRONT, [i for i, r in enumerate(ok) if id(r) in on_front]),
        ("dominated", _OTHER, [i for i, r in enumerate(ok) if id(r) not in on_front]),
    ):
        if not members:
            continue
        fig.add_trace(
            go.Scatter(
                x=[ok[i]["rate_req_s"] for i in members],
                y=[ok[i][cost_column] for i in members],
                mode="markers+text",
                marker={"size": 11, "color": color},
                text=[f"{labels[i]}<br>{ok[i]['rate_req_s']:.3g} req/s" for i in members],
                textposition=[position[i] for i in members],
                cliponaxis=False,
                name=name,
            ),
            1,
            1,
        )
    if ok:
        rates = [r["rate_req_s"] for r in ok]
        costs = [r[cost_column] for r in ok]
        low, high = min(rates), max(rates)
        if low > 0 and high / low > 10:
            # rates over decades: a log axis keeps the slow candidates apart
            span = math.log10(high / low)
            fig.update_xaxes(
                type="log",
                range=[math.log10(low) - 0.15 * span, math.log10(high) + 0.15 * span],
                dtick="D2",  # ticks at 1, 2 and 5 of each decade
                row=1,
            )
        else:
            fig.update_xaxes(range=[0, high * 1.25], row=1)
        fig.update_yaxes(range=[0, max(costs) * 1.4], row=1)
    fig.update_xaxes(title_text="req/s within the SLOs", row=1)
    fig.update_yaxes(title_text=_COST_TITLE.get(cost_column, cost_column), row=1)


def _cost_bars(fig: go.Figure, ok: list[Row], labels: list[str], cost_column: str) -> None:
    costs = [r[cost_column] for r in ok]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=costs,
            marker_color=[_CHEAPEST if i == 0 else _OTHER for i in range(len(ok))],
            text=[f"${c:,.2f}/h" + (" cheapest" if i == 0 else "") for i, c in enumerate(costs)],
            textposition="outside",
            cliponaxis=False,
            name="$ per hour at the target rate",
        ),
        1,
        1,
    )
    if costs:
        fig.update_yaxes(range=[0, max(costs) * 1.25], row=1)
    fig.update_yaxes(title_text="$ per hour", row=1)


def _slo_bars(fig: go.Figure, ok: list[Row], labels: list[str], slos: list[SloLine]) -> None:
    top = 100.0
    for index, (column, limit) in enumerate(slos):
        values = [float(v) if _is_number(v) else None for v in (r.get(column) for r in ok)]
        shares = [100.0 * v / limit if v is not None and limit > 0 else None for v in values]
        top = max([top, *(s for s in shares if s is not None)])
        fig.add_trace(
            go.Bar(
                x=labels,
                y=shares,
                name=f"{column.replace('_s_', ' ')} (SLO {limit * 1e3:,.0f} ms)"
                if limit > 0
                else column,
                marker_color=_SLO_COLORS[index % len(_SLO_COLORS)],
                text=["-" if v is None else f"{v * 1e3:,.0f} ms" for v in values],
                textposition="outside",
                cliponaxis=False,
            ),
            2,
            1,
        )
    fig.add_hline(y=100, line_dash="dash", line_color="#444", row=2, col=1)
    fig.update_yaxes(range=[0, top * 1.25], title_text="% of the SLO", row=2)


def _label(row: Row, keys: Sequence[str]) -> str:
    """Short: a name value as is (h100-sxm), a number with its key's last part (tp: 2)."""
    parts = []
    for key in keys:
        value = row.get(key)
        parts.append(str(value) if isinstance(value, str) else f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)


def write_plan_html(
    path: Path,
    rows: Sequence[Row],
    keys: Sequence[str],
    cost_column: str,
    latency_column: str,
    slos: Sequence[SloLine] = (),
) -> None:
    figure = plan_figure(rows, keys, cost_column, latency_column, slos)
    with atomic_path(path) as tmp:
        figure.write_html(tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False})
