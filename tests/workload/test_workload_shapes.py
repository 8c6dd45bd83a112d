"""Workload shapes of issue 20: arrival stages, prompt pools and clients (docs/workloads.md)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.config import ArrivalConfig, StageConfig, WorkloadConfig, load_config
from llmservingsim.errors import ConfigError, TraceError
from llmservingsim.serving.prefix_cache import block_keys
from llmservingsim.workload import RequestTable, load_workload
from llmservingsim.workload.arrival import staged_arrival_times

CTX = 1 << 20


def workload(**kw: Any) -> WorkloadConfig:
    return WorkloadConfig.model_validate(kw)


def own_runs(table: RequestTable) -> list[tuple[int, int]]:
    """Each request's last content run (its own text or pool prompt)."""
    runs = []
    for content in table.contents or []:
        assert content is not None
        runs.append(content.runs[-1])
    return runs


# ----------------------------------------------------------------------------- stages


@settings(max_examples=40, deadline=None)
@given(
    rates=st.lists(st.floats(0.0, 200.0), min_size=1, max_size=4),
    durations=st.lists(st.floats(0.5, 60.0), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_poisson_stage_counts_follow_rate_times_duration(
    rates: list[float], durations: list[float], seed: int
) -> None:
    stages = [StageConfig(duration_s=d, rate=r) for r, d in zip(rates, durations, strict=False)]
    times = staged_arrival_times(ArrivalConfig(), stages, np.random.default_rng(seed))
    assert np.all(np.diff(times) >= 0)
    start = 0.0
    for stage in stages:
        end = start + stage.duration_s
        count = int(np.count_nonzero((times >= start) & (times < end)))
        expected = stage.rate * stage.duration_s
        # Poisson(r·d): 6 standard deviations (and 3 requests of slack for tiny means).
        assert abs(count - expected) <= 6 * math.sqrt(expected) + 3
        start = end
    assert times.size == 0 or times[-1] < start


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.5, 100.0), duration=st.floats(1.0, 50.0))
def test_constant_stage_sends_one_request_per_gap_inside_the_stage(
    rate: float, duration: float
) -> None:
    stages = [StageConfig(duration_s=duration, rate=rate)]
    times = staged_arrival_times(
        ArrivalConfig(process="constant"), stages, np.random.default_rng(0)
    )
    # Arrivals at k / rate for k = 1, 2, ... strictly before the end (up to float rounding:
    # rate 9, duration 6.999999999999993 gives 63).
    expected = math.floor(rate * duration + 1e-9)
    assert expected - 1 <= times.size <= expected
    assert np.allclose(np.diff(times), 1.0 / rate)


def test_stage_column_and_rate_across_stages() -> None:
    cfg = workload(stages=[{"duration_s": 100, "rate": 5}, {"duration_s": 50, "rate": 40}])
    table = load_workload(cfg, CTX, 3)
    assert table.stage is not None
    counts = Counter(table.stage.tolist())
    assert abs(counts[0] - 500) < 6 * math.sqrt(500)
    assert abs(counts[1] - 2000) < 6 * math.sqrt(2000)
    # Stage labels follow arrival times.
    assert np.all(table.arrival_s[table.stage == 0] < 100)
    assert np.all(
        (table.arrival_s[table.stage == 1] >= 100) & (table.arrival_s[table.stage == 1] < 150)
    )
    assert len(table) == counts[0] + counts[1]


def test_stages_with_sessions_time_the_session_starts() -> None:
    cfg = workload(
        stages=[{"duration_s": 20, "rate": 2}, {"duration_s": 20, "rate": 0}],
        sessions={"turns": {"dist": "fixed", "value": 3}, "think_time_s": 5},
    )
    table = load_workload(cfg, CTX, 0)
    assert table.stage is not None
    # Every session sends its 3 turns; the second stage starts no session, but later turns of
    # sessions started in the first stage arrive in it.
    assert len(table) % 3 == 0
    assert 0 < len(table) // 3 < 100
    assert set(table.stage.tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("kw", "fingerprint"),
    [
        ({"num_requests": 200}, "869d8393c1572c44"),
        (
            {
                "num_requests": 200,
                "prefix": {"num_system_prompts": 3, "system_prompt_len": 50, "popularity": "zipf"},
            },
            "232eda1553cc86b7",
        ),
        (
            {
                "num_requests": 200,
                "prefix": {"system_prompt_len": 20},
                "sessions": {"turns": {"dist": "uniform", "min": 1, "max": 4}},
            },
            "09c574fceb726df1",
        ),
        ({"num_requests": 200, "lora": {"num_adapters": 3}}, "367414e436ef722f"),
    ],
)
def test_workloads_without_the_new_shapes_send_what_they_sent_before(
    kw: dict[str, Any], fingerprint: str
) -> None:
    """Fingerprints of the requests as main at b81913f generated them (seed 7, 4,096-token
    context): stages, pools and clients left the other streams untouched."""
    table = load_workload(workload(**kw), 4096, 7)
    assert table.stage is None and table.client is None and table.priority is None
    rows = [(r.arrival_s, r.input_len, r.output_len, r.content, r.lora) for r in table]
    assert hashlib.sha256(repr(rows).encode()).hexdigest()[:16] == fingerprint


# ----------------------------------------------------------------------------- prompt pools


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 40), n=st.integers(1, 200), prefix=st.booleans())
def test_cycled_pool_reuses_prompt_i_mod_size(size: int, n: int, prefix: bool) -> None:
    extra: dict[str, Any] = {}
    if prefix:
        extra["prefix"] = {"num_system_prompts": 3, "system_prompt_len": 40}
    cfg = workload(num_requests=n, prompt_pool={"size": size, "order": "cycle"}, **extra)
    table = load_workload(cfg, CTX, 1)
    runs = own_runs(table)
    first_pool_id = 3 if prefix else 0
    for i, (cid, count) in enumerate(runs):
        # Request i (arrival order = generation order for one stream) sends prompt i mod size.
        assert cid == first_pool_id + i % size
        assert count == runs[i % size][1]
    # The same prompt is the same tokens, its system prompt included: a whole prompt resent.
    contents = table.contents
    assert contents is not None
    for i in range(size, n):
        assert contents[i] == contents[i % size]
        assert table.input_len[i] == table.input_len[i % size]
        assert table.output_len[i] == table.output_len[i % size]
    if prefix:
        # Uniform popularity: prompt p sits behind system prompt p mod 3 (balanced groups).
        for p in range(min(size, n)):
            first = contents[p]
            assert first is not None and first.runs[0][0] == p % 3


def test_random_pool_picks_from_the_pool_and_the_prefix_cache_shares_it() -> None:
    cfg = workload(
        num_requests=400,
        prompt_pool={"size": 7, "order": "random"},
        prefix={"num_system_prompts": 1, "system_prompt_len": 64},
    )
    table = load_workload(cfg, CTX, 2)
    ids = {cid for cid, _ in own_runs(table)}
    assert ids == set(range(1, 8))  # 400 uniform picks of 7 hit every prompt
    by_prompt: dict[int, list[int]] = {}
    for i, (cid, _) in enumerate(own_runs(table)):
        by_prompt.setdefault(cid, []).append(i)
    contents = table.contents
    assert contents is not None
    for rows in by_prompt.values():
        a, b = contents[rows[0]], contents[rows[-1]]
        assert a is not None and b is not None
        assert block_keys(a, 16) == block_keys(b, 16)


def test_pool_with_sessions_supplies_each_turns_user_message() -> None:
    cfg = workload(
        num_requests=60,
        prompt_pool={"size": 4},
        sessions={"turns": {"dist": "fixed", "value": 2}, "think_time_s": 1},
    )
    table = load_workload(cfg, CTX, 0)
    contents = table.contents
    assert contents is not None
    for content in contents:
        assert content is not None
        # runs: [user_1, answer_1, ..., user_k, answer_k]; user messages are pool prompts 0-3.
        users = content.runs[0::2]
        assert all(0 <= cid < 4 for cid, _ in users)
        answers = content.runs[1::2]
        assert all(cid >= 4 for cid, _ in answers)


# ----------------------------------------------------------------------------- clients


@settings(max_examples=30, deadline=None)
@given(
    weights=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    n=st.integers(1, 500),
)
def test_client_shares_split_the_requests_exactly(weights: list[int], n: int) -> None:
    total = sum(weights)
    shares = [w / total for w in weights]
    shares[-1] = 1.0 - sum(shares[:-1])  # exact sum (floats)
    clients = [{"name": f"c{k}", "share": s} for k, s in enumerate(shares) if s > 0]
    cfg = workload(num_requests=n, clients=clients)
    table = load_workload(cfg, CTX, 0)
    assert table.client is not None and len(table) == n
    counts = np.bincount(table.client, minlength=len(clients))
    for count, client in zip(counts.tolist(), clients, strict=True):
        assert abs(count - client["share"] * n) < 1.0 + 1e-9
    assert np.all(np.diff(table.arrival_s) >= 0)


def test_rate_clients_are_independent_streams_at_their_rates() -> None:
    cfg = workload(
        num_requests=6000,
        clients=[{"name": "slow", "rate": 2.0}, {"name": "fast", "rate": 10.0}],
    )
    table = load_workload(cfg, CTX, 4)
    assert table.client is not None
    for k, rate in enumerate((2.0, 10.0)):
        times = table.arrival_s[table.client == k]
        assert times.size == 6000 * rate / 12.0
        measured = times.size / times[-1]
        assert abs(measured - rate) / rate < 0.1


def test_clients_keep_their_own_lengths_prefixes_pools_and_priorities() -> None:
    cfg = load_config(
        None,
        [
            "scheduler.policy=priority",
            "workload.num_requests=300",
            "workload.prefix={system_prompt_len: 32}",
            "workload.clients=["
            "{name: chat, share: 0.5, priority: 1},"
            "{name: batch, share: 0.25, input_len: {dist: fixed, value: 900},"
            " prefix: {system_prompt_len: 100, num_system_prompts: 2}},"
            "{name: agent, share: 0.25, prompt_pool: {size: 3}, priority: -1}]",
        ],
    )
    table = load_workload(cfg.workload, CTX, 0)
    assert table.client is not None and table.priority is not None
    assert table.client_names == ("chat", "batch", "agent")
    assert table.priority.tolist() == [(1, 0, -1)[k] for k in table.client.tolist()]
    contents = table.contents
    assert contents is not None
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for i, k in enumerate(table.client.tolist()):
        content = contents[i]
        assert content is not None
        seen[k].add(content.runs[0][0])
        if k == 1:
            assert table.input_len[i] == 1000
    # chat and agent share the workload's system prompt (id 0); batch has its own two.
    assert seen[0] == {0} and seen[2] == {0}
    assert len(seen[1]) == 2 and 0 not in seen[1]
    agent_prompts = {contents[i].runs[1][0] for i in np.flatnonzero(table.client == 2)}  # type: ignore[union-attr]
    assert len(agent_prompts) == 3
    specs = list(table)
    assert [s.client for s in specs] == table.client.tolist()
    assert [s.priority for s in specs] == table.priority.tolist()


def test_client_adapter_overrides_every_request_of_the_client() -> None:
    cfg = workload(
        num_requests=50,
        lora={"num_adapters": 3},
        clients=[{"name": "a", "share": 0.5, "lora": "sql"}, {"name": "b", "share": 0.5}],
    )
    table = load_workload(cfg, CTX, 0)
    assert table.client is not None and table.loras is not None
    for k, lora in zip(table.client.tolist(), table.loras, strict=True):
        if k == 0:
            assert lora == "sql"
        else:
            assert lora is not None and lora.startswith("lora-")


def test_trace_rows_name_their_client(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 2, "client": "b"}\n'
        '{"timestamp": 5, "input_length": 10, "output_length": 2, "client": "a"}\n'
    )
    cfg = load_config(
        None,
        [
            "workload.kind=trace",
            f"workload.trace.path={path}",
            "workload.trace.format=mooncake",
            "workload.clients=[{name: a}, {name: b, slo: {ttft_s: 1}}]",
        ],
    )
    table = load_workload(cfg.workload, CTX, 0)
    assert table.client is not None and table.client.tolist() == [1, 0]
    assert table.client_names == ("a", "b")
    bad = load_config(
        None,
        ["workload.kind=trace", f"workload.trace.path={path}", "workload.trace.format=mooncake"],
    )
    with pytest.raises(TraceError, match=r"t\.jsonl:1: unknown client 'b'"):
        load_workload(bad.workload, CTX, 0)
    only_a = cfg.workload.model_copy(update={"clients": cfg.workload.clients[:1]})  # type: ignore[index]
    with pytest.raises(TraceError, match=r"t\.jsonl:1: unknown client 'b'; expected one of"):
        load_workload(only_a, CTX, 0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("workload.stages=[{duration_s: 0, rate: 3}]", "workload.stages.0.duration_s"),
        ("workload.stages=[{duration_s: -5, rate: 3}]", "greater than 0"),
        ("workload.stages=[]", "stages is empty"),
        ("workload.stages=[{duration_s: 5, rate: .inf}]", "workload.stages.0.rate"),
        (
            "workload.clients=[{name: a, share: 0.5}, {name: b, share: 0.4}]",
            "client shares sum to 0.9, expected 1",
        ),
        (
            "workload.clients=[{name: a, share: 0.5}, {name: b, rate: 3}]",
            "every client a share, or every client a rate",
        ),
        ("workload.clients=[{name: a}, {name: a}]", "client name 'a' is used twice"),
        (
            "workload.clients=[{name: a, priority: 2}]",
            "priority=2, but scheduler.policy 'vllm' ignores priorities",
        ),
        ("workload.clients=[{name: a, lora: x}]", "set lora.enabled: true"),
        ("workload.prompt_pool={size: 0}", "workload.prompt_pool.size"),
    ],
)
def test_bad_shapes_are_one_line_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


def test_stages_that_send_nothing_are_an_error() -> None:
    cfg = workload(stages=[{"duration_s": 0.001, "rate": 1}])
    with pytest.raises(ConfigError, match=r"workload\.stages: no request arrived"):
        load_workload(cfg, CTX, 0)


def test_stages_refuse_a_request_count_and_rate_clients() -> None:
    with pytest.raises(ConfigError, match="remove num_requests"):
        load_config(None, ["workload.stages=[{duration_s: 5, rate: 3}]", "workload.num_requests=9"])
    with pytest.raises(ConfigError, match="give the clients shares, not rates"):
        load_config(
            None,
            ["workload.stages=[{duration_s: 5, rate: 3}]", "workload.clients=[{name: a, rate: 2}]"],
        )
    with pytest.raises(ConfigError, match=r"clients\[0\] \(a\): input_len would not apply"):
        load_config(
            None,
            [
                "workload.prompt_pool={size: 4}",
                "workload.clients=[{name: a, input_len: {dist: fixed, value: 5}}]",
            ],
        )


# ----------------------------------------------------------------------------- docs


def test_every_config_in_docs_workloads_md_loads_and_generates(tmp_path: Path) -> None:
    """The configs docs/workloads.md shows for each benchmark tool are valid as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    assert len(blocks) >= 7
    for i, block in enumerate(blocks):
        path = tmp_path / f"{i}.yaml"
        path.write_text(block)
        cfg = load_config(path)
        table = load_workload(cfg.workload, 1 << 17, 0)
        assert len(table) > 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), pool_order=st.sampled_from(["cycle", "random"]))
def test_every_shape_together_gives_one_consistent_table(seed: int, pool_order: str) -> None:
    """Stages × clients (own prefix, shared pool, sessions) × adapters: rows in arrival order,
    labels and columns of one length, every content id range disjoint between clients."""
    cfg = load_config(
        None,
        [
            "lora.enabled=true",
            "workload.stages=[{duration_s: 20, rate: 6}, {duration_s: 10, rate: 0},"
            " {duration_s: 20, rate: 12}]",
            f"workload.prompt_pool={{size: 6, order: {pool_order}}}",
            "workload.clients=["
            "{name: chat, share: 0.5, sessions: {turns: {dist: fixed, value: 2}, think_time_s: 2}},"
            "{name: agent, share: 0.3, prefix: {system_prompt_len: 64}, lora: tools},"
            "{name: batch, share: 0.2, prompt_pool: {size: 2}}]",
        ],
    )
    table = load_workload(cfg.workload, CTX, seed)
    n = len(table)
    assert table.client is not None and table.stage is not None and table.loras is not None
    assert table.client.size == table.stage.size == n
    assert np.all(np.diff(table.arrival_s) >= 0)
    assert set(table.stage.tolist()) <= {0, 1, 2}
    # The idle stage starts no session; only later turns of earlier sessions land in it.
    idle = table.client[table.stage == 1]
    assert set(idle.tolist()) <= {0}
    contents = table.contents
    assert contents is not None
    ids: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for i, k in enumerate(table.client.tolist()):
        content = contents[i]
        assert content is not None and content.num_tokens >= table.input_len[i]
        ids[k].update(cid for cid, _ in content.runs)
        assert (table.loras[i] == "tools") == (k == 1)
    # chat and agent send the shared pool's prompts (ids 0-5); batch its own two.
    assert ids[2] & ids[0] == set() and ids[2] & ids[1] == set()
    assert len(ids[2]) <= 2
    specs = list(table)
    assert [s.id for s in specs] == list(range(n))


def test_csv_trace_client_column_and_rows_without_one(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens,client\n0,5,2,fast\n1,5,2,\n")
    base = ["workload.kind=trace", f"workload.trace.path={path}", "workload.trace.format=csv"]
    cfg = load_config(None, [*base, "workload.clients=[{name: fast}]"])
    with pytest.raises(TraceError, match=r"t\.csv:3: no client; expected one of"):
        load_workload(cfg.workload, CTX, 0)
    path.write_text("arrival_s,input_tokens,output_tokens,client\n0,5,2,fast\n1,5,2,slow\n")
    cfg = load_config(None, [*base, "workload.clients=[{name: slow}, {name: fast}]"])
    table = load_workload(cfg.workload, CTX, 0)
    assert table.client is not None and table.client.tolist() == [1, 0]
    with pytest.raises(ConfigError, match=r"clients\[0\] \(slow\): share shape synthetic"):
        load_config(None, [*base, "workload.clients=[{name: slow, share: 1}]"])
