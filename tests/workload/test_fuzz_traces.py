"""Fuzzed trace files, every format: a valid workload or one clean error naming file and line.

Rows get negative/zero/huge/NaN/inf/non-numeric values, unsorted and duplicate timestamps,
lengths beyond the model context; the file text is truncated, lines are dropped, duplicated,
shuffled or replaced by junk, the header loses a column, a BOM and CRLF line ends appear.
What is rejected, clipped (with a warning) or sorted is listed in docs/robustness.md.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_harness import assert_clean_outcome, examples, quick_run_args, run_cli, time_limit
from llmservingsim.catalog import load_model
from llmservingsim.config import WorkloadConfig
from llmservingsim.errors import InputWarning, TraceError, UserError
from llmservingsim.workload import load_workload

MODEL = "llama-3.2-1b"
MAX_CONTEXT = load_model(MODEL).max_context

CSV_HEADERS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "csv": ("arrival_s", "input_tokens", "output_tokens"),
    "vidur_csv": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
}
JSON_KEYS = {
    "jsonl": ("arrival_time_ns", "input_toks", "output_toks"),
    "mooncake": ("timestamp", "input_length", "output_length"),
}
FORMATS = sorted([*CSV_HEADERS, *JSON_KEYS])

lengths = st.one_of(
    st.integers(1, 4096),
    st.integers(1, 4096),
    st.sampled_from([0, -1, MAX_CONTEXT - 1, MAX_CONTEXT, MAX_CONTEXT + 1, 10**9, 2**63]),
)
junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["", "nan", "inf", "-inf", "1e999", "12.5", "0x1F", " 7 ", "true", "NULL"]),
    st.none(),
    st.booleans(),
)
times = st.one_of(
    st.floats(0, 1e4, allow_nan=False),
    st.integers(0, 10**6),
    st.sampled_from([0, 0, -1, 1e300]),
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values, sometimes junk."""
    return st.one_of(strategy, strategy, strategy, junk)


def azure_time(seconds: Any) -> Any:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds > 1e8:
        return seconds
    whole = int(seconds)
    frac = f"{seconds - whole:.7f}"[2:]
    hours, rest = divmod(whole, 3600)
    return f"2023-11-16 {hours % 24:02d}:{rest // 60:02d}:{rest % 60:02d}.{frac}"


# Outputs the CLI tests simulate: a 131k-token answer is a valid request that takes ~10^5
# decode steps (many seconds), so end-to-end runs keep outputs short; loading tests use all.
short_outputs = st.one_of(st.integers(1, 4096), st.sampled_from([0, -1, 10**9, 2**63]))


@st.composite
def trace_texts(draw: st.DrawFn, fmt: str, outputs: st.SearchStrategy[int] = lengths) -> str:
    rows = draw(st.lists(st.tuples(maybe(times), maybe(lengths), maybe(outputs)), max_size=12))
    if fmt in CSV_HEADERS:
        header = list(CSV_HEADERS[fmt])
        if draw(st.integers(0, 9)) == 0:
            del header[draw(st.integers(0, 2))]
        lines = [",".join(header)]
        for t, a, b in rows:
            t = azure_time(t) if fmt == "azure" else t
            lines.append(",".join(str(v) for v in (t, a, b)))
    else:
        keys = JSON_KEYS[fmt]
        lines = []
        for t, a, b in rows:
            record: dict[str, Any] = dict(zip(keys, (t, a, b), strict=True))
            if draw(st.integers(0, 9)) == 0:
                del record[draw(st.sampled_from(keys))]
            if fmt == "mooncake" and isinstance(b, int) and draw(st.booleans()):
                record["hash_ids"] = draw(st.lists(st.integers(0, 5), max_size=4))
            lines.append(json.dumps(record, allow_nan=True))
    for _ in range(draw(st.integers(0, 2))):
        action = draw(st.sampled_from(["drop", "dup", "swap", "junk", "cut"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif action == "junk":
            lines[i] = draw(st.text(max_size=30))
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    end = "\r\n" if draw(st.booleans()) else "\n"
    text = end.join(lines) + (end if draw(st.booleans()) else "")
    return ("\ufeff" if draw(st.booleans()) else "") + text


def workload(path: Path, fmt: str) -> WorkloadConfig:
    return WorkloadConfig.model_validate(
        {"kind": "trace", "trace": {"path": str(path), "format": fmt}}
    )


def check_loaded(path: Path, fmt: str) -> None:
    """Either a valid request list or a TraceError naming the file (and its line)."""
    try:
        with time_limit(10), warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            requests = load_workload(workload(path, fmt), MAX_CONTEXT, seed=0)
    except TraceError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message
        return
    assert requests, "an empty trace must be an error"
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals)
    assert all(math.isfinite(t) and t >= 0 for t in arrivals)
    for r in requests:
        assert 1 <= r.input_len <= MAX_CONTEXT - 1
        assert r.output_len >= 1 and r.input_len + r.output_len <= MAX_CONTEXT
    assert [r.id for r in requests] == list(range(len(requests)))


SETTINGS = settings(
    max_examples=examples(ci=40, fuzz=1000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(data=st.data())
def test_fuzzed_trace_loads_or_fails_with_file_and_line(
    tmp_path: Path, fmt: str, data: st.DataObject
) -> None:
    path = tmp_path / f"trace.{fmt}"
    path.write_text(data.draw(trace_texts(fmt)), encoding="utf-8", newline="")
    check_loaded(path, fmt)


@settings(
    max_examples=examples(ci=25, fuzz=800),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_fuzzed_trace_through_the_cli(tmp_path: Path, fmt: str, data: st.DataObject) -> None:
    path = tmp_path / f"trace.{fmt}"
    path.write_text(data.draw(trace_texts(fmt, short_outputs)), encoding="utf-8", newline="")
    args = ["run", "--set", f"model={MODEL}", "--set", "workload.kind=trace"]
    args += ["--set", f"workload.trace.path={path}", "--set", f"workload.trace.format={fmt}"]
    result = run_cli([*args, *quick_run_args(tmp_path / "out")])
    assert_clean_outcome(result, names=(str(path),))


@settings(
    max_examples=examples(ci=15, fuzz=300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(fmt=st.sampled_from(FORMATS), raw=st.binary(max_size=200))
def test_binary_garbage_trace_fails_cleanly(tmp_path: Path, fmt: str, raw: bytes) -> None:
    path = tmp_path / "trace.bin"
    path.write_bytes(raw)
    try:
        check_loaded(path, fmt)
    except UserError as exc:  # pragma: no cover - check_loaded only lets TraceError through
        pytest.fail(f"unexpected {type(exc).__name__}: {exc}")


def test_lengths_beyond_the_context_are_clipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(f"arrival_s,input_tokens,output_tokens\n0,{MAX_CONTEXT * 2},10\n1,100,5\n")
    with pytest.warns(InputWarning, match=r"long\.csv.*1 request.*line 2"):
        requests = load_workload(workload(path, "csv"), MAX_CONTEXT, seed=0)
    assert requests[0].input_len == MAX_CONTEXT - 1
    assert requests[0].output_len == 1
    assert (requests[1].input_len, requests[1].output_len) == (100, 5)


def test_unsorted_and_duplicate_timestamps_are_sorted_stably(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n2,30,1\n1,10,1\n2,40,1\n1,20,1\n")
    requests = load_workload(workload(path, "csv"), MAX_CONTEXT, seed=0)
    assert [(r.arrival_s, r.input_len) for r in requests] == [
        (1.0, 10),
        (1.0, 20),
        (2.0, 30),
        (2.0, 40),
    ]


def test_run_prints_the_clipping_warning_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(f"arrival_s,input_tokens,output_tokens\n0,{MAX_CONTEXT * 2},10\n")
    args = ["run", "--set", f"model={MODEL}", "--set", "workload.kind=trace"]
    args += ["--set", f"workload.trace.path={path}", "--set", "workload.trace.format=csv"]
    result = run_cli([*args, *quick_run_args(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 1
    assert str(path) in warning_lines[0] and "clipped" in warning_lines[0]


def test_a_bad_row_after_a_clipped_one_prints_only_the_error(tmp_path: Path) -> None:
    """Found by the fuzzer: the clipping warning came out before the error of a later check."""
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": []}\n'
        f'{{"timestamp": 0, "input_length": 1, "output_length": {MAX_CONTEXT}}}\n'
    )
    args = ["run", "--set", f"model={MODEL}", "--set", "workload.kind=trace"]
    args += ["--set", f"workload.trace.path={path}", "--set", "workload.trace.format=mooncake"]
    result = run_cli([*args, *quick_run_args(tmp_path / "out")])
    assert result.exit_code == 2
    assert_clean_outcome(result, names=(f"{path}:1",))


def test_arrival_beyond_int64_nanoseconds_names_the_line(tmp_path: Path) -> None:
    """Found by the fuzzer: a Mooncake timestamp of 9.2e12 ms overflowed numpy's int64."""
    cases = {
        "mooncake": '{"timestamp": 9223372036855.0, "input_length": 1, "output_length": 1}\n',
        "azure": "TIMESTAMP,ContextTokens,GeneratedTokens\n9999-12-31 23:59:59.0,5,5\n",
    }
    for fmt, text in cases.items():
        path = tmp_path / f"t.{fmt}"
        path.write_text(text)
        with pytest.raises(TraceError, match=rf"t\.{fmt}:\d: .*before year 2262"):
            load_workload(workload(path, fmt), MAX_CONTEXT, seed=0)
