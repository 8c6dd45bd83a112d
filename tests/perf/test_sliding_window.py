"""Sliding-window attention (gpt-oss): a sliding layer attends to the last ``window`` tokens.

Decode reads min(context, window) KV tokens per sequence; a prefill chunk computes only the
causal band of the window; full layers are timed as before. The KV cache of sliding layers
keeps the window's blocks only: tests/serving/test_sliding_kv.py.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import replace

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError, InputWarning
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.model.ops import OpGraph, attended_keys, kv_tokens_read
from llmservingsim.model.spec import ModelSpec
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.steady import SteadyDecoders
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec


def _gpt_oss(name: str = "gpt-oss-20b") -> ModelSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return load_model(name)


def _timer(spec: ModelSpec, **kwargs: int) -> IterationTimer:
    device = load_device("h100-sxm")
    return IterationTimer(
        spec,
        device,
        RooflineBackend(device, "bf16"),
        Topology.build(device),
        tensor_parallel=1,
        dtype="bf16",
        kv_dtype="bf16",
        **kwargs,
    )


def test_gpt_oss_layers_alternate_sliding_and_full() -> None:
    for name, layers in (("gpt-oss-20b", 24), ("gpt-oss-120b", 36)):
        spec = _gpt_oss(name)
        assert spec.sliding_window == 128
        assert spec.num_sliding_layers == layers // 2
        assert [spec.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]


def test_attended_keys_count_the_causal_band_of_the_window() -> None:
    """Query at position p sees min(p + 1, window) keys (itself included); window 0: all."""
    for new, ctx, window in itertools.product(range(1, 12), range(0, 12), (0, 1, 4, 9, 128)):
        expected = sum(min(p + 1, window) if window else p + 1 for p in range(ctx, ctx + new))
        assert attended_keys(new, ctx, window) == expected, (new, ctx, window)
    # Window shorter than the context: every query sees exactly the window.
    assert attended_keys(500, 1000, 128) == 500 * 128
    # Window longer than context plus chunk: the full causal count.
    assert attended_keys(500, 1000, 4096) == attended_keys(500, 1000)
    assert kv_tokens_read(500, 1000, 128) == 127 + 500
    assert kv_tokens_read(500, 1000, 0) == kv_tokens_read(500, 1000, 4096) == 1500


def test_prefill_band_flops_and_bytes() -> None:
    graph = OpGraph(_gpt_oss(), 1, "bf16", "bf16")
    q, kv = graph.shape.q_size, graph.shape.kv_size
    band = graph.prefill_attention(2048, 0, 128)
    full = graph.prefill_attention(2048, 0)
    assert band.flops == 4.0 * (128 * 129 / 2 + (2048 - 128) * 128) * q
    assert full.flops == 4.0 * 2048 * 2049 / 2 * q
    assert band.bytes == 2.0 * 2048 * q * 2.0 + 2.0 * 2048 * kv * 2.0  # reads each K/V once
    assert ("window", 128) in band.dims and "window" not in dict(full.dims)
    # After a long context the chunk reads the window's last 127 cached tokens only.
    later = graph.prefill_attention(512, 4000, 128)
    assert later.bytes == 2.0 * 512 * q * 2.0 + 2.0 * (127 + 512) * kv * 2.0
    # A chunk inside the window is the full causal chunk.
    short, whole = graph.prefill_attention(100, 20, 128), graph.prefill_attention(100, 20)
    assert (short.flops, short.bytes) == (whole.flops, whole.bytes)


def test_decode_step_reads_the_window_on_sliding_layers_only() -> None:
    """Window < context: the sliding layers' attention is the window's; full layers are
    unchanged. The step's FLOPs fall by exactly the skipped tokens of the sliding layers."""
    spec = _gpt_oss()
    full_spec = replace(spec, sliding_layers=())
    sliding, full = _timer(spec), _timer(full_spec)
    seqs, ctx = 32, 3000
    batch = BatchShape([], seqs, seqs * ctx, seqs, 0, seqs * 128)
    saved = spec.num_sliding_layers * 4.0 * seqs * (ctx - 128) * sliding.graph.shape.q_size
    got, ref = sliding.step(batch), full.step(batch)
    assert ref.flops - got.flops == pytest.approx(saved, rel=1e-12)
    assert got.seconds < ref.seconds
    kv_saved = spec.num_sliding_layers * 2.0 * seqs * (ctx - 128) * sliding.graph.shape.kv_size * 2
    assert ref.bytes - got.bytes == pytest.approx(kv_saved, rel=1e-12)


def test_window_longer_than_every_context_changes_nothing() -> None:
    spec = _gpt_oss()
    sliding, full = _timer(spec), _timer(replace(spec, sliding_layers=()))
    seqs, ctx = 8, 100  # every context inside the 128-token window
    batch = BatchShape([(64, 10), (50, 0)], seqs, seqs * ctx, seqs + 2, 0, seqs * ctx)
    got, ref = sliding.step(batch), full.step(batch)
    assert got.flops == pytest.approx(ref.flops, rel=1e-12)
    assert got.bytes == pytest.approx(ref.bytes, rel=1e-12)
    assert got.seconds == pytest.approx(ref.seconds, rel=1e-12)


def test_pipeline_stages_count_their_own_sliding_layers() -> None:
    spec = _gpt_oss()
    timer = _timer(spec, pipeline_parallel=3)
    # 24 layers, 8 per stage, alternating: 4 sliding MoE and 4 full MoE in each stage.
    assert timer.stage_layer_kinds == ((0, 0, 4, 4),) * 3
    batch = BatchShape([], 4, 4 * 5000, 4, 0, 4 * 128)
    cost = timer.step(batch)
    assert len(cost.stages) == 3 and cost.seconds == pytest.approx(sum(cost.stages))


def test_steady_decoders_only_admit_requests_past_the_window() -> None:
    """A group member's sliding layers must attend the whole window every step, so the
    group's sum of min(context, window) is window × members (serving/steady.py)."""
    blocks = BlockManager(100, 16)
    steady = SteadyDecoders(blocks, window=128)

    def decoding(i: int, computed: int) -> Sequence:
        seq = Sequence(RequestSpec(i, 0.0, computed, 50))
        seq.generated = 1
        blocks.allocate(seq, computed)
        seq.num_computed = computed
        seq.status = Status.RUNNING
        return seq

    assert not steady.join(decoding(0, 126))  # attends 127 < 128 tokens next step
    assert steady.join(decoding(1, 127))  # attends the whole window from now on
    assert SteadyDecoders(blocks).join(decoding(2, 5))  # no window: anyone


def _run(fast_forward: bool, input_len: str) -> dict[str, float]:
    cfg = load_config(
        None,
        [
            "model=gpt-oss-20b",
            "dtype=int4",
            "workload.num_requests=24",
            "workload.arrival.rate=40",
            f"workload.input_len={input_len}",
            "workload.output_len={dist: uniform, min: 20, max: 300}",
            f"simulator.fast_forward={str(fast_forward).lower()}",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        result = simulate(cfg)
    assert result.summary["requests_completed"] == 24
    return {k: v for k, v in result.summary.items() if isinstance(v, float) and k != "sim_wall_s"}


@pytest.mark.parametrize(
    "input_len", ["{dist: uniform, min: 5, max: 400}", "{dist: fixed, value: 2000}"]
)
def test_gpt_oss_end_to_end_fast_forward_equals_stepping(input_len: str) -> None:
    """Prompts shorter than the window decode one by one until they pass it (then join the
    steady group); every number equals stepping one iteration at a time."""
    step, fast = _run(False, input_len), _run(True, input_len)
    assert step.keys() == fast.keys()
    for key, value in step.items():
        assert fast[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_sliding_window_draft_model_is_refused() -> None:
    cfg = load_config(
        None,
        ["model=gpt-oss-120b", "speculative.method=draft", "speculative.draft_model=gpt-oss-20b"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        with pytest.raises(
            ConfigError, match="sliding-window or chunked attention is not yet supported"
        ):
            simulate(cfg)
