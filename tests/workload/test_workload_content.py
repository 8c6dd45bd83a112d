"""What requests' tokens are (for prefix caching): trace ids, system prompts, sessions."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmservingsim.config import WorkloadConfig, load_config
from llmservingsim.errors import ConfigError, InputWarning, TraceError
from llmservingsim.serving.prefix_cache import block_keys
from llmservingsim.simulation import simulate
from llmservingsim.workload import RequestSpec, load_workload

DATA = Path(__file__).parents[2].parent / "shared" / "data"
TRACES = DATA / "traces"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder is absent")


def trace(path: Path, fmt: str = "jsonl", **kw: Any) -> WorkloadConfig:
    return WorkloadConfig.model_validate(
        {"kind": "trace", "trace": {"path": str(path), "format": fmt, **kw}}
    )


def synthetic(**kw: Any) -> WorkloadConfig:
    return WorkloadConfig.model_validate(kw)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- traces


def test_mooncake_hash_ids_become_512_token_runs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [4, 8, 15]}\n'
        '{"timestamp": 9, "input_length": 600, "output_length": 5, "hash_ids": [4, 16]}\n',
    )
    a, b = load_workload(trace(path, "mooncake"), 1 << 20, 0)
    assert a.content is not None and b.content is not None
    assert a.content.runs == ((4, 512), (8, 512), (15, 76))
    assert b.content.runs == ((4, 512), (16, 88))
    # In 16-token blocks the two prompts share exactly the 32 blocks of hash block 4.
    ka, kb = block_keys(a.content, 16), block_keys(b.content, 16)
    shared = sum(1 for _ in itertools.takewhile(lambda p: p[0] == p[1], zip(ka, kb, strict=False)))
    assert shared == 32


def test_hash_block_size_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, '{"timestamp": 0, "input_length": 40, "output_length": 1, ')
    path.write_text(path.read_text() + '"hash_ids": [1, 2, 3]}\n')
    (req,) = load_workload(trace(path, hash_block_size=16), 1 << 20, 0)
    assert req.content is not None and req.content.runs == ((1, 16), (2, 16), (3, 8))


def test_hash_ids_that_do_not_cover_the_prompt_name_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
        '{"timestamp": 1, "input_length": 1100, "output_length": 1, "hash_ids": [1, 2]}\n',
    )
    with pytest.raises(TraceError, match=r"t\.jsonl:2: 'hash_ids' has 2 ids; .* needs 3"):
        load_workload(trace(path), 1 << 20, 0)


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ("[1, 2]", "has 2 ids, expected one per input token (3)"),
        ('"abc"', "expected a list of integer ids"),
        ("[1, 2.5, 3]", "expected a list of integer ids"),
        ("[1, true, 3]", "expected a list of integer ids"),
    ],
)
def test_bad_token_ids_are_one_line_errors(tmp_path: Path, ids: str, fragment: str) -> None:
    path = write(
        tmp_path,
        f'{{"input_toks": 3, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": {ids}}}\n',
    )
    with pytest.raises(TraceError, match=r"t\.jsonl:1: key 'input_tok_ids'") as err:
        load_workload(trace(path), 1 << 20, 0)
    assert fragment in str(err.value)


def test_token_ids_are_one_run_per_token_and_clipped_with_the_prompt(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"input_toks": 5, "output_toks": 3, "arrival_time_ns": 0, '
        '"input_tok_ids": [9, 8, 7, 6, 5]}\n',
    )
    (req,) = load_workload(trace(path), 1 << 20, 0)
    assert req.content is not None
    assert req.content.namespace == "tokens"
    assert req.content.runs == ((9, 1), (8, 1), (7, 1), (6, 1), (5, 1))
    with pytest.warns(InputWarning):  # context of 4: prompt cut to 3 tokens
        (clipped,) = load_workload(trace(path), 4, 0)
    assert clipped.input_len == 3
    assert clipped.content is not None and clipped.content.num_tokens == 3


def test_rows_without_ids_have_no_content(tmp_path: Path) -> None:
    path = write(tmp_path, '{"input_toks": 5, "output_toks": 3, "arrival_time_ns": 0}\n')
    assert load_workload(trace(path), 1 << 20, 0)[0].content is None


@needs_data
def test_real_mooncake_conversation_keeps_hash_ids() -> None:
    path = TRACES / "mooncake" / "conversation_trace.jsonl"
    reqs = load_workload(trace(path, "mooncake", max_requests=2000), 1 << 20, 0)
    assert all(r.content is not None and r.content.num_tokens == r.input_len for r in reqs)
    # Conversations resend history: many requests start with an earlier request's block.
    firsts = Counter(r.content.runs[1][0] for r in reqs if r.content and len(r.content.runs) > 1)
    assert firsts.most_common(1)[0][1] > 1


@needs_data
def test_real_prefix_pool_stress_hits_the_cache() -> None:
    """LLMServingSim's prefix-cache test workload: requests share prefix token ids."""
    path = TRACES / "llmservingsim" / "v1.0.0" / "prefix_pool_stress.jsonl"
    cfg = load_config(
        None,
        [
            "model=llama-3.2-1b",
            "scheduler.enable_prefix_caching=true",
            "scheduler.block_size=2",
            "workload.kind=trace",
            f"workload.trace.path={path}",
        ],
    )
    summary = simulate(cfg).summary
    assert summary["requests_completed"] == 20
    assert summary["prefix_cache_hit_rate"] > 0.3


# ----------------------------------------------------------------------------- system prompts


def test_system_prompt_is_prepended_and_shared() -> None:
    plain = load_workload(synthetic(num_requests=300), 1 << 20, 7)
    cfg = synthetic(num_requests=300, prefix={"num_system_prompts": 3, "system_prompt_len": 500})
    reqs = load_workload(cfg, 1 << 20, 7)
    assert all(r.content is None for r in plain)
    # Same seed: same arrivals and user lengths, each prompt grown by the system prompt.
    assert [r.arrival_s for r in reqs] == [r.arrival_s for r in plain]
    assert [r.input_len for r in reqs] == [r.input_len + 500 for r in plain]
    assert [r.output_len for r in reqs] == [r.output_len for r in plain]
    prompts = Counter()
    for r in reqs:
        assert r.content is not None and r.content.num_tokens == r.input_len
        (sys_id, sys_len), (own_id, _) = r.content.runs
        assert sys_len == 500 and 0 <= sys_id < 3 and own_id >= 3
        prompts[sys_id] += 1
    assert len(prompts) == 3
    assert len({r.content.runs[1][0] for r in reqs if r.content}) == 300, "user parts differ"


def test_zipf_popularity_favours_the_first_prompts() -> None:
    cfg = synthetic(
        num_requests=4000,
        prefix={
            "num_system_prompts": 10,
            "system_prompt_len": 10,
            "popularity": "zipf",
            "zipf_alpha": 1.2,
        },
    )
    counts = Counter(r.content.runs[0][0] for r in load_workload(cfg, 1 << 20, 0) if r.content)
    weights = np.arange(1, 11, dtype=float) ** -1.2
    assert counts[0] / 4000 == pytest.approx(weights[0] / weights.sum(), abs=0.03)
    assert counts[0] > counts[4] > counts[9]


def test_system_prompt_longer_than_the_context_is_clipped() -> None:
    cfg = synthetic(num_requests=20, prefix={"system_prompt_len": 5000})
    for r in load_workload(cfg, 4096, 0):
        assert r.input_len + r.output_len <= 4096
        assert r.content is not None and r.content.num_tokens == r.input_len


# ----------------------------------------------------------------------------- sessions


def sessions_of(reqs: list[RequestSpec], prefix: bool) -> list[list[RequestSpec]]:
    """Group turns by their session: the id of the session's first user message."""
    groups: dict[int, list[RequestSpec]] = defaultdict(list)
    for r in reqs:
        assert r.content is not None
        groups[r.content.runs[1 if prefix else 0][0]].append(r)
    return [sorted(g, key=lambda r: r.input_len) for g in groups.values()]


@pytest.mark.parametrize("prefix", [False, True])
def test_session_turns_resend_the_history(prefix: bool) -> None:
    extra = {"prefix": {"num_system_prompts": 2, "system_prompt_len": 64}} if prefix else {}
    cfg = synthetic(
        num_requests=200,
        sessions={"turns": {"dist": "uniform", "min": 1, "max": 5}, "think_time_s": 3.0},
        **extra,
    )
    reqs = load_workload(cfg, 1 << 20, 3)
    assert len(reqs) == 200
    sessions = sessions_of(reqs, prefix)
    assert 200 / 5 <= len(sessions) <= 200
    assert any(len(s) > 1 for s in sessions)
    for turns in sessions:
        for prev, nxt in itertools.pairwise(turns):
            assert prev.content is not None and nxt.content is not None
            # The next prompt = the previous prompt + its answer + a new user message.
            history = prev.content.runs  # prompt runs and the answer run
            assert nxt.content.runs[: len(history)] == history
            assert nxt.input_len > prev.input_len + prev.output_len
            assert nxt.arrival_s >= prev.arrival_s
        for turn in turns:
            assert turn.content is not None
            assert turn.content.num_tokens == turn.input_len + turn.output_len


def test_fixed_think_time_spaces_turns_exactly() -> None:
    cfg = synthetic(
        num_requests=30,
        sessions={
            "turns": {"dist": "fixed", "value": 3},
            "think_time_s": 2.5,
            "think_time_dist": "fixed",
        },
    )
    for turns in sessions_of(load_workload(cfg, 1 << 20, 0), prefix=False):
        gaps = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(turns)]
        assert gaps == pytest.approx([2.5] * (len(turns) - 1))


def test_sessions_end_when_the_history_outgrows_the_context() -> None:
    cfg = synthetic(
        num_requests=100,
        input_len={"dist": "fixed", "value": 300},
        output_len={"dist": "fixed", "value": 200},
        sessions={"turns": {"dist": "fixed", "value": 10}},
    )
    reqs = load_workload(cfg, 2048, 0)
    assert len(reqs) == 100
    assert all(r.input_len + r.output_len <= 2048 for r in reqs)
    # 300 + 200 per turn: turns 1-4 fit (4 × 500 = 2000), the fifth would not.
    assert max(len(s) for s in sessions_of(reqs, prefix=False)) == 4


def test_sessions_hit_the_prefix_cache_end_to_end() -> None:
    cfg = load_config(
        None,
        [
            "model=llama-3.2-1b",
            "scheduler.enable_prefix_caching=true",
            "workload.num_requests=120",
            "workload.arrival.rate=2",
            "workload.sessions={turns: {dist: fixed, value: 4}, think_time_s: 5}",
        ],
    )
    summary = simulate(cfg).summary
    # Turns 2-4 of each session find their history (prompt and answer) in the cache.
    assert summary["prefix_cache_hit_rate"] > 0.5


def test_prefix_and_sessions_config_errors() -> None:
    with pytest.raises(ConfigError, match="synthetic workloads"):
        load_config(
            None,
            [
                "workload.kind=trace",
                "workload.trace.path=x.jsonl",
                "workload.prefix.system_prompt_len=10",
            ],
        )
    with pytest.raises(ConfigError, match=r"did you mean 'workload\.sessions\.think_time_s'"):
        load_config(None, ["workload.sessions.think_time=3"])
    with pytest.raises(ConfigError, match=r"workload\.prefix\.system_prompt_len"):
        load_config(None, ["workload.prefix.num_system_prompts=3"])
    with pytest.raises(ConfigError, match=r"workload\.prefix\.popularity"):
        load_config(None, ["workload.prefix={system_prompt_len: 3, popularity: pareto}"])
