"""Energy = ∫ power dt, with P = P_idle + (P_max − P_idle) · utilization per step.

A device whose every op is memory bound and has no fixed costs runs at a known, constant
utilization (the memory efficiency η), so the integral has a closed form to check against.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmservingsim.catalog import load_device
from llmservingsim.config import load_config
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec


def _constant_utilization_device(tmp_path: Path) -> Path:
    """H100 without launch/CPU costs and with unbounded compute: utilization = η_mem."""
    spec = load_device("h100-sxm").model_dump()
    spec["name"] = "h100-memory-bound"
    spec["peak_tflops"] = {dtype: 1e9 for dtype in spec["peak_tflops"]}
    spec["efficiency"].update(
        kernel_launch_us=0, iteration_overhead_us=0, per_seq_overhead_us=0, memory_ops={}
    )
    path = tmp_path / "h100-memory-bound.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_energy_is_the_integral_of_power_at_constant_utilization(tmp_path: Path) -> None:
    path = _constant_utilization_device(tmp_path)
    device = load_device("h100-sxm")
    eta = device.efficiency.memory
    idle, peak = device.power.idle_w, device.power.max_w
    # Two requests far apart: each runs alone (busy for its e2e), idle in between.
    requests = [RequestSpec(0, 0.0, 300, 50), RequestSpec(1, 30.0, 200, 80)]
    result = simulate(load_config(None, [f"hardware={path}"]), requests=requests)
    summary = result.summary
    end = summary["simulated_time_s"]
    busy = sum(r.e2e for r in result.metrics.records)
    expected = idle * end + (peak - idle) * eta * busy
    assert summary["energy_j"] == pytest.approx(expected, rel=1e-9)
    assert summary["average_power_w"] == pytest.approx(expected / end, rel=1e-9)
    assert summary["joules_per_token"] == pytest.approx(expected / (50 + 80), rel=1e-9)
    row = summary["instances"][0]
    assert row["energy_j"] == pytest.approx(expected, rel=1e-9)
    assert row["average_power_w"] == pytest.approx(expected / end, rel=1e-9)


def test_back_to_back_steps_draw_constant_power(tmp_path: Path) -> None:
    path = _constant_utilization_device(tmp_path)
    device = load_device("h100-sxm")
    power = device.power.idle_w + (device.power.max_w - device.power.idle_w) * (
        device.efficiency.memory
    )
    result = simulate(
        load_config(None, [f"hardware={path}"]), requests=[RequestSpec(0, 0.0, 500, 100)]
    )
    assert result.summary["average_power_w"] == pytest.approx(power, rel=1e-9)


def test_average_power_lies_between_idle_and_max_for_every_device() -> None:
    cfg = load_config(None, ["model=llama-3.1-70b", "cluster.tensor_parallel=4"])
    requests = [RequestSpec(i, 0.2 * i, 300, 40) for i in range(10)]
    summary = simulate(cfg, requests=requests).summary
    power = load_device("h100-sxm").power
    assert 4 * power.idle_w < summary["average_power_w"] < 4 * power.max_w
    assert summary["joules_per_token"] == pytest.approx(
        summary["energy_j"] / summary["output_tokens"]
    )
