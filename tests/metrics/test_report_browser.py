"""report.html renders in a real headless Chromium: no JS errors, every plot drawn with data.

The page is instrumented (an error hook first in <head>, a probe after the plots) and loaded with
``chromium --headless --dump-dom``, which runs the scripts within a virtual-time budget and
prints the final DOM, where the probe has left its findings as JSON. The same call saves a
screenshot to test-artifacts/report.png. Needs Debian's chromium (``.ci/run`` installs it in CI);
elsewhere the test is skipped when no browser is installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import RunToDir
from llmservingsim.outputs.report import FIGURE_IDS, PD_FIGURE_IDS
from llmservingsim.sweep.plan_figure import write_plan_html

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

ERROR_HOOK = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
window.addEventListener("unhandledrejection", function (e) {
  window.__errors.push("unhandled rejection: " + String(e.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.map.call(arguments, String).join(" "));
    original.apply(console, arguments);
  };
})();
</script>"""

PROBE = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var plots = Array.prototype.slice.call(document.querySelectorAll(".js-plotly-plot"));
    var drawn = plots.filter(function (div) {
      // _fullData: the traces after plotly decoded their (base64 typed-array) columns.
      var hasData = (div._fullData || []).some(function (t) {
        return (t.x && t.x.length > 0) || (t.y && t.y.length > 0);
      });
      return hasData && div.querySelector(".main-svg") && div.querySelectorAll(".trace").length;
    });
    // Each plot's y-axis ranges as drawn, and any text drawn outside its plot's box.
    var yranges = {};
    var clipped = [];
    plots.forEach(function (div) {
      var layout = div._fullLayout || {};
      yranges[div.id] = Object.keys(layout).filter(function (k) {
        return /^yaxis[0-9]*$/.test(k);
      }).sort().map(function (k) { return layout[k].range; });
      var box = div.getBoundingClientRect();
      div.querySelectorAll("text").forEach(function (t) {
        var r = t.getBoundingClientRect();
        if (!t.textContent || r.width === 0 || r.height === 0) { return; }
        if (r.left < box.left - 1 || r.right > box.right + 1 ||
            r.top < box.top - 1 || r.bottom > box.bottom + 1) {
          clipped.push(div.id + ": " + t.textContent);
        }
      });
    });
    var pre = document.createElement("pre");
    pre.id = "browser-test-result";
    pre.textContent = JSON.stringify({
      errors: window.__errors,
      plots: plots.map(function (d) { return d.id; }),
      drawn: drawn.map(function (d) { return d.id; }),
      yranges: yranges,
      clipped: clipped
    });
    document.body.appendChild(pre);
  }, 2000);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def instrument(page: str) -> str:
    page = page.replace("<head>", "<head>" + ERROR_HOOK, 1)
    return page.replace("</body>", PROBE + "</body>", 1)


def render(chromium: str, page: Path, screenshot: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--window-size=1400,3400",
                "--virtual-time-budget=20000",
                f"--screenshot={screenshot}",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    match = re.search(r'<pre id="browser-test-result">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the probe did not run (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    return result


def _chromium() -> str:
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have chromium (.ci/run installs it with apt-get)")
        pytest.skip("no chromium browser installed (apt-get install chromium)")
    return chromium


def _render_page(chromium: str, html_file: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    page = tmp_path / f"{name}-instrumented.html"
    page.write_text(instrument(html_file.read_text()))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"{name}.png"
    screenshot.unlink(missing_ok=True)
    result = render(chromium, page, screenshot)
    assert result["errors"] == []
    assert result["clipped"] == [], "labels drawn outside their plot"
    assert screenshot.stat().st_size > 10_000
    return result


# Plots of counts, tokens, utilization, power and energy: the y axis starts at 0.
FROM_ZERO = ("throughput", "batch-size", "queue-length", "kv-use", "power", "energy-split")


def _check_report(result: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert sorted(result["plots"]) == sorted(expected)
    assert sorted(result["drawn"]) == sorted(expected)
    for plot in FROM_ZERO:
        (low, high), *_ = result["yranges"][plot]
        assert low == 0 and high > 0, (plot, low, high)


def test_report_renders_in_headless_chromium(run_to_dir: RunToDir, tmp_path: Path) -> None:
    chromium = _chromium()
    out, _ = run_to_dir()
    result = _render_page(chromium, out / "report.html", tmp_path, "report")
    _check_report(result, FIGURE_IDS)
    # 60 requests of a 1B model: the queue stays empty, and its axis reads 0..1, not -1..1
    assert result["yranges"]["queue-length"][0] == [0, 1]


def test_pd_report_renders_with_its_kv_transfer_plot(run_to_dir: RunToDir, tmp_path: Path) -> None:
    chromium = _chromium()
    pools = "cluster.pools=[{name: p, role: prefill, count: 4}, {name: d, role: decode, count: 4}]"
    out, _ = run_to_dir(pools, "workload.arrival.rate=30")
    result = _render_page(chromium, out / "report.html", tmp_path, "report-pd")
    _check_report(result, FIGURE_IDS + PD_FIGURE_IDS)


def test_plan_page_renders_without_clipped_labels(tmp_path: Path) -> None:
    chromium = _chromium()
    rows = [
        {"hardware": hw, "cluster.instances": n, "status": "ok", "rate_req_s": rate,
         "usd_per_million_output_tokens": cost, "ttft_s_p99": ttft, "tpot_s_p99": tpot,
         "pareto": False}
        for hw, n, rate, cost, ttft, tpot in (
            ("h100-sxm", 1, 112.0, 0.026, 0.476, 0.039),
            ("h100-sxm", 2, 395.0, 0.015, 0.497, 0.042),
            ("a100-80gb", 1, 19.9, 0.089, 0.363, 0.049),
            ("a100-80gb", 2, 51.5, 0.068, 0.461, 0.048),
            ("l40s", 1, 10.8, 0.090, 0.318, 0.050),
            ("l40s", 2, 25.8, 0.076, 0.254, 0.049),
        )
    ]  # fmt: skip
    rows.append({"hardware": "l4", "cluster.instances": 1, "status": "does_not_fit"})
    path = tmp_path / "plan.html"
    write_plan_html(
        path,
        rows,
        ["hardware", "cluster.instances"],
        "usd_per_million_output_tokens",
        "ttft_s_p99",
        [("ttft_s_p99", 0.5), ("tpot_s_p99", 0.05)],
    )
    result = _render_page(chromium, path, tmp_path, "plan")
    (plot,) = result["plots"]
    assert result["drawn"] == [plot]
    for low, _high in result["yranges"][plot]:
        assert low == 0
