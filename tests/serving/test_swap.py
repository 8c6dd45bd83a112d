"""Preemption by swap (blocks to host memory and back, time charged) and by recompute (the
redone prefill tokens are counted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kv_helpers import kv_run
from llmservingsim.cli import app
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.scenario import resolve
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

NUM_BLOCKS = 60  # tiny GPU memory: 960 tokens of KV at block size 16


def contended(n: int = 12) -> list[RequestSpec]:
    """Requests that fit alone (≤ 16 blocks each) but not together: preemption is certain."""
    return [
        RequestSpec(id=i, arrival_s=0.001 * i, input_len=100 + 7 * i, output_len=140)
        for i in range(n)
    ]


def config(*extra: str) -> Any:
    return load_config(None, ["model=llama-3.2-1b", *extra])


def block_bytes(cfg: Any) -> float:
    plan = resolve(cfg).memory
    return plan.kv_bytes_per_token * plan.block_size


def lifetime_tokens(specs: list[RequestSpec]) -> int:
    return sum(s.input_len + s.output_len - 1 for s in specs)


def test_swap_with_tiny_memory_finishes_moves_blocks_and_charges_time() -> None:
    specs = contended()
    cfg = config("scheduler.preemption=swap")
    with kv_run(NUM_BLOCKS) as log:
        result = simulate(cfg, requests=specs)
    s = result.summary
    assert s["requests_completed"] == len(specs) and s["requests_failed"] == 0
    assert s["preemptions"] > 0 and s["swap_fallback_preemptions"] == 0
    assert s["swapped_out_blocks"] > 0
    assert s["swapped_in_blocks"] == s["swapped_out_blocks"]
    assert s["swapped_out_bytes"] == s["swapped_out_blocks"] * block_bytes(cfg)
    assert s["swapped_in_bytes"] == s["swapped_in_blocks"] * block_bytes(cfg)
    # The copies lengthen the steps that do them, by exactly what the summary reports.
    assert s["host_transfer_time_s"] > 0
    assert log.charged_transfer_s == pytest.approx(s["host_transfer_time_s"], rel=1e-9)
    # Nothing is computed twice: every token's KV is computed once.
    assert s["recomputed_prefill_tokens"] == 0
    computed = s["prefill_tokens_computed"] + s["decode_tokens_computed"]
    assert computed == lifetime_tokens(specs)


def test_swap_time_follows_the_host_link() -> None:
    """Each step's copies cost latency + blocks × block bytes / bandwidth per direction."""
    specs = contended()
    cfg = config("scheduler.preemption=swap")
    with kv_run(NUM_BLOCKS):
        s = simulate(cfg, requests=specs).summary
    link = cfg_host_link(cfg)
    blocks = s["swapped_out_blocks"] + s["swapped_in_blocks"]
    pure_bandwidth = blocks * block_bytes(cfg) / link["bandwidth"]
    # At most one latency per direction per step that moved blocks, at least one per direction.
    assert s["host_transfer_time_s"] >= pure_bandwidth + 2 * link["latency"]
    assert s["host_transfer_time_s"] <= pure_bandwidth + blocks * link["latency"]


def cfg_host_link(cfg: Any) -> dict[str, float]:
    from llmservingsim.catalog import load_device

    host = load_device(cfg.hardware).links.host
    return {"bandwidth": host.bandwidth_gbps * 1e9, "latency": host.latency_us * 1e-6}


def test_recompute_counts_the_redone_prefill_tokens() -> None:
    specs = contended()
    with kv_run(NUM_BLOCKS):
        s = simulate(config("scheduler.preemption=recompute"), requests=specs).summary
    assert s["requests_completed"] == len(specs)
    assert s["preemptions"] > 0 and s["swapped_out_blocks"] == 0
    assert s["recomputed_prefill_tokens"] > 0
    assert s["host_transfer_time_s"] == 0
    # Every token computed is a first computation or a counted recomputation.
    computed = s["prefill_tokens_computed"] + s["decode_tokens_computed"]
    assert computed == lifetime_tokens(specs) + s["recomputed_prefill_tokens"]


def test_full_swap_space_falls_back_to_recompute() -> None:
    specs = contended()
    cfg0 = config("scheduler.preemption=swap")
    one_request = 16.5 * block_bytes(cfg0) / 2**30  # room for one preempted request at most
    cfg = config("scheduler.preemption=swap", f"scheduler.swap_space_gib={one_request}")
    with kv_run(NUM_BLOCKS):
        s = simulate(cfg, requests=specs).summary
    assert s["requests_completed"] == len(specs)
    assert s["swapped_out_blocks"] > 0
    assert s["swap_fallback_preemptions"] > 0
    assert s["recomputed_prefill_tokens"] > 0
    computed = s["prefill_tokens_computed"] + s["decode_tokens_computed"]
    assert computed == lifetime_tokens(specs) + s["recomputed_prefill_tokens"]


def test_swap_with_prefix_caching_finishes_and_conserves_tokens() -> None:
    specs = contended()
    cfg = config("scheduler.preemption=swap", "scheduler.enable_prefix_caching=true")
    with kv_run(NUM_BLOCKS):
        s = simulate(cfg, requests=specs).summary
    assert s["requests_completed"] == len(specs) and s["swapped_out_blocks"] > 0
    assert s["prefix_cache_hit_rate"] == 0.0  # these requests say nothing about their content


def test_host_memory_smaller_than_one_block_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config("scheduler.preemption=swap", "scheduler.swap_space_gib=0.0001")
    with pytest.raises(ConfigError, match=r"scheduler\.swap_space_gib=0\.0001 GiB holds no KV"):
        simulate(cfg, requests=contended(1))
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--set",
            "scheduler.preemption=swap",
            "--set",
            "scheduler.swap_space_gib=0",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "swap_space_gib=0 GiB holds no KV block" in result.output
    # Recompute preemption does not use the swap space, so its size does not matter there.
    simulate(config("scheduler.swap_space_gib=0"), requests=contended(1))
