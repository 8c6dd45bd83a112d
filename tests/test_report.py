"""report.html: every section and plot present, self-contained, rebuilt from Parquet or CSV."""

from __future__ import annotations

import re

from conftest import RunToDir
from llmservingsim.outputs.report import FIGURE_IDS, SECTIONS, write_report


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
