"""Physical sanity of the roofline timing: decode is memory bound, long prefill compute bound."""

from __future__ import annotations

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.serving.memory import weight_bytes_per_device
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

MODEL = "llama-3.1-8b"


def _timer(device: DeviceSpec, tp: int = 1) -> IterationTimer:
    spec = load_model(MODEL)
    backend = RooflineBackend(device, "bf16")
    return IterationTimer(
        spec,
        device,
        backend,
        Topology.build(device),
        tensor_parallel=tp,
        dtype="bf16",
        kv_dtype="bf16",
    )


def _with_bandwidth(device: DeviceSpec, factor: float) -> DeviceSpec:
    return device.model_copy(
        update={"memory_bandwidth_gbps": device.memory_bandwidth_gbps * factor}
    )


def _launch_time_per_step(timer: IterationTimer, batch: BatchShape) -> float:
    """Fixed (bandwidth-independent) kernel time of one step: each kernel's own launch cost."""
    eff = timer.backend.device.efficiency

    def launch(op: Op) -> float:
        tuned = eff.memory_ops.get(op.name)
        return (tuned.launch_us if tuned is not None else eff.kernel_launch_us) * 1e-6

    graph = timer.graph
    layer = [*graph.dense_layer_ops(batch.num_tokens)]
    layer += [graph.prefill_attention(new, ctx) for new, ctx in batch.prefill]
    if batch.num_decode:
        layer.append(graph.decode_attention(batch.num_decode, batch.decode_context))
    head = graph.head_ops(batch.num_tokens, batch.num_sampled)
    return timer.num_layers * sum(map(launch, layer)) + sum(map(launch, head))


def test_batch1_decode_tpot_is_weight_and_kv_streaming_time() -> None:
    """TPOT at batch 1 ≈ (weights + KV) / (BW · η_mem) + launch and CPU overheads (±10%)."""
    device = load_device("h100-sxm")
    spec = load_model(MODEL)
    prompt, output = 512, 128
    cfg = load_config(None, [f"model={MODEL}", "hardware=h100-sxm"])
    result = simulate(cfg, requests=[RequestSpec(0, 0.0, prompt, output)])
    tpot = result.summary["tpot_s"]["mean"]

    eff = device.efficiency
    mean_context = prompt + output / 2
    streamed = weight_bytes_per_device(spec, "bf16", 1) + mean_context * spec.kv_bytes_per_token(
        "bf16"
    )
    timer = _timer(device)
    decode = BatchShape(num_decode=1, decode_context=int(mean_context), num_sampled=1)
    overheads = _launch_time_per_step(timer, decode) + (
        (eff.iteration_overhead_us + eff.per_seq_overhead_us) * 1e-6
    )
    expected = streamed / (device.memory_bandwidth * eff.memory) + overheads
    assert tpot == pytest.approx(expected, rel=0.10)


def test_decode_gemms_are_memory_bound_and_long_prefill_gemms_compute_bound() -> None:
    device = load_device("h100-sxm")
    graph = OpGraph(load_model(MODEL), 1, "bf16", "bf16")
    backend = RooflineBackend(device, "bf16")
    peak, bw = device.peak_flops("bf16"), device.memory_bandwidth * device.efficiency.memory
    for m, compute_bound in ((1, False), (4096, True)):
        for op in graph.dense_layer_ops(m):
            if op.kind != "gemm":
                continue
            compute = op.flops / (peak * backend.compute_efficiency(op.m))
            memory = op.bytes / bw
            assert (compute > memory) is compute_bound, (op.name, m)


def test_doubling_bandwidth_speeds_decode_about_2x_and_prefill_little() -> None:
    base = load_device("h100-sxm")
    fast = _with_bandwidth(base, 2.0)
    decode = BatchShape(num_decode=1, decode_context=1024, num_sampled=1)
    prefill = BatchShape(prefill=[(4096, 0)], num_sampled=1)

    def gpu_time(device: DeviceSpec, batch: BatchShape) -> float:
        """Step time without the fixed CPU and kernel-launch costs bandwidth cannot change."""
        timer = _timer(device)
        eff = device.efficiency
        fixed = _launch_time_per_step(timer, batch)
        fixed += (eff.iteration_overhead_us + eff.per_seq_overhead_us * batch.num_seqs) * 1e-6
        return timer.step(batch).seconds - fixed

    decode_speedup = gpu_time(base, decode) / gpu_time(fast, decode)
    prefill_speedup = _timer(base).step(prefill).seconds / _timer(fast).step(prefill).seconds
    assert 1.8 <= decode_speedup <= 2.0 + 1e-9  # exactly 2 when every op is memory bound
    assert prefill_speedup < 1.2
    # End to end (fixed overheads included) decode still gains a lot, prefill almost nothing.
    whole_decode = _timer(base).step(decode).seconds / _timer(fast).step(decode).seconds
    assert whole_decode > 1.4
    # A small decode batch is still mostly weight streaming.
    batch8 = BatchShape(num_decode=8, decode_context=8 * 1024, num_sampled=8)
    assert gpu_time(base, batch8) / gpu_time(fast, batch8) > 1.5


def test_tensor_parallel_splits_weights_and_adds_allreduce() -> None:
    device = load_device("h100-sxm")
    batch = BatchShape(num_decode=16, decode_context=16 * 512, num_sampled=16)
    t1 = _timer(device, tp=1).step(batch).seconds
    t2 = _timer(device, tp=2).step(batch).seconds
    # Half the weights per GPU, but two all-reduces per layer and the same CPU overhead.
    assert 0.5 * t1 < t2 < 0.9 * t1


def test_iteration_time_grows_with_batch_and_context() -> None:
    timer = _timer(load_device("h100-sxm"))
    small = timer.step(BatchShape(num_decode=8, decode_context=8 * 256, num_sampled=8)).seconds
    more_seqs = timer.step(BatchShape(num_decode=64, decode_context=64 * 256, num_sampled=64))
    longer = timer.step(BatchShape(num_decode=8, decode_context=8 * 8192, num_sampled=8))
    assert more_seqs.seconds > small
    assert longer.seconds > small
    assert timer.step(BatchShape()).seconds == 0.0


def test_perf_cache_reuses_results_across_iterations() -> None:
    timer = _timer(load_device("h100-sxm"))
    batch = BatchShape(prefill=[(256, 0)], num_decode=4, decode_context=4000, num_sampled=5)
    first = timer.step(batch)
    second = timer.step(batch)
    assert first == second
    assert timer.cache_hit_rate == pytest.approx(0.5)
