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
from llmservingsim.outputs.report import FIGURE_IDS

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
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
    var pre = document.createElement("pre");
    pre.id = "browser-test-result";
    pre.textContent = JSON.stringify({
      errors: window.__errors,
      plots: plots.map(function (d) { return d.id; }),
      drawn: drawn.map(function (d) { return d.id; })
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


def test_report_renders_in_headless_chromium(run_to_dir: RunToDir, tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must have chromium (.ci/run installs it with apt-get)")
        pytest.skip("no chromium browser installed (apt-get install chromium)")
    out, _ = run_to_dir()
    page = tmp_path / "instrumented.html"
    page.write_text(instrument((out / "report.html").read_text()))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    result = render(chromium, page, screenshot)
    assert result["errors"] == []
    assert sorted(result["plots"]) == sorted(FIGURE_IDS)
    assert sorted(result["drawn"]) == sorted(FIGURE_IDS)
    assert screenshot.stat().st_size > 10_000
