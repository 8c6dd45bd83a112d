"""Invariants every batch scheduler keeps, checked step by step.

Each policy in ``SCHEDULERS`` is driven two ways: directly (a BlockManager + scheduler fed
Sequences, each step applied the way ``Instance.end_step`` applies it) and through a full
``simulate`` run with a spy on the instance's steps. At every step:

* the tokens of the step fit ``max_num_batched_tokens`` (orca/static may exceed it only in a
  step that runs exactly one sequence: an over-long prompt alone, documented behaviour);
* at most ``max_num_seqs`` sequences run;
* KV blocks in use never exceed the cache and equal the blocks held by live sequences
  (no leak, no double free, no block owned twice);
* every scheduled sequence holds the KV blocks its new tokens need.

At the end every request has finished with exactly its ``output_len`` tokens (preempted
ones too) and every block is free again.

With prefix caching blocks may be shared: a block's reference count equals the number of
running sequences holding it, free and cached blocks are disjoint from held ones, every node a
sequence adopts names exactly that sequence's token prefix (checked against a ledger of
contents built from crafted, hash-colliding ids), and at the end every block is free or
cached. With swap the host space never exceeds its capacity and holds exactly the blocks of
swapped-out requests. Tokens are conserved: the tokens computed over the run equal each
request's input + output − 1, plus what preemption dropped, minus what admissions found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmservingsim.scenario as scenario
import llmservingsim.simulation as simulation
from llmservingsim.config import SchedulerConfig, load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.perf.host_link import HostLink, TransferLedger
from llmservingsim.sequence import Sequence, Status
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.kv_offload import OffloadTier
from llmservingsim.serving.prefix_cache import NO_NODE, PrefixCachingBlockManager, block_keys
from llmservingsim.serving.schedulers import SCHEDULERS, Scheduler
from llmservingsim.serving.schedulers.base import ScheduledEntry
from llmservingsim.serving.swap import SwapSpace
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec, TokenContent

POLICIES = SCHEDULERS.names()
# Policies that run a prompt longer than the whole step budget alone in its own step.
OVERSIZE_ALONE = {"orca", "static"}
MAX_STEPS = 200_000


def test_every_builtin_policy_is_covered() -> None:
    for name in ("vllm", "orca", "static", "no_evict", "priority"):
        assert name in POLICIES
        SCHEDULERS.get(name)


# ----------------------------------------------------------------------------- checks


def check_blocks(sched: Scheduler) -> None:
    """Block accounting: used ≤ capacity, used = Σ blocks of live sequences, no duplicates."""
    if isinstance(sched.blocks, PrefixCachingBlockManager):
        check_shared_blocks(sched, sched.blocks)
        check_swap(sched)
        return
    bm = sched.blocks
    free = list(bm.free_blocks)
    assert len(free) == len(set(free)), "a block is on the free list twice (double free)"
    assert all(0 <= b < bm.num_blocks for b in free)
    assert 0 <= bm.num_used <= bm.num_blocks
    owned: set[int] = set()
    held = 0
    for seq in sched.running:
        owned.update(seq.blocks)
        held += len(seq.blocks)
    assert held == len(owned), "a KV block is owned by two sequences (or twice by one)"
    for seq in sched.waiting:
        assert not seq.blocks, f"waiting request {seq.id} still holds KV blocks"
    assert not owned & set(free), "a block is both owned and free"
    assert bm.num_used == held, f"block leak: {bm.num_used} used, live sequences hold {held}"
    check_swap(sched)


def check_shared_blocks(sched: Scheduler, bm: PrefixCachingBlockManager) -> None:
    """Prefix cache: refcounts = holders, free/cached/held partition the cache, nodes agree."""
    free = list(bm.free_blocks)
    cached = list(bm.cached)
    assert len(free) == len(set(free)), "a block is on the free list twice (double free)"
    assert not set(free) & set(cached), "a block is both empty-free and cached"
    holders: dict[int, int] = {}
    for seq in sched.running:
        assert len(set(seq.blocks)) == len(seq.blocks), f"request {seq.id} holds a block twice"
        for block in seq.blocks:
            holders[block] = holders.get(block, 0) + 1
        assert len(seq.nodes) <= len(seq.blocks)
        for block, node in zip(seq.blocks, seq.nodes, strict=False):
            assert bm.block_node[block] == node, "a held block does not hold its node"
    for seq in sched.waiting:
        assert not seq.blocks, f"waiting request {seq.id} still holds KV blocks"
        assert not seq.nodes
    for block in range(bm.num_blocks):
        assert bm.ref_count[block] == holders.get(block, 0), (
            f"block {block}: refcount {bm.ref_count[block]}, held by {holders.get(block, 0)}"
        )
    assert len(free) + len(cached) + len(holders) == bm.num_blocks, "a block is lost"
    assert set(free) | set(cached) | set(holders) == set(range(bm.num_blocks))
    assert bm.num_used == len(holders) <= bm.num_blocks
    assert all(bm.block_node[b] == NO_NODE for b in free), "an empty block claims content"
    assert all(bm.block_node[b] != NO_NODE for b in cached), "a cached block has no content"
    for node, (key, blocks) in bm.node_info.items():
        assert bm.node_of[key] == node
        assert all(bm.block_node[b] == node for b in blocks)
        assert blocks or (bm.offload is not None and node in bm.offload), "a node held nowhere"
    named = [b for b in range(bm.num_blocks) if bm.block_node[b] != NO_NODE]
    assert sum(len(blocks) for _, blocks in bm.node_info.values()) == len(named)
    assert len(bm.node_of) == len(bm.node_info)
    if bm.offload is not None:
        assert len(bm.offload) <= bm.offload.capacity_blocks
        assert all(n in bm.node_info for n in bm.offload.resident)


def check_swap(sched: Scheduler) -> None:
    swap = sched.swap
    if swap is None:
        return
    parked = sum(seq.swapped_blocks for seq in sched.waiting)
    assert swap.used_blocks == parked <= swap.capacity_blocks
    assert all(not seq.swapped_blocks for seq in sched.running)


def check_step(sched: Scheduler, entries: list[ScheduledEntry], policy: str) -> None:
    cfg = sched.cfg
    bm = sched.blocks
    seqs = [seq for seq, _ in entries]
    assert len({id(s) for s in seqs}) == len(seqs), "a sequence is scheduled twice in a step"
    assert len(entries) <= cfg.max_num_seqs
    assert len(sched.running) <= cfg.max_num_seqs
    tokens = sum(n for _, n in entries)
    if tokens > cfg.max_num_batched_tokens:
        whole = policy in OVERSIZE_ALONE or not sched.chunked_prefill
        assert whole and len(entries) == 1, (
            f"{policy}: {tokens} tokens in a step of {len(entries)} sequences "
            f"> max_num_batched_tokens={cfg.max_num_batched_tokens}"
        )
    running = {id(s) for s in sched.running}
    for seq, num_new in entries:
        assert seq.status is Status.RUNNING
        assert id(seq) in running
        assert 1 <= num_new <= seq.remaining
        if not sched.chunked_prefill:  # whole prompts: what is left of one, all at once
            assert num_new == seq.num_tokens - seq.num_computed, f"request {seq.id} chunked"
        assert len(seq.blocks) >= bm.blocks_needed(seq.num_computed + num_new), (
            f"request {seq.id} computes {num_new} tokens without the KV blocks for them"
        )
    check_blocks(sched)


def apply_step(sched: Scheduler, entries: list[ScheduledEntry]) -> list[Sequence]:
    """What Instance.end_step does; returns the sequences that finished."""
    finished = []
    sched.take_transfer_seconds()
    for seq, num_new in entries:
        seq.num_computed += num_new
        if seq.num_computed == seq.num_tokens:
            seq.generated += 1
            if seq.is_done:
                seq.status = Status.FINISHED
                finished.append(seq)
    sched.step_done(0.0, finished)
    check_blocks(sched)
    return finished


# ----------------------------------------------------------------------------- direct driving


@dataclasses.dataclass
class DirectRun:
    sched: Scheduler
    seqs: list[Sequence]
    failed: list[Sequence]
    steps: int
    max_seqs_in_step: int
    tokens: int = 0  # tokens computed over the run
    lost: int = 0  # computed tokens dropped by (recompute) preemption
    found: int = 0  # tokens admissions started with (cache hits; swapped-out tokens back)


@dataclasses.dataclass(frozen=True)
class KvOptions:
    """How the KV cache of a directly driven scheduler is set up (default: plain blocks)."""

    prefix_caching: bool = False
    swap_blocks: int | None = None  # host swap space in blocks; None = recompute preemption
    offload_blocks: int | None = None  # offload tier in blocks (needs prefix caching)


LINK = HostLink(bandwidth=1e9, latency_s=1e-5, block_bytes=1000.0, devices=1)


def make_scheduler(
    policy: str,
    num_blocks: int,
    block_size: int,
    max_num_seqs: int,
    max_batched: int,
    kv: KvOptions = KvOptions(),
    chunked: bool | None = None,
) -> Scheduler:
    cfg = SchedulerConfig(
        policy=policy,
        enable_chunked_prefill=chunked,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_batched,
        block_size=block_size,
        enable_prefix_caching=kv.prefix_caching,
        preemption="swap" if kv.swap_blocks is not None else "recompute",
    )
    blocks: BlockManager = BlockManager(num_blocks, block_size)
    if kv.prefix_caching:
        offload = None
        if kv.offload_blocks is not None:
            offload = OffloadTier(kv.offload_blocks, TransferLedger(LINK))
        blocks = PrefixCachingBlockManager(num_blocks, block_size, offload)
    swap = None
    if kv.swap_blocks is not None:
        swap = SwapSpace(kv.swap_blocks, TransferLedger(LINK))
    return SCHEDULERS.get(policy)(cfg, blocks, swap)


class ContentLedger:
    """What each prefix-cache node must stand for, learnt from the sequences that adopt it."""

    def __init__(self) -> None:
        self.truth: dict[int, tuple[Any, ...]] = {}

    def check(self, sched: Scheduler) -> None:
        for seq in sched.running:
            content = seq.spec.content
            if not seq.nodes:
                continue
            assert content is not None, "a request without content adopted cached blocks"
            keys = block_keys(content, sched.blocks.block_size)
            for i, node in enumerate(seq.nodes):
                prefix = (content.namespace, *keys[: i + 1])
                known = self.truth.setdefault(node, prefix)
                assert known == prefix, (
                    f"request {seq.id} reuses block {i} of another prefix: {known} != {prefix}"
                )


def drive(
    policy: str,
    specs: list[RequestSpec],
    *,
    num_blocks: int,
    block_size: int,
    max_num_seqs: int,
    max_batched: int,
    kv: KvOptions = KvOptions(),
    chunked: bool | None = None,
) -> DirectRun:
    """Run the scheduler to completion; ``arrival_s`` is the step index a request arrives at."""
    sched = make_scheduler(policy, num_blocks, block_size, max_num_seqs, max_batched, kv, chunked)
    pending = sorted(specs, key=lambda s: s.arrival_s)
    seqs: list[Sequence] = []
    failed: list[Sequence] = []
    step = 0
    nxt = 0
    max_in_step = 0
    ledger = ContentLedger()
    run = DirectRun(sched, seqs, failed, 0, 0)
    for _ in range(MAX_STEPS):
        while nxt < len(pending) and pending[nxt].arrival_s <= step:
            seq = Sequence(pending[nxt])
            nxt += 1
            # Instance.add: a request that could never fit the cache fails up front.
            if sched.max_blocks_needed(seq) > num_blocks:
                seq.status = Status.FAILED
                failed.append(seq)
            else:
                sched.add(seq)
                seqs.append(seq)
        if not sched.has_work():
            if nxt == len(pending):
                break
            step = max(step + 1, int(pending[nxt].arrival_s))
            continue
        before = {id(s): s.num_computed for s in (*sched.running, *sched.waiting)}
        was_running = {id(s) for s in sched.running}
        entries = sched.schedule()
        for seq in sched.waiting:
            if id(seq) in was_running:  # preempted this step
                run.lost += before[id(seq)] - seq.num_computed
        for seq in sched.running:
            if id(seq) not in was_running:  # admitted this step
                run.found += seq.num_computed - before[id(seq)]
        check_step(sched, entries, policy)
        ledger.check(sched)
        assert entries, f"{policy}: scheduler has work but scheduled nothing (stuck)"
        max_in_step = max(max_in_step, len(entries))
        run.tokens += sum(n for _, n in entries)
        apply_step(sched, entries)
        ledger.check(sched)
        step += 1
    else:
        pytest.fail(f"{policy}: not done after {MAX_STEPS} steps")
    run.steps = step
    run.max_seqs_in_step = max_in_step
    return run


def check_done(run: DirectRun) -> None:
    sched = run.sched
    assert not sched.has_work()
    for seq in run.seqs:
        assert seq.status is Status.FINISHED, f"request {seq.id} never finished"
        assert seq.generated == seq.spec.output_len
        assert not seq.blocks
    bm = sched.blocks
    assert bm.num_free == bm.num_blocks, "blocks leaked after every request finished"
    if isinstance(bm, PrefixCachingBlockManager):
        assert sorted([*bm.free_blocks, *bm.cached]) == list(range(bm.num_blocks))
        assert not any(bm.ref_count)
    else:
        assert sorted(bm.free_blocks) == list(range(bm.num_blocks))
    if sched.swap is not None:
        assert sched.swap.used_blocks == 0
        ledger = sched.swap.ledger
        assert ledger.blocks_to_host == ledger.blocks_to_device, "a swapped block never came back"
    # Tokens are conserved: what ran = every request's KV + what preemption dropped − found.
    lifetime = sum(s.spec.input_len + s.spec.output_len - 1 for s in run.seqs)
    assert run.tokens == lifetime + run.lost - run.found
    assert 0 <= sched.recomputed_tokens <= run.lost
    if not isinstance(bm, PrefixCachingBlockManager):
        assert sched.recomputed_tokens == run.lost - run.found


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 8))
    gaps = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    specs = []
    t = 0
    for i, gap in enumerate(gaps):
        t += gap
        specs.append(
            RequestSpec(
                id=i,
                arrival_s=float(t),
                input_len=draw(st.integers(1, 600)),
                output_len=draw(st.integers(1, 200)),
                priority=draw(st.integers(0, 2)),  # read by the priority policy only
            )
        )
    block_size = draw(st.sampled_from([4, 8, 16, 32]))
    biggest = max(-(-(s.input_len + s.output_len - 1) // block_size) for s in specs)
    # From "only the biggest request fits" (heavy preemption) to roomy.
    num_blocks = biggest + draw(st.integers(0, 2 * biggest))
    return {
        "specs": specs,
        "block_size": block_size,
        "num_blocks": num_blocks,
        "max_num_seqs": draw(st.integers(1, 8)),
        "max_batched": draw(st.integers(16, 1024)),
    }


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=150, deadline=None)
@given(sc=scenarios())
def test_direct_invariants(policy: str, sc: dict[str, Any]) -> None:
    run = drive(
        policy,
        sc["specs"],
        num_blocks=sc["num_blocks"],
        block_size=sc["block_size"],
        max_num_seqs=sc["max_num_seqs"],
        max_batched=sc["max_batched"],
    )
    assert not run.failed  # the cache holds the biggest request by construction
    check_done(run)
    if policy == "static":
        assert run.sched.preemptions == 0, "static batching reserves KV up front"


@pytest.mark.parametrize("policy", ["vllm", "no_evict", "priority"])
@settings(max_examples=60, deadline=None)
@given(sc=scenarios())
def test_direct_invariants_with_whole_prompts(policy: str, sc: dict[str, Any]) -> None:
    """scheduler.enable_chunked_prefill: false (TensorRT-LLM's default): the same invariants,
    every request finishes, and no prompt is ever split over steps (check_step)."""
    run = drive(
        policy,
        sc["specs"],
        num_blocks=sc["num_blocks"],
        block_size=sc["block_size"],
        max_num_seqs=sc["max_num_seqs"],
        max_batched=sc["max_batched"],
        chunked=False,
    )
    assert not run.failed
    check_done(run)
    if policy == "no_evict":
        assert run.sched.preemptions == 0


# Content ids chosen to collide under Python's int hash (hash(2**61 - 1 + k) == hash(k)):
# a cache keyed by hashes alone would hand one prefix's blocks to another.
CRAFTED_IDS = [0, 1, 2, 2**61 - 1, 2**61, 2**61 + 1]


@st.composite
def content_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Requests whose prompts are runs of a few (colliding) ids: much partial sharing."""
    n = draw(st.integers(1, 8))
    specs = []
    t = 0
    for i in range(n):
        t += draw(st.sampled_from([0, 0, 1, 3, 40]))
        # A long first run from two colliding ids: many requests share (or almost share) it.
        first = (draw(st.sampled_from(CRAFTED_IDS[::3])), draw(st.sampled_from([8, 16, 40])))
        rest = [
            (draw(st.sampled_from(CRAFTED_IDS)), draw(st.sampled_from([1, 3, 8, 16, 40])))
            for _ in range(draw(st.integers(0, 4)))
        ]
        runs = (first, *rest)
        covered = sum(c for _, c in runs)
        input_len = draw(st.integers(1, covered))  # content may run into the output
        output_len = draw(st.integers(1, 60))
        content = TokenContent(draw(st.sampled_from(["a", "a", "a", "b"])), runs)
        if draw(st.integers(0, 3)) == 0:
            content = None  # a request without content never shares
        priority = draw(st.integers(0, 2))  # read by the priority policy only
        specs.append(RequestSpec(i, float(t), input_len, output_len, content, priority=priority))
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    biggest = max(-(-(s.input_len + s.output_len - 1) // block_size) for s in specs)
    swap = draw(st.sampled_from([None, 1, 4, 1000]))
    offload = draw(st.sampled_from([None, 1, 3, 1000]))
    return {
        "specs": specs,
        "block_size": block_size,
        "num_blocks": biggest + draw(st.integers(0, biggest)),
        "max_num_seqs": draw(st.integers(1, 6)),
        "max_batched": draw(st.integers(8, 256)),
        "kv": KvOptions(
            prefix_caching=draw(st.booleans()) or offload is not None,
            swap_blocks=swap,
            offload_blocks=offload,
        ),
    }


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=80, deadline=None)
@given(sc=content_scenarios())
def test_direct_invariants_with_prefix_caching_and_swap(policy: str, sc: dict[str, Any]) -> None:
    run = drive(
        policy,
        sc["specs"],
        num_blocks=sc["num_blocks"],
        block_size=sc["block_size"],
        max_num_seqs=sc["max_num_seqs"],
        max_batched=sc["max_batched"],
        kv=sc["kv"],
    )
    assert not run.failed
    check_done(run)
    for seq in run.seqs:
        bound = seq.spec.input_len - 1 if sc["kv"].prefix_caching else 0
        assert 0 <= seq.cached_tokens <= bound, "the last prompt token is always computed"


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=40, deadline=None)
@given(sc=scenarios(), extra=st.integers(1, 50))
def test_direct_too_big_requests_fail_and_others_finish(
    policy: str, sc: dict[str, Any], extra: int
) -> None:
    """A cache smaller than some requests: those fail at arrival, the rest still finish."""
    specs = sc["specs"]
    bs = sc["block_size"]
    smallest = min(-(-(s.input_len + s.output_len - 1) // bs) for s in specs)
    run = drive(
        policy,
        specs,
        num_blocks=smallest + extra % 3,
        block_size=bs,
        max_num_seqs=sc["max_num_seqs"],
        max_batched=sc["max_batched"],
    )
    assert len(run.seqs) + len(run.failed) == len(specs)
    assert run.seqs, "the smallest request fits and must be served"
    check_done(run)


def contended_specs(n: int = 6) -> list[RequestSpec]:
    return [RequestSpec(id=i, arrival_s=0.0, input_len=100, output_len=150) for i in range(n)]


@pytest.mark.parametrize("policy", ["vllm", "orca", "priority"])
def test_direct_preemption_happens_and_preempted_requests_finish(policy: str) -> None:
    # Each request peaks at ceil(249 / 16) = 16 blocks; 6 of them need 96, the cache has 40:
    # all are admitted on their prompts (7 blocks each) and must preempt while decoding.
    run = drive(
        policy, contended_specs(), num_blocks=40, block_size=16, max_num_seqs=8, max_batched=2048
    )
    assert run.sched.preemptions > 0
    assert any(seq.preemptions > 0 for seq in run.seqs)
    assert run.max_seqs_in_step > 1
    check_done(run)


def test_direct_no_evict_never_preempts_where_vllm_must() -> None:
    # Same contention as above: 40 blocks, six requests peaking at 16 blocks each. Only two
    # lifetimes fit at once (32 of 40 blocks), so no_evict runs at most two and never preempts.
    run = drive(
        "no_evict",
        contended_specs(),
        num_blocks=40,
        block_size=16,
        max_num_seqs=8,
        max_batched=2048,
    )
    assert run.sched.preemptions == 0
    assert run.max_seqs_in_step == 2
    check_done(run)


def test_direct_static_never_preempts_and_batches_wait_for_the_last() -> None:
    specs = [
        RequestSpec(id=0, arrival_s=0.0, input_len=10, output_len=5),
        RequestSpec(id=1, arrival_s=0.0, input_len=10, output_len=50),
        RequestSpec(id=2, arrival_s=0.0, input_len=10, output_len=5),
    ]
    sched = make_scheduler("static", 100, 16, max_num_seqs=2, max_batched=1024)
    seqs = [Sequence(s) for s in specs]
    for seq in seqs:
        sched.add(seq)
    steps = 0
    while seqs[1].status is not Status.FINISHED:
        entries = sched.schedule()
        check_step(sched, entries, "static")
        assert seqs[2] not in [s for s, _ in entries], "no request joins a running batch"
        apply_step(sched, entries)
        steps += 1
    assert steps == 50
    entries = sched.schedule()
    assert [s for s, _ in entries] == [seqs[2]]
    assert sched.preemptions == 0


@pytest.mark.parametrize("policy", ["orca", "static"])
def test_direct_oversized_prompt_runs_alone(policy: str) -> None:
    specs = [
        RequestSpec(id=0, arrival_s=0.0, input_len=500, output_len=3),
        RequestSpec(id=1, arrival_s=0.0, input_len=10, output_len=3),
    ]
    sched = make_scheduler(policy, 100, 16, max_num_seqs=8, max_batched=64)
    for s in specs:
        sched.add(Sequence(s))
    entries = sched.schedule()
    assert [(s.id, n) for s, n in entries] == [(0, 500)]
    check_step(sched, entries, policy)


def test_direct_vllm_chunks_prompts_to_the_budget() -> None:
    sched = make_scheduler("vllm", 100, 16, max_num_seqs=8, max_batched=64)
    seq = Sequence(RequestSpec(id=0, arrival_s=0.0, input_len=500, output_len=3))
    sched.add(seq)
    chunks = []
    while seq.generated == 0:
        entries = sched.schedule()
        check_step(sched, entries, "vllm")
        chunks.append(entries[0][1])
        apply_step(sched, entries)
    assert chunks == [64] * 7 + [52]


def is_decoding(seq: Sequence) -> bool:
    return seq.generated > 0 and seq.num_computed + 1 == seq.num_tokens


@pytest.mark.parametrize("policy", ["vllm", "sarathi"])
@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 700), st.integers(1, 30)), min_size=2, max_size=8),
    num_blocks=st.integers(45, 120),
)
def test_no_decode_waits_behind_a_prompt_chunk(
    policy: str, lengths: list[tuple[int, int]], num_blocks: int
) -> None:
    """Sarathi-Serve's stall-free property: a step that runs a prompt chunk also runs every
    decoding request (vllm and sarathi name the same policy, see serving/schedulers/vllm.py)."""
    sched = make_scheduler(policy, num_blocks, 16, max_num_seqs=8, max_batched=32)
    seqs = [
        Sequence(RequestSpec(id=i, arrival_s=0.0, input_len=n, output_len=m))
        for i, (n, m) in enumerate(lengths)
        if -(-(n + m) // 16) <= num_blocks
    ]
    for seq in seqs:
        sched.add(seq)
    for _ in range(10_000):
        if all(seq.is_done for seq in seqs):
            break
        entries = sched.schedule()
        check_step(sched, entries, policy)
        decoding = {seq.id for seq in sched.running if is_decoding(seq)}
        scheduled = {seq.id for seq, _ in entries}
        if any(not is_decoding(seq) for seq, _ in entries):
            assert decoding <= scheduled
        apply_step(sched, entries)
    assert all(seq.is_done for seq in seqs)


# ----------------------------------------------------------------------------- via simulate


class Spy(EngineHooks):
    """Checks every step of the simulate() runs it observes."""

    every_step = True  # the spy watches every step: no fast-forward runs

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.steps = 0
        self.max_seqs_in_step = 0
        self.max_used = 0

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is None:
            return
        finish, k = started
        entries = instance.virtual_engines[k].in_flight
        assert entries
        assert finish > now
        check_step(instance.virtual_engines[k].scheduler, entries, self.policy)
        self.steps += 1
        self.max_seqs_in_step = max(self.max_seqs_in_step, len(entries))
        self.max_used = max(self.max_used, instance.scheduler.blocks.num_used)

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        check_blocks(instance.virtual_engines[engine_index].scheduler)


@contextmanager
def spying(policy: str, num_blocks: int | None) -> Iterator[Spy]:
    """Check every step of a simulate() run; optionally shrink the KV cache to ``num_blocks``."""
    spy = Spy(policy)
    plan = scenario.plan_pool_memory

    def small_plan(*args: Any) -> Any:
        real = plan(*args)
        return real if num_blocks is None else dataclasses.replace(real, num_blocks=num_blocks)

    with pytest.MonkeyPatch.context() as mp, simulation.observing(spy):
        mp.setattr(scenario, "plan_pool_memory", small_plan)
        yield spy


def sim_config(
    policy: str, max_num_seqs: int, max_batched: int, block_size: int, *extra: str
) -> Any:
    return load_config(
        None,
        [
            "model=llama-3.2-1b",
            f"scheduler.policy={policy}",
            f"scheduler.max_num_seqs={max_num_seqs}",
            f"scheduler.max_num_batched_tokens={max_batched}",
            f"scheduler.block_size={block_size}",
            # The spies watch every step: no fast-forward runs (tests/serving/test_fast_forward.py).
            "simulator.fast_forward=false",
            *extra,
        ],
    )


def check_records(result: Any, specs: list[RequestSpec], failed_ids: set[int]) -> None:
    records = {r.id: r for r in result.metrics.records}
    assert len(result.metrics.records) == len(specs), "every request gets exactly one record"
    assert set(records) == {s.id for s in specs}
    for spec in specs:
        rec = records[spec.id]
        if spec.id in failed_ids:
            assert rec.status == "failed"
            continue
        assert rec.status == "finished", f"request {spec.id}: {rec.status}"
        assert rec.output_tokens == spec.output_len
        assert rec.arrival_s < rec.first_token_s <= rec.finish_s
    summary = result.summary
    assert summary["requests_completed"] == len(specs) - len(failed_ids)
    assert summary["requests_failed"] == len(failed_ids)
    assert summary["output_tokens"] == sum(s.output_len for s in specs if s.id not in failed_ids)


@st.composite
def sim_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 10))
    specs = []
    t = 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.02, 0.1]))
        specs.append(
            RequestSpec(
                id=i,
                arrival_s=t,
                input_len=draw(st.integers(1, 600)),
                output_len=draw(st.integers(1, 200)),
                priority=draw(st.integers(0, 2)),  # read by the priority policy only
            )
        )
    block_size = draw(st.sampled_from([8, 16, 32]))
    biggest = max(-(-(s.input_len + s.output_len - 1) // block_size) for s in specs)
    return {
        "specs": specs,
        "block_size": block_size,
        "num_blocks": biggest + draw(st.integers(0, 2 * biggest)),
        "max_num_seqs": draw(st.integers(1, 8)),
        "max_batched": draw(st.integers(16, 1024)),
    }


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=60, deadline=None)
@given(sc=sim_scenarios())
def test_simulate_invariants(policy: str, sc: dict[str, Any]) -> None:
    cfg = sim_config(policy, sc["max_num_seqs"], sc["max_batched"], sc["block_size"])
    with spying(policy, sc["num_blocks"]) as spy:
        result = simulate(cfg, requests=sc["specs"])
    assert spy.max_used <= sc["num_blocks"]
    check_records(result, sc["specs"], failed_ids=set())
    assert result.summary["iterations"] == spy.steps
    assert result.summary["max_batch_size"] == spy.max_seqs_in_step
    if policy == "static":
        assert result.summary["preemptions"] == 0
    for rec in result.metrics.records:
        if rec.preemptions:
            assert rec.status == "finished"


@pytest.mark.parametrize("policy", ["vllm", "orca", "priority"])
def test_simulate_preemption_happens_and_preempted_requests_finish(policy: str) -> None:
    specs = contended_specs(8)
    cfg = sim_config(policy, max_num_seqs=8, max_batched=2048, block_size=16)
    with spying(policy, num_blocks=40) as spy:
        result = simulate(cfg, requests=specs)
    assert result.summary["preemptions"] > 0
    preempted = [r for r in result.metrics.records if r.preemptions > 0]
    assert preempted
    assert sum(r.preemptions for r in result.metrics.records) == result.summary["preemptions"]
    assert spy.max_seqs_in_step > 1
    check_records(result, specs, failed_ids=set())
    # Recompute costs extra prefill: more prefill tokens than the prompts alone.
    assert result.summary["prefill_tokens_computed"] > sum(s.input_len for s in specs)


@pytest.mark.parametrize("policy", POLICIES)
def test_simulate_mixed_failures_with_small_cache(policy: str) -> None:
    specs = [
        RequestSpec(id=0, arrival_s=0.0, input_len=100, output_len=150),
        RequestSpec(id=1, arrival_s=0.0, input_len=600, output_len=200),  # 50 blocks: fails
        RequestSpec(id=2, arrival_s=0.01, input_len=300, output_len=100),
        RequestSpec(id=3, arrival_s=0.01, input_len=20, output_len=200),
    ]
    cfg = sim_config(policy, max_num_seqs=4, max_batched=256, block_size=16)
    with spying(policy, num_blocks=30):
        result = simulate(cfg, requests=specs)
    check_records(result, specs, failed_ids={1})


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=30, deadline=None)
@given(sc=content_scenarios(), swap_blocks=st.sampled_from([1, 4, 1000]))
def test_simulate_invariants_with_prefix_caching_and_swap(
    policy: str, sc: dict[str, Any], swap_blocks: int
) -> None:
    """The same invariants through simulate(), plus the summary's KV numbers add up."""
    kv = sc["kv"]
    specs = [s.replaced(arrival_s=s.arrival_s * 0.005) for s in sc["specs"]]
    base = sim_config(policy, sc["max_num_seqs"], sc["max_batched"], sc["block_size"])
    block_gib = scenario.resolve(base).memory.kv_bytes_per_token * sc["block_size"] / 2**30
    extra = [
        f"scheduler.enable_prefix_caching={str(kv.prefix_caching).lower()}",
        "scheduler.preemption=swap",
        f"scheduler.swap_space_gib={(swap_blocks + 0.5) * block_gib}",
    ]
    if kv.offload_blocks is not None:
        extra.append(f"scheduler.kv_offload.capacity_gib={(kv.offload_blocks + 0.5) * block_gib}")
    cfg = sim_config(policy, sc["max_num_seqs"], sc["max_batched"], sc["block_size"], *extra)
    with spying(policy, sc["num_blocks"]) as spy:
        result = simulate(cfg, requests=specs)
    assert spy.max_used <= sc["num_blocks"]
    check_records(result, specs, failed_ids=set())
    summary = result.summary
    block_bytes = result.memory.kv_bytes_per_token * sc["block_size"]
    assert summary["swapped_out_blocks"] == summary["swapped_in_blocks"]
    assert summary["swapped_out_bytes"] == summary["swapped_out_blocks"] * block_bytes
    assert summary["kv_offload_loaded_bytes"] == summary["kv_offload_loaded_blocks"] * block_bytes
    moved = summary["swapped_out_blocks"] + summary["kv_offload_loaded_blocks"]
    assert (summary["host_transfer_time_s"] > 0) == (moved > 0)
    cached = sum(r.cached_tokens for r in result.metrics.records)
    assert summary["cached_prompt_tokens"] == cached
    if not kv.prefix_caching:
        assert cached == 0 and summary["prefix_cache_hit_rate"] is None
