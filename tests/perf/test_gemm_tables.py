"""GEMM efficiencies fitted on measured GEMM kernel tables (calibrate/gemm_tables.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmservingsim.calibrate.fit import GEMM_PARAMS
from llmservingsim.calibrate.gemm_tables import fit_gemm_tables, newest_tables
from llmservingsim.calibrate.transfer import replace_efficiency_block
from llmservingsim.catalog import load_device
from llmservingsim.hardware.backends.kernel_db import SYSTEM_OF_DEVICE, default_tables_root
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import Efficiency, load_device_file
from llmservingsim.model.ops import Op

HARDWARE = Path(__file__).resolve().parents[2] / "src" / "llmservingsim" / "data" / "hardware"
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
