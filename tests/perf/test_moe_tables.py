"""The fused-MoE efficiency (device ``efficiency.moe_gemm``, calibration.md §7e): how the
roofline applies it and how calibrate/moe_tables.py fits it to measured MoE kernel tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from device_helpers import device_file_with
from llmservingsim.calibrate.moe_tables import (
    MIN_POINTS,
    PARAMS,
    engine_tables,
    fit_moe_tables,
    moe_points,
    predicted,
)
from llmservingsim.catalog import load_device, load_model
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.kernel_db import (
    MOE_COLUMNS,
    SYSTEM_OF_DEVICE,
    default_tables_root,
)
from llmservingsim.hardware.backends.profile import shape_key
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DeviceSpec, MoeGemm, load_device_file
from llmservingsim.model.moe import MOE_GEMMS, expected_experts_touched, routed_expert_ops
from llmservingsim.model.op import Op
from llmservingsim.model.ops import OpGraph

TRUE = MoeGemm(compute=0.7, half_dim=300.0, memory=0.8, half_weight_mb=0.5, launch_us=12.0)
SHAPES = ((4096, 1536, 8, 128), (7168, 2048, 8, 256), (2048, 768, 8, 128), (4096, 14336, 2, 8))
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _bare(device: DeviceSpec) -> DeviceSpec:
    """``device`` with no fused-MoE entry: expert GEMMs on the dense curve."""
    eff = device.efficiency.model_copy(update={"moe_gemm": {}})
    return device.model_copy(update={"efficiency": eff})


def _with(device: DeviceSpec, dtype: str, entry: MoeGemm) -> DeviceSpec:
    eff = device.efficiency.model_copy(update={"moe_gemm": {dtype: entry}})
    return device.model_copy(update={"efficiency": eff})


def _expert_ops(tokens: int, hidden: int = 4096, inter: int = 1536, dtype_bytes: float = 1.0):
    touched = expected_experts_touched(128, 8, tokens)
    return routed_expert_ops(float(tokens * 8), touched, hidden, inter, dtype_bytes, 2.0)


def test_the_entry_times_only_the_expert_gemms() -> None:
    device = load_device("h100-sxm")
    dense, fused = (
        RooflineBackend(_bare(device), "fp8"),
        RooflineBackend(_with(device, "fp8", TRUE), "fp8"),
    )
    for tokens in (1, 64, 4096):
        for op in _expert_ops(tokens):
            if op.name in MOE_GEMMS:
                assert fused.time(op) > dense.time(op)
            else:  # the activation between them is an elementwise kernel
                assert fused.time(op) == dense.time(op)
    # A dense GEMM of the same shape is untouched.
    gemm = Op("mlp_up_proj", "gemm", 2.0 * 64 * 3072 * 4096, 4096 * 3072.0, 64)
    assert fused.time(gemm) == dense.time(gemm)


def test_the_entry_follows_its_formula() -> None:
    device = _with(load_device("h200"), "fp8", TRUE)
    backend = RooflineBackend(device, "fp8")
    curve = device.efficiency.dtype_gemm["fp8"]
    peak, bandwidth = device.peak_flops("fp8"), device.memory_bandwidth
    for tokens in (1, 16, 1024, 8192):
        gate_up = _expert_ops(tokens)[0]
        dims = dict(gate_up.dims)
        narrow = min(dims["n"], dims["k"])
        weight = dims["moe_expert_weight"]
        assert weight == dims["n"] * dims["k"]  # fp8: one byte per weight
        # Saturated rate scaled, small-M slope (the dense compute floor) kept.
        scale = TRUE.compute * narrow / (narrow + TRUE.half_dim)
        eta = scale * curve.compute_max * gate_up.m / (gate_up.m + curve.compute_half_m * scale)
        compute = gate_up.flops / (peak * eta)
        rate = bandwidth * TRUE.memory * weight / (weight + TRUE.half_weight_mb * 1e6)
        expected = max(compute, gate_up.bytes / rate) + TRUE.launch_us * 1e-6
        assert backend.time(gate_up) == pytest.approx(expected)


def test_expert_gemms_stay_memory_bound_as_m_goes_to_zero() -> None:
    """Decode is memory bound: the entry lowers the saturated compute rate, not the small-M
    compute floor, so one row per expert is still timed by its weight bytes (invariant I15)."""
    device = _with(load_device("h200"), "fp8", TRUE)
    backend = RooflineBackend(device, "fp8")
    for inter in (192, 256, 2048):
        gate_up = _expert_ops(1, inter=inter)[0]
        dims = dict(gate_up.dims)
        weight = dims["moe_expert_weight"]
        rate = device.memory_bandwidth * TRUE.memory * weight / (weight + TRUE.half_weight_mb * 1e6)
        memory = gate_up.bytes / rate
        assert backend.time(gate_up) == pytest.approx(memory + TRUE.launch_us * 1e-6)


def test_narrow_experts_and_small_matrices_are_slower() -> None:
    backend = RooflineBackend(_with(load_device("h200"), "fp8", TRUE), "fp8")
    dense = RooflineBackend(_bare(load_device("h200")), "fp8")

    def ratio(tokens: int, inter: int) -> float:
        ops = [op for op in _expert_ops(tokens, inter=inter) if op.name in MOE_GEMMS]
        return sum(map(backend.time, ops)) / sum(map(dense.time, ops))

    for tokens in (8, 8192):  # memory bound, compute bound
        assert ratio(tokens, 192) > ratio(tokens, 1536) > 1.0


def test_a_dtype_without_an_entry_and_weight_only_experts_time_as_dense() -> None:
    device = _with(load_device("h100-sxm"), "bf16", TRUE)
    plain = RooflineBackend(_bare(device), "bf16")
    for op in _expert_ops(512, dtype_bytes=0.5):
        # int4 weights compute in bf16 (weight-only): the bf16 entry is not theirs.
        assert RooflineBackend(device, "bf16", "int4").time(op) == plain.time(op)
        assert RooflineBackend(device, "fp8").time(op) == RooflineBackend(
            _bare(device), "fp8"
        ).time(op)
    assert device.efficiency.moe_curve("fp16") == TRUE  # fp16 weights share bf16's kernels


def test_the_model_builds_its_experts_with_the_calibrated_function() -> None:
    """The fit times the measured kernels with the ops the simulator runs (one function)."""
    spec = load_model("qwen3-30b-a3b")
    graph = OpGraph(spec, tp=2, dtype="bf16", kv_dtype="bf16")
    assert graph.moe is not None
    for tokens in (1, 300, 4096):
        load = graph.moe.load(tokens)
        got = [op for op in graph.moe.expert_ops(tokens) if op.name in (*MOE_GEMMS, "moe_act")]
        inter = spec.moe_intermediate_size // 2
        want = routed_expert_ops(load.rows, load.experts, spec.hidden_size, inter, 2.0, 2.0)
        assert [(o.name, o.flops, o.bytes, o.m) for o in got] == [
            (o.name, o.flops, o.bytes, o.m) for o in want
        ]


def test_a_profile_table_keys_expert_gemms_by_their_kernel_shape_alone() -> None:
    """The expert GEMMs' extra dims (block shape, one expert's bytes) are ``moe_*``: a profile
    row of the same (n, k) still times them (hardware/backends/profile.py shape_key)."""
    gate_up = _expert_ops(64)[0]
    plain = Op(gate_up.name, "gemm", 1.0, 1.0, 8, (("m", 8), ("n", 3072), ("k", 4096)))
    key, plain_key = shape_key(gate_up), shape_key(plain)
    assert key is not None and plain_key is not None
    assert key[0] == plain_key[0]


def _table(path: Path, device: DeviceSpec, entry: MoeGemm, scale: float = 1.0) -> None:
    """An AIConfigurator-layout MoE table: fp8_block balanced rows timed by the roofline with
    ``entry``, plus rows the fit must ignore (another mode, EP, TP 16, skewed routing)."""
    backend = RooflineBackend(_with(device, "fp8_block", entry), "fp8", None, "block")
    cols: dict[str, list[object]] = {k: [] for k in MOE_COLUMNS}

    def add(*row: object) -> None:
        for key, value in zip(cols, row, strict=True):
            cols[key].append(value)

    for hidden, inter, topk, experts in SHAPES:
        for tp in (1, 2, 8):
            for tokens in TOKENS:
                touched = expected_experts_touched(experts, topk, tokens)
                ops = routed_expert_ops(
                    float(tokens * topk), touched, hidden, inter // tp, 1.0, 2.0
                )
                ms = sum(map(backend.time, ops)) * 1e3 * scale
                add("fp8_block", tokens, hidden, inter, topk, experts, tp, 1, "balanced", ms)
                add("bfloat16", tokens, hidden, inter, topk, experts, tp, 1, "balanced", 1e-6)
                add("fp8_block", tokens, hidden, inter, topk, experts, tp, 2, "balanced", 1e3)
                add("fp8_block", tokens, hidden, inter, topk, experts, tp, 1, "power_law", 1e3)
        add("fp8_block", 64, hidden, inter, topk, experts, 16, 1, "balanced", 1e3)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table(cols), path)


def test_fit_recovers_the_entry_a_table_was_made_with(tmp_path: Path) -> None:
    device = load_device("h200")
    system = tmp_path / "h200_sxm"
    _table(system / "moe/vllm/0.24.0/moe_perf.parquet", device, TRUE)
    _table(system / "moe/sglang/0.5.14/moe_perf.parquet", device, TRUE)
    fit = fit_moe_tables(_bare(device), system, "fp8_block")
    assert fit is not None
    assert fit.mode == "fp8_block"
    assert fit.points == 2 * len(SHAPES) * 3 * len(TOKENS)  # EP, TP16, skewed, bf16 dropped
    assert fit.tables == ["sglang 0.5.14", "vllm 0.24.0"]
    for name in PARAMS:
        assert getattr(fit.params, name) == pytest.approx(getattr(TRUE, name), rel=0.03), name
    assert fit.mape < 0.5 and max(fit.held_out.values()) < 0.5
    assert fit.before > 5.0  # the dense curve misses these kernels
    assert fit.improves


def test_one_engine_alone_is_not_written(tmp_path: Path) -> None:
    device = load_device("h200")
    system = tmp_path / "h200_sxm"
    _table(system / "moe/vllm/0.24.0/moe_perf.parquet", device, TRUE)
    fit = fit_moe_tables(_bare(device), system, "fp8_block")
    assert fit is not None and fit.mape < 0.5
    assert not fit.improves  # nothing shows it carries over to another engine's kernels


def test_dense_kernels_are_not_written(tmp_path: Path) -> None:
    """Tables the dense curve already matches give an entry no better on held-out engines."""
    device = load_device("h200")
    block = device.efficiency.dtype_gemm["fp8_block"]  # the dense curve block experts run on
    dense_like = MoeGemm(compute=1.0, memory=0.8666, launch_us=block.kernel_launch_us)
    system = tmp_path / "h200_sxm"
    _table(system / "moe/vllm/0.24.0/moe_perf.parquet", device, dense_like)
    _table(system / "moe/sglang/0.5.14/moe_perf.parquet", device, dense_like)
    fit = fit_moe_tables(_bare(device), system, "fp8_block")
    assert fit is not None and fit.before < 0.5
    assert not fit.improves


def test_each_shape_comes_from_the_newest_table_that_measured_it(tmp_path: Path) -> None:
    device = load_device("h200")
    system = tmp_path / "h200_sxm"
    _table(system / "moe/trtllm/1.3.0rc20/moe_perf.parquet", device, TRUE, scale=2.0)
    newer = system / "moe/trtllm/1.3.0rc23/moe_perf.parquet"
    _table(newer, device, TRUE)
    table = pq.read_table(newer).to_pydict()
    keep = [i for i, h in enumerate(table["hidden_size"]) if h == 7168]  # one shape re-measured
    pq.write_table(pa.table({k: [v[i] for i in keep] for k, v in table.items()}), newer)
    tables = engine_tables(system)
    assert [p.parent.name for p in tables["trtllm"]] == ["1.3.0rc23", "1.3.0rc20"]
    points = moe_points(tables, "fp8", "fp8_block")
    assert {p.table for p in points} == {"trtllm 1.3.0rc23+1.3.0rc20"}
    truth = predicted(device, "fp8_block", TRUE, points)
    for point, seconds in zip(points, truth, strict=True):
        newest = dict(point.ops[0].dims)["k"] == 7168
        assert point.seconds == pytest.approx(seconds * (1.0 if newest else 2.0), rel=1e-9)


def test_too_few_points_no_fit(tmp_path: Path) -> None:
    assert fit_moe_tables(load_device("h200"), tmp_path / "h200_sxm", "fp8_block") is None
    assert len(PARAMS) < MIN_POINTS


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("moe_gemm: {fp8: {compute: 0.7, memory: 1.5, launch_us: 10}}", "moe_gemm.fp8.memory"),
        ("moe_gemm: {fp8: {compute: 0, memory: 0.8, launch_us: 10}}", "moe_gemm.fp8.compute"),
        ("moe_gemm: {int4: {compute: 0.7, memory: 0.8, launch_us: 10}}", "moe_gemm.int4"),
        ("moe_gemm: {fp8: {compute: 0.7, memory: 0.8}}", "moe_gemm.fp8.launch_us"),
        (
            "moe_gemm: {fp8: {compute: 0.7, memory: 0.8, half_weight_mb: true, launch_us: 9}}",
            "moe_gemm.fp8.half_weight_mb",
        ),
    ],
)
def test_a_bad_moe_entry_is_one_error_naming_file_and_key(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = device_file_with(tmp_path, "moe_gemm", entry)
    with pytest.raises(ConfigError, match=message) as caught:
        load_device_file(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.skipif(default_tables_root() is None, reason="aiconfigurator-core not installed")
@pytest.mark.parametrize(
    ("device", "key"), [("h200", "fp8_block"), ("b200", "fp8"), ("b200", "mxfp4")]
)
def test_shipped_moe_entries_reproduce_from_the_installed_tables(device: str, key: str) -> None:
    """scripts/calibrate_catalog.py wrote efficiency.moe_gemm from the tables (§7e)."""
    root = default_tables_root()
    assert root is not None
    spec = load_device(device)
    fit = fit_moe_tables(_bare(spec), root / "data" / SYSTEM_OF_DEVICE[device], key)
    assert fit is not None and fit.improves
    shipped = spec.efficiency.moe_gemm.get(key)  # type: ignore[call-overload]
    assert shipped is not None
    for name in PARAMS:
        assert getattr(shipped, name) == pytest.approx(getattr(fit.params, name), rel=0.01), name


@pytest.mark.parametrize(("scaling", "resolved"), [("auto", "block"), ("tensor", "tensor")])
def test_fp8_scaling_picks_the_experts_entry(scaling: str, resolved: str) -> None:
    """A block-scaled checkpoint's experts (auto for a MoE model) run the fp8_block entry, a
    per-tensor one's the fp8 entry."""
    from llmservingsim.config import load_config
    from llmservingsim.hardware.backends.base import build_backend
    from llmservingsim.scenario import resolve

    entries = {
        "block": MoeGemm(compute=0.5, half_dim=400.0, memory=0.7, launch_us=12.0),
        "tensor": MoeGemm(compute=1.2, memory=0.9, launch_us=8.0),
    }
    device = load_device("h100-sxm")
    both = {"fp8_block": entries["block"], "fp8": entries["tensor"]}
    eff = device.efficiency.model_copy(update={"moe_gemm": both})
    device = device.model_copy(update={"efficiency": eff})
    cfg = load_config(None, ["model=qwen3-30b-a3b", "dtype=fp8", f"fp8_scaling={scaling}"])
    setup = resolve(cfg).perf
    assert setup.fp8_scaling == resolved
    backend = build_backend(setup, device)
    key = "fp8_block" if resolved == "block" else "fp8"
    alone = RooflineBackend(_with(device, key, entries[resolved]), "fp8", None, resolved)
    other = RooflineBackend(device, "fp8", None, "tensor" if resolved == "block" else "block")
    for op in _expert_ops(64, 4096, 14336):
        assert backend.time(op) == alone.time(op)
        if op.name in MOE_GEMMS:
            assert backend.time(op) != other.time(op)


def test_summary_records_the_fp8_scaling_auto_resolved_to() -> None:
    from llmservingsim.config import load_config
    from llmservingsim.simulation import simulate

    base = ["dtype=fp8", "workload.num_requests=4", "workload.arrival.rate=.inf"]
    moe = ["model=qwen3-30b-a3b", *base]
    assert simulate(load_config(None, moe)).summary["fp8_scaling"] == "block"
    assert simulate(load_config(None, base)).summary["fp8_scaling"] == "tensor"
    assert "fp8_scaling" not in simulate(load_config(None, base[1:])).summary
