"""Prefix caching: block content keys, sharing, exactness, LRU eviction, the offload tier, and
the end-to-end effect on hit rate and TTFT."""

from __future__ import annotations

from typing import Any

import pytest

from kv_helpers import kv_run
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.perf.host_link import HostLink, TransferLedger
from llmservingsim.sequence import Sequence
from llmservingsim.serving.kv_offload import OffloadTier
from llmservingsim.serving.prefix_cache import PrefixCachingBlockManager, block_keys
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec, TokenContent

BS = 16


def content(*runs: tuple[int, int], namespace: str = "t") -> TokenContent:
    return TokenContent(namespace, runs)


def seq_of(c: TokenContent | None, input_len: int | None = None, i: int = 0) -> Sequence:
    n = input_len if input_len is not None else (c.num_tokens if c else 1)
    return Sequence(RequestSpec(i, 0.0, n, 4, c))


def prefill(bm: PrefixCachingBlockManager, seq: Sequence) -> int:
    """Admit ``seq`` from its cache hit and compute its whole prompt; returns the hit tokens."""
    hit = bm.lookup(seq)
    assert bm.can_allocate(seq, seq.num_tokens - hit.tokens, hit)
    bm.allocate(seq, seq.num_tokens - hit.tokens, hit)
    seq.num_computed = seq.num_tokens
    return hit.tokens


# ----------------------------------------------------------------------------- block keys


def test_mooncake_hash_blocks_map_onto_small_blocks() -> None:
    # Two 512-token hash blocks, the second partial (100 tokens): 32 + 6 full 16-token blocks.
    keys = block_keys(content((7, 512), (9, 100)), 16)
    assert len(keys) == 32 + 6
    assert keys[0] == (7, 0, 16) and keys[31] == (7, 496, 512)
    assert keys[32] == (9, 0, 16) and keys[37] == (9, 80, 96)


def test_blocks_that_straddle_runs_name_every_piece() -> None:
    # Block size 48 does not divide 512: block 10 holds tokens 480..527 = 32 of 7 and 16 of 9.
    keys = block_keys(content((7, 512), (9, 512)), 48)
    assert keys[10] == (7, 480, 512, 9, 0, 16)
    assert len(keys) == 1024 // 48
    # Token ids (runs of one token) make blocks of block_size pieces.
    assert block_keys(content((5, 1), (6, 1), (7, 1)), 2) == [(5, 0, 1, 6, 0, 1)]


# ----------------------------------------------------------------------------- sharing


def test_second_request_with_the_same_prompt_shares_all_but_the_last_block() -> None:
    bm = PrefixCachingBlockManager(20, BS)
    a, b = seq_of(content((1, 64)), i=0), seq_of(content((1, 64)), i=1)
    assert prefill(bm, a) == 0
    bm.register_computed(a)
    # 64 tokens = 4 full blocks; the last token must be computed, so 3 blocks are reused.
    assert prefill(bm, b) == 48
    assert b.blocks[:3] == a.blocks[:3] and b.blocks[3] != a.blocks[3]
    assert [bm.ref_count[x] for x in a.blocks] == [2, 2, 2, 1]


def test_prompt_one_token_past_a_block_reuses_every_full_block() -> None:
    bm = PrefixCachingBlockManager(20, BS)
    a = seq_of(content((1, 65)), i=0)
    prefill(bm, a)
    bm.free(a)
    assert prefill(bm, seq_of(content((1, 65)), i=1)) == 64


def test_partial_overlap_stops_at_the_first_different_block() -> None:
    bm = PrefixCachingBlockManager(20, BS)
    a = seq_of(content((1, 40), (2, 40)), i=0)
    prefill(bm, a)
    bm.free(a)
    # Same first 40 tokens, then different: blocks 0-1 (tokens 0..31) match, block 2 mixes.
    assert prefill(bm, seq_of(content((1, 40), (3, 40)), i=1)) == 32


def test_crafted_ids_never_return_another_prefix() -> None:
    """Ids whose Python hashes collide, equal blocks under different parents, namespaces."""
    bm = PrefixCachingBlockManager(40, BS)
    a = seq_of(content((0, 64)), i=0)
    prefill(bm, a)
    bm.free(a)
    assert hash(2**61 - 1) == hash(0)
    assert prefill(bm, seq_of(content((2**61 - 1, 64)), i=1)) == 0
    # Same second block content (2, 0..16) under a different first block: no hit.
    c = seq_of(content((1, 16), (2, 32)), i=2)
    prefill(bm, c)
    bm.free(c)
    assert prefill(bm, seq_of(content((3, 16), (2, 32)), i=3)) == 0
    # Same ids in another namespace (a trace's hash ids vs a generator's ids): no hit.
    assert prefill(bm, seq_of(content((1, 16), (2, 32), namespace="other"), i=4)) == 0
    # ... while the true owner of the prefix still hits.
    assert prefill(bm, seq_of(content((1, 16), (2, 32)), i=5)) == 32


def test_requests_without_content_never_share() -> None:
    bm = PrefixCachingBlockManager(20, BS)
    a = seq_of(None, input_len=64)
    prefill(bm, a)
    bm.free(a)
    assert not bm.cached and bm.num_free == 20
    assert prefill(bm, seq_of(None, input_len=64, i=1)) == 0


# ----------------------------------------------------------------------------- eviction


def test_empty_blocks_go_first_then_least_recently_freed_tail_first() -> None:
    bm = PrefixCachingBlockManager(8, BS)
    a = seq_of(content((1, 64)), i=0)  # 4 blocks
    b = seq_of(content((2, 64)), i=1)  # 4 blocks
    prefill(bm, a)
    prefill(bm, b)
    bm.free(a)  # a's blocks become cached first (older)
    bm.free(b)
    assert bm.num_free == 8 and not bm.free_blocks
    # Needing 2 blocks evicts a's last two blocks (tail first), keeping a's first two.
    c = seq_of(content((3, 32)), i=2)
    prefill(bm, c)
    assert bm.evicted_blocks == 2
    assert bm.lookup(seq_of(content((1, 64)), i=3)).tokens == 32
    assert bm.lookup(seq_of(content((2, 64)), i=4)).tokens == 48


def test_cached_blocks_are_not_evicted_while_empty_blocks_remain() -> None:
    bm = PrefixCachingBlockManager(10, BS)
    a = seq_of(content((1, 64)), i=0)
    prefill(bm, a)
    bm.free(a)
    prefill(bm, seq_of(content((2, 96)), i=1))  # 6 blocks: exactly the empty ones
    assert bm.evicted_blocks == 0
    assert prefill(bm, seq_of(content((1, 64)), i=2)) == 48


# ----------------------------------------------------------------------------- offload tier


def offload_manager(num_blocks: int, tier_blocks: int | None) -> PrefixCachingBlockManager:
    link = HostLink(bandwidth=32e9, latency_s=5e-6, block_bytes=2.0**20, devices=1)
    tier = None if tier_blocks is None else OffloadTier(tier_blocks, TransferLedger(link))
    return PrefixCachingBlockManager(num_blocks, BS, tier)


@pytest.mark.parametrize("with_tier", [False, True])
def test_offload_tier_keeps_evicted_blocks_and_loads_them_back(with_tier: bool) -> None:
    bm = offload_manager(8, 16 if with_tier else None)
    a = seq_of(content((1, 64)), i=0)
    prefill(bm, a)
    bm.free(a)
    b = seq_of(content((2, 128)), i=1)
    prefill(bm, b)  # 8 blocks: all of a's cached blocks are evicted
    assert bm.evicted_blocks == 4
    assert bm.take_transfer_seconds() == 0.0, "stores are asynchronous: never charged"
    bm.free(b)
    c = seq_of(content((1, 64)), i=2)
    hit = bm.lookup(c)
    if not with_tier:
        assert hit.tokens == 0
        return
    assert bm.offload is not None and len(bm.offload) == 4
    assert hit.tokens == 48 and hit.blocks == [-1, -1, -1]
    prefill(bm, c)
    assert bm.offload.ledger.blocks_to_device == 3
    assert bm.take_transfer_seconds() == pytest.approx(5e-6 + 3 * 2**20 / 32e9)
    # The loaded blocks hold a's content on the device again: the next request shares them.
    d_hit = bm.lookup(seq_of(content((1, 64)), i=3))
    assert d_hit.blocks == c.blocks[:3]


def test_offload_tier_is_lru_and_bounded() -> None:
    bm = offload_manager(4, 2)
    for i, cid in enumerate((1, 2, 3)):
        s = seq_of(content((cid, 64)), i=i)
        prefill(bm, s)
        bm.free(s)
    assert bm.offload is not None and len(bm.offload) == 2
    assert bm.lookup(seq_of(content((1, 64)), i=9)).tokens == 0  # gone from both tiers
    # Prompt 2's first two blocks were evicted last (tail first), so they are the ones kept.
    assert bm.lookup(seq_of(content((2, 64)), i=9)).tokens == 32


# ----------------------------------------------------------------------------- end to end


def shared_prompt_config(caching: bool, *extra: str) -> Any:
    return load_config(
        None,
        [
            f"scheduler.enable_prefix_caching={str(caching).lower()}",
            "workload.num_requests=40",
            "workload.arrival={process: constant, rate: 4}",
            "workload.prefix={num_system_prompts: 1, system_prompt_len: 1024}",
            "workload.input_len={dist: uniform, min: 20, max: 300}",
            "workload.output_len={dist: uniform, min: 10, max: 60}",
            *extra,
        ],
    )


def test_shared_system_prompt_hits_and_lowers_ttft() -> None:
    off = simulate(shared_prompt_config(False)).summary
    on_result = simulate(shared_prompt_config(True))
    on = on_result.summary
    n = on["requests_completed"]
    assert n == off["requests_completed"] == 40
    # Every request but the first finds the 1,024-token prompt (64 blocks) in the cache.
    shared_tokens = n * 1024
    assert on["cached_prompt_tokens"] >= (n - 1) / n * shared_tokens
    first = min(on_result.metrics.records, key=lambda r: r.arrival_s)
    assert first.cached_tokens == 0
    assert on["prefix_cache_hit_rate"] == on["cached_prompt_tokens"] / on["input_tokens"]
    assert off["prefix_cache_hit_rate"] is None and off["cached_prompt_tokens"] == 0
    assert on["ttft_s"]["mean"] < off["ttft_s"]["mean"]
    # Cached tokens skip compute: the prefill work shrinks by exactly what was found.
    assert (
        on["prefill_tokens_computed"] == off["prefill_tokens_computed"] - on["cached_prompt_tokens"]
    )


def test_offload_tier_end_to_end_loads_instead_of_recomputing() -> None:
    """Two system prompts alternate through a cache that holds about one: the tier saves them."""
    extra = [
        "workload.prefix={num_system_prompts: 2, system_prompt_len: 1024}",
        "workload.num_requests=30",
    ]
    with kv_run(num_blocks=100):
        plain = simulate(shared_prompt_config(True, *extra)).summary
    tier = "scheduler.kv_offload={capacity_gib: 4}"
    with kv_run(num_blocks=100) as log:
        result = simulate(shared_prompt_config(True, *extra, tier))
    offload = result.summary
    assert plain["prefix_cache_evicted_blocks"] > 0
    assert offload["kv_offload_loaded_blocks"] > 0
    assert offload["cached_prompt_tokens"] > plain["cached_prompt_tokens"]
    block_bytes = result.memory.kv_bytes_per_token * 16
    assert offload["kv_offload_loaded_bytes"] == offload["kv_offload_loaded_blocks"] * block_bytes
    assert offload["host_transfer_time_s"] > 0
    assert log.charged_transfer_s == pytest.approx(offload["host_transfer_time_s"], rel=1e-9)


def test_offload_config_errors() -> None:
    with pytest.raises(ConfigError, match="enable_prefix_caching"):
        load_config(None, ["scheduler.kv_offload={capacity_gib: 4}"])
    with pytest.raises(ConfigError, match=r"did you mean 'scheduler\.kv_offload\.capacity_gib'"):
        load_config(None, ["scheduler.kv_offload={capacity_gb: 4}"])
    cfg = load_config(
        None,
        ["scheduler.enable_prefix_caching=true", "scheduler.kv_offload={capacity_gib: 1.0e-6}"],
    )
    with pytest.raises(ConfigError, match=r"kv_offload.capacity_gib=1e-06 GiB holds no KV block"):
        simulate(cfg)


# ----------------------------------------------------------------------------- clusters


def shared_prefix_requests(n: int, gap: float) -> list[RequestSpec]:
    """``n`` requests: a 512-token shared prompt and 100 tokens of their own."""
    return [RequestSpec(i, i * gap, 612, 20, content((0, 512), (1000 + i, 100))) for i in range(n)]


def test_disaggregated_prefill_pool_caches_and_decode_pool_keeps_the_handed_off_kv() -> None:
    pd = "cluster.pools=[{role: prefill, count: 1}, {role: decode, count: 2}]"
    cfg = load_config(None, ["model=llama-3.2-1b", pd, "scheduler.enable_prefix_caching=true"])
    specs = shared_prefix_requests(30, gap=0.05)
    result = simulate(cfg, requests=specs)
    s = result.summary
    assert s["requests_completed"] == 30
    rows = {r["pool"]: r for r in s["instances"] if r["pool"] == "decode"}
    assert rows, "a decode pool ran"
    # The decode pool computes no prompt token: it starts from the transferred KV, not from
    # its own (empty) prefix cache, and that hand-off is not counted as a cache hit.
    assert sum(r["prefill_tokens"] for r in s["instances"] if r["pool"] == "decode") == 0
    assert s["cached_prompt_tokens"] == 29 * 512
    prefill_pool = sum(r["prefill_tokens"] for r in s["instances"] if r["pool"] == "prefill")
    assert prefill_pool == 30 * 612 - 29 * 512


def test_pipeline_parallel_engines_each_cache_and_swap() -> None:
    cfg = load_config(
        None,
        [
            "model=llama-3.2-1b",
            "cluster.pipeline_parallel=2",
            "scheduler.enable_prefix_caching=true",
            "scheduler.preemption=swap",
        ],
    )
    specs = shared_prefix_requests(24, gap=0.0)
    plan = simulation_plan(cfg)
    with kv_run(num_blocks=2 * 60):  # 60 blocks per virtual engine: swapping is certain
        result = simulate(cfg, requests=specs)
    s = result.summary
    assert s["requests_completed"] == 24
    assert s["swapped_out_blocks"] > 0 and s["cached_prompt_tokens"] > 0
    # Every device (2 stages × 1) moves its own shard of each block.
    assert s["swapped_out_bytes"] == s["swapped_out_blocks"] * plan.kv_bytes_per_token * 16 * 2


def simulation_plan(cfg: Any) -> Any:
    from llmservingsim.scenario import resolve

    return resolve(cfg).memory


def test_cli_reports_the_hit_rate(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from llmservingsim.cli import app

    args = [
        "run",
        "--set",
        "scheduler.enable_prefix_caching=true",
        "--set",
        "workload.num_requests=20",
        "--set",
        "workload.prefix={system_prompt_len: 256}",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "prefix cache" in result.output and "hit rate" in result.output
