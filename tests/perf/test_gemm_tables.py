"""GEMM efficiencies fitted on measured GEMM kernel tables (calibrate/gemm_tables.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from device_helpers import HARDWARE, device_file_with
from llmservingsim.calibrate.fit import GEMM_PARAMS
from llmservingsim.calibrate.gemm_tables import (
    DTYPE_PARAMS,
    LAUNCH_BOUND_RATIO,
    OPERAND_BYTES,
    TABLE_MODES,
    fit_gemm_tables,
    gemm_points,
    launch_bound_tables,
    newest_tables,
)
from llmservingsim.calibrate.transfer import replace_efficiency_block
from llmservingsim.catalog import load_device
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.kernel_db import SYSTEM_OF_DEVICE, default_tables_root
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DtypeGemm, Efficiency, load_device_file
from llmservingsim.model.fusion import act_quant
from llmservingsim.model.ops import Op

TRUE = {"compute_max": 0.8, "compute_half_m": 40.0, "memory": 0.83, "kernel_launch_us": 3.5}
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
NKS = ((4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (1024, 8192), (32768, 2048))


def _table(path: Path, scale: float = 1.0) -> None:
    """An AIConfigurator-layout GEMM table: bf16 rows timed by the roofline with TRUE, plus
    rows the fit must ignore (fp8; shapes outside the serving range, timed absurdly)."""
    device = load_device("h100-sxm")
    eff = device.efficiency.model_copy(update=TRUE)
    backend = RooflineBackend(device.model_copy(update={"efficiency": eff}), "bf16")
    rows: dict[str, list[object]] = {k: [] for k in ("gemm_dtype", "m", "n", "k", "latency")}

    def add(mode: str, m: int, n: int, k: int, ms: float) -> None:
        for key, value in zip(rows, (mode, m, n, k, ms), strict=True):
            rows[key].append(value)

    for m in MS:
        for n, k in NKS:
            op = Op("gemm", "gemm", 2.0 * m * n * k, (m * k + m * n) * 2 + n * k * 2, m=m)
            add("bfloat16", m, n, k, backend.time(op) * 1e3 * scale)
            add("fp8", m, n, k, 1e-6)
        add("bfloat16", m, 256, 4096, 1e3)  # n outside 1024..32768
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table(rows), path)


def test_fit_recovers_the_parameters_a_table_was_made_with(tmp_path: Path) -> None:
    system = tmp_path / "h100_sxm"
    _table(system / "gemm/vllm/0.9.0/gemm_perf.parquet", scale=3.0)  # older: not used
    _table(system / "gemm/vllm/0.24.0/gemm_perf.parquet")
    _table(system / "gemm/sglang/0.5.14/gemm_perf.parquet")
    tables = newest_tables(system)
    assert [t.parent.name for t in tables] == ["0.24.0", "0.5.14"]
    fit = fit_gemm_tables(load_device("h100-sxm"), tables)
    assert fit is not None
    assert fit.points == 2 * len(MS) * len(NKS)
    assert fit.tables == ["sglang 0.5.14", "vllm 0.24.0"]
    for name in GEMM_PARAMS:
        assert fit.params[name] == pytest.approx(TRUE[name], rel=0.02), name
    assert fit.mape < 0.5
    assert set(fit.held_out) == set(fit.tables)
    assert max(fit.held_out.values()) < 0.5


def test_a_held_parameter_stays_and_the_others_are_fitted(tmp_path: Path) -> None:
    system = tmp_path / "h100_sxm"
    _table(system / "gemm/vllm/0.24.0/gemm_perf.parquet")
    fit = fit_gemm_tables(load_device("h100-sxm"), newest_tables(system), {"memory": 0.83})
    assert fit is not None
    assert fit.params["memory"] == 0.83
    for name in ("compute_max", "compute_half_m", "kernel_launch_us"):
        assert fit.params[name] == pytest.approx(TRUE[name], rel=0.02), name


def test_fit_of_a_table_with_other_kernels_moves_the_parameters(tmp_path: Path) -> None:
    """Kernels 20 % slower everywhere: both rates / 1.2, the fixed cost × 1.2, half_m kept."""
    system = tmp_path / "h100_sxm"
    _table(system / "gemm/vllm/0.24.0/gemm_perf.parquet", scale=1.2)
    fit = fit_gemm_tables(load_device("h100-sxm"), newest_tables(system))
    assert fit is not None
    expected = {
        "compute_max": TRUE["compute_max"] / 1.2,
        "compute_half_m": TRUE["compute_half_m"],
        "memory": TRUE["memory"] / 1.2,
        "kernel_launch_us": TRUE["kernel_launch_us"] * 1.2,
    }
    for name in GEMM_PARAMS:
        assert fit.params[name] == pytest.approx(expected[name], rel=0.02), name


def test_no_table_no_fit(tmp_path: Path) -> None:
    assert newest_tables(tmp_path / "h100_sxm") == []
    assert fit_gemm_tables(load_device("h100-sxm"), []) is None


def test_the_efficiency_block_names_the_gemm_data_and_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "h100-sxm.yaml"
    path.write_text((HARDWARE / "h100-sxm.yaml").read_text())
    eff = Efficiency.model_validate({**load_device("h100-sxm").efficiency.model_dump(), **TRUE})
    replace_efficiency_block(path, eff, "test fit", "some GEMM table")
    text = path.read_text()
    assert "compute_max: 0.8  # GEMM: some GEMM table" in text
    loaded = load_device_file(path).efficiency
    assert {k: getattr(loaded, k) for k in TRUE} == TRUE


FP8 = {"compute_max": 0.55, "compute_half_m": 90.0, "kernel_launch_us": 9.0}


def _quantized_table(path: Path, device_name: str, dtype: str, curve: dict[str, float]) -> None:
    """An AIConfigurator-layout table whose ``dtype`` rows are what its collector times: the
    activation quantization (the simulator's own ``act_quant`` time) then the GEMM on the
    curve ``curve``; bf16 rows timed absurdly (the fit of a quantized dtype must ignore them)."""
    device = load_device(device_name)
    eff = device.efficiency.model_copy(update={"dtype_gemm": {dtype: DtypeGemm(**curve)}})
    backend = RooflineBackend(device.model_copy(update={"efficiency": eff}), dtype)
    operand = OPERAND_BYTES[dtype]
    rows: dict[str, list[object]] = {k: [] for k in ("gemm_dtype", "m", "n", "k", "latency")}
    for m in MS:
        for n, k in NKS:
            nbytes = m * k * operand + m * n * 2 + n * k * operand
            gemm = backend.time(Op("gemm", "gemm", 2.0 * m * n * k, nbytes, m=m))
            seconds = gemm + backend.time(act_quant(m, k, 2.0, operand))
            for key, value in zip(rows, (TABLE_MODES[dtype], m, n, k, seconds * 1e3), strict=True):
                rows[key].append(value)
            for key, value in zip(rows, ("bfloat16", m, n, k, 1e3), strict=True):
                rows[key].append(value)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table(rows), path)


@pytest.mark.parametrize(("device", "dtype"), [("h100-sxm", "fp8"), ("b200", "fp4")])
def test_a_quantized_curve_is_fitted_back_without_its_activation_quantization(
    tmp_path: Path, device: str, dtype: str
) -> None:
    system = tmp_path / "sys"
    _quantized_table(system / "gemm/vllm/0.24.0/gemm_perf.parquet", device, dtype, FP8)
    _quantized_table(system / "gemm/trtllm/1.3.0/gemm_perf.parquet", device, dtype, FP8)
    spec = load_device(device)
    fit = fit_gemm_tables(spec, newest_tables(system), {"memory": spec.efficiency.memory}, dtype)
    assert fit is not None and fit.dtype == dtype and fit.dropped == 0
    assert fit.points == 2 * len(MS) * len(NKS)
    for name in DTYPE_PARAMS:
        assert fit.params[name] == pytest.approx(FP8[name], rel=0.02), name
    assert fit.mape < 0.5 and max(fit.held_out.values()) < 0.5


def test_quantized_rows_need_the_device_and_bf16_ignores_them(tmp_path: Path) -> None:
    path = tmp_path / "sys/gemm/vllm/0.24.0/gemm_perf.parquet"
    _quantized_table(path, "h100-sxm", "fp8", FP8)
    with pytest.raises(ValueError, match="needs the device"):
        gemm_points([path], "fp8")
    ops, _ = gemm_points([path])  # bf16: the absurd rows, none of the fp8 ones
    assert len(ops) == len(MS) * len(NKS) and set(ops.seconds.tolist()) == {1.0}


def test_a_dtype_curve_times_only_that_dtype_and_decode_stays_memory_bound() -> None:
    device = load_device("h100-sxm")
    eff = device.efficiency.model_copy(update={"dtype_gemm": {"fp8": DtypeGemm(**FP8)}})
    fp8 = RooflineBackend(device.model_copy(update={"efficiency": eff}), "fp8")
    bf16 = RooflineBackend(device.model_copy(update={"efficiency": eff}), "bf16")
    n = k = 8192
    big = Op("gemm", "gemm", 2.0 * 8192 * n * k, 8192 * (k + 2 * n) + n * k, m=8192)
    eta = FP8["compute_max"] * 8192 / (8192 + FP8["compute_half_m"])
    expected = big.flops / (device.peak_flops("fp8") * eta) + FP8["kernel_launch_us"] * 1e-6
    assert fp8.time(big) == pytest.approx(expected, rel=1e-9)
    # m = 1: the weight bytes over the bandwidth, plus the dtype's fixed cost
    gemv = Op("gemm", "gemm", 2.0 * n * k, k + 2 * n + n * k, m=1)
    streamed = gemv.bytes / (device.memory_bandwidth * eff.memory)
    assert fp8.time(gemv) == pytest.approx(streamed + FP8["kernel_launch_us"] * 1e-6, rel=1e-9)
    # bf16 keeps the top-level curve
    assert bf16.compute_efficiency(8192) == pytest.approx(
        eff.compute_max * 8192 / (8192 + eff.compute_half_m)
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "dtype_gemm: {fp8: {compute_max: 1.5, compute_half_m: 90, kernel_launch_us: 9}}",
            "dtype_gemm.fp8.compute_max",
        ),
        (
            "dtype_gemm: {fp8: {compute_max: 0.5, compute_half_m: 90}}",
            "dtype_gemm.fp8.kernel_launch_us: Field required",
        ),
        (
            "dtype_gemm: {fp9: {compute_max: 0.5, compute_half_m: 90, kernel_launch_us: 9}}",
            "dtype_gemm.fp9",
        ),
        (
            "dtype_gemm: {fp4: {compute_max: 0.5, compute_half_m: 90, kernel_launch_us: 9}}",
            "dtype_gemm.fp4: a GEMM curve for a dtype without a peak_tflops entry",
        ),
    ],
)
def test_a_bad_dtype_curve_is_one_error_naming_file_and_key(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = device_file_with(tmp_path, "dtype_gemm", entry)
    with pytest.raises(ConfigError, match=message) as caught:
        load_device_file(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.skipif(default_tables_root() is None, reason="aiconfigurator-core not installed")
@pytest.mark.parametrize(
    ("device", "dtype"), [("h100-sxm", "fp8"), ("b200", "fp4"), ("h200", "fp8_block")]
)
def test_shipped_dtype_curves_reproduce_from_the_installed_tables(device: str, dtype: str) -> None:
    """scripts/calibrate_catalog.py wrote efficiency.dtype_gemm from the tables (§7c); the
    block-scaled curve without the launch-bound table."""
    root = default_tables_root()
    assert root is not None
    spec = load_device(device)
    bare = spec.model_copy(
        update={"efficiency": spec.efficiency.model_copy(update={"dtype_gemm": {}})}
    )
    tables = newest_tables(root / "data" / SYSTEM_OF_DEVICE[device])
    odd = launch_bound_tables(tables, dtype)
    assert [p.parent.parent.name for p in odd] == (["vllm"] if dtype == "fp8_block" else [])
    tables = [t for t in tables if t not in odd]
    fit = fit_gemm_tables(bare, tables, {"memory": spec.efficiency.memory}, dtype)
    assert fit is not None and fit.dropped == 0
    shipped = spec.efficiency.dtype_gemm[dtype]
    for name in DTYPE_PARAMS:
        assert getattr(shipped, name) == pytest.approx(fit.params[name], rel=0.01), name


@pytest.mark.skipif(default_tables_root() is None, reason="aiconfigurator-core not installed")
@pytest.mark.parametrize("device", ["h100-sxm", "a100-80gb"])
def test_shipped_gemm_values_reproduce_from_the_installed_tables(device: str) -> None:
    """scripts/calibrate_catalog.py wrote these values from the tables (calibration.md §7d)."""
    root = default_tables_root()
    assert root is not None
    tables = newest_tables(root / "data" / SYSTEM_OF_DEVICE[device])
    shipped = load_device(device).efficiency
    fit = fit_gemm_tables(load_device(device), tables, {"memory": shipped.memory})
    assert fit is not None
    assert fit.mape < 10.0
    for name in GEMM_PARAMS:
        assert getattr(shipped, name) == pytest.approx(fit.params[name], rel=0.01), name


def _small_m_table(path: Path, mode: str, seconds: float) -> None:
    rows: dict[str, list[object]] = {"gemm_dtype": [], "m": [], "n": [], "k": [], "latency": []}
    for m in (1, 16, 1024):
        for n, k in NKS:
            for key, value in zip(rows, (mode, m, n, k, seconds * 1e3 * m**0.5), strict=True):
                rows[key].append(value)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table(rows), path)


def test_a_launch_bound_table_is_the_odd_one_out(tmp_path: Path) -> None:
    """A table whose small-m kernels take several times the other engines' is left out of
    the pooled fp8_block fit; two tables alone cannot tell which one is odd."""
    paths = [tmp_path / f"{e}/1.0/gemm_perf.parquet" for e in ("sglang", "trtllm", "vllm")]
    _small_m_table(paths[0], "fp8_block", 5e-6)
    _small_m_table(paths[1], "fp8_block", 6e-6)
    _small_m_table(paths[2], "fp8_block", 60e-6)
    odd = launch_bound_tables(paths, "fp8_block")
    assert list(odd) == [paths[2]] and odd[paths[2]] > LAUNCH_BOUND_RATIO
    assert launch_bound_tables(paths, "fp8") == {}  # no rows of that mode
    assert launch_bound_tables(paths[1:], "fp8_block") == {}


def test_block_scaled_fp8_runs_its_own_dense_curve() -> None:
    """fp8_scaling: block times dense fp8 GEMMs on dtype_gemm.fp8_block, and on fp8's curve
    where the device has no block curve."""
    device = load_device("h200")
    op = Op("qkv_proj", "gemm", 2.0 * 16 * 4096 * 4096, 16 * 4096 * 2 + 4096 * 4096, m=16)
    block = RooflineBackend(device, "fp8", None, "block").time(op)
    tensor = RooflineBackend(device, "fp8", None, "tensor").time(op)
    curves = device.efficiency.dtype_gemm
    assert block != tensor
    assert block - tensor == pytest.approx(
        (curves["fp8_block"].kernel_launch_us - curves["fp8"].kernel_launch_us) * 1e-6
    )  # memory bound at m 16: the curves differ by their fixed cost
    only_tensor = {"fp8": curves["fp8"]}
    eff = device.efficiency.model_copy(update={"dtype_gemm": only_tensor})
    bare = device.model_copy(update={"efficiency": eff})
    assert RooflineBackend(bare, "fp8", None, "block").time(op) == pytest.approx(tensor)
