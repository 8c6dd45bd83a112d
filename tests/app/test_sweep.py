"""Sweeps: grid parsing, up-front validation, resumable Parquet results, local and Ray executors."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmservingsim import simulation
from llmservingsim.cli import app
from llmservingsim.errors import ConfigError, UserError
from llmservingsim.sweep import store as store_module
from llmservingsim.sweep.executors import (
    ExecutorOptions,
    LocalExecutor,
    check_reachable,
    make_executor,
)
from llmservingsim.sweep.grid import Axis, grid_points, parse_axes, parse_axis
from llmservingsim.sweep.points import build_points
from llmservingsim.sweep.rows import WALL_COLUMNS, flatten_summary
from llmservingsim.sweep.runner import run_sweep
from llmservingsim.sweep.scenario import Scenario
from llmservingsim.sweep.store import ResultStore, read_rows, rows_to_table, write_table_atomic

runner = CliRunner()
SMALL = ("model=llama-3.2-1b", "workload.num_requests=50")


# ----------------------------------------------------------------------------- grid syntax


def test_values_parse_as_yaml_and_commas_inside_mappings_do_not_split() -> None:
    axis = parse_axis("workload.input_len={dist: fixed, value: 64},{dist: uniform, min: 1, max: 9}")
    assert axis.values == (
        {"dist": "fixed", "value": 64},
        {"dist": "uniform", "min": 1, "max": 9},
    )
    assert parse_axis("workload.arrival.rate=1, 2.5,.inf").values == (1, 2.5, math.inf)
    assert parse_axis("model=llama-3.2-1b,'a,b'").values == ("llama-3.2-1b", "a,b")


def test_integer_ranges_expand() -> None:
    assert parse_axis("scheduler.max_num_seqs=1..4").values == (1, 2, 3, 4)
    assert parse_axis("scheduler.max_num_seqs=1..64*2").values == (1, 2, 4, 8, 16, 32, 64)
    assert parse_axis("scheduler.max_num_seqs=3..30*3,100").values == (3, 9, 27, 100)
    assert parse_axis("x.y=1..2").is_range


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("workload.arrival.rate", "expected key.path=value1,value2"),
        ("=1,2", "expected key.path=value1,value2"),
        ("workload..rate=1", "not a dotted config key"),
        ("workload.arrival.rate=1,,2", "empty value"),
        ("workload.arrival.rate=", "empty value"),
        ("workload.input_len={dist: fixed, value: 1", "unclosed '{'"),
        ("workload.input_len=[1, 2]]", "unbalanced ']'"),
        ("scheduler.max_num_seqs=1..x", "must be a..b or a..b*k"),
        ("scheduler.max_num_seqs=1.5..4", "must be a..b or a..b*k"),
        ("scheduler.max_num_seqs=9..3", "is empty"),
        ("scheduler.max_num_seqs=0..8*2", "needs a >= 1 and a factor >= 2"),
    ],
)
def test_bad_grid_syntax_is_a_one_line_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--grid") as info:
        parse_axis(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_duplicate_keys_and_unequal_zip_lists_are_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_axes(["seed=1,2", "seed=3"])
    with pytest.raises(ConfigError, match="equal length"):
        grid_points(parse_axes(["seed=1,2", "workload.arrival.rate=1"]), zipped=True)


_axes = st.lists(
    st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True), min_size=1, max_size=3
)


@given(_axes)
def test_product_spans_every_combination_first_axis_slowest(value_lists: list[list[int]]) -> None:
    axes = [Axis(f"k{i}.v", tuple(vs)) for i, vs in enumerate(value_lists)]
    points = grid_points(axes)
    assert len(points) == math.prod(len(vs) for vs in value_lists)
    assert len(set(points)) == len(points)
    assert [p[0][1] for p in points] == sorted((p[0][1] for p in points), key=value_lists[0].index)


def test_zip_pairs_values_in_order() -> None:
    points = grid_points(parse_axes(["seed=1,2,3", "workload.arrival.rate=4,5,6"]), zipped=True)
    assert [dict(p) for p in points] == [
        {"seed": 1, "workload.arrival.rate": 4},
        {"seed": 2, "workload.arrival.rate": 5},
        {"seed": 3, "workload.arrival.rate": 6},
    ]


# ----------------------------------------------------------------------------- points


def _points(*grid: str, zipped: bool = False, base: tuple[str, ...] = SMALL) -> Any:
    return build_points(Scenario.load(None, list(base)), grid_points(parse_axes(grid), zipped))


def test_equal_values_are_one_point_and_columns_hold_resolved_values() -> None:
    points = _points("workload.arrival.rate=8,8.0,16")
    assert [p.values for p in points] == [
        {"workload.arrival.rate": 8.0},
        {"workload.arrival.rate": 16.0},
    ]
    assert len({p.point_id for p in points}) == 2
    assert len({p.base_id for p in points}) == 1


def test_every_point_is_validated_before_any_simulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = _count_runs(monkeypatch)
    with pytest.raises(ConfigError, match="did you mean 'h100-sxm'"):
        _points("hardware=a100-80gb,h100-sxn")
    with pytest.raises(ConfigError, match=r"scheduler\.max_num_seqs"):
        _points("scheduler.max_num_seqs=8,-1")
    assert runs == []


def test_flatten_summary_names_nested_stats_with_underscores() -> None:
    flat = flatten_summary(
        {"ttft_s": {"p99": 0.5, "mean": None}, "memory": {"kv_tokens": 7}, "config": {"a": 1}}
    )
    assert flat == {"ttft_s_p99": 0.5, "ttft_s_mean": None, "memory_kv_tokens": 7}
    per_group = flatten_summary(
        {
            "clients": {"chat": {"ttft_s": {"p99": 0.2}, "goodput": 3.0}},
            "stages": [{"saturated": False}, {"saturated": True, "rate": 20}],
        }
    )
    assert per_group == {
        "clients_chat_ttft_s_p99": 0.2,
        "clients_chat_goodput": 3.0,
        "stages_0_saturated": False,
        "stages_1_saturated": True,
        "stages_1_rate": 20,
    }


# ----------------------------------------------------------------------------- store and resume


def _count_runs(monkeypatch: pytest.MonkeyPatch, fail_on: int | None = None) -> list[Any]:
    """Record the full simulations (not the zero-request validation runs) as they start."""
    runs: list[Any] = []
    real = simulation.simulate

    def counting(cfg: Any, requests: Any = None, progress: Any = None) -> Any:
        if requests is None or len(requests):
            runs.append(getattr(cfg, "config", cfg))  # a SimConfig, or a resolved Scenario
            if fail_on is not None and len(runs) == fail_on:
                raise KeyboardInterrupt
        return real(cfg, requests=requests, progress=progress)

    monkeypatch.setattr(simulation, "simulate", counting)
    return runs


def _in_process() -> LocalExecutor:
    return LocalExecutor(ExecutorOptions(workers=1))


def test_resume_runs_only_the_points_not_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sweep.parquet"
    first = _points("workload.arrival.rate=2,4")
    run_sweep(first, ResultStore.open(path, resume=False, flush_interval_s=0), _in_process())
    runs = _count_runs(monkeypatch)
    grown = _points("workload.arrival.rate=2,4,8,16")
    outcome = run_sweep(grown, ResultStore.open(path, resume=True), _in_process())
    assert (outcome.ran, outcome.skipped) == (2, 2)
    assert sorted(c.workload.arrival.rate for c in runs) == [8.0, 16.0]
    rows = read_rows(path)
    assert sorted(r["workload.arrival.rate"] for r in rows) == [2.0, 4.0, 8.0, 16.0]
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["requests_completed"] == 50 for r in rows)


def test_interrupted_sweep_keeps_finished_rows_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sweep.parquet"
    points = _points("workload.arrival.rate=2,4,8")
    runs = _count_runs(monkeypatch, fail_on=3)
    outcome = run_sweep(points, ResultStore.open(path, resume=False), _in_process())
    assert outcome.stopped == "interrupted"
    assert len(read_rows(path)) == 2
    assert not list(tmp_path.glob(".*tmp"))
    runs.clear()
    outcome = run_sweep(points, ResultStore.open(path, resume=True), _in_process())
    assert (outcome.ran, outcome.skipped, outcome.stopped) == (1, 2, None)
    assert len(runs) == 1 and len(read_rows(path)) == 3


def test_resume_refuses_a_file_from_another_base_config(tmp_path: Path) -> None:
    path = tmp_path / "sweep.parquet"
    run_sweep(_points("seed=1"), ResultStore.open(path, resume=False), _in_process())
    other = _points("seed=1", base=(*SMALL, "workload.num_requests=60"))
    with pytest.raises(ConfigError, match="another base config"):
        run_sweep(other, ResultStore.open(path, resume=True), _in_process())
    with pytest.raises(Exception, match="already exists"):
        ResultStore.open(path, resume=False)


def test_a_failed_write_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sweep.parquet"
    write_table_atomic(rows_to_table([{"point_id": "a", "x": 1}]), path)

    def torn_write(table: pa.Table, where: Path) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(store_module.pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_table_atomic(rows_to_table([{"point_id": "a", "x": 1}, {"point_id": "b"}]), path)
    assert pq.read_table(path).to_pylist() == [{"point_id": "a", "x": 1}]


def test_rows_with_different_columns_share_one_table() -> None:
    table = rows_to_table(
        [
            {"point_id": "a", "status": "does_not_fit", "error": "too big", "point_wall_s": 0.1},
            {"point_id": "b", "status": "ok", "ttft_s_p99": 0.2, "error": None, "point_wall_s": 1},
        ]
    )
    assert table.column_names == ["point_id", "status", "ttft_s_p99", "point_wall_s", "error"]
    assert table.column("ttft_s_p99").to_pylist() == [None, 0.2]


def test_a_point_that_does_not_fit_is_a_row_not_a_crash(tmp_path: Path) -> None:
    points = _points("cluster.tensor_parallel=1,4", base=(*SMALL, "model=llama-3.1-70b"))
    path = tmp_path / "sweep.parquet"
    run_sweep(points, ResultStore.open(path, resume=False), _in_process())
    by_tp = {r["cluster.tensor_parallel"]: r for r in read_rows(path)}
    assert by_tp[1]["status"] == "does_not_fit" and "does not fit" in by_tp[1]["error"]
    assert by_tp[1]["ttft_s_p99"] is None
    assert by_tp[4]["status"] == "ok" and by_tp[4]["ttft_s_p99"] > 0


# ----------------------------------------------------------------------------- executors


GRID = ("workload.arrival.rate=4,16", "scheduler.max_num_seqs=4,64")


def _comparable(path: Path) -> list[dict[str, Any]]:
    rows = read_rows(path)
    return sorted(
        ({k: v for k, v in r.items() if k not in WALL_COLUMNS} for r in rows),
        key=lambda r: r["point_id"],
    )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_local_pool_and_ray_give_identical_rows(tmp_path: Path, ray_cluster: Any) -> None:
    points = _points(*GRID)
    local, remote = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    run_sweep(points, ResultStore.open(local, False), make_executor("local", ExecutorOptions(2)))
    ray_executor = make_executor("ray", ExecutorOptions())
    run_sweep(points, ResultStore.open(remote, False), ray_executor)
    ray_executor.close()
    assert ray_cluster.is_initialized()  # a Ray started by the caller is left running
    rows = _comparable(local)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert rows == _comparable(remote)
    assert len({r["ttft_s_p99"] for r in rows}) > 1  # the overrides reached the simulations


def test_unreachable_ray_address_fails_fast_with_one_line() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError, match="cannot connect") as info:
        check_reachable(f"127.0.0.1:{port}", timeout_s=1)
    assert "\n" not in str(info.value)


def test_ray_address_without_ray_executor_is_refused() -> None:
    with pytest.raises(ConfigError, match="--executor ray"):
        make_executor("local", ExecutorOptions(ray_address="auto"))
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("dask", ExecutorOptions())
    with pytest.raises(ConfigError, match="--workers"):
        make_executor("local", ExecutorOptions(workers=0))


# ----------------------------------------------------------------------------- CLI


def test_cli_sweep_writes_parquet_and_resume_skips(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["sweep", *_sets(), "--grid", "workload.arrival.rate=2,4", "--out", str(out)]
    result = runner.invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "2 points simulated" in result.output
    assert pq.read_table(out / "sweep.parquet").num_rows == 2
    again = runner.invoke(app, [*args, "--workers", "1"])
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume", "--quiet"])
    assert resumed.exit_code == 0 and resumed.output == ""


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("workload.arrival.rate", "expected key.path=value1,value2"),
        ("scheduler.max_num_seq=1,2", "did you mean 'scheduler.max_num_seqs'"),
        ("workload.arrival.rate=1,-2", "workload.arrival.rate"),
    ],
)
def test_cli_bad_grid_exits_2_before_simulating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grid: str, message: str
) -> None:
    runs = _count_runs(monkeypatch)
    result = runner.invoke(app, ["sweep", "--grid", grid, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert runs == [] and not (tmp_path / "x").exists()


def _sets() -> list[str]:
    return [arg for item in SMALL for arg in ("--set", item)]
