"""report.html: every section and plot present, self-contained, rebuilt from Parquet or CSV."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from conftest import RunToDir
from llmservingsim.outputs import figures, report
from llmservingsim.outputs.report import FIGURE_IDS, SECTIONS, write_report
from llmservingsim.outputs.tables import REQUESTS_SCHEMA, TIMESERIES_SCHEMA, read_table


def test_report_has_every_section_and_plot(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir()
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    for fig in FIGURE_IDS:
        assert page.count(f'id="{fig}"') == 1
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids must be unique"
    assert "model: llama-3.2-1b" in page  # the resolved config, as YAML
    assert f"{result.summary['requests_completed']:,} requests" in page


def test_report_is_self_contained(run_to_dir: RunToDir) -> None:
    out, _ = run_to_dir()
    page = (out / "report.html").read_text()
    assert re.search(r"<script[^>]+src=", page) is None
    assert re.search(r"<link[^>]+href=", page) is None
    assert "Plotly.newPlot" in page
    assert len(page) > 1_000_000  # plotly.js itself is inlined


def test_report_rebuilds_from_csv(run_to_dir: RunToDir) -> None:
    out, _ = run_to_dir("outputs.format=csv", "outputs.report=false")
    assert not (out / "report.html").exists()
    page = write_report(out).read_text()
    for fig in FIGURE_IDS:
        assert page.count(f'id="{fig}"') == 1


def test_report_of_a_cluster_shows_every_instance(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir("cluster.instances=3", "workload.arrival.rate=30")
    page = (out / "report.html").read_text()
    served = {r.instance for r in result.metrics.records}
    assert served == {0, 1, 2}
    for inst in served:
        # one line per instance in each over-time plot, one bar per instance in the load plot
        assert page.count(f'"name":"instance {inst}"') == 4  # batch, queue, KV, power
        assert page.count(f'"name":"instance {inst} decode"') == 1  # throughput
    assert page.count('"x":["instance 0","instance 1","instance 2"]') == 4  # load bars


def test_a_pd_run_has_a_kv_transfer_plot_and_one_line_per_pool(run_to_dir: RunToDir) -> None:
    """4 prefill + 4 decode instances: more than figures.MAX_LINES, so each over-time plot
    draws one line per pool; the KV hand-off gets its own CDF."""
    pools = "cluster.pools=[{name: p, role: prefill, count: 4}, {name: d, role: decode, count: 4}]"
    out, _ = run_to_dir(pools, "workload.arrival.rate=30")
    page = (out / "report.html").read_text()
    assert page.count('id="kv-transfer"') == 1
    for pool in ("p (prefill)", "d (decode)"):
        assert page.count(f'"name":"{pool}, 4 instances"') == 4  # batch, queue, KV, power
    assert '"name":"instance 0"' not in page


def test_the_pd_example_draws_a_line_per_pool() -> None:
    """examples/pd_disaggregation.yaml: 2 prefill + 4 decode instances, two pools."""
    rows = [
        {"index": i, "pool": pool, "role": pool}
        for i, pool in enumerate(["prefill"] * 2 + ["decode"] * 4)
    ]
    series = {row["index"]: _flat(float(row["index"])) for row in rows}
    grouped, labels = figures.group_instances(series, rows)
    assert sorted(labels.values()) == ["decode, 4 instances", "prefill, 2 instances"]
    decode = next(k for k, v in labels.items() if v.startswith("decode"))
    assert grouped[decode].batch_size.tolist() == [3.5] * 3  # mean of instances 2..5
    assert grouped[decode].decode_tokens.tolist() == [14.0] * 3  # summed
    one_pool = [{"index": i, "pool": "default", "role": "mixed"} for i in range(3)]
    same, names = figures.group_instances({i: series[i] for i in range(3)}, one_pool)
    assert names == {0: "instance 0", 1: "instance 1", 2: "instance 2"}
    assert same[1] is series[1]  # per instance, unchanged


def _flat(value: float) -> figures.Binned:
    return figures.Binned(
        start_s=np.arange(3.0),
        width_s=1.0,
        prefill_tokens=np.full(3, value),
        decode_tokens=np.full(3, value),
        batch_size=np.full(3, value),
        queue_len=np.zeros(3),
        kv_util=np.full(3, value / 10),
        power_w=np.full(3, 300.0),
    )


def test_over_time_axes_start_at_zero_and_energy_reads_in_units() -> None:
    zero = figures.Binned(
        start_s=np.arange(3.0),
        width_s=1.0,
        prefill_tokens=np.zeros(3),
        decode_tokens=np.zeros(3),
        batch_size=np.ones(3),
        queue_len=np.zeros(3),
        kv_util=np.zeros(3),
        power_w=np.array([300.0, np.nan, 310.0]),
    )
    queue = figures.over_time({0: zero}, {}, "queue_len", "Queue", "requests")
    assert tuple(queue.layout.yaxis.range) == (0, 1)  # an empty queue: 0..1, not -1..1
    power = figures.over_time({0: zero}, {}, "power_w", "Power", "W")
    assert power.layout.yaxis.rangemode == "tozero"
    assert figures.format_energy(1.03e-05 * 3.6e6) == "37.1 J"
    assert figures.format_energy(21_081.9) == "21.1 kJ"
    assert figures.format_energy(5.5e6) == "1.53 kWh"
    split = figures.energy_split(40.0, 30.0)
    assert split.data[0].text == ("30.0 J", "10.0 J")
    assert split.layout.yaxis.title.text == "J"


def plotly_figure_div(div_id: str, fig: go.Figure, template: dict[str, Any]) -> str:
    """The straightforward way: the template set on the figure by name, plotly writes it."""
    fig.update_layout(template=figures.TEMPLATE)
    html = pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=report.PLOTLY_CONFIG
    )
    return str(html)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("cluster.pools=[{name: p, role: prefill, count: 1}, {name: d, role: decode, count: 2}]",),
    ],
    ids=["one-instance", "pd"],
)
def test_page_is_what_plotly_writes_with_the_template_set_on_each_figure(
    run_to_dir: RunToDir, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...]
) -> None:
    out, _ = run_to_dir(*overrides)
    summary = report.load_summary(out)
    requests = read_table(out, "requests", REQUESTS_SCHEMA, report.report_request_columns(summary))
    ts = read_table(out, "timeseries", TIMESERIES_SCHEMA)
    assert requests is not None and ts is not None
    page = report.render(summary, requests, ts)
    assert page == (out / "report.html").read_text(encoding="utf-8")
    monkeypatch.setattr(report, "_figure_div", plotly_figure_div)
    assert page == report.render(summary, requests, ts)
