"""Profile tables: readers, interpolation, fallback counting (hardware/backends/profile.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.profile import ProfileBackend
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.profiles import ProfilePoint, load_profiles
from llmservingsim.hardware.profiles.native import build_op, read_native, write_native
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.simulation import simulate

MODEL = "llama-3.2-1b"
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def _graph() -> OpGraph:
    return OpGraph(load_model(MODEL), 1, "bf16", "bf16")


def _power_law(m: int) -> float:
    """A table that is exactly linear in log(1 + m): interpolation must reproduce it."""
    return 2e-6 * (1 + m) ** 0.75


def _dense_table(tmp_path: Path) -> Path:
    graph = _graph()
    points = [
        ProfilePoint(op, _power_law(m), "bf16", MODEL, "synthetic")
        for m in TOKENS
        for op in {o.name: o for o in graph.dense_layer_ops(m)}.values()
    ]
    path = tmp_path / "dense.csv"
    write_native(path, points)
    return path


def _backend(path: Path) -> ProfileBackend:
    device = load_device("h100-sxm")
    return ProfileBackend(device, "bf16", load_profiles([path]))


def test_native_format_round_trips(tmp_path: Path) -> None:
    path = _dense_table(tmp_path)
    points = read_native(path, [])
    assert len(points) == len(TOKENS) * 9  # distinct ops of a layer
    graph = _graph()
    by_shape = {(p.op.name, p.op.dims): p for p in points}
    for op in graph.dense_layer_ops(64):
        point = by_shape[(op.name, op.dims)]
        assert point.op == op  # the reader rebuilds the simulator's own op (FLOPs, bytes)
        assert point.seconds == _power_law(64)


def test_table_points_are_returned_exactly_and_between_them_log_log(tmp_path: Path) -> None:
    backend = _backend(_dense_table(tmp_path))
    graph = _graph()
    for m in TOKENS:
        for op in graph.dense_layer_ops(m):
            assert backend.time(op) == _power_law(m)
    for m in (3, 100, 3000):
        for op in graph.dense_layer_ops(m):
            assert backend.time(op) == pytest.approx(_power_law(m), rel=1e-9)
    assert backend.stats()["perf_fallbacks"] == 0


def test_outside_the_table_falls_back_to_roofline_and_is_counted(tmp_path: Path) -> None:
    backend = _backend(_dense_table(tmp_path))
    roofline = RooflineBackend(load_device("h100-sxm"), "bf16")
    graph = _graph()
    beyond = [op for op in graph.dense_layer_ops(10000) if op.kind == "gemm"]
    missing = graph.head_ops(16, 16)  # embedding, lm_head, sampling: not in the table
    for op in [*beyond, *missing]:
        assert backend.time(op) == roofline.time(op)
    stats = backend.stats()
    assert stats["perf_fallbacks"] == len(beyond) + len(missing)
    assert stats["perf_fallback_ops"]["qkv_proj"] == 1
    assert stats["perf_fallback_ops"]["lm_head"] == 1


def test_two_axis_attention_table_interpolates_inside_and_falls_back_outside(
    tmp_path: Path,
) -> None:
    graph = _graph()

    def law(batch: int, context: int) -> float:
        return 1e-6 * (1 + batch) ** 0.3 * (1 + context) ** 0.9

    grid = [(b, c) for b in (1, 4, 16, 64) for c in (64, 1024, 16384, 65536)]
    points = [
        ProfilePoint(graph.decode_attention(b, c), law(b, c), "bf16", MODEL, "grid")
        for b, c in grid
    ]
    path = tmp_path / "attn.csv"
    write_native(path, points)
    backend = _backend(path)
    for b, c in grid:
        assert backend.time(graph.decode_attention(b, c)) == law(b, c)
    # Inside the grid: within the corner values (piecewise-linear in log space).
    inside = backend.time(graph.decode_attention(8, 4096))
    assert law(4, 1024) < inside < law(16, 16384)
    assert backend.stats()["perf_fallbacks"] == 0
    backend.time(graph.decode_attention(128, 4096))  # batch beyond the table
    assert backend.stats()["perf_fallback_ops"] == {"attention_decode": 1}


def test_simulation_reports_fallbacks_in_the_summary(tmp_path: Path) -> None:
    table = _dense_table(tmp_path)
    cfg = load_config(
        None,
        [
            f"model={MODEL}",
            "workload.num_requests=30",
            "perf.backend=profile",
            f"perf.profile_dir={table}",
        ],
    )
    summary = simulate(cfg).summary
    by_op = summary["perf_fallback_ops"]
    assert summary["perf_fallbacks"] == sum(by_op.values()) > 0
    assert summary["perf_lookups"] > summary["perf_fallbacks"]
    # No attention or head table was given; every dense-layer op was in the table.
    assert {"attention_decode", "attention_prefill", "lm_head"} <= set(by_op)
    assert not {"qkv_proj", "mlp_up_proj", "rope"} & set(by_op)


def test_profile_backend_config_errors(tmp_path: Path) -> None:
    table = _dense_table(tmp_path)
    with pytest.raises(ConfigError, match=r"perf\.profile_dir"):
        simulate(load_config(None, ["perf.backend=profile"]))
    with pytest.raises(ConfigError, match="no table for dtype fp8"):
        simulate(
            load_config(None, ["dtype=fp8", "perf.backend=profile", f"perf.profile_dir={table}"])
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="no operator profile tables"):
        load_profiles([empty])
    with pytest.raises(ConfigError, match="does not exist"):
        load_profiles([tmp_path / "missing"])


def test_native_reader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("op,dims,dtype,seconds\nqkv_proj,m=4 n=8 k=8,bf16,1e-6\nrope,m=4 x=2,bf16,1\n")
    with pytest.raises(ConfigError, match=r"bad.csv:3: dims 'm=4 x=2' match no op shape"):
        load_profiles([path])
    path.write_text("op,dims,dtype,seconds\nqkv_proj,m=4 n=8 k=8,bf16,-1\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: seconds must be > 0"):
        load_profiles([path])


def _vidur_mlp(path: Path) -> None:
    spec = load_model(MODEL)
    columns = {
        "emb": 3.0,
        "input_layernorm": 4.0,
        "attn_pre_proj": 11.0,
        "attn_rope": 5.0,
        "attn_post_proj": 9.0,
        "post_attention_layernorm": 4.0,
        "mlp_up_proj": 30.0,
        "mlp_act": 6.0,
        "mlp_down_proj": 16.0,
        "add": 2.0,
    }
    header = [f"time_stats.{c}.median" for c in columns]
    header += ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size"]
    header += ["use_gated_mlp", "num_tokens", "num_tensor_parallel_workers"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for tokens in (1, 16):
            times = [f"{us * tokens**0.5 / 1000:.6f}" for us in columns.values()]  # ms
            shape = [spec.num_heads, spec.num_kv_heads, spec.hidden_size, spec.intermediate_size]
            writer.writerow([*times, *shape, spec.vocab_size, "True", tokens, 1])


def test_vidur_tables_map_onto_the_simulators_ops(tmp_path: Path) -> None:
    mlp = tmp_path / "Llama-3.2-1B" / "mlp.csv"
    mlp.parent.mkdir()
    _vidur_mlp(mlp)
    attention = tmp_path / "Llama-3.2-1B" / "tp1" / "attention.csv"
    attention.parent.mkdir()
    attention.write_text(
        "time_stats.attn_prefill.median,time_stats.attn_decode.median,n_embd,n_q_head,"
        "n_kv_head,num_tensor_parallel_workers,batch_size,prefill_chunk_size,kv_cache_size,"
        "is_prefill\n"
        "0.02,,2048,32,8,1,1,32,96,True\n"
        ",0.03,2048,32,8,1,4,0,4096,False\n"
    )
    points = load_profiles([tmp_path])
    assert {p.model for p in points} == {"Llama-3.2-1B"}
    backend = ProfileBackend(load_device("h100-sxm"), "bf16", points)
    graph = _graph()
    qkv = next(op for op in graph.dense_layer_ops(16) if op.name == "qkv_proj")
    assert backend.time(qkv) == pytest.approx(11.0 * 4 * 1e-6)  # 11 µs × sqrt(16)
    # prefill: kv_cache_size counts the chunk, so 32 new tokens after 64 cached ones
    assert backend.time(graph.prefill_attention(32, 64)) == pytest.approx(20e-6)
    # decode: kv_cache_size is the KV tokens of the whole batch
    assert backend.time(graph.decode_attention(4, 4096)) == pytest.approx(30e-6)
    assert backend.stats()["perf_fallbacks"] == 0


def test_native_ops_rebuild_every_simulator_op() -> None:
    graph = _graph()
    ops: list[Op] = [
        *graph.dense_layer_ops(7),
        *graph.head_ops(7, 3),
        graph.prefill_attention(5, 9),
        graph.decode_attention(3, 33),
    ]
    for op in ops:
        assert build_op(op.name, op.dims, "bf16") == op, op.name


def test_measured_vidur_profiles_cover_the_dense_layer(shared_data: Path) -> None:
    table = shared_data / "profiles/vidur/compute/h100/meta-llama/Llama-2-7b-hf"
    cfg = load_config(
        None,
        [
            "model=llama-2-7b",
            "dtype=fp16",
            "workload.num_requests=30",
            "perf.backend=profile",
            f"perf.profile_dir={table}",
        ],
    )
    summary = simulate(cfg).summary
    dense = {"qkv_proj", "o_proj", "mlp_up_proj", "mlp_down_proj", "rope", "mlp_act"}
    assert not dense & set(summary["perf_fallback_ops"])
    assert math.isfinite(summary["tpot_s"]["mean"])
