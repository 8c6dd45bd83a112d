"""Sliding-window KV (gpt-oss): sliding layers keep only their window's blocks.

A block holds ``block_size`` tokens of one group of layers; each ``block_size`` tokens of a
sequence take ``full_units`` blocks, plus ``sliding_units`` for its first
``ceil((window − 1) / block_size) + 1`` token blocks (serving/memory.py sliding_kv_layout,
docs/models.md).
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import load_config
from llmservingsim.errors import DoesNotFitError, InputWarning
from llmservingsim.model.spec import ModelSpec
from llmservingsim.preflight import check_kv_fits
from llmservingsim.scenario import resolve
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.memory import MemoryPlan, plan_memory, sliding_kv_layout
from llmservingsim.serving.steady import SteadyDecoders
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec


def _gpt_oss(name: str = "gpt-oss-20b") -> ModelSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return load_model(name)


def _plan(sliding_kv: bool, name: str = "gpt-oss-120b", pp: int = 1) -> MemoryPlan:
    return plan_memory(
        _gpt_oss(name),
        load_device("h100-sxm"),
        dtype="fp4",
        kv_dtype="bf16",
        tp=1,
        pp=pp,
        block_size=16,
        gpu_memory_utilization=0.9,
        max_batched_tokens=8192,
        max_seqs=256,
        sliding_kv=sliding_kv,
    )


def test_gpt_oss_layout_pairs_its_full_and_sliding_layers() -> None:
    """18 full + 18 sliding layers: blocks of 18 layers, one of each per token block, the
    sliding ones capped at the 128-token window's 8 blocks plus the one the next token opens."""
    spec = _gpt_oss("gpt-oss-120b")
    assert sliding_kv_layout(spec, 1, 16) == (18, 1, 1, 9)
    assert sliding_kv_layout(spec, 1, 32) == (18, 1, 1, 5)  # ceil(127 / 32) + 1
    assert sliding_kv_layout(spec, 1, 128) == (18, 1, 1, 2)
    # Two stages of 18 layers, 9 of each kind.
    assert sliding_kv_layout(spec, 2, 16) == (9, 1, 1, 9)
    # Full attention only: one block holds every layer of the stage.
    assert sliding_kv_layout(load_model("llama-3.1-8b"), 1, 16) == (32, 1, 0, 0)


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.integers(0, 100_000),
    full=st.integers(1, 4),
    sliding=st.integers(1, 4),
    cap=st.integers(1, 20),
    size=st.sampled_from([1, 16, 32]),
)
def test_blocks_needed_and_tokens_held_invert(
    tokens: int, full: int, sliding: int, cap: int, size: int
) -> None:
    blocks = BlockManager(10, size, full, sliding, cap)
    needed = blocks.blocks_needed(tokens)
    token_blocks = -(-tokens // size)
    assert needed == full * token_blocks + sliding * min(token_blocks, cap)
    held = blocks.tokens_held(needed)
    assert tokens <= held < tokens + size or (tokens == 0 and held == 0)
    assert blocks.blocks_needed(held) == needed
    assert blocks.blocks_needed(tokens + 1) >= needed  # never shrinks as a sequence grows


def test_capacity_doubles_for_gpt_oss() -> None:
    """Half of gpt-oss's layers slide: a block holds half the bytes, so the pool has twice the
    blocks and the full-attention layers twice the tokens."""
    full, sliding = _plan(False), _plan(True)
    assert sliding.kv_cache_gib == full.kv_cache_gib
    assert sliding.kv_bytes_per_token == full.kv_bytes_per_token / 2
    assert sliding.num_blocks in (2 * full.num_blocks, 2 * full.num_blocks + 1)
    assert sliding.kv_tokens == sliding.num_blocks * 16
    assert sliding.as_dict()["kv_sliding_blocks"] == 9
    assert "kv_sliding_blocks" not in full.as_dict()  # a plain plan keeps its keys


def _config(*overrides: str) -> Any:
    return load_config(None, ["model=gpt-oss-20b", "dtype=int4", *overrides])


def _summary(*overrides: str, requests: list[RequestSpec] | None = None) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return simulate(_config(*overrides), requests, check_invariants=True).summary


def test_summary_capacity_grows_and_prefix_caching_keeps_full_kv() -> None:
    """Prefix caching keeps the sliding layers' KV for the whole context (not yet supported
    otherwise), and says so."""
    requests = [RequestSpec(i, 0.0, 300, 20) for i in range(4)]
    plain = _summary(requests=requests)
    with pytest.warns(InputWarning, match="with scheduler.enable_prefix_caching, the KV cache"):
        cached = simulate(
            _config("scheduler.enable_prefix_caching=true"), requests, check_invariants=True
        ).summary
    assert plain["kv_cache_capacity_tokens"] >= 2 * cached["kv_cache_capacity_tokens"]
    assert plain["memory"]["kv_sliding_units"] == 1
    assert "kv_sliding_units" not in cached["memory"]


def test_a_long_context_is_admitted_that_full_kv_refuses() -> None:
    """At 21 % of an H100 the full-attention layout holds 82,880 tokens of one request; with
    the sliding layers' KV kept to the window, twice that less one window: 120,000 fit."""
    requests = [RequestSpec(0, 0.0, 120_000, 4)]
    util = "scheduler.gpu_memory_utilization=0.21"
    summary = _summary(util, requests=requests)
    assert summary["requests_completed"] == 1
    assert summary["kv_cache_capacity_tokens"] == 165_760
    check_kv_fits(resolve(_config(util)), requests)  # the start-up check agrees
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        full = resolve(_config(util, "scheduler.enable_prefix_caching=true"))
        with pytest.raises(DoesNotFitError, match="holds 82,880 tokens"):
            check_kv_fits(full, requests)
        assert simulate(full, requests).summary["requests_completed"] == 0
    memory = resolve(_config(util)).pools[0].memory
    blocks = BlockManager(memory.num_blocks, 16, 1, 1, 9)
    assert blocks.tokens_held(memory.num_blocks) == (memory.num_blocks - 9) * 16


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_preemption_under_pressure_keeps_the_invariants(preemption: str) -> None:
    """A small cache and long outputs: requests are preempted and resumed; the invariant
    checker (held blocks cover the computed tokens, no block held twice, used = held) runs."""
    requests = [RequestSpec(i, 0.01 * i, 200 + 37 * i, 300) for i in range(24)]
    summary = _summary(
        "scheduler.num_gpu_blocks_override=400",
        f"scheduler.preemption={preemption}",
        requests=requests,
    )
    assert summary["requests_completed"] == 24
    assert summary["preemptions"] > 0


def test_fast_forward_equals_stepping_under_pressure() -> None:
    requests = [RequestSpec(i, 0.02 * i, 100 + 53 * i, 400) for i in range(16)]
    blocks = "scheduler.num_gpu_blocks_override=700"
    runs = [
        _summary(blocks, f"simulator.fast_forward={ff}", requests=requests)
        for ff in ("false", "true")
    ]
    for key, value in runs[0].items():
        if isinstance(value, float) and key != "sim_wall_s":
            assert runs[1][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_steady_decoders_join_once_the_sliding_blocks_are_all_held() -> None:
    """Past the window a member takes ``full_units`` blocks per block_size steps; before its
    sliding layers hold all their blocks it would take more, so it stays one by one."""
    blocks = BlockManager(1000, 16, 1, 1, 9)
    steady = SteadyDecoders(blocks, window=128)

    def decoding(i: int, computed: int) -> Sequence:
        seq = Sequence(RequestSpec(i, 0.0, computed, 500))
        seq.generated = 1
        blocks.allocate(seq, computed)
        seq.num_computed = computed
        seq.status = Status.RUNNING
        return seq

    # 8 token blocks: its next token opens the 9th, which takes a sliding block too.
    assert not steady.join(decoding(0, 128))
    assert steady.join(decoding(1, 140))  # 9 token blocks: the sliding layers hold all theirs
    assert steady.blocks_due(steady.started + 4) == 1  # its next block: token 145, 4 steps on


def test_a_model_without_full_attention_layers_keeps_full_kv_and_says_so(
    tmp_path: Path,
) -> None:
    """The layout counts blocks per full-attention group: a model whose every layer slides
    keeps its KV for the whole context (with a warning) instead of dividing by zero."""
    source = Path(str(resources.files("llmservingsim") / "data" / "models" / "gpt-oss-20b.json"))
    cfg = json.loads(source.read_text())
    cfg["layer_types"] = ["sliding_attention"] * cfg["num_hidden_layers"]
    path = tmp_path / "all-sliding.json"
    path.write_text(json.dumps(cfg))
    requests = [RequestSpec(i, 0.0, 300, 20) for i in range(4)]
    with pytest.warns(InputWarning, match="with no full-attention layer, the KV cache"):
        summary = simulate(
            load_config(None, [f"model={path}", "dtype=int4"]), requests, check_invariants=True
        ).summary
    assert summary["requests_completed"] == 4
    assert "kv_sliding_units" not in summary["memory"]
