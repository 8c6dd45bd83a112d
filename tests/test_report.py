"""report.html: every section and plot present, self-contained, rebuilt from Parquet or CSV."""

from __future__ import annotations

import re
from typing import Any

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
    requests = read_table(out, "requests", REQUESTS_SCHEMA, report.REPORT_REQUEST_COLUMNS)
    ts = read_table(out, "timeseries", TIMESERIES_SCHEMA)
    assert requests is not None and ts is not None
    page = report.render(summary, requests, ts)
    assert page == (out / "report.html").read_text(encoding="utf-8")
    monkeypatch.setattr(report, "_figure_div", plotly_figure_div)
    assert page == report.render(summary, requests, ts)
