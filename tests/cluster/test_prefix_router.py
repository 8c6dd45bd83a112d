"""The cache-aware (prefix_aware) router: prompts follow their prefix, load comes first."""

from __future__ import annotations

from typing import Any

import pytest

from llmservingsim.build import build_cluster
from llmservingsim.cluster.cluster import Cluster
from llmservingsim.config import load_config
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.scenario import resolve
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec, TokenContent


def cluster(n: int) -> Cluster:
    cfg = load_config(
        None,
        ["model=llama-3.2-1b", f"cluster.instances={n}", "cluster.router=prefix_aware"],
    )
    return build_cluster(resolve(cfg), MetricsCollector())


def req(i: int, prompt: int, own: int = 64) -> RequestSpec:
    content = TokenContent("t", ((prompt, 512), (10_000 + i, own)))
    return RequestSpec(i, 0.0, 512 + own, 8, content)


def test_same_prefix_goes_where_it_went_before() -> None:
    c = cluster(4)

    def route(spec: RequestSpec) -> Any:
        chosen = c.route(spec)
        chosen.outstanding += 1  # the instance now has the request
        return chosen

    home = {p: route(req(p, prompt=p)) for p in range(4)}
    assert len({id(inst) for inst in home.values()}) == 4, "new prefixes spread by load"
    for i in range(4, 40):
        assert route(req(i, prompt=i % 4)) is home[i % 4]


def test_load_imbalance_overrides_the_prefix() -> None:
    c = cluster(2)
    home = c.route(req(0, prompt=7))
    other = next(inst for inst in c.instances if inst is not home)
    home.outstanding = 40  # far busier than the other instance
    assert c.route(req(1, prompt=7)) is other
    home.outstanding, other.outstanding = 3, 5  # balanced again; both have seen the prefix
    assert c.route(req(2, prompt=7)) is home


def test_requests_without_content_balance_like_least_outstanding() -> None:
    c = cluster(3)
    c.instances[0].outstanding, c.instances[1].outstanding = 5, 1
    assert c.route(RequestSpec(0, 0.0, 100, 5)) is c.instances[2]


def run(router: str) -> Any:
    cfg = load_config(
        None,
        [
            "model=llama-3.2-1b",
            "cluster.instances=4",
            f"cluster.router={router}",
            "scheduler.enable_prefix_caching=true",
            "workload.num_requests=200",
            "workload.arrival.rate=40",
            "workload.prefix={num_system_prompts: 8, system_prompt_len: 1024}",
        ],
    )
    return simulate(cfg).summary


@pytest.mark.parametrize("baseline", ["round_robin", "least_outstanding"])
def test_prefix_aware_routing_raises_the_hit_rate(baseline: str) -> None:
    aware, blind = run("prefix_aware"), run(baseline)
    assert aware["requests_completed"] == blind["requests_completed"] == 200
    assert aware["prefix_cache_hit_rate"] > blind["prefix_cache_hit_rate"]
    assert aware["prefill_tokens_computed"] < blind["prefill_tokens_computed"]
