"""Parallelism and clusters: TP, PP (virtual engines), routers, prefill/decode disaggregation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.catalog import load_device, load_model
from llmservingsim.cluster.routers import ROUTERS
from llmservingsim.config import SimConfig, load_config
from llmservingsim.errors import ConfigError, DoesNotFitError
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology
from llmservingsim.simulation import SimulationResult, simulate
from llmservingsim.workload.request_spec import RequestSpec


def config(*overrides: str) -> SimConfig:
    return load_config(None, list(overrides))


def fixed_requests(n: int, input_len: int, output_len: int, gap: float = 0.0) -> list[RequestSpec]:
    return [RequestSpec(i, i * gap, input_len, output_len) for i in range(n)]


def run(cfg: SimConfig, requests: list[RequestSpec] | None = None) -> SimulationResult:
    return simulate(cfg, requests=requests)


# ----------------------------------------------------------------------------- tensor parallel


def test_tp2_decode_is_faster_but_less_than_twice() -> None:
    one = [RequestSpec(0, 0.0, 128, 64)]
    tpot = {
        tp: run(config("model=llama-3.1-8b", f"cluster.tensor_parallel={tp}"), one).summary[
            "tpot_s"
        ]["mean"]
        for tp in (1, 2)
    }
    assert tpot[2] < tpot[1]
    assert tpot[1] / tpot[2] < 2.0


def test_tp8_fits_70b_where_tp1_does_not() -> None:
    with pytest.raises(DoesNotFitError):
        run(config("model=llama-3.1-70b"), fixed_requests(2, 64, 8))
    result = run(
        config("model=llama-3.1-70b", "cluster.tensor_parallel=8"), fixed_requests(2, 64, 8)
    )
    assert result.summary["requests_completed"] == 2
    assert result.summary["num_devices"] == 8


# ----------------------------------------------------------------------------- pipeline parallel


def test_pp2_throughput_under_load_is_at_least_1_6x_one_stage() -> None:
    requests = fixed_requests(400, 256, 128)
    base = "model=llama-3.1-8b"
    single = run(config(base), requests).summary["output_tokens_per_s"]
    pp2 = run(config(base, "cluster.pipeline_parallel=2"), requests).summary
    assert pp2["requests_completed"] == 400
    assert pp2["output_tokens_per_s"] >= 1.6 * single


def test_pp2_batch1_latency_grows_by_the_send_time() -> None:
    one = [RequestSpec(0, 0.0, 64, 32)]
    tpot1 = run(config("model=llama-3.2-1b"), one).summary["tpot_s"]["mean"]
    cfg2 = config("model=llama-3.2-1b", "cluster.pipeline_parallel=2")
    tpot2 = run(cfg2, one).summary["tpot_s"]["mean"]
    spec = load_model("llama-3.2-1b")
    topo = Topology.build(load_device("h100-sxm"))
    send = collectives.send(topo, 2 * spec.hidden_size * 2.0, 0, 1)  # 1 token, hidden+residual
    assert tpot2 == pytest.approx(tpot1 + send, rel=1e-6)


def test_pp_keeps_several_batches_in_flight() -> None:
    cfg = config("model=llama-3.2-1b", "cluster.pipeline_parallel=4")
    result = run(cfg, fixed_requests(64, 128, 64))
    assert result.summary["requests_completed"] == 64
    # Four virtual engines share the requests.
    assert result.summary["iterations"] >= 4 * 64


def test_pp_larger_than_layers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="exceeds the 16 layers"):
        run(config("model=llama-3.2-1b", "cluster.pipeline_parallel=17"), fixed_requests(1, 8, 2))


def test_tp_not_dividing_heads_is_an_error() -> None:
    with pytest.raises(ConfigError, match="must divide the 32 attention heads"):
        run(config("model=llama-3.1-8b", "cluster.tensor_parallel=3"), fixed_requests(1, 8, 2))


# ----------------------------------------------------------------------------- routers


@dataclass
class FakeInstance:
    index: int
    num_outstanding: int = 0
    num_free_blocks: int = 100
    num_blocks: int = 100


def make_router(name: str, n: int) -> tuple[Any, list[FakeInstance]]:
    fakes = [FakeInstance(i) for i in range(n)]
    return ROUTERS.get(name)(fakes, np.random.default_rng(0)), fakes  # type: ignore[arg-type]


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
@given(n=st.integers(1, 12), rounds=st.integers(1, 10))
def test_round_robin_balances_counts_exactly(n: int, rounds: int) -> None:
    router, _ = make_router("round_robin", n)
    counts = Counter(router.route(RequestSpec(i, 0.0, 1, 1)).index for i in range(n * rounds))
    assert set(counts.values()) == {rounds}


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
@given(loads=st.lists(st.integers(0, 50), min_size=1, max_size=16))
def test_least_outstanding_never_picks_a_busier_instance(loads: list[int]) -> None:
    router, fakes = make_router("least_outstanding", len(loads))
    for fake, load in zip(fakes, loads, strict=True):
        fake.num_outstanding = load
    chosen = router.route(RequestSpec(0, 0.0, 1, 1))
    assert chosen.num_outstanding == min(loads)
    if 0 in loads:
        assert chosen.num_outstanding == 0


@dataclass
class BoardInstance:
    """An instance that publishes its load to a shared board, as real instances do."""

    index: int
    load_board: Any


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
@given(
    loads=st.lists(st.integers(0, 3), min_size=1, max_size=100),
    subset=st.booleans(),
    changes=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 3)), max_size=30),
)
def test_least_outstanding_on_the_load_board_equals_a_rotating_scan(
    loads: list[int], subset: bool, changes: list[tuple[int, int]]
) -> None:
    """The board search picks what a scan from one past the last choice picks (ties rotate),
    also for a pool that is a subset of the cluster's instances."""
    offset = 3 if subset else 0
    board = [0] * (len(loads) + offset)
    fakes = [BoardInstance(offset + i, board) for i in range(len(loads))]
    router = ROUTERS.get("least_outstanding")(fakes, np.random.default_rng(0))  # type: ignore[arg-type]
    board[offset:] = loads
    start = 0
    for slot, load in [(0, 0), *changes]:
        board[offset + slot % len(loads)] = load
        current = board[offset:]
        order = [(start + k) % len(current) for k in range(len(current))]
        expected = min(order, key=lambda i: (current[i], order.index(i)))
        assert router.route(RequestSpec(0, 0.0, 1, 1)) is fakes[expected]
        start = (expected + 1) % len(current)


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
@given(loads=st.lists(st.integers(0, 50), min_size=2, max_size=16))
def test_power_of_two_picks_the_less_loaded_of_two(loads: list[int]) -> None:
    router, fakes = make_router("power_of_two_choices", len(loads))
    for fake, load in zip(fakes, loads, strict=True):
        fake.num_outstanding = load
    chosen = router.route(RequestSpec(0, 0.0, 1, 1))
    assert sum(load < chosen.num_outstanding for load in loads) <= len(loads) - 2


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
def test_least_kv_prefers_the_emptiest_cache() -> None:
    router, fakes = make_router("least_kv", 3)
    fakes[0].num_free_blocks, fakes[1].num_free_blocks, fakes[2].num_free_blocks = 10, 90, 50
    assert router.route(RequestSpec(0, 0.0, 1, 1)).index == 1


@pytest.mark.parametrize(
    "router", ["round_robin", "random", "least_outstanding", "least_kv", "power_of_two_choices"]
)
def test_every_router_serves_every_request(router: str) -> None:
    cfg = config("model=llama-3.2-1b", "cluster.instances=4", f"cluster.router={router}")
    result = run(cfg, fixed_requests(80, 64, 16, gap=0.002))
    summary = result.summary
    assert summary["requests_completed"] == 80
    per_instance = [row["requests_completed"] for row in summary["instances"]]
    assert sum(per_instance) == 80
    assert len(per_instance) == 4
    assert all(count > 0 for count in per_instance)


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
@settings(max_examples=15, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 0.05), min_size=5, max_size=40),
    n=st.integers(2, 5),
)
def test_least_outstanding_sends_to_an_idle_instance_when_one_exists(
    gaps: list[float], n: int
) -> None:
    """Whole-engine property: at every arrival, if some instance is idle (nothing outstanding),
    the request goes to an idle one."""
    cfg = config("model=llama-3.2-1b", f"cluster.instances={n}", "cluster.router=least_outstanding")
    times = np.cumsum(gaps)
    requests = [RequestSpec(i, float(t), 64, 8) for i, t in enumerate(times)]
    from llmservingsim.cluster.routers import LeastOutstandingRouter

    route = LeastOutstandingRouter.route
    violations: list[tuple[int, list[int]]] = []

    def spy(self: LeastOutstandingRouter, spec: RequestSpec) -> Any:
        chosen = route(self, spec)
        loads = [inst.num_outstanding for inst in self.instances]
        if 0 in loads and chosen.num_outstanding != 0:
            violations.append((chosen.index, loads))
        return chosen

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LeastOutstandingRouter, "route", spy)
        result = run(cfg, requests)
    assert not violations
    assert result.summary["requests_completed"] == len(requests)


# ----------------------------------------------------------------------------- disaggregation

PD = "cluster.pools=[{role: prefill, count: 2}, {role: decode, count: 3, hardware: a100-80gb}]"


def test_disaggregation_prefills_in_prefill_pool_and_decodes_in_decode_pool() -> None:
    cfg = config("model=llama-3.2-1b", PD)
    requests = fixed_requests(60, 300, 20, gap=0.003)
    result = run(cfg, requests)
    summary = result.summary
    pools = {row["index"]: row["pool"] for row in summary["instances"]}
    assert summary["requests_completed"] == 60
    for record in result.metrics.records:
        assert pools[record.prefill_instance] == "prefill"
        assert pools[record.instance] == "decode"
        assert record.kv_transfer_s > 0
    rows = summary["instances"]
    prefill_rows = [r for r in rows if r["pool"] == "prefill"]
    decode_rows = [r for r in rows if r["pool"] == "decode"]
    # Token conservation: prompts are computed once, in the prefill pool; every output token
    # but the first (sampled by the prefill step) is decoded in the decode pool.
    assert sum(r["prefill_tokens"] for r in prefill_rows) == 60 * 300
    assert sum(r["decode_tokens"] for r in prefill_rows) == 0
    assert sum(r["decode_tokens"] for r in decode_rows) == 60 * (20 - 1)
    assert sum(r["prefill_tokens"] for r in decode_rows) == 0
    assert summary["output_tokens"] == 60 * 20
    assert summary["kv_transfers"] == 60


def test_kv_transfer_time_equals_the_formula() -> None:
    cfg = config("model=llama-3.2-1b", PD)
    result = run(cfg, [RequestSpec(0, 0.0, 1000, 4)])
    record = result.metrics.records[0]
    spec = load_model("llama-3.2-1b")
    # tokens × layers × 2 (K and V) × kv heads × head dim × bytes
    nbytes = 1000 * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * 2
    a100, h100 = load_device("a100-80gb"), load_device("h100-sxm")
    # Prefill pool: devices 0, 1 (H100 nodes of 8); decode pool starts on the next node (8).
    src, dst = record.prefill_instance, record.instance
    src_first = src  # instance i of the prefill pool sits on device i
    dst_first = 8 + (dst - 2)
    # The A100 node has 8 devices too, so both topologies see different nodes: the slower
    # side (A100's measured inter-node links) sets the time.
    expected = max(
        collectives.send(Topology.build(h100), nbytes, src_first, dst_first),
        collectives.send(Topology.build(a100), nbytes, src_first, dst_first),
    )
    assert record.kv_transfer_s == pytest.approx(expected)
    # The transfer sits between the first token (prefill) and the second (decode).
    assert record.finish_s - record.first_token_s > record.kv_transfer_s


def test_disaggregated_config_without_decode_pool_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs a decode pool"):
        config("cluster.pools=[{role: prefill, count: 2}]")


def test_pool_with_zero_instances_is_an_error() -> None:
    with pytest.raises(ConfigError, match="count"):
        config("cluster.pools=[{role: mixed, count: 0}]")


def test_heterogeneous_mixed_pools_report_each_pool() -> None:
    cfg = config(
        "model=llama-3.2-1b",
        "cluster.pools=[{name: fast, count: 1, hardware: h100-sxm},"
        " {name: slow, count: 1, hardware: a100-80gb}]",
        "cluster.router=least_outstanding",
    )
    summary = run(cfg, fixed_requests(40, 64, 16, gap=0.001)).summary
    assert [p["hardware"] for p in summary["pools"]] == ["h100-sxm", "a100-80gb"]
    assert summary["requests_completed"] == 40
    assert summary["cost_usd"] > 0


@pytest.mark.patches_engine  # fake instances / a spied router: interpreted pass
def test_least_outstanding_rotates_ties() -> None:
    router, _ = make_router("least_outstanding", 4)
    picks = [router.route(RequestSpec(i, 0.0, 1, 1)).index for i in range(8)]
    assert picks == [0, 1, 2, 3, 0, 1, 2, 3]
