"""The report's plotly figures, each built from the output tables' numpy columns.

Plots are downsampled (CDFs to a fixed number of quantiles, time series to a fixed number of
time bins per instance) so a million-request run makes a report as light as a small one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmservingsim.outputs.labels import instance_label

Columns = dict[str, np.ndarray[Any, Any]]

CDF_POINTS = 1000
TIME_BINS = 300
PERCENTILES = (50, 90, 99)
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
TEMPLATE = "plotly_white"
"""The report's plotly template. The figures here are built without it: setting it on a figure
validates a deep copy of the whole template (~15 ms a figure), so report.py puts the same
template into each figure's JSON once it is built (``with_template``)."""


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    """Common look; the legend goes under the plot and the figure grows with its entries, so
    a 16-instance cluster does not cover its own plot."""
    entries = len(fig.data)
    legend_px = 0 if entries < 2 else 24 * math.ceil(entries / 3) + 30
    fig.update_layout(
        title={"text": title, "x": 0.01},
        xaxis_title=x,
        yaxis_title=y,
        template={},  # a stand-in, replaced by TEMPLATE when the figure is written
        height=340 + legend_px,
        showlegend=entries > 1,
        margin={"l": 60, "r": 20, "t": 50, "b": 50 + legend_px},
        # the plot area is 240 px high whatever the legend: start the legend 55 px below it,
        # under the x-axis title
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -55 / 240, "yanchor": "top"},
    )
    return fig


def latency_cdf(values_s: np.ndarray[Any, Any], title: str) -> go.Figure:
    """Empirical CDF in ms with p50/p90/p99 marked (same percentile rule as summary.json); NaN
    values (requests not served) are left out."""
    data = np.sort(values_s[np.isfinite(values_s)]) * 1e3
    fig = go.Figure()
    if data.size:
        q = np.linspace(0.0, 1.0, min(CDF_POINTS, data.size))
        fig.add_trace(go.Scatter(x=np.quantile(data, q), y=q, mode="lines", name="CDF"))
        # Labels go right of their line, low and staggered: below a CDF, right of its
        # percentile, the plot is empty, so close percentiles do not overprint each other.
        marks = zip(PERCENTILES, np.percentile(data, PERCENTILES), (0.3, 0.18, 0.06), strict=True)
        for p, value, label_y in marks:
            fig.add_vline(x=float(value), line_dash="dot", line_color="#888")
            fig.add_annotation(
                x=float(value),
                y=label_y,
                text=f"p{p} {value:,.1f} ms",
                showarrow=False,
                xanchor="left",
                bgcolor="rgba(255,255,255,0.8)",
            )
    return _layout(fig, title, "ms", "fraction of requests")


@dataclass(frozen=True)
class Binned:
    """The time series of one instance summed into equal time bins."""

    start_s: np.ndarray[Any, Any]
    width_s: float
    prefill_tokens: np.ndarray[Any, Any]
    decode_tokens: np.ndarray[Any, Any]
    batch_size: np.ndarray[Any, Any]
    queue_len: np.ndarray[Any, Any]
    kv_util: np.ndarray[Any, Any]
    power_w: np.ndarray[Any, Any]


def bin_timeseries(ts: Columns) -> dict[int, Binned]:
    """Per instance: tokens summed, batch size and queue length averaged over the steps in a
    bin, KV use at its peak, power averaged over busy time. A bin without steps reads as 0
    (the instance was idle: no batch, no queue, no KV in use)."""
    if ts["time_s"].size == 0:
        return {}
    end = float(np.max(ts["time_s"] + ts["duration_s"]))
    width = max(end / TIME_BINS, float(np.max(ts["duration_s"])), 1e-9)
    num_bins = int(np.ceil(end / width)) + 1
    out: dict[int, Binned] = {}
    for inst in np.unique(ts["instance"]).tolist():
        rows = ts["instance"] == inst
        b = np.minimum((ts["time_s"][rows] / width).astype(np.int64), num_bins - 1)
        mine = {name: col[rows] for name, col in ts.items()}
        iters = _bin_sum(b, mine["iterations"], num_bins)
        kv = np.zeros(num_bins)
        np.maximum.at(kv, b, mine["kv_util"])
        out[int(inst)] = Binned(
            start_s=np.arange(num_bins) * width,
            width_s=width,
            prefill_tokens=_bin_sum(b, mine["prefill_tokens"], num_bins),
            decode_tokens=_bin_sum(b, mine["decode_tokens"], num_bins),
            batch_size=_div(_bin_sum(b, mine["batch_size"] * mine["iterations"], num_bins), iters),
            queue_len=_div(_bin_sum(b, mine["queue_len"] * mine["iterations"], num_bins), iters),
            kv_util=kv,
            power_w=_div(
                _bin_sum(b, mine["energy_j"], num_bins),
                _bin_sum(b, mine["busy_s"], num_bins),
                empty=np.nan,  # idle: no step ran, a gap rather than a false 0 W
            ),
        )
    return out


def _bin_sum(
    bins: np.ndarray[Any, Any], values: np.ndarray[Any, Any], num_bins: int
) -> np.ndarray[Any, Any]:
    return np.bincount(bins, weights=values.astype(np.float64), minlength=num_bins)


def _div(
    num: np.ndarray[Any, Any], den: np.ndarray[Any, Any], empty: float = 0.0
) -> np.ndarray[Any, Any]:
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _color(inst: int) -> str:
    return _PALETTE[inst % len(_PALETTE)]


def over_time(
    binned: dict[int, Binned],
    labels: dict[int, str],
    field: str,
    title: str,
    y: str,
    scale: float = 1.0,
) -> go.Figure:
    fig = go.Figure()
    for inst, b in binned.items():
        fig.add_trace(
            go.Scatter(
                x=b.start_s,
                y=getattr(b, field) * scale,
                mode="lines",
                name=labels.get(inst, f"instance {inst}"),
                line={"color": _color(inst), "shape": "hv"},
            )
        )
    return _from_zero(_layout(fig, title, "simulated time (s)", y))


def _from_zero(fig: go.Figure) -> go.Figure:
    """Counts, tokens, utilization and power are never negative: the y axis starts at 0, and a
    series that is 0 throughout (an empty queue) gets 0..1 rather than plotly's -1..1."""
    peak = 0.0
    for trace in fig.data:
        values = np.asarray(trace.y, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            peak = max(peak, float(finite.max()))
    if peak > 0:
        fig.update_yaxes(rangemode="tozero")
    else:
        fig.update_yaxes(range=[0, 1])
    return fig


MAX_LINES = 6
"""Over-time plots draw one line per instance up to this many instances of one pool. Beyond,
or when the cluster has several pools (P/D: prefill and decode) and fewer pools than
instances, one line per pool, named ``pool (role), N instances`` (tokens summed over its
instances; batch size, queue and power their mean per instance; KV use the busiest one's):
examples/pd_disaggregation.yaml's 2 + 4 instances draw 2 lines (4 in the throughput plot,
prefill and decode tokens) rather than 6 (12)."""


def group_instances(
    binned: dict[int, Binned], rows: list[dict[str, Any]]
) -> tuple[dict[int, Binned], dict[int, str]]:
    """``binned`` with its labels, per instance (few, one pool) or per pool."""
    labels = {row["index"]: instance_label(row) for row in rows}
    groups: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        if row["index"] in binned:
            key = (row.get("pool", "default"), row.get("role", "mixed"))
            groups.setdefault(key, []).append(row["index"])
    several_pools = 1 < len(groups) < len(binned)
    if len(binned) <= MAX_LINES and not several_pools:
        return binned, labels
    out: dict[int, Binned] = {}
    out_labels: dict[int, str] = {}
    for number, ((pool, role), members) in enumerate(groups.items()):
        parts = [b for i, b in binned.items() if i in members]
        name = pool if pool != "default" else "all"
        if role not in ("mixed", pool):
            name += f" ({role})"
        out[number] = _combine(parts)
        count = len(members)
        out_labels[number] = f"{name}, {count} instance{'s' if count > 1 else ''}"
    return out, out_labels


def _combine(parts: list[Binned]) -> Binned:
    """Instances of one pool as one series: tokens summed over them (the pool's throughput),
    batch size, queue and power the mean per instance, KV use the busiest instance's."""
    power = np.vstack([b.power_w for b in parts])
    running = np.isfinite(power)
    count = running.sum(axis=0)
    total = np.where(running, power, 0.0).sum(axis=0)
    mean_power = np.full(total.shape, np.nan)
    np.divide(total, count, out=mean_power, where=count > 0)
    return Binned(
        start_s=parts[0].start_s,
        width_s=parts[0].width_s,
        prefill_tokens=np.sum([b.prefill_tokens for b in parts], axis=0),
        decode_tokens=np.sum([b.decode_tokens for b in parts], axis=0),
        batch_size=np.mean([b.batch_size for b in parts], axis=0),
        queue_len=np.mean([b.queue_len for b in parts], axis=0),
        kv_util=np.max([b.kv_util for b in parts], axis=0),
        power_w=mean_power,
    )


def throughput(binned: dict[int, Binned], labels: dict[int, str]) -> go.Figure:
    """Tokens computed per second: prefill (dashed) and decode (solid), per instance."""
    fig = go.Figure()
    for inst, b in binned.items():
        for field, dash in (("decode_tokens", "solid"), ("prefill_tokens", "dash")):
            fig.add_trace(
                go.Scatter(
                    x=b.start_s,
                    y=getattr(b, field) / b.width_s,
                    mode="lines",
                    name=f"{labels.get(inst, f'instance {inst}')} {field.removesuffix('_tokens')}",
                    line={"color": _color(inst), "dash": dash, "shape": "hv"},
                )
            )
    return _from_zero(
        _layout(fig, "Throughput (tokens computed per second)", "simulated time (s)", "tok/s")
    )


def instance_load(rows: list[dict[str, Any]]) -> go.Figure:
    """Per instance (summary.json ``instances``): requests finished there, tokens it computed
    and the share of time its devices were busy. Is the load balanced?"""
    names = [instance_label(row) for row in rows]
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=("requests completed", "tokens computed", "busy fraction")
    )
    bars = (
        ("requests completed", "requests_completed", "#1f77b4", 1),
        ("prefill tokens", "prefill_tokens", "#9467bd", 2),
        ("decode tokens", "decode_tokens", "#2ca02c", 2),
        ("busy fraction", "utilization", "#d62728", 3),
    )
    for title, key, color, col in bars:
        values = [row[key] for row in rows]
        fig.add_trace(go.Bar(x=names, y=values, name=title, marker_color=color), 1, col)
    _layout(fig, "Load per instance", "", "")
    # long instance labels are drawn slanted: move the legend below them
    fig.update_layout(
        barmode="group",
        legend_y=-0.45,
        height=fig.layout.height + 60,
        margin_b=fig.layout.margin.b + 60,
    )
    return fig


def instances_over_time(events: list[dict[str, Any]], initial: int, end_s: float) -> go.Figure:
    """Autoscaling (summary.json ``scale_events``): instances provisioned (billed) and taking
    requests over the run, as step lines from ``initial`` at t = 0 to ``end_s``."""
    times = [0.0] + [float(e["time_s"]) for e in events] + [end_s]
    fig = go.Figure()
    for key, name, color in (
        ("provisioned", "provisioned (billed)", _PALETTE[0]),
        ("routable", "taking requests", _PALETTE[2]),
    ):
        counts = [initial] + [int(e[key]) for e in events]
        fig.add_trace(
            go.Scatter(
                x=times,
                y=[*counts, counts[-1]],
                mode="lines",
                line={"shape": "hv", "color": color},
                name=name,
            )
        )
    return _layout(fig, "Instances over time (autoscaling)", "time (s)", "instances")


def energy_unit(joules: float) -> tuple[float, str]:
    """The divisor and unit that print ``joules`` with a few significant digits: J below 1 kJ,
    kJ below 1 kWh (3.6 MJ), kWh above."""
    if joules < 1e3:
        return 1.0, "J"
    if joules < 3.6e6:
        return 1e3, "kJ"
    return 3.6e6, "kWh"


def format_energy(joules: float) -> str:
    """``412 J``, ``21.1 kJ``, ``1.53 kWh``: three significant digits, no exponent."""
    scale, unit = energy_unit(joules)
    value = joules / scale
    digits = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:,.{digits}f} {unit}"


def energy_split(energy_j: float, busy_energy_j: float) -> go.Figure:
    """Where the energy went: running steps vs idle devices, in J, kJ or kWh by size."""
    idle = max(0.0, energy_j - busy_energy_j)
    scale, unit = energy_unit(max(busy_energy_j, idle))
    fig = go.Figure(
        go.Bar(
            x=["running steps", "idle"],
            y=[busy_energy_j / scale, idle / scale],
            marker_color=["#d62728", "#7f7f7f"],
            text=[format_energy(busy_energy_j), format_energy(idle)],
            textposition="auto",
        )
    )
    return _from_zero(_layout(fig, "Energy", "", unit))
