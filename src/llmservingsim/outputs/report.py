"""report.html: one self-contained page (plotly.js inlined, no network) built from a run's files.

Everything comes from the output directory (summary.json, the requests and timeseries tables),
so ``llmservingsim report DIR`` can rebuild the page later, from Parquet or CSV alike.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import yaml
from plotly.offline import get_plotlyjs

from llmservingsim.errors import UserError
from llmservingsim.outputs import figures
from llmservingsim.outputs.files import atomic_path
from llmservingsim.outputs.tables import REQUESTS_SCHEMA, TIMESERIES_SCHEMA, read_table

SECTIONS = ("summary", "latency", "timeline", "load", "energy", "config")
"""The page's sections, in order (element ids)."""

FIGURE_IDS = (
    "ttft-cdf",
    "tpot-cdf",
    "e2e-cdf",
    "throughput",
    "batch-size",
    "queue-length",
    "kv-use",
    "instance-load",
    "power",
    "energy-split",
)
"""Every plot of the page (div ids); each holds data whenever the run completed a request."""

PD_FIGURE_IDS = ("kv-transfer",)
"""Plots only a prefill/decode (disaggregated) run has: the KV cache hand-off per request."""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1300px; padding: 0 24px;
       color: #222; }
h1 { font-size: 1.5em; margin-top: 24px; } h2 { border-bottom: 1px solid #ddd; padding-top: 8px; }
/* auto-fill, not auto-fit: a plot drawn before its neighbours are parsed must not span the
   row, or it keeps that width and overflows once they arrive. */
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 8px; }
.grid > div { min-width: 0; }
.grid > div.wide { grid-column: 1 / -1; }
table.numbers { border-collapse: collapse; margin: 8px 16px 8px 0; display: inline-table;
                vertical-align: top; }
table.numbers td, table.numbers th { padding: 3px 10px; border-bottom: 1px solid #eee; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) { text-align: right; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 0.9em; }
.muted { color: #777; }
"""


def load_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "summary.json"
    try:
        summary: object = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{out_dir}: no summary.json (is this a `run --out` directory?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable summary: {exc}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: not an llmservingsim summary (not a JSON object)")
    for key in ("config", "instances"):
        if key not in summary:
            raise UserError(f"{path}: not an llmservingsim summary (no {key!r} key)")
    return summary


def _table(rows: Sequence[Sequence[str]], header: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="numbers">{f"<tr>{head}</tr>" if head else ""}{body}</table>'


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(float(value) * scale, fmt)


def _summary_html(s: dict[str, Any]) -> str:
    totals = [
        ("requests completed / failed", f"{s['requests_completed']:,} / {s['requests_failed']:,}"),
        ("request throughput", f"{_num(s['request_throughput'], '.2f')} req/s"),
        ("output tokens/s", _num(s["output_tokens_per_s"], ",.0f")),
        ("total tokens/s", _num(s["total_tokens_per_s"], ",.0f")),
        ("simulated time", f"{_num(s['simulated_time_s'], ',.1f')} s"),
        ("engine steps", f"{s['iterations']:,}"),
        ("KV cache per instance", _per_instance_kv(s)),
        ("KV cache, cluster total", f"{s['kv_cache_capacity_tokens']:,} tokens"),
        ("KV cache peak use (busiest instance)", _num(s["kv_cache_peak_util"], ".1%")),
        ("preemptions", f"{s['preemptions']:,}"),
    ]
    if s.get("goodput") is not None:
        totals.append(("goodput (SLO met)", f"{_num(s['goodput'], '.2f')} req/s"))
    latency = [
        (
            name.removesuffix("_s").upper(),
            *(_num(s[name].get(k), ",.1f", 1e3) for k in ("mean", "p50", "p90", "p99", "max")),
        )
        for name in ("ttft_s", "tpot_s", "itl_s", "e2e_s")
    ]
    return _table(totals) + _table(latency, ("ms", "mean", "p50", "p90", "p99", "max"))


def _per_instance_kv(s: dict[str, Any]) -> str:
    """Each instance's KV cache in tokens; pools of different sizes as ``a / b tokens``."""
    sizes = sorted(
        {row["kv_capacity_tokens"] for row in s["instances"] if "kv_capacity_tokens" in row}
    )
    if len(sizes) <= 1:
        return f"{s['memory']['kv_tokens']:,} tokens"
    return " / ".join(f"{n:,}" for n in sizes) + " tokens"


def _energy_html(s: dict[str, Any]) -> str:
    tokens = s.get("output_tokens") or 0
    rows = [
        (
            "energy",
            "-" if s.get("energy_j") is None else figures.format_energy(float(s["energy_j"])),
        ),
        ("energy per output token", f"{_num(s.get('joules_per_token'), '.3f')} J"),
        ("cost", f"${_num(s.get('cost_usd'), ',.2f')}"),
        (
            "cost per 1M output tokens",
            f"${s['cost_usd'] / tokens * 1e6:,.2f}" if tokens and s.get("cost_usd") else "-",
        ),
        ("devices", f"{s.get('num_devices', '-')}"),
    ]
    return _table(rows)


def _figures(
    summary: dict[str, Any], requests: figures.Columns, ts: figures.Columns
) -> dict[str, go.Figure]:
    rows = summary["instances"]
    binned, labels = figures.group_instances(figures.bin_timeseries(ts), rows)
    extra: dict[str, go.Figure] = {}
    if "scale_events" in summary:
        extra["instances"] = figures.instances_over_time(
            summary["scale_events"],
            int(summary["initial_instances"]),
            float(summary["simulated_time_s"]),
        )
    if "kv_transfer_s" in requests:
        extra["kv-transfer"] = figures.latency_cdf(
            requests["kv_transfer_s"], "KV cache transfer, prefill → decode (per request)"
        )
    return {
        "ttft-cdf": figures.latency_cdf(requests["ttft_s"], "TTFT (time to first token)"),
        "tpot-cdf": figures.latency_cdf(requests["tpot_s"], "TPOT (time per output token)"),
        "e2e-cdf": figures.latency_cdf(requests["e2e_s"], "E2E latency"),
        "throughput": figures.throughput(binned, labels),
        "batch-size": figures.over_time(
            binned, labels, "batch_size", "Batch size (sequences per step)", "sequences"
        ),
        "queue-length": figures.over_time(
            binned, labels, "queue_len", "Queue length (waiting requests)", "requests"
        ),
        "kv-use": figures.over_time(
            binned, labels, "kv_util", "KV cache use (peak per bin)", "%", scale=100.0
        ),
        "instance-load": figures.instance_load(rows),
        "power": figures.over_time(binned, labels, "power_w", "Power while running steps", "W"),
        "energy-split": figures.energy_split(
            float(summary.get("energy_j") or 0.0), float(np.sum(ts["energy_j"]))
        ),
        **extra,
    }


PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
"""plotly.js options of every plot."""


def page_template() -> dict[str, Any]:
    """:data:`figures.TEMPLATE` as figure JSON, validated once for the whole page."""
    layout: dict[str, Any] = go.Figure(layout_template=figures.TEMPLATE).to_dict()["layout"]
    template: dict[str, Any] = layout["template"]
    return template


def with_template(fig: go.Figure, template: dict[str, Any]) -> dict[str, Any]:
    """The figure's JSON as plotly writes it, with ``template`` as its layout's template (the
    first layout key, where plotly puts the template a figure is created with)."""
    spec: dict[str, Any] = fig.to_dict()
    layout = {key: value for key, value in spec["layout"].items() if key != "template"}
    spec["layout"] = {"template": template, **layout}
    return spec


def _figure_div(div_id: str, fig: go.Figure, template: dict[str, Any]) -> str:
    return str(
        pio.to_html(
            with_template(fig, template),
            validate=False,  # plotly validated the figure while it was built
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config=PLOTLY_CONFIG,
        )
    )


def _describe_pools(summary: dict[str, Any]) -> str:
    """``1× h100-sxm``, ``4× h100-sxm TP2`` or ``prefill 2× h100-sxm + decode 4× a100-80gb``."""
    parts = []
    for pool in summary.get("pools") or []:
        role = "" if pool["role"] == "mixed" else f"{pool['role']} "
        shape = "".join(
            f" {name}{pool.get(key, 1)}"
            for name, key in (
                ("DP", "data_parallel"),
                ("TP", "tensor_parallel"),
                ("PP", "pipeline_parallel"),
            )
            if pool.get(key, 1) > 1
        )
        parts.append(f"{role}{pool['count']}× {pool['hardware']}{shape}")
    return " + ".join(parts) or str(summary["config"].get("hardware"))


def render(summary: dict[str, Any], requests: figures.Columns, ts: figures.Columns) -> str:
    """The whole page as a string."""
    cfg = summary["config"]
    title = f"{cfg.get('model')} · {cfg.get('dtype')} · {_describe_pools(summary)}"
    template = page_template()
    figs = {k: _figure_div(k, f, template) for k, f in _figures(summary, requests, ts).items()}

    def grid(*ids: str, wide: bool = False) -> str:
        cell = '<div class="wide">' if wide else "<div>"
        return '<div class="grid">' + "".join(cell + figs[i] + "</div>" for i in ids) + "</div>"

    config_yaml = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    version = html.escape(str(summary.get("version", "")))
    wall = _num(summary.get("sim_wall_s"), ".2f")
    sections = {
        "summary": ("Summary", _summary_html(summary)),
        "latency": ("Latency", grid("ttft-cdf", "tpot-cdf", "e2e-cdf")),
        "timeline": ("Over time", grid("throughput", "batch-size", "queue-length", "kv-use")),
        "load": (
            "Load per instance",
            grid("instance-load", wide=True)
            + (grid("instances") if "instances" in figs else "")
            + (grid("kv-transfer") if "kv-transfer" in figs else ""),
        ),
        "energy": ("Energy and cost", _energy_html(summary) + grid("power", "energy-split")),
        "config": ("Resolved config", f"<pre>{html.escape(config_yaml)}</pre>"),
    }
    body = (
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="muted">llmservingsim {version} · {summary["requests_completed"]:,} requests'
        f" · simulated in {wall} s</p>\n"
    ) + "".join(
        f'<section id="{sid}"><h2>{heading}</h2>{content}</section>\n'
        for sid, (heading, content) in sections.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>llmservingsim report: {html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>{body}</body></html>
"""


REPORT_REQUEST_COLUMNS = ["ttft_s", "tpot_s", "e2e_s"]
"""The request columns the figures read (the rest of a large table is not loaded). A request
not served has null latencies (NaN here), which the CDFs leave out like any non-finite value,
so no status column is needed (reading a million status strings cost ~0.2 s)."""


def report_request_columns(summary: dict[str, Any]) -> list[str]:
    """:data:`REPORT_REQUEST_COLUMNS`, plus the KV hand-off time of a prefill/decode run."""
    return REPORT_REQUEST_COLUMNS + (["kv_transfer_s"] if "kv_transfers" in summary else [])


def write_report(out_dir: Path) -> Path:
    """Build ``out_dir/report.html`` from the run's files there."""
    summary = load_summary(out_dir)
    requests = read_table(out_dir, "requests", REQUESTS_SCHEMA, report_request_columns(summary))
    ts = read_table(out_dir, "timeseries", TIMESERIES_SCHEMA)
    if requests is None or ts is None:
        missing = "requests" if requests is None else "timeseries"
        raise UserError(
            f"{out_dir}: no {missing}.parquet or {missing}.csv to build the report from"
        )
    path = out_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(render(summary, requests, ts), encoding="utf-8")
    return path
