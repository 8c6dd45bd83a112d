"""The command line, through typer's CliRunner and as a real subprocess."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from llmservingsim import cli
from llmservingsim.cli import app
from llmservingsim.config import load_config

runner = CliRunner()
SMALL = ["--set", "workload.num_requests=40", "--set", "model=llama-3.2-1b"]


def test_run_writes_summary_and_requests(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", *SMALL, "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests_completed"] == 40
    assert summary["config"]["seed"] == 3
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(summary[key]) == {"mean", "p50", "p90", "p99", "max"}
    written = {p.name for p in out.iterdir()}
    assert written == {
        "summary.json",
        "requests.parquet",
        "timeseries.parquet",
        "trace.json",
        "report.html",
    }
    assert "TTFT" in result.output
    assert "requests.parquet" in result.output


def test_format_csv_and_no_report(tmp_path: Path) -> None:
    args = ["run", *SMALL, "--out", str(tmp_path), "--format", "csv", "--no-report", "--no-trace"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {
        "summary.json",
        "requests.csv",
        "timeseries.csv",
    }
    lines = (tmp_path / "requests.csv").read_text().splitlines()
    assert lines[0].startswith('"id","instance","status"')
    assert len(lines) == 41
    bad = runner.invoke(app, ["run", *SMALL, "--out", str(tmp_path), "--format", "xlsx"])
    assert bad.exit_code == 2
    assert "outputs.format" in bad.output


def test_report_command_rebuilds_the_page(tmp_path: Path) -> None:
    runner.invoke(app, ["run", *SMALL, "--out", str(tmp_path), "--no-report", "--quiet"])
    assert not (tmp_path / "report.html").exists()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").stat().st_size > 0
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert "no summary.json" in missing.output
    assert "Traceback" not in missing.output


def test_json_flag_prints_only_the_summary(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", *SMALL, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert result.stdout == (tmp_path / "summary.json").read_text()
    assert json.loads(result.stdout)["requests_completed"] == 40


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", *SMALL, "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0
    assert result.output == ""


def test_unknown_key_exits_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--set", "workload.arival.rate=1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "did you mean 'workload.arrival'" in result.output
    assert "Traceback" not in result.output


def test_model_that_does_not_fit_exits_nonzero_with_hint(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--set", "model=llama-3.1-70b", "--out", str(tmp_path)])
    assert result.exit_code == 3
    assert "does not fit" in result.output
    assert "tensor_parallel" in result.output


def test_unsupported_feature_is_a_clear_error(tmp_path: Path) -> None:
    args = ["run", "--set", "pim.enabled=true", "--set", "scheduler.preemption=swap"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "not yet supported" in result.output


def test_unknown_catalog_names(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--set", "hardware=h100-sxn", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "did you mean 'h100-sxm'" in result.output
    result = runner.invoke(app, ["run", "--set", "scheduler.policy=vlm", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "'vllm'" in result.output


def test_catalog_lists_models_and_hardware() -> None:
    result = runner.invoke(app, ["catalog"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for name in ("llama-3.1-8b", "h100-sxm", "mi300x", "vllm", "roofline"):
        assert name in result.output
    for column in (
        "params B",
        "heads/kv",
        "KV KiB/tok",
        "TFLOP/s",
        "mem GB/s",
        "idle/max W",
        "$/h",
    ):
        assert column in result.output
    assert runner.invoke(app, ["catalog", "gpus"]).exit_code != 0


def test_subprocess_entry_points(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmservingsim", "run", *SMALL, "--out", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["requests_completed"] == 40
    bad = subprocess.run(
        [sys.executable, "-m", "llmservingsim", "run", "--set", "nope=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


# Start-up (docs/performance.md, "Start-up"): `--help` imports none of these; a run without
# report.html does not import plotly. Checked by module, not by wall time.
HELP_DOES_NOT_IMPORT = (
    "numpy",
    "pydantic",
    "pyarrow",
    "plotly",
    "scipy",
    "yaml",
    "llmservingsim.config",
    "llmservingsim.simulation",
    "llmservingsim.engine",
)


def _loaded_after(script: str) -> tuple[list[str], str]:
    """Run ``script`` in a fresh interpreter; the heavy modules it loaded and what it printed."""
    probe = (
        f"{script}\nimport sys\n"
        f"print('LOADED', sorted(m for m in {HELP_DOES_NOT_IMPORT!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    out, _, loaded = proc.stdout.rpartition("LOADED ")
    return ast.literal_eval(loaded.strip()), out


def test_help_lists_every_command_without_loading_the_heavy_libraries() -> None:
    """numpy, pydantic (the config models), pyarrow, plotly, scipy and the engine cost most of
    a second at start-up; the commands that need them import them."""
    loaded, help_text = _loaded_after(
        "from typer.testing import CliRunner; from llmservingsim.cli import app; "
        "print(CliRunner().invoke(app, ['--help']).output)"
    )
    assert loaded == []
    for command in ("run", "report", "catalog", "sweep", "plan", "calibrate", "validate"):
        assert re.search(rf"^\W*{command}\s", help_text, re.MULTILINE), command
    for command in ("run", "sweep", "plan", "calibrate", "validate", "catalog"):
        loaded, sub_help = _loaded_after(
            "from typer.testing import CliRunner; from llmservingsim.cli import app; "
            f"print(CliRunner().invoke(app, [{command!r}, '--help']).output)"
        )
        # typer itself imports the pydantic package to read a command's parameters; no config
        # model is built (llmservingsim.config is not imported)
        assert [m for m in loaded if m != "pydantic"] == [], command
        assert "--help" in sub_help, command


def test_a_run_without_report_does_not_import_plotly(tmp_path: Path) -> None:
    loaded, _ = _loaded_after(
        "from typer.testing import CliRunner; from llmservingsim.cli import app; "
        "r = CliRunner().invoke(app, ['run', '--set', 'model=llama-3.2-1b', '--set', "
        f"'workload.num_requests=20', '--out', {str(tmp_path / 'out')!r}, '-q', '--no-report']); "
        "assert r.exit_code == 0, r.output"
    )
    assert "plotly" not in loaded
    assert "llmservingsim.simulation" in loaded  # the probe does see what a run imports


def test_error_text_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    pools = "cluster.pools=[{role: prefill, cuont: 1}, {role: decode}]"
    result = runner.invoke(app, ["run", "--set", pools, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "cluster.pools[0].cuont" in result.output
    assert "did you mean 'cluster.pools[0].count'" in result.output


def test_progress_bar_shows_requests_sim_time_and_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar only draws on a terminal: render it into a forced-terminal console."""
    screen = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=screen, force_terminal=True, width=160))
    cfg = load_config(None, ["workload.num_requests=300", "model=llama-3.2-1b"])
    result, paths = cli._run_with_progress(cfg, tmp_path, show=True)
    assert result.summary["requests_completed"] == 300
    assert paths[0].name == "summary.json"
    text = screen.getvalue()
    assert "/300 requests" in text
    assert re.search(r"sim [0-9.,]+ s", text)
    assert re.search(r"[0-9,]+× real time", text)


def _run_json(tmp_path: Path, *overrides: str) -> tuple[dict[str, Any], str]:
    args = ["run", "--out", str(tmp_path / "out"), "--no-report", "--no-trace"]
    for item in ("model=llama-3.2-1b", *overrides):
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "summary.json").read_text()), result.output


def test_kv_cache_lines_say_per_instance_and_cluster(tmp_path: Path) -> None:
    summary, output = _run_json(
        tmp_path, "cluster.instances=4", "workload.num_requests=40", "workload.arrival.rate=20"
    )
    per_instance = summary["memory"]["kv_tokens"]
    assert [row["kv_capacity_tokens"] for row in summary["instances"]] == [per_instance] * 4
    assert summary["kv_cache_capacity_tokens"] == 4 * per_instance
    assert re.search(rf"KV cache \(per instance\)\s+{per_instance:,} tokens", output)
    assert re.search(rf"KV cache \(cluster\)\s+{4 * per_instance:,} tokens", output)


def test_a_run_too_short_for_steady_state_warns(tmp_path: Path) -> None:
    """40 requests at 200 req/s arrive in 0.2 s and take seconds to finish: the completed
    throughput is a small fraction of the offered rate."""
    summary, output = _run_json(
        tmp_path, "cluster.instances=4", "workload.num_requests=40", "workload.arrival.rate=200"
    )
    assert summary["steady_state"] is False
    assert "too short to reach steady state" in summary["steady_state_reason"]
    assert "warning: not in steady state" in output


def test_a_growing_queue_is_named_in_the_warning(tmp_path: Path) -> None:
    """Four sequences at a time cannot serve 30 req/s: TTFT climbs through the run."""
    summary, output = _run_json(
        tmp_path,
        "scheduler.max_num_seqs=4",
        "workload.num_requests=200",
        "workload.arrival.rate=30",
    )
    assert summary["steady_state"] is False
    assert "queue is still growing" in summary["steady_state_reason"]
    assert "warning: not in steady state" in output


def test_a_long_enough_run_and_a_batch_do_not_warn(tmp_path: Path) -> None:
    summary, output = _run_json(tmp_path, "workload.num_requests=400", "workload.arrival.rate=4")
    assert summary["steady_state"] is True
    assert "warning" not in output
    batch, output = _run_json(
        tmp_path, "workload.num_requests=50", "workload.arrival.rate=.inf", "seed=2"
    )
    assert batch["steady_state"] is None
    assert "warning" not in output


def test_an_abort_prints_aborted_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The handler for click's Abort exists under every typer (typer 0.29 keeps it outside its
    click copy: a missing name turned every other exception into an AttributeError)."""
    import typer

    from llmservingsim import cli

    def abort(*args: object, **kwargs: object) -> None:
        raise typer.Abort()

    monkeypatch.setattr(typer.core.TyperGroup, "main", abort)
    with pytest.raises(SystemExit) as exc:
        cli.app(["--help"])
    assert exc.value.code == 1
    assert "Aborted!" in capsys.readouterr().err
