"""Speculative decoding: acceptance statistics, TPOT gain at batch 1 and its loss under load,
KV slots of rejected drafts, memory of the draft, and one-line errors for bad settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import assert_one_line_error
from kv_helpers import kv_run
from llmservingsim.build import build_cluster
from llmservingsim.config import SpeculativeConfig, load_config
from llmservingsim.engine import Engine, EngineHooks
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.perf.speculative import Proposer
from llmservingsim.scenario import resolve
from llmservingsim.sequence import Sequence
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.prefix_cache import PrefixCachingBlockManager
from llmservingsim.serving.speculative import Speculator, expected_tokens_per_step
from llmservingsim.simulation import load_requests, simulate
from llmservingsim.workload.request_spec import RequestSpec


def decode_run(extra: list[str], *, n: int, rate: str, output: int = 256) -> dict[str, Any]:
    base = [
        "model=llama-3.1-8b",
        "hardware=h100-sxm",
        f"workload.num_requests={n}",
        "workload.arrival.process=constant",
        f"workload.arrival.rate={rate}",
        "workload.input_len={dist: fixed, value: 512}",
        f"workload.output_len={{dist: fixed, value: {output}}}",
    ]
    return simulate(load_config(None, base + extra)).summary


def tpot(summary: dict[str, Any]) -> float:
    return float(summary["tpot_s"]["mean"])


DRAFT = ["speculative.method=draft", "speculative.draft_model=llama-3.2-1b"]


@pytest.mark.parametrize("alpha", [0.3, 0.7, 0.9])
def test_tokens_per_step_match_the_closed_form(alpha: float) -> None:
    # Long answers, so the last steps (which propose fewer tokens) barely count.
    extra = ["speculative.method=ngram", f"speculative.acceptance_rate={alpha}"]
    summary = decode_run(extra, n=4, rate="1", output=6000)
    expected = expected_tokens_per_step(alpha, 4)
    assert summary["spec_tokens_per_step"] == pytest.approx(expected, rel=0.02)
    # accepted / proposed: the accepted drafts per step over k
    assert summary["spec_acceptance_rate"] == pytest.approx((expected - 1) / 4, rel=0.03)


def test_per_position_rates() -> None:
    rates = [0.9, 0.6, 0.3]
    cfg = SpeculativeConfig(method="ngram", num_speculative_tokens=3, acceptance_rate=rates)
    spec = Speculator(cfg, Proposer(), seed="0")
    steps = 40_000
    emitted = sum(1 + spec.accept(3) for _ in range(steps))
    expected = 1 + 0.9 + 0.9 * 0.6 + 0.9 * 0.6 * 0.3
    assert emitted / steps == pytest.approx(expected, rel=0.02)


def test_acceptance_never_exceeds_the_proposal() -> None:
    spec = Speculator(SpeculativeConfig(method="ngram", acceptance_rate=1.0), Proposer(), "1")
    assert [spec.accept(k) for k in range(5)] == [0, 1, 2, 3, 4]
    spec = Speculator(SpeculativeConfig(method="ngram", acceptance_rate=0.0), Proposer(), "1")
    assert [spec.accept(k) for k in range(5)] == [0] * 5


def test_batch1_draft_speedup_and_slowdown() -> None:
    base = decode_run([], n=6, rate="0.5")
    assert base["max_batch_size"] == 1
    good = decode_run([*DRAFT, "speculative.acceptance_rate=0.8"], n=6, rate="0.5")
    bad = decode_run([*DRAFT, "speculative.acceptance_rate=0.05"], n=6, rate="0.5")
    speedup = tpot(base) / tpot(good)
    assert 1.4 <= speedup <= 3.0
    assert tpot(bad) > tpot(base)
    # Every request still emits exactly its answer.
    assert good["output_tokens"] == base["output_tokens"] == 6 * 256
    assert good["spec_draft_time_s"] > 0


def test_gain_shrinks_at_batch_256() -> None:
    extra = [*DRAFT, "speculative.acceptance_rate=0.8"]
    gain_1 = tpot(decode_run([], n=4, rate="0.5")) / tpot(decode_run(extra, n=4, rate="0.5"))
    big = ["scheduler.max_num_seqs=256", "scheduler.max_num_batched_tokens=8192"]
    base_256 = decode_run(big, n=256, rate=".inf", output=128)
    spec_256 = decode_run(big + extra, n=256, rate=".inf", output=128)
    assert base_256["max_batch_size"] == 256
    assert tpot(base_256) / tpot(spec_256) < gain_1


def test_disable_by_batch_size_switches_speculation_off() -> None:
    extra = [*DRAFT, "speculative.acceptance_rate=0.8", "speculative.disable_by_batch_size=8"]
    summary = decode_run(extra, n=32, rate=".inf", output=64)
    assert summary["spec_disabled_steps"] > 0
    assert summary["output_tokens"] == 32 * 64


def test_ngram_costs_no_draft_time_and_output_is_exact() -> None:
    summary = decode_run(["speculative.method=ngram"], n=8, rate="4", output=100)
    assert summary["spec_draft_time_s"] == 0.0
    assert summary["output_tokens"] == 800


@pytest.mark.parametrize("manager", ["plain", "prefix"])
def test_rejected_slots_go_back_to_the_pool(manager: str) -> None:
    blocks = BlockManager(64, 16) if manager == "plain" else PrefixCachingBlockManager(64, 16)
    seq = Sequence(RequestSpec(0, 0.0, input_len=30, output_len=50))
    blocks.allocate(seq, 30)
    seq.num_computed = 30
    blocks.allocate(seq, 1 + 4)  # verify pass: tokens 31..35 → 3 blocks
    assert len(seq.blocks) == 3
    seq.num_computed = 31  # nothing accepted: only the last token's KV is kept
    blocks.release_tail(seq)
    assert len(seq.blocks) == 2
    assert blocks.num_free == 62
    blocks.free(seq)
    assert blocks.num_free == 64


def test_draft_memory_comes_off_the_kv_pool() -> None:
    base = resolve(load_config(None, [])).memory
    draft = resolve(load_config(None, DRAFT)).memory
    head = resolve(load_config(None, ["speculative.method=eagle"])).memory
    ngram = resolve(load_config(None, ["speculative.method=ngram"])).memory
    assert 2.0 < draft.draft_gib < 2.6  # Llama-3.2-1B in bf16
    assert draft.kv_cache_gib == pytest.approx(base.kv_cache_gib - draft.draft_gib)
    assert draft.kv_bytes_per_token > base.kv_bytes_per_token  # the draft caches too
    assert 0.3 < head.draft_gib < 0.5  # one Llama-3.1-8B decoder layer
    assert ngram == base


BAD = [
    (["speculative.acceptance_rate=1.5"], "outside [0, 1]"),
    (["speculative.acceptance_rate=[0.5, 0.5]"], "one rate per position"),
    (["speculative.num_speculative_tokens=0"], "num_speculative_tokens"),
    (["speculative.method=draft", "speculative.draft_model=llama-9b"], "speculative.draft_model"),
    (["speculative.method=draft", "speculative.draft_model=opt-13b"], "vocabulary"),
    (["speculative.method=medusa"], "speculative.method"),
    (["speculative.method=ngram", "cluster.pipeline_parallel=2"], "not yet supported"),
]


@pytest.mark.parametrize(("sets", "message"), BAD)
def test_bad_speculative_settings_are_one_line_errors(
    sets: list[str], message: str, tmp_path: Path
) -> None:
    assert_one_line_error(sets, message, tmp_path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alpha=st.floats(0.0, 1.0),
    k=st.integers(1, 6),
    policy=st.sampled_from(["vllm", "no_evict", "orca"]),
    preemption=st.sampled_from(["recompute", "swap"]),
    prefix=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_speculation_keeps_kv_and_token_accounting_exact(
    alpha: float, k: int, policy: str, preemption: str, prefix: bool, seed: int
) -> None:
    """A cache small enough to preempt: every request still emits exactly its answer, no step
    exceeds its budget, and every block is back in the pool at the end."""
    cfg = load_config(
        None,
        [
            "speculative.method=ngram",
            f"speculative.acceptance_rate={alpha}",
            f"speculative.num_speculative_tokens={k}",
            f"scheduler.policy={policy}",
            f"scheduler.preemption={preemption}",
            f"scheduler.enable_prefix_caching={str(prefix).lower()}",
            "scheduler.max_num_batched_tokens=96",
            "scheduler.max_num_seqs=8",
            "workload.num_requests=24",
            "workload.arrival.rate=200",
            "workload.input_len={dist: uniform, min: 8, max: 120}",
            "workload.output_len={dist: uniform, min: 1, max: 80}",
            "workload.prefix={num_system_prompts: 2, system_prompt_len: 32}",
            f"seed={seed}",
        ],
    )
    budgets: list[int] = []

    class Spy(EngineHooks):
        every_step = True

        def after_start(
            self, instance: Instance, now: float, started: tuple[float, int] | None
        ) -> None:
            if started is None:
                return
            entries = instance.virtual_engines[started[1]].in_flight
            if len(entries) > 1:  # orca runs a prompt longer than the budget alone
                budgets.append(sum(n for _, n in entries))
            assert all(len(s.blocks) * 16 >= s.num_computed + n for s, n in entries)

        def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
            for seq in instance.virtual_engines[engine_index].scheduler.running:
                # Rejected drafts' slots are back in the pool: blocks cover the computed tokens.
                assert len(seq.blocks) == -(-seq.num_computed // 16)

    with kv_run(num_blocks=40):
        metrics = MetricsCollector()
        cluster = build_cluster(resolve(cfg), metrics)
        requests = load_requests(cfg)
        Engine(cluster, hooks=Spy()).run(requests)
    assert max(budgets, default=0) <= 96
    lengths = {r.id: r.output_len for r in requests}
    for record in metrics.records:
        if record.status == "finished":
            assert record.output_tokens == lengths[record.id]
    assert len(metrics.records) == len(requests)
    for instance in cluster.instances:
        assert instance.num_free_blocks == instance.num_blocks
