"""GPU + PIM: decode attention on PIM devices, transfers, sub-batch interleaving, errors."""

from __future__ import annotations

from typing import Any

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import GIB, DeviceSpec
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.perf.pim import PimIterationTimer
from llmservingsim.scenario import resolve
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

MODEL = "llama-3.1-8b"


def _pim_timer(pim: DeviceSpec | None = None, interleave: bool = False) -> PimIterationTimer:
    device = load_device("h100-sxm")
    return PimIterationTimer(
        load_model(MODEL),
        device,
        RooflineBackend(device, "bf16"),
        Topology.build(device),
        pim=pim or load_device("pim"),
        pim_count=4,
        sub_batch_interleaving=interleave,
        tensor_parallel=1,
        dtype="bf16",
        kv_dtype="bf16",
    )


def _gpu_timer() -> IterationTimer:
    device = load_device("h100-sxm")
    return IterationTimer(
        load_model(MODEL),
        device,
        RooflineBackend(device, "bf16"),
        Topology.build(device),
        tensor_parallel=1,
        dtype="bf16",
        kv_dtype="bf16",
    )


def _decode(seqs: int, context: int) -> BatchShape:
    return BatchShape(num_decode=seqs, decode_context=seqs * context, num_sampled=seqs)


def _summary(pim: list[str], requests: list[RequestSpec]) -> dict[str, Any]:
    cfg = load_config(None, [f"model={MODEL}", "scheduler.max_num_seqs=64", *pim])
    return simulate(cfg, requests=requests).summary


def test_pim_speeds_up_a_decode_heavy_workload() -> None:
    requests = [RequestSpec(i, 0.0, 512, 768) for i in range(64)]
    off = _summary([], requests)
    on = _summary(["pim.enabled=true"], requests)
    assert on["requests_completed"] == off["requests_completed"] == 64
    speedup = on["output_tokens_per_s"] / off["output_tokens_per_s"]
    assert speedup > 1.05
    assert on["tpot_s"]["mean"] < off["tpot_s"]["mean"]


def test_pim_gains_grow_with_context() -> None:
    """Only attention moves to PIM: the longer the contexts, the bigger the win."""
    gains = [
        _gpu_timer().step(_decode(64, ctx)).seconds / _pim_timer().step(_decode(64, ctx)).seconds
        for ctx in (256, 2048, 8192)
    ]
    assert gains[0] < gains[1] < gains[2]
    assert gains[2] > 1.5


def test_kv_cache_lives_in_pim_memory() -> None:
    plan = resolve(load_config(None, ["pim.enabled=true", "pim.count=2"])).memory
    pim = load_device("pim")
    spec = load_model(MODEL)
    pool = 2 * (pim.memory_gib * 0.9 - pim.reserved_memory_gib) * GIB
    assert plan.kv_cache_on == "pim"
    assert plan.kv_bytes_per_token == spec.kv_bytes_per_token("bf16")
    assert plan.num_blocks == int(pool // (spec.kv_bytes_per_token("bf16") * 16))


def test_query_and_output_transfers_are_charged_per_layer() -> None:
    base = load_device("pim")
    host = base.links.host
    slow = base.model_copy(
        update={
            "links": base.links.model_copy(
                update={"host": host.model_copy(update={"latency_us": host.latency_us + 100})}
            )
        }
    )
    batch = _decode(32, 1000)
    extra = _pim_timer(slow).step(batch).seconds - _pim_timer(base).step(batch).seconds
    # Queries (+ new K/V) in and outputs back: two transfers per layer.
    assert extra == pytest.approx(2 * 32 * 100e-6, rel=1e-9)


def test_makespan_is_the_sum_without_overlap_and_near_the_max_with_it() -> None:
    makespan = PimIterationTimer._makespan
    assert makespan(32, [(3.0, 2.0)]) == pytest.approx(32 * 5.0)
    layers, device_s, pim_s = 32, 1.0, 1.5
    overlapped = makespan(layers, [(device_s, pim_s), (device_s, pim_s)])
    bound = layers * max(2 * device_s, 2 * pim_s)
    assert bound <= overlapped <= bound + device_s + pim_s
    assert overlapped < layers * 2 * (device_s + pim_s)


def test_sub_batch_interleaving_overlaps_at_large_batch() -> None:
    batch = _decode(1024, 1500)
    serial = _pim_timer(interleave=False).step(batch).seconds
    overlapped = _pim_timer(interleave=True).step(batch).seconds
    assert overlapped < 0.9 * serial


def test_pim_devices_draw_power_for_the_whole_run() -> None:
    requests = [RequestSpec(i, 0.0, 128, 64) for i in range(8)]
    on = _summary(["pim.enabled=true", "pim.count=4"], requests)
    pim = load_device("pim")
    gpu = load_device("h100-sxm")
    floor = (gpu.power.idle_w + 4 * pim.power.idle_w) * on["simulated_time_s"]
    assert on["energy_j"] > floor
    assert on["pim"]["devices"] == 4
    assert 0 < on["pim"]["busy_fraction"] < 1
    assert on["cost_usd"] == pytest.approx(
        (gpu.cost_per_hour_usd + 4 * pim.cost_per_hour_usd) * on["simulated_time_s"] / 3600
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pim.enabled=true", "pim.device=h100-sxm"], "is a gpu device"),
        (["hardware=pim"], "is a PIM device"),
        (["pim.enabled=true", "pim.device=pim-9000"], "unknown hardware 'pim-9000'"),
        (["pim.enabled=true", "cluster.pipeline_parallel=2"], "not yet supported"),
    ],
)
def test_pim_config_errors_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _summary(overrides, [RequestSpec(0, 0.0, 16, 4)])
    assert "\n" not in str(info.value)
