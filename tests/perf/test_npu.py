"""Systolic-array NPU backend: utilization from tiling, selection, physical bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends import backend_name_for, make_backend
from llmservingsim.hardware.backends.systolic import SystolicBackend
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec


def _backend() -> SystolicBackend:
    return SystolicBackend(load_device("npu"), "bf16")


def _gemm(m: int, n: int, k: int) -> Op:
    return OpGraph(load_model("llama-3.1-8b"), 1, "bf16", "bf16").gemm("g", m, n, k)


def test_skinny_gemm_underfills_the_array() -> None:
    backend = _backend()
    skinny = backend.utilization(_gemm(1, 4096, 4096))
    fat = backend.utilization(_gemm(4096, 4096, 4096))
    assert skinny < 0.02 < 0.9 < fat <= 1.0
    # Rows below the array height leave it waiting on weight loads: utilization ∝ M.
    half = backend.utilization(_gemm(64, 4096, 4096))
    assert half == pytest.approx(0.5, rel=0.02)


def test_ragged_tiles_waste_the_array() -> None:
    backend = _backend()
    aligned = backend.utilization(_gemm(2048, 1024, 128))
    ragged = backend.utilization(_gemm(2048, 1024, 129))
    assert ragged < 0.6 * aligned


def test_decode_attention_underfills_and_prefill_fills() -> None:
    graph = OpGraph(load_model("llama-3.1-8b"), 1, "bf16", "bf16")
    backend = _backend()
    assert backend.utilization(graph.decode_attention(64, 64 * 1000)) < 0.1
    assert backend.utilization(graph.prefill_attention(2048, 0)) > 0.9


@settings(max_examples=80, deadline=None)
@given(m=st.integers(1, 8192), n=st.integers(1, 16384), k=st.integers(1, 16384))
def test_never_faster_than_the_peak_or_the_memory(m: int, n: int, k: int) -> None:
    backend = _backend()
    device = backend.device
    op = _gemm(m, n, k)
    seconds = backend.time(op)
    assert 0 < backend.utilization(op) <= 1.0
    assert seconds >= op.flops / device.peak_flops("bf16")
    assert seconds >= op.bytes / device.memory_bandwidth


def test_npu_yaml_peak_matches_its_arrays() -> None:
    npu = load_device("npu")
    array = npu.systolic
    assert array is not None
    peak = 2 * array.rows * array.cols * array.arrays * array.clock_ghz * 1e9
    assert peak == pytest.approx(npu.peak_flops("bf16"), rel=0.01)


def test_auto_picks_the_backend_by_device_type() -> None:
    assert backend_name_for(load_device("npu"), "auto") == "systolic"
    assert backend_name_for(load_device("h100-sxm"), "auto") == "roofline"
    assert backend_name_for(load_device("npu"), "roofline") == "roofline"
    with pytest.raises(ConfigError, match="no 'systolic:' section"):
        make_backend(load_device("h100-sxm"), "bf16", "systolic")


def test_unknown_device_type_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "fpga.yaml"
    text = (Path(__file__).parents[2] / "src/llmservingsim/data/hardware/npu.yaml").read_text()
    path.write_text(text.replace("type: npu", "type: fpga"))
    cfg = load_config(None, [f"hardware={path}"])
    with pytest.raises(ConfigError, match=r"fpga\.yaml: type: ") as info:
        simulate(cfg, requests=[RequestSpec(0, 0.0, 16, 4)])
    assert "\n" not in str(info.value)


def test_npu_serves_end_to_end_slower_at_decode_than_an_h100() -> None:
    requests = [RequestSpec(i, 0.0, 256, 32) for i in range(16)]
    npu = simulate(load_config(None, ["hardware=npu"]), requests=requests).summary
    gpu = simulate(load_config(None, []), requests=requests).summary
    assert npu["requests_completed"] == 16
    assert npu["config"]["perf"]["backend"] == "auto"
    assert npu["tpot_s"]["mean"] > gpu["tpot_s"]["mean"]
