"""Workloads as columns: the same request stream for a seed, handed out lazily in arrival order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.config import WorkloadConfig
from llmservingsim.workload import RequestSpec, RequestTable, load_workload
from llmservingsim.workload.adapters import adapter_name, adapter_popularity
from llmservingsim.workload.arrival import arrival_times
from llmservingsim.workload.lengths import clip_to_context, sample_lengths
from llmservingsim.workload.request_spec import TokenContent
from llmservingsim.workload.request_table import in_arrival_order
from llmservingsim.workload.system_prompts import NAMESPACE, pick_system_prompts

MAX_CONTEXT = 4096


def reference_stream(cfg: WorkloadConfig, seed: int) -> list[RequestSpec]:
    """The seed -> requests contract, one RequestSpec at a time (docs/workloads.md)."""
    arrival_rng, input_rng, output_rng, prefix_rng, _ = np.random.default_rng(seed).spawn(5)
    n = cfg.num_requests
    arrivals = arrival_times(cfg.arrival, n, arrival_rng)
    user = sample_lengths(cfg.input_len, n, input_rng)
    system_len, prompts = 0, None
    if cfg.prefix is not None:
        prompts = pick_system_prompts(cfg.prefix, n, prefix_rng)
        system_len = cfg.prefix.system_prompt_len
    inputs, outputs = clip_to_context(
        user + system_len, sample_lengths(cfg.output_len, n, output_rng), MAX_CONTEXT
    )
    picks = None
    if cfg.lora is not None:
        rng = np.random.default_rng([seed, 12])
        picks = rng.choice(cfg.lora.num_adapters, size=n, p=adapter_popularity(cfg.lora))
    specs = []
    for i in range(n):
        content = None
        if prompts is not None and cfg.prefix is not None:
            runs = (
                (int(prompts[i]), system_len),
                (cfg.prefix.num_system_prompts + i, int(user[i])),
            )
            content = TokenContent(NAMESPACE, runs).truncated(int(inputs[i]))
        lora = None if picks is None else adapter_name(int(picks[i]))
        specs.append(
            RequestSpec(i, float(arrivals[i]), int(inputs[i]), int(outputs[i]), content, lora)
        )
    return sorted(specs, key=lambda r: r.arrival_s)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 80),
    process=st.sampled_from(["poisson", "gamma", "burst", "constant"]),
    rate=st.sampled_from([0.5, 40.0, float("inf")]),
    prefix=st.booleans(),
    lora=st.booleans(),
)
def test_a_seed_gives_the_same_requests_as_building_them_one_by_one(
    seed: int, n: int, process: str, rate: float, prefix: bool, lora: bool
) -> None:
    spec: dict[str, Any] = {
        "num_requests": n,
        "arrival": {"process": process, "rate": rate, "cv": 2.0, "burst_size": 3},
        "input_len": {"dist": "lognormal", "mean": 900, "sigma": 1.2},
    }
    if prefix:
        spec["prefix"] = {"num_system_prompts": 3, "system_prompt_len": 700}
    if lora:
        spec["lora"] = {"num_adapters": 5}
    cfg = WorkloadConfig.model_validate(spec)
    table = load_workload(cfg, MAX_CONTEXT, seed)
    want = reference_stream(cfg, seed)
    assert isinstance(table, RequestTable)
    assert list(table) == want
    assert [table[i] for i in range(-n, 0)] == want
    assert table == want
    assert list(in_arrival_order(table)) == want


def test_specs_in_any_order_become_a_table_sorted_by_arrival() -> None:
    content = TokenContent("t", ((1, 4),))
    specs = [
        RequestSpec(7, 2.0, 10, 3),
        RequestSpec(8, 1.0, 20, 4, content=content),
        RequestSpec(9, 2.0, 30, 5, lora="lora-1"),
    ]
    table = RequestTable.from_specs(specs)
    assert table == [
        RequestSpec(0, 1.0, 20, 4, content=content),
        RequestSpec(1, 2.0, 10, 3),  # ties keep their order
        RequestSpec(2, 2.0, 30, 5, lora="lora-1"),
    ]
    assert table[1:] == list(table)[1:]
    with pytest.raises(IndexError):
        table[3]


def test_a_table_refuses_rows_out_of_arrival_order() -> None:
    lengths = np.ones(2, dtype=np.int64)
    with pytest.raises(ValueError, match="arrival order"):
        RequestTable(np.array([2.0, 1.0]), lengths, lengths)
