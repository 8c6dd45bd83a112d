"""perf.backend kernel_db: measured kernel tables (AIConfigurator's layout) as op times.

Most tests build a small synthetic table tree with pyarrow, so they run without the optional
``aiconfigurator-core`` package; the last ones use the installed package and skip without it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.cli import app
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends import build_backend
from llmservingsim.hardware.backends.kernel_db import (
    MOE_COLUMNS,
    KernelDbBackend,
    installed_tables,
    kernel_table_lines,
)
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.model.op import SIXTEEN_BIT_DIM
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology
from llmservingsim.scenario import resolve
from llmservingsim.simulation import simulate

HAS_AIC = importlib.util.find_spec("aiconfigurator_core") is not None


def _write(path: Path, rows: dict[str, list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


def _tree(root: Path) -> Path:
    """A tiny h100_sxm tree: bf16 GEMMs of one (n, k) and a second k, context and generation
    attention for 32/8/128 heads, NCCL all-reduce on 2 GPUs, a vllm custom all-reduce."""
    data = root / "data" / "h100_sxm"
    ms = [1, 16, 256, 4096]
    gemm: dict[str, list[object]] = {"gemm_dtype": [], "m": [], "n": [], "k": [], "latency": []}
    for n, k in ((4096, 4096), (4096, 8192)):
        for m in ms:
            for mode, scale in (("bfloat16", 1.0), ("fp8", 0.75)):
                gemm["gemm_dtype"].append(mode)
                gemm["m"].append(m)
                gemm["n"].append(n)
                gemm["k"].append(k)
                gemm["latency"].append(scale * (0.01 + m * n * k * 2e-15))  # ms
    # a slower second kernel for one point: the fastest one is used
    gemm["gemm_dtype"].append("bfloat16")
    for key, value in (("m", 16), ("n", 4096), ("k", 4096), ("latency", 99.0)):
        gemm[key].append(value)
    _write(data / "gemm" / "vllm" / "0.19.0" / "gemm_perf.parquet", gemm)
    for file, axis, values in (
        ("context_attention_perf.parquet", "isl", [1, 128, 1024, 4096]),
        ("generation_attention_perf.parquet", "step", [1, 127, 1023, 4095]),
    ):
        att: dict[str, list[object]] = {
            c: []
            for c in (
                "batch_size",
                "isl",
                "step",
                "num_heads",
                "num_key_value_heads",
                "head_dim",
                "kv_cache_dtype",
                "window_size",
                "beam_width",
                "latency",
            )
        }
        for batch in (1, 8, 64):
            for x in values:
                att["batch_size"].append(batch)
                att["isl"].append(x if axis == "isl" else 1)
                att["step"].append(x if axis == "step" else 0)
                att["num_heads"].append(32)
                att["num_key_value_heads"].append(8)
                att["head_dim"].append(128)
                att["kv_cache_dtype"].append("bfloat16")
                att["window_size"].append(0)
                att["beam_width"].append(1)
                att["latency"].append(0.005 + batch * x * 1e-5)
        _write(data / "attention" / "vllm" / "0.24.0" / file, att)
    sizes = [128, 4096, 1 << 20, 1 << 26]
    _write(
        data / "comm" / "nccl" / "2.27.3" / "nccl_perf.parquet",
        {
            "op_name": ["all_reduce"] * 4,
            "nccl_dtype": ["half"] * 4,
            "num_gpus": [2] * 4,
            "message_size": sizes,
            "latency": [0.02, 0.021, 0.05, 1.0],
        },
    )
    _write(
        data / "comm" / "vllm" / "0.19.0" / "custom_allreduce_perf.parquet",
        {
            "op_name": ["all_reduce"] * 8,
            "kernel_source": ["vLLM_custom_graph"] * 4 + ["vLLM_custom_eager"] * 4,
            "allreduce_dtype": ["bfloat16"] * 8,
            "num_gpus": [2] * 8,
            "message_size": sizes * 2,
            "latency": [0.004, 0.005, 0.08, 2.0, 0.02, 0.02, 0.09, 2.0],
        },
    )
    (root / "h100_sxm.yaml").write_text("misc:\n  nccl_version: '2.27.3'\n")
    return root


def _backend(root: Path, *sets: str) -> KernelDbBackend:
    cfg = load_config(None, ["perf.backend=kernel_db", f"perf.kernel_db.path={root}", *sets])
    backend = build_backend(resolve(cfg).perf, load_device(cfg.hardware))
    assert isinstance(backend, KernelDbBackend)
    return backend


def _gemm(m: int, n: int, k: int, name: str = "qkv_proj") -> Op:
    return Op(name, "gemm", 2.0 * m * n * k, 1.0, m, (("m", m), ("n", n), ("k", k)))


def test_table_points_exact_fastest_kernel_and_log_log_between(tmp_path: Path) -> None:
    backend = _backend(_tree(tmp_path))
    t256 = 1e-3 * (0.01 + 256 * 4096 * 4096 * 2e-15)
    assert backend.time(_gemm(256, 4096, 4096)) == pytest.approx(t256)
    # the 99 ms second kernel at m=16 is not the engine's pick
    assert backend.time(_gemm(16, 4096, 4096)) < 1e-4
    lo, hi = backend.time(_gemm(256, 4096, 4096)), backend.time(_gemm(4096, 4096, 4096))
    mid = backend.time(_gemm(1024, 4096, 4096))
    assert lo < mid < hi
    # log-log: the geometric blend of the neighbours at w = log(1024/256) / log(4096/256)
    assert mid == pytest.approx(math.exp(0.5 * math.log(lo) + 0.5 * math.log(hi)))
    # between the two measured k
    k_mid = backend.time(_gemm(256, 4096, 6000))
    assert backend.time(_gemm(256, 4096, 4096)) < k_mid < backend.time(_gemm(256, 4096, 8192))
    assert backend.stats()["perf_fallbacks"] == 0


def test_shapes_outside_the_tables_fall_back_to_the_roofline_and_are_counted(
    tmp_path: Path,
) -> None:
    backend = _backend(_tree(tmp_path))
    roofline = RooflineBackend(backend.device, "bf16")
    outside = _gemm(8192, 4096, 4096)  # m beyond the table
    assert backend.time(outside) == roofline.time(outside)
    norm = Op("input_layernorm", "memory", 0.0, 1e6, 64, (("m", 64),))
    assert backend.time(norm) == roofline.time(norm)
    backend.time(norm)  # memoized, still counted per call
    stats = backend.stats()
    assert stats["perf_fallback_ops"] == {"qkv_proj": 1, "input_layernorm": 2}
    assert stats["perf_fallbacks"] == 3
    assert "h100_sxm vllm@0.24.0" in stats["perf_tables"]


def test_quantization_picks_the_tables_mode(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    bf16 = _backend(root).time(_gemm(256, 4096, 4096))
    fp8 = _backend(root, "dtype=fp8", "kv_dtype=bf16").time(_gemm(256, 4096, 4096))
    assert fp8 == pytest.approx(0.75 * bf16)
    # fp8_block is not in this tree: the GEMM falls back, counted
    block = _backend(root, "dtype=fp8", "kv_dtype=bf16", "fp8_scaling=block")
    block.time(_gemm(256, 4096, 4096))
    assert block.stats()["perf_fallbacks"] == 1


def test_attention_prefill_chunk_and_decode_batch(tmp_path: Path) -> None:
    backend = _backend(_tree(tmp_path))
    graph = OpGraph(load_model("llama-3.1-8b"), 1, "bf16", "bf16")

    def ctx_t(isl: int) -> float:
        return 1e-3 * (0.005 + isl * 1e-5)

    assert backend.time(graph.prefill_attention(1024, 0)) == pytest.approx(ctx_t(1024))
    # a chunk after cached tokens: T(ctx + new) - T(ctx), at least T(new)
    chunk = backend.time(graph.prefill_attention(1024, 3072))
    assert chunk == pytest.approx(max(ctx_t(4096) - ctx_t(3072), ctx_t(1024)))
    # decode: 8 sequences of mean context 1023 is a table point
    decode = backend.time(graph.decode_attention(8, 8 * 1023))
    assert decode == pytest.approx(1e-3 * (0.005 + 8 * 1023 * 1e-5))
    assert backend.stats()["perf_fallbacks"] == 0


def test_lm_head_wider_than_the_table_is_timed_in_column_blocks(tmp_path: Path) -> None:
    backend = _backend(_tree(tmp_path))
    wide = backend.time(_gemm(256, 3 * 4096, 4096, "lm_head"))
    assert wide == pytest.approx(3 * backend.time(_gemm(256, 4096, 4096, "lm_head")))


def test_collectives_come_from_the_tables_inside_a_node(tmp_path: Path) -> None:
    backend = _backend(_tree(tmp_path))
    assert backend.collectives is not None
    topo = Topology.build(backend.device)
    measured = Topology.build(backend.device, custom_allreduce=True)
    measured = type(measured)(
        measured.devices_per_node,
        measured.levels,
        measured.direct_allreduce,
        backend.collectives,
    )
    # 4096 elements (8 KiB): custom all-reduce (graph) 5 µs beats NCCL's 21 µs
    assert collectives.all_reduce(measured, 8192, 0, 2) == pytest.approx(5e-6)
    # 4 GPUs are not in the table: the alpha-beta model, counted
    assert collectives.all_reduce(measured, 8192, 0, 4) == collectives.all_reduce(topo, 8192, 0, 4)
    # across nodes: the network model
    assert collectives.all_reduce(measured, 8192, 7, 2) == collectives.all_reduce(topo, 8192, 7, 2)
    assert backend.stats()["perf_fallback_ops"] == {"all_reduce": 2}
    eager = _backend(tmp_path, "perf.kernel_db.cuda_graphs=false")
    assert eager.collectives is not None
    assert eager.collectives.collective("all_reduce", 8192, 2, True) == pytest.approx(20e-6)


def test_bad_engine_version_and_device_are_one_line_errors(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ConfigError, match=r"did you mean 'vllm'\? \(valid: vllm\)"):
        _backend(root, "perf.kernel_db.engine=vlm")
    with pytest.raises(
        ConfigError, match=r"unknown vllm version on h100_sxm '0.2.1'.*valid: 0.19.0, 0.24.0"
    ):
        _backend(root, "perf.kernel_db.version=0.2.1")
    # a prefix and a YAML number both name an installed version
    assert (
        _backend(root, "perf.kernel_db.version=0.19")
        .stats()["perf_tables"]
        .startswith("h100_sxm vllm@0.19.0")
    )
    with pytest.raises(
        ConfigError, match=r"no kernel tables for hardware 'a40'.*fallback: roofline"
    ):
        _backend(root, "hardware=a40")
    loose = _backend(root, "hardware=a40", "perf.kernel_db.fallback=roofline")
    op = _gemm(256, 4096, 4096)
    assert loose.time(op) == RooflineBackend(loose.device, "bf16").time(op)
    assert loose.stats()["perf_fallbacks"] == 1
    with pytest.raises(ConfigError, match="no kernel tables installed"):
        _backend(tmp_path / "empty")


def test_an_engine_preset_reads_its_engines_tables_nearest_its_version(tmp_path: Path) -> None:
    root = _tree(tmp_path)  # vllm 0.19.0 and 0.24.0
    tables = {
        sets: _backend(root, *sets).stats()["perf_tables"].split(" (")[0]
        for sets in (
            ("engine=vllm@0.19",),  # its release line
            ("engine=vllm@0.15",),  # nothing at or below: the oldest newer one
            ("engine=vllm@0.19", "perf.kernel_db.nearest_to=0.30.1"),  # the newest older one
            ("engine=vllm@0.19", "perf.kernel_db.version=0.24.0"),  # the user's version wins
        )
    }
    assert list(tables.values()) == [
        "h100_sxm vllm@0.19.0",
        "h100_sxm vllm@0.19.0",
        "h100_sxm vllm@0.24.0",
        "h100_sxm vllm@0.24.0",
    ]
    cfg = load_config(None, ["engine=trtllm", "perf.backend=kernel_db"])
    assert (cfg.perf.kernel_db.engine, cfg.perf.kernel_db.nearest_to) == ("trtllm", "1.0")
    assert cfg.engine_preset is not None
    assert cfg.engine_preset["applied"]["perf.kernel_db.engine"] == "trtllm"
    # another engine's tables named by the user: not nearest the preset's version
    other = load_config(None, ["engine=vllm@0.19", "perf.kernel_db.engine=sglang"])
    assert (other.perf.kernel_db.engine, other.perf.kernel_db.nearest_to) == ("sglang", None)
    with pytest.raises(ConfigError, match="nearest_to"):
        load_config(None, ["perf.kernel_db.nearest_to=latest"])


def test_catalog_lists_installed_tables(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert installed_tables(root) == {"h100_sxm": {"vllm": ["0.19.0", "0.24.0"]}}
    assert kernel_table_lines(root)[1] == "  h100-sxm: h100_sxm: vllm 0.19.0, 0.24.0"


def test_a_run_reports_fallbacks_in_the_summary_and_the_run_table(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    root = _tree(tmp_path)
    sets = ["perf.backend=kernel_db", f"perf.kernel_db.path={root}", "workload.num_requests=20"]
    summary = simulate(load_config(None, sets)).summary
    assert summary["perf_fallbacks"] > 0
    assert summary["perf_fallback_ops"]["input_layernorm"] > 0
    assert "o_proj" not in summary["perf_fallback_ops"]  # (4096, 4096) is in the tree
    args = ["run", *(x for s in sets for x in ("--set", s)), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--no-report", "--no-trace"])
    assert result.exit_code == 0, result.output
    assert "perf fallbacks" in result.output
    assert "op times from the roofline" in result.output


@pytest.mark.skipif(not HAS_AIC, reason="aiconfigurator-core not installed")
def test_installed_tables_time_dense_moe_and_collectives() -> None:
    tp8 = [
        "perf.backend=kernel_db",
        "model=llama-3.1-70b",
        "cluster.tensor_parallel=8",
        "workload.num_requests=50",
    ]
    summary = simulate(load_config(None, tp8)).summary
    fell = summary["perf_fallback_ops"]
    for measured in ("qkv_proj", "o_proj", "mlp_up_proj", "mlp_down_proj", "lm_head"):
        assert measured not in fell
    assert "attention_decode" not in fell and "all_reduce" not in fell
    moe = [
        "perf.backend=kernel_db",
        "model=qwen3-30b-a3b",
        "cluster.tensor_parallel=2",
        "cluster.expert_parallel=2",
        "workload.num_requests=50",
    ]
    fell = simulate(load_config(None, moe)).summary["perf_fallback_ops"]
    assert "moe_gate_up_proj" not in fell and "moe_down_proj" not in fell
    assert "moe_act" not in fell and "all_to_all" not in fell
    assert any(line.startswith("  h100-sxm: h100_sxm:") for line in kernel_table_lines())


@pytest.mark.skipif(not HAS_AIC, reason="aiconfigurator-core not installed")
def test_installed_tables_keep_a_1000_request_run_fast() -> None:
    cfg = load_config(None, ["perf.backend=kernel_db"])
    summary = simulate(cfg).summary
    assert summary["requests_completed"] == 1000
    # docs/kernel-db.md: under 1 s on an idle core; generous for a loaded CI machine
    assert summary["sim_wall_s"] < 3.0


def _moe_rows(
    shapes: list[tuple[int, int]], tokens: list[int], ms: float
) -> dict[str, list[object]]:
    """bf16 balanced MoE rows of (hidden, inter) shapes, 8 of 64 experts, TP1/EP1."""
    rows: dict[str, list[object]] = {c: [] for c in MOE_COLUMNS}
    for hidden, inter in shapes:
        for t in tokens:
            for column, value in zip(
                rows,
                ("bfloat16", t, hidden, inter, 8, 64, 1, 1, "balanced", ms * t),
                strict=True,
            ):
                rows[column].append(value)
    return rows


def _moe_op(hidden: int, inter: int, tokens: int) -> Op:
    dims = (
        ("m", tokens),
        ("n", 2 * inter),
        ("k", hidden),
        ("moe_tokens", tokens),
        ("moe_hidden", hidden),
        ("moe_inter", inter),
        ("moe_experts", 64),
        ("moe_topk", 8),
        ("moe_tp", 1),
        ("moe_ep", 1),
    )
    return Op("moe_gate_up_proj", "gemm", 1.0, 1.0, tokens, dims)


def test_moe_shapes_a_newer_release_did_not_measure_come_from_an_older_one(
    tmp_path: Path,
) -> None:
    # 0.24.0 re-measured one shape only (as TensorRT-LLM 1.3.0rc23's MoE table on H200/B200
    # holds none of DeepSeek's); the other shape keeps its 0.19.0 measurement, and a shape
    # both measured is timed from the newer table.
    root = _tree(tmp_path)
    moe = root / "data" / "h100_sxm" / "moe" / "vllm"
    tokens = [1, 64, 1024]
    _write(
        moe / "0.19.0" / "moe_perf.parquet", _moe_rows([(4096, 1024), (2048, 512)], tokens, 2e-3)
    )
    _write(moe / "0.24.0" / "moe_perf.parquet", _moe_rows([(4096, 1024)], tokens, 1e-3))
    backend = _backend(root)
    assert backend.time(_moe_op(4096, 1024, 64)) == pytest.approx(64e-6)  # 0.24.0's
    assert backend.time(_moe_op(2048, 512, 64)) == pytest.approx(128e-6)  # 0.19.0's
    stats = backend.stats()
    assert stats["perf_fallbacks"] == 0
    assert "moe vllm@0.24.0+0.19.0" in stats["perf_tables"]
    # a version that measured every shape it needs reads no other
    alone = _backend(root, "perf.kernel_db.version=0.19.0")
    assert alone.time(_moe_op(4096, 1024, 64)) == pytest.approx(128e-6)
    assert "moe vllm@0.19.0," in alone.stats()["perf_tables"]


@pytest.mark.skipif(not HAS_AIC, reason="aiconfigurator-core not installed")
def test_installed_tables_time_deepseeks_experts_on_tensorrt_llm() -> None:
    cfg = [
        "perf.backend=kernel_db",
        "engine=trtllm",
        "model=deepseek-v3",
        "hardware=h200",
        "dtype=fp8",
        "kv_dtype=fp8",
        "cluster.tensor_parallel=8",
        "workload.num_requests=8",
    ]
    summary = simulate(load_config(None, cfg)).summary
    fell = summary["perf_fallback_ops"]
    assert "moe_gate_up_proj" not in fell and "moe_down_proj" not in fell


def test_the_roofline_fallback_times_the_runs_own_fp8_kernels(tmp_path: Path) -> None:
    """Ops the tables miss fall back to the roofline built from the same setup: block-scaled
    fp8 weights on the block-scaled GEMM curve."""
    backend = _backend(_tree(tmp_path), "dtype=fp8", "kv_dtype=bf16", "fp8_scaling=block")
    device = load_device("h100-sxm")
    op = _gemm(16, 4096, 4096)
    block = RooflineBackend(device, "fp8", None, "block").time(op)
    assert backend.fallback.time(op) == block
    assert block != RooflineBackend(device, "fp8", None, "tensor").time(op)


def test_gemms_a_checkpoint_keeps_in_16_bits_read_the_bf16_table(tmp_path: Path) -> None:
    """fp8 weights with one GEMM marked 16-bit (model/op.py SIXTEEN_BIT_DIM): the marked one
    is timed on the bf16 table, the others on the fp8 one."""
    root = _tree(tmp_path)
    fp8 = _backend(root, "dtype=fp8", "kv_dtype=bf16")
    plain = _gemm(256, 4096, 4096)
    marked = Op(plain.name, "gemm", plain.flops, 1.0, 256, (*plain.dims, (SIXTEEN_BIT_DIM, 1)))
    assert fp8.time(marked) == pytest.approx(fp8.time(plain) / 0.75)
    assert fp8.stats()["perf_fallbacks"] == 0
