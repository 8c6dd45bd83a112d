"""Same config + seed → byte-identical outputs apart from the wall-time fields; every output
names the version and the resolved config that produced it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from llmservingsim import __version__
from llmservingsim.config import load_config
from llmservingsim.outputs.files import WALL_TIME_FIELDS
from llmservingsim.outputs.run_outputs import simulate_to_dir

SCENARIO = [
    "model=llama-3.2-1b",
    "workload.num_requests=120",
    "workload.arrival.rate=60",
    "scheduler.enable_prefix_caching=true",
    "workload.prefix.system_prompt_len=200",
    "workload.prefix.num_system_prompts=3",
    "cluster.instances=2",
    "cluster.router=least_outstanding",
    "seed=11",
]


def summary_without_wall_time(out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    for key in WALL_TIME_FIELDS:
        summary.pop(key)
    return json.dumps(summary, indent=2)


def test_two_runs_write_identical_files_apart_from_wall_time(tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        simulate_to_dir(load_config(None, SCENARIO), out)
        outs.append(out)
    a, b = outs
    assert summary_without_wall_time(a) == summary_without_wall_time(b)
    for name in ("requests.parquet", "timeseries.parquet", "trace.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_another_seed_changes_the_result(tmp_path: Path) -> None:
    simulate_to_dir(load_config(None, SCENARIO), tmp_path / "a")
    simulate_to_dir(load_config(None, [*SCENARIO, "seed=12"]), tmp_path / "b")
    assert summary_without_wall_time(tmp_path / "a") != summary_without_wall_time(tmp_path / "b")


def test_every_output_carries_version_and_resolved_config(tmp_path: Path) -> None:
    cfg = load_config(None, SCENARIO)
    simulate_to_dir(cfg, tmp_path)
    resolved = cfg.model_dump(mode="json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["version"] == __version__ and summary["config"] == resolved
    for name in ("requests.parquet", "timeseries.parquet"):
        meta = pq.read_schema(tmp_path / name).metadata[b"llmservingsim"]
        assert json.loads(meta) == {"version": __version__, "config": resolved}
    other = json.loads((tmp_path / "trace.json").read_text())["otherData"]
    assert other["version"] == __version__ and other["config"] == resolved
    report = (tmp_path / "report.html").read_text()
    assert f"llmservingsim {__version__}" in report and "Resolved config" in report


def _run_process(out: Path, env: dict[str, str]) -> None:
    sets = [*SCENARIO, "cluster.router=prefix_aware"]  # it hashes prompt contents
    args = [sys.executable, "-m", "llmservingsim", "run", "--out", str(out), "-q", "--no-report"]
    for item in sets:
        args += ["--set", item]
    done = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_separate_processes_hash_seeds_and_builds_give_the_same_files(tmp_path: Path) -> None:
    """Two processes with different PYTHONHASHSEED, and the same source interpreted: the same
    numbers and files (summary.json says which build ran)."""
    runs = {
        "seed1": {"PYTHONHASHSEED": "1"},
        "seed2": {"PYTHONHASHSEED": "2"},
        "interpreted": {"PYTHONHASHSEED": "3", "LLMSERVINGSIM_INTERPRETED": "1"},
    }
    for name, env in runs.items():
        _run_process(tmp_path / name, env)
    builds = {
        name: json.loads((tmp_path / name / "summary.json").read_text())["engine_build"]
        for name in runs
    }
    assert builds["interpreted"] == "interpreted"
    assert builds["seed1"] == builds["seed2"]
    first = tmp_path / "seed1"
    for name in ("seed2", "interpreted"):
        other = tmp_path / name
        a, b = summary_without_wall_time(first), summary_without_wall_time(other)
        assert a.replace(builds["seed1"], "BUILD") == b.replace(builds[name], "BUILD"), name
        for file in ("requests.parquet", "timeseries.parquet", "trace.json"):
            assert (first / file).read_bytes() == (other / file).read_bytes(), (name, file)
