"""Workload generation and trace reading: distributions, arrivals, clipping, formats, errors."""

from __future__ import annotations

import itertools
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.config import ArrivalConfig, TraceConfig, WorkloadConfig
from llmservingsim.errors import InputWarning, TraceError
from llmservingsim.workload import (
    TRACE_FORMATS,
    RequestSpec,
    arrival_times,
    clip_to_context,
    generate_synthetic,
    load_workload,
    sample_lengths,
)

DATA = Path(__file__).parents[2].parent / "shared" / "data"
TRACES = DATA / "traces"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder is absent")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def dist(spec: dict[str, Any]) -> Any:
    """A validated length distribution, as the config would build it."""
    return WorkloadConfig.model_validate({"input_len": spec}).input_len


def arrival(**kw: Any) -> ArrivalConfig:
    return ArrivalConfig.model_validate(kw)


def trace_cfg(path: Path, fmt: str, **kw: Any) -> WorkloadConfig:
    trace = {"path": str(path), "format": fmt, **kw}
    return WorkloadConfig.model_validate({"kind": "trace", "trace": trace})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- lengths

N = 200_000


def test_fixed_length() -> None:
    assert set(sample_lengths(dist({"dist": "fixed", "value": 7}), 100, rng()).tolist()) == {7}


def test_uniform_length_mean_and_bounds() -> None:
    x = sample_lengths(dist({"dist": "uniform", "min": 10, "max": 20}), N, rng())
    assert x.min() == 10 and x.max() == 20
    assert abs(x.mean() - 15) < 0.05


def test_normal_length_mean_and_clip() -> None:
    x = sample_lengths(dist({"dist": "normal", "mean": 500, "std": 50}), N, rng())
    assert abs(x.mean() - 500) < 1.0
    assert abs(x.std() - 50) < 1.0
    y = sample_lengths(
        dist({"dist": "normal", "mean": 100, "std": 80, "min": 20, "max": 150}), N, rng()
    )
    assert y.min() == 20 and y.max() == 150


def test_lognormal_length_takes_the_mean() -> None:
    x = sample_lengths(dist({"dist": "lognormal", "mean": 1000, "sigma": 0.5}), N, rng())
    assert abs(x.mean() / 1000 - 1) < 0.01
    # median is exp(mu) = mean * exp(-sigma²/2), not the mean
    assert abs(np.median(x) / (1000 * math.exp(-0.125)) - 1) < 0.01
    y = sample_lengths(
        dist({"dist": "lognormal", "mean": 1000, "sigma": 1.5, "min": 50, "max": 4000}), N, rng()
    )
    assert y.min() == 50 and y.max() == 4000


def test_zipf_length_probabilities_and_bounds() -> None:
    x = sample_lengths(dist({"dist": "zipf", "alpha": 1.2, "min": 5, "max": 100}), N, rng())
    assert x.min() == 5 and x.max() <= 100
    k = np.arange(5, 101, dtype=float)
    p = k**-1.2 / np.sum(k**-1.2)
    assert abs(np.mean(x == 5) - p[0]) < 0.005
    assert abs(x.mean() - np.sum(k * p)) < 0.3


def test_empirical_length_draws_listed_values() -> None:
    x = sample_lengths(dist({"dist": "empirical", "values": [3, 3, 9]}), N, rng())
    assert set(x.tolist()) == {3, 9}
    assert abs(np.mean(x == 3) - 2 / 3) < 0.01


length_specs = st.one_of(
    st.builds(lambda v: {"dist": "fixed", "value": v}, st.integers(1, 10**6)),
    st.builds(
        lambda a, b: {"dist": "uniform", "min": min(a, b), "max": max(a, b)},
        st.integers(1, 10**5),
        st.integers(1, 10**5),
    ),
    st.builds(
        lambda m, s: {"dist": "normal", "mean": m, "std": s},
        st.floats(1, 1e5),
        st.floats(0, 1e5),
    ),
    st.builds(
        lambda m, s: {"dist": "lognormal", "mean": m, "sigma": s},
        st.floats(1, 1e5),
        st.floats(0, 3),
    ),
    st.builds(
        lambda a, m: {"dist": "zipf", "alpha": a, "max": m},
        st.floats(0.1, 3),
        st.integers(1, 5000),
    ),
    st.builds(
        lambda v: {"dist": "empirical", "values": v},
        st.lists(st.integers(1, 10**6), min_size=1, max_size=5),
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    inp=length_specs, out=length_specs, max_context=st.integers(2, 10**5), seed=st.integers(0, 99)
)
def test_synthetic_requests_fit_the_context(
    inp: dict[str, Any], out: dict[str, Any], max_context: int, seed: int
) -> None:
    cfg = WorkloadConfig.model_validate({"num_requests": 50, "input_len": inp, "output_len": out})
    reqs = generate_synthetic(cfg, max_context, rng(seed))
    assert len(reqs) == 50
    for r in reqs:
        assert isinstance(r.input_len, int) and isinstance(r.output_len, int)
        assert 1 <= r.input_len <= max_context - 1
        assert r.output_len >= 1
        assert r.input_len + r.output_len <= max_context


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1),
    max_context=st.integers(2, 10**5),
)
def test_clip_to_context(pairs: list[tuple[int, int]], max_context: int) -> None:
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    inp, out = clip_to_context(a, b, max_context)
    assert np.all(inp >= 1) and np.all(inp <= max_context - 1)
    assert np.all(out >= 1) and np.all(inp + out <= max_context)
    fits = (a >= 1) & (b >= 1) & (a + b <= max_context)
    assert np.array_equal(inp[fits], a[fits]) and np.array_equal(out[fits], b[fits])


# ----------------------------------------------------------------------------- arrivals


def gaps(times: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.diff(np.concatenate([[0.0], times]))


def test_poisson_arrivals_rate_and_cv() -> None:
    t = arrival_times(arrival(process="poisson", rate=4.0), N, rng())
    g = gaps(t)
    assert t[0] > 0  # the first gap counts
    assert np.all(g >= 0)
    assert abs(g.mean() - 0.25) < 0.003
    assert abs(g.std() / g.mean() - 1.0) < 0.02


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_arrivals_cv(cv: float) -> None:
    g = gaps(arrival_times(arrival(process="gamma", rate=10.0, cv=cv), N, rng()))
    assert abs(g.mean() - 0.1) < 0.1 * 0.02 * max(cv, 1)
    assert abs(g.std() / g.mean() - cv) < 0.05 * cv


def test_constant_arrivals() -> None:
    t = arrival_times(arrival(process="constant", rate=2.0), 5, rng())
    assert np.allclose(t, [0.5, 1.0, 1.5, 2.0, 2.5])


def test_burst_arrivals_come_in_groups() -> None:
    n, size = 10_003, 10
    t = arrival_times(arrival(process="burst", rate=5.0, burst_size=size), n, rng())
    groups = t.reshape(-1)[: n - n % size].reshape(-1, size)
    assert np.all(groups == groups[:, :1])  # each group arrives at one instant
    assert np.all(np.diff(groups[:, 0]) > 0)
    assert np.all(t[n - n % size :] == t[-1])  # the short last group too
    assert abs(n / t[-1] - 5.0) < 0.5


@pytest.mark.parametrize("process", ["poisson", "gamma", "constant", "burst"])
def test_infinite_rate_puts_everything_at_zero(process: str) -> None:
    rate = yaml.safe_load("rate: .inf")["rate"]
    cfg = WorkloadConfig.model_validate(
        {"num_requests": 64, "arrival": {"process": process, "rate": rate}}
    )
    reqs = load_workload(cfg, 4096, seed=3)
    assert [r.arrival_s for r in reqs] == [0.0] * 64
    assert [r.id for r in reqs] == list(range(64))


@pytest.mark.parametrize("process", ["poisson", "gamma", "constant", "burst"])
def test_arrivals_sorted(process: str) -> None:
    t = arrival_times(arrival(process=process, rate=3.0, cv=2.5, burst_size=4), 1000, rng())
    assert np.all(np.diff(t) >= 0) and t.shape == (1000,)


# ----------------------------------------------------------------------------- synthetic


def test_same_seed_same_requests_other_seed_differs() -> None:
    cfg = WorkloadConfig(num_requests=200)
    assert load_workload(cfg, 8192, seed=7) == load_workload(cfg, 8192, seed=7)
    assert load_workload(cfg, 8192, seed=7) != load_workload(cfg, 8192, seed=8)


@pytest.mark.parametrize("process", ["poisson", "gamma", "constant", "burst"])
def test_rate_changes_only_rescale_arrivals(process: str) -> None:
    def run(rate: float) -> list[RequestSpec]:
        cfg = WorkloadConfig.model_validate(
            {"num_requests": 300, "arrival": {"process": process, "rate": rate, "cv": 1.5}}
        )
        return load_workload(cfg, 8192, seed=11)

    slow, fast = run(2.0), run(8.0)
    assert [(r.input_len, r.output_len) for r in slow] == [
        (r.input_len, r.output_len) for r in fast
    ]
    assert np.allclose([4 * r.arrival_s for r in fast], [r.arrival_s for r in slow])
    inf = run(math.inf)
    assert [(r.input_len, r.output_len) for r in inf] == [(r.input_len, r.output_len) for r in slow]


def test_process_change_keeps_lengths() -> None:
    a = WorkloadConfig.model_validate({"num_requests": 100, "arrival": {"process": "poisson"}})
    b = WorkloadConfig.model_validate({"num_requests": 100, "arrival": {"process": "burst"}})
    la, lb = load_workload(a, 8192, 5), load_workload(b, 8192, 5)
    assert [(r.input_len, r.output_len) for r in la] == [(r.input_len, r.output_len) for r in lb]


# ----------------------------------------------------------------------------- traces


def test_formats_registry_matches_config() -> None:
    literal, none = typing.get_args(TraceConfig.model_fields["format"].annotation)
    assert none is type(None)  # null: the format is detected from the file
    assert sorted(typing.get_args(literal)) == TRACE_FORMATS.names()


AZURE_TEXT = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
    "2023-11-16 18:16:00.0000001,10,0\n"
)


def test_azure_trace(tmp_path: Path) -> None:
    path = write(tmp_path, "azure.csv", AZURE_TEXT)
    reqs = load_workload(trace_cfg(path, "azure"), 8192, 0)
    assert [(r.id, r.input_len, r.output_len) for r in reqs] == [
        (0, 374, 44),
        (1, 396, 109),
        (2, 10, 1),  # output 0 → 1
    ]
    assert reqs[0].arrival_s == 0.0
    assert reqs[1].arrival_s == pytest.approx(4.314579, abs=1e-9)
    assert reqs[2].arrival_s == pytest.approx(13.3194101, abs=1e-9)


def test_azure_trace_without_trailing_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "azure.csv", AZURE_TEXT.rstrip("\n"))
    assert len(load_workload(trace_cfg(path, "azure"), 8192, 0)) == 3


def test_llmservingsim_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "lss.jsonl",
        '{"input_toks": 3, "output_toks": 70, "arrival_time_ns": 46926808, '
        '"input_tok_ids": [1, 2, 3]}\n'
        "\n"
        '{"input_toks": 22, "output_toks": 104, "arrival_time_ns": 347938952}\n',
    )
    reqs = load_workload(trace_cfg(path, "jsonl"), 8192, 0)
    assert [(r.input_len, r.output_len) for r in reqs] == [(3, 70), (22, 104)]
    assert [r.arrival_s for r in reqs] == pytest.approx([0.046926808, 0.347938952], abs=1e-12)


MOONCAKE_TEXT = (
    '{"timestamp": 0, "input_length": 700, "output_length": 500, "hash_ids": [0, 1]}\n'
    '{"timestamp": 1500, "input_length": 20, "output_length": 5, "hash_ids": [2]}\n'
)


@pytest.mark.parametrize("fmt", ["jsonl", "mooncake"])
def test_mooncake_keys(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, "moon.jsonl", MOONCAKE_TEXT)
    reqs = load_workload(trace_cfg(path, fmt), 8192, 0)
    assert [(r.arrival_s, r.input_len, r.output_len) for r in reqs] == [
        (0.0, 700, 500),
        (1.5, 20, 5),
    ]


def test_mooncake_format_rejects_llmservingsim_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path, "lss.jsonl", '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0}\n'
    )
    with pytest.raises(TraceError, match=r"lss\.jsonl:1: .*input_length"):
        load_workload(trace_cfg(path, "mooncake"), 8192, 0)


def test_replay_csv_sorts_scales_and_truncates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "replay.csv",
        "arrival_s,input_tokens,output_tokens\n2.0,30,3\n1.0,10,1\n2.0,40,4\n0.5,5,5\n",
    )
    reqs = load_workload(trace_cfg(path, "csv", time_scale=2.0, max_requests=3), 8192, 0)
    assert [(r.id, r.arrival_s, r.input_len) for r in reqs] == [
        (0, 1.0, 5),
        (1, 2.0, 10),
        (2, 4.0, 30),  # stable: the earlier row of the tie comes first
    ]


def test_vidur_csv_with_arrivals(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "vidur.csv",
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,374,44\n4.314579,396.0,109\n",
    )
    reqs = load_workload(trace_cfg(path, "vidur_csv"), 8192, 0)
    assert [(r.arrival_s, r.input_len, r.output_len) for r in reqs] == [
        (0.0, 374, 44),
        (4.314579, 396, 109),
    ]


def test_vidur_csv_without_arrivals_uses_the_arrival_process(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "arxiv.csv",
        "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
        "3772,54,3826,69.8\n2015,156,2171,12.9\n100,1,101,100.0\n",
    )
    cfg = WorkloadConfig.model_validate(
        {
            "kind": "trace",
            "arrival": {"process": "constant", "rate": 4.0},
            "trace": {"path": str(path), "format": "vidur_csv", "max_requests": 2},
        }
    )
    reqs = load_workload(cfg, 8192, 0)
    assert [(r.arrival_s, r.input_len, r.output_len) for r in reqs] == [
        (0.25, 3772, 54),
        (0.5, 2015, 156),
    ]


def test_trace_lengths_clipped_to_context(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "replay.csv",
        "arrival_s,input_tokens,output_tokens\n0,5000,10\n1,900,500\n2,10,20\n",
    )
    with pytest.warns(InputWarning, match="2 request"):
        reqs = load_workload(trace_cfg(path, "csv"), 1000, 0)
    assert [(r.input_len, r.output_len) for r in reqs] == [(999, 1), (900, 100), (10, 20)]


BAD_ROWS = [
    ("azure", "t.csv", AZURE_TEXT + "2023-11-16 18:16:01.0,abc,5\n", 5, "'ContextTokens' is 'abc'"),
    ("azure", "t.csv", AZURE_TEXT + "2023-11-16 18:16:01.0,5,-1\n", 5, "'GeneratedTokens'"),
    ("azure", "t.csv", AZURE_TEXT + "yesterday,5,5\n", 5, "'TIMESTAMP' is 'yesterday'"),
    ("azure", "t.csv", AZURE_TEXT + "2023-11-16 18:16:01.0,5\n", 5, "expected 3 fields"),
    ("azure", "t.csv", AZURE_TEXT + "2023-11-16 18:16:01.0,0,5\n", 5, "at least 1 input token"),
    ("csv", "r.csv", "arrival_s,input_tokens,output_tokens\n1,2,3\n-1,2,3\n", 3, "'arrival_s'"),
    ("csv", "r.csv", "arrival_s,input_tokens,output_tokens\n1,2.5,3\n", 2, "'input_tokens'"),
    ("csv", "r.csv", "arrival_s,input_tokens,output_tokens\n1,2,3\nnan,2,3\n", 3, "'arrival_s'"),
    ("vidur_csv", "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,x,1\n", 2, "x"),
    ("jsonl", "j.jsonl", '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0}\n{oops\n', 2,
     "invalid JSON"),
    ("jsonl", "j.jsonl", '\n\n{"input_toks": 1, "arrival_time_ns": 0}\n', 3, "output_toks"),
    ("jsonl", "j.jsonl", "[1, 2, 3]\n", 1, "JSON object"),
    ("jsonl", "j.jsonl", '{"prompt": "hi"}\n', 1, "input_toks"),
    ("jsonl", "j.jsonl", '{"input_toks": "10", "output_toks": true, "arrival_time_ns": 0}\n', 1,
     "'output_toks' is True"),
    ("mooncake", "m.jsonl", '{"timestamp": -5, "input_length": 3, "output_length": 1}\n', 1,
     "'timestamp'"),
    ("mooncake", "m.jsonl", '{"timestamp": 5, "input_length": 0, "output_length": 1}\n', 1,
     "'input_length' is 0"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "name", "text", "line", "what"), BAD_ROWS)
def test_bad_row_names_file_and_line(
    tmp_path: Path, fmt: str, name: str, text: str, line: int, what: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        load_workload(trace_cfg(path, fmt), 8192, 0)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert what in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("fmt", "columns"),
    [
        ("azure", "TIMESTAMP, ContextTokens, GeneratedTokens"),
        ("csv", "arrival_s, input_tokens, output_tokens"),
        ("vidur_csv", "arrived_at, num_prefill_tokens, num_decode_tokens"),
        ("jsonl", "input_toks, output_toks"),
        ("mooncake", "timestamp, input_length, output_length"),
    ],
)
def test_missing_file(tmp_path: Path, fmt: str, columns: str) -> None:
    path = tmp_path / "nope.trace"
    with pytest.raises(TraceError) as info:
        load_workload(trace_cfg(path, fmt), 8192, 0)
    assert str(path) in str(info.value) and columns in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "header", "missing"),
    [
        ("azure", "TIMESTAMP,Context,GeneratedTokens", "ContextTokens"),
        ("csv", "input_tokens,output_tokens", "arrival_s"),
        ("vidur_csv", "arrived_at,num_prefill_tokens", "num_decode_tokens"),
    ],
)
def test_missing_column(tmp_path: Path, fmt: str, header: str, missing: str) -> None:
    path = write(tmp_path, "h.csv", header + "\n1,2,3\n")
    with pytest.raises(TraceError, match=rf"h\.csv:1: missing column\(s\) {missing}; expected"):
        load_workload(trace_cfg(path, fmt), 8192, 0)


def test_empty_trace(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "arrival_s,input_tokens,output_tokens\n")
    with pytest.raises(TraceError, match="no requests"):
        load_workload(trace_cfg(path, "csv"), 8192, 0)


# ----------------------------------------------------------------------------- shared data


@needs_data
def test_real_azure_conv() -> None:
    path = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    reqs = load_workload(trace_cfg(path, "azure"), 131072, 0)
    assert len(reqs) == 19366
    assert reqs[1].arrival_s == pytest.approx(4.314579, abs=1e-9)
    assert 3000 < reqs[-1].arrival_s < 3600
    vidur = load_workload(
        trace_cfg(TRACES / "vidur" / "splitwise_conv.csv", "vidur_csv"), 131072, 0
    )
    assert [(r.input_len, r.output_len) for r in vidur] == [
        (r.input_len, r.output_len) for r in reqs
    ]
    assert np.allclose([r.arrival_s for r in vidur], [r.arrival_s for r in reqs], atol=1e-5)


@needs_data
def test_real_mooncake_conversation() -> None:
    path = TRACES / "mooncake" / "conversation_trace.jsonl"
    reqs = load_workload(trace_cfg(path, "mooncake"), 1 << 20, 0)
    assert len(reqs) == 12031
    assert np.mean([r.input_len for r in reqs]) == pytest.approx(12035, rel=0.01)
    assert np.mean([r.output_len for r in reqs]) == pytest.approx(343, rel=0.01)
    assert len(load_workload(trace_cfg(path, "jsonl", max_requests=100), 1 << 20, 0)) == 100


@needs_data
def test_real_replay_csv() -> None:
    path = TRACES / "replay" / "llama-3.1-70b_lmsys_05_8tp.csv"
    reqs = load_workload(trace_cfg(path, "csv"), 131072, 0)
    with path.open() as handle:
        assert len(reqs) == sum(1 for line in handle if line.strip()) - 1
    assert reqs[0].arrival_s == pytest.approx(1.50020348)
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(reqs))


@needs_data
def test_real_llmservingsim_and_arxiv() -> None:
    lss = TRACES / "llmservingsim" / "v1.0.0" / "sharegpt_req300_rate10_llama.jsonl"
    assert len(load_workload(trace_cfg(lss, "jsonl"), 131072, 0)) == 300
    arxiv = TRACES / "vidur" / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
    reqs = load_workload(trace_cfg(arxiv, "vidur_csv"), 4096, 0)
    assert len(reqs) == 28257
    assert all(r.input_len + r.output_len <= 4096 for r in reqs)
