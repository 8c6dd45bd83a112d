"""Chunked attention (Llama-4's iRoPE): 3 of every 4 layers attend within 8,192-token chunks.

A token at position p attends positions ⌊p / chunk⌋·chunk..p: decode reads (context − 1) mod
chunk + 1 KV tokens on those layers, and a prefill chunk's block-diagonal causal mask is timed
exactly as causal attention within each chunk it reaches. The KV cache stays full (vLLM keeps
its hybrid KV manager off for chunked attention by default: docs/models.md).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.model.ops import OpGraph, attended_keys, chunk_pieces
from llmservingsim.model.spec import ModelSpec, load_hf_config_file
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.scenario import resolve
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.steady import SteadyDecoders
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

DATA = Path(__file__).resolve().parents[2] / "src" / "llmservingsim" / "data" / "models"


def _timer(spec: ModelSpec) -> IterationTimer:
    device = load_device("h100-sxm")
    return IterationTimer(
        spec,
        device,
        RooflineBackend(device, "fp8"),
        Topology.build(device),
        tensor_parallel=2,
        dtype="fp8",
        kv_dtype="fp8",
    )


def test_scout_layers_chunk_except_every_fourth() -> None:
    spec = load_model("llama-4-scout")
    assert spec.attention_chunk == 8192
    assert spec.num_local_layers == 36
    assert [spec.is_local_layer(i) for i in range(8)] == [True] * 3 + [False] + [True] * 3 + [False]
    assert not spec.has_sliding_layers


def test_no_rope_layers_names_the_chunked_ones(tmp_path: Path) -> None:
    raw = json.loads((DATA / "llama-4-scout.json").read_text())
    raw["text_config"]["no_rope_layers"] = [1, 0] * 24
    path = tmp_path / "scout.json"
    path.write_text(json.dumps(raw))
    assert load_hf_config_file(path).chunked_layers == tuple(range(0, 48, 2))
    raw["text_config"]["no_rope_layers"] = [1, 0, 2]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="'no_rope_layers' must be a list of 48 values 0 or 1"):
        load_hf_config_file(path)


@pytest.mark.parametrize(
    ("new", "ctx"), [(1, 0), (100, 0), (8192, 0), (9000, 0), (5000, 7000), (20000, 3), (1, 8191)]
)
def test_chunk_pieces_are_the_block_diagonal_mask(new: int, ctx: int) -> None:
    """Per chunk, causal attention: the pieces' query-key pairs are Σ (p mod chunk + 1)."""
    chunk = 8192
    pieces = chunk_pieces(new, ctx, chunk)
    assert sum(n for n, _ in pieces) == new
    pairs = sum(attended_keys(n, c) for n, c in pieces)
    assert pairs == sum(p % chunk + 1 for p in range(ctx, ctx + new))


def test_prefill_inside_one_chunk_is_plain_causal_attention() -> None:
    graph = OpGraph(load_model("llama-4-scout"), 2, "fp8", "fp8")
    (op,) = graph.prefill_attention_ops(1000, 3000, chunk=8192)
    assert op == graph.prefill_attention(1000, 3000)
    # Past the chunk's end: a new chunk starts with no cached tokens.
    ops = graph.prefill_attention_ops(1000, 8000, chunk=8192)
    assert [op.dims[:2] for op in ops] == [
        (("new", 192), ("ctx", 8000)),
        (("new", 808), ("ctx", 0)),
    ]


def test_decode_reads_the_chunk_on_chunked_layers_only() -> None:
    """Contexts inside the first chunk: as full attention. Past it, chunked layers read only
    the current chunk, so a step at context 8,193 (1 token into the 2nd chunk) is cheaper than
    full attention and costs what context 1 costs on those layers."""
    timer = _timer(load_model("llama-4-scout"))
    inside = BatchShape([], 8, 8 * 4000, 8, 0, 8 * 4000)
    full = BatchShape([], 8, 8 * 8193, 8, 0, 8 * 8193)
    chunked = BatchShape([], 8, 8 * 8193, 8, 0, 8 * 1)
    assert timer.step(chunked).seconds < timer.step(full).seconds
    assert timer.step(inside).seconds < timer.step(full).seconds


def test_batch_shape_sums_the_chunk_contexts() -> None:
    seqs = []
    for i, computed in enumerate((10, 8191, 8192, 20000)):
        seq = Sequence(RequestSpec(i, 0.0, computed, 50))
        seq.num_computed, seq.generated = computed, 1
        seqs.append((seq, 1))
    batch = Instance._batch_shape(seqs, 0.0, None, 0, 8192)
    assert batch.num_decode == 4
    assert batch.decode_local_context == 11 + 8192 + 1 + (20000 % 8192 + 1)


def _scout(*overrides: str) -> dict[str, float]:
    cfg = load_config(
        None,
        [
            "model=llama-4-scout",
            "dtype=fp8",
            "cluster.tensor_parallel=2",
            "workload.num_requests=30",
            "workload.arrival.rate=4",
            "workload.input_len={dist: uniform, min: 100, max: 20000}",
            "workload.output_len={dist: uniform, min: 20, max: 300}",
            *overrides,
        ],
    )
    result = simulate(resolve(cfg), check_invariants=True)
    assert result.summary["requests_completed"] == 30
    return result.summary


def test_long_prefill_costs_less_than_full_attention() -> None:
    spec = load_model("llama-4-scout")
    full = _timer(replace(spec, attention_chunk=0, chunked_layers=()))
    chunked = _timer(spec)
    for new, ctx in ((4096, 0), (8192, 8192)):
        batch = BatchShape([(new, ctx)], 0, 0, 1, 0, 0)
        if ctx + new <= 8192:  # inside the first chunk: the same mask
            assert chunked.step(batch).seconds == pytest.approx(full.step(batch).seconds)
        else:
            assert chunked.step(batch).seconds < full.step(batch).seconds


@pytest.mark.parametrize("input_len", ["{dist: uniform, min: 100, max: 20000}", "8100"])
def test_scout_fast_forward_equals_stepping(input_len: str) -> None:
    """Steady decoders join only if they finish inside their chunk (the others, 8,100-token
    prompts with up to 300 outputs among them, step one by one); every number equals
    stepping one iteration at a time."""
    length = f"workload.input_len={input_len}"
    if input_len.isdigit():
        length = f"workload.input_len={{dist: fixed, value: {input_len}}}"
    step = _scout(length, "simulator.fast_forward=false")
    fast = _scout(length, "simulator.fast_forward=true")
    for key, value in step.items():
        if isinstance(value, float) and key != "sim_wall_s":
            assert fast[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_steady_decoders_join_only_inside_their_chunk() -> None:
    blocks = BlockManager(10_000, 16)
    steady = SteadyDecoders(blocks, chunk=8192)

    def decoding(i: int, computed: int, output: int) -> Sequence:
        seq = Sequence(RequestSpec(i, 0.0, computed, output))
        seq.generated = 1
        blocks.allocate(seq, computed)
        seq.num_computed = computed
        seq.status = Status.RUNNING
        return seq

    # 100 more steps from position 8,000: 8,100 < 8,192, inside the chunk.
    assert steady.join(decoding(0, 8000, 101))
    # From position 8,100, 100 more steps reach 8,200: past the chunk's end.
    assert not steady.join(decoding(1, 8100, 101))
    assert steady.join(decoding(2, 8192, 101))  # the next chunk, from its start
    steady.begin_step()
    assert steady.in_flight_local_context == (8000 % 8192 + 1) + (8192 % 8192 + 1)


def test_scout_end_to_end_keeps_the_invariants_and_full_kv() -> None:
    """The invariant checker runs; the KV capacity is that of full attention (no
    sliding-window layout)."""
    summary = _scout()
    assert "kv_sliding_units" not in summary["memory"]
    assert summary["memory"]["kv_tokens"] == summary["kv_cache_capacity_tokens"]
