"""trace.json: valid Chrome trace events, monotonic per track, bounded by sampling."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunToDir
from llmservingsim.metrics.request_log import STATUSES, RequestChunk, RequestRecord
from llmservingsim.metrics.steps import StepChunk
from llmservingsim.outputs import run_outputs
from llmservingsim.outputs.trace import TraceRecorder, request_stride
from trace_reference import reference_text


def load_events(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = json.loads(path.read_text())
    return doc["otherData"], doc["traceEvents"]


def check_valid(events: list[dict[str, Any]]) -> None:
    """Required fields per phase, and timestamps never going back within one track."""
    last: dict[tuple[Any, ...], float] = {}
    open_async: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for e in events:
        assert e["ph"] in {"M", "X", "C", "b", "e"}
        assert isinstance(e["name"], str) and isinstance(e["pid"], int)
        if e["ph"] == "M":
            continue
        assert e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0 and "tid" in e
            track: tuple[Any, ...] = ("X", e["pid"], e["tid"])
        elif e["ph"] == "C":
            track = ("C", e["pid"], e["name"])
            assert all(isinstance(v, int | float) for v in e["args"].values())
        else:
            track = ("async", e["pid"], e["cat"], e["id"])
            stack = open_async[track]
            if e["ph"] == "b":
                stack.append(e["name"])
            else:
                assert stack.pop() == e["name"]
        assert e["ts"] >= last.get(track, 0.0), f"time goes back on {track}"
        last[track] = e["ts"]
    assert not any(open_async.values()), "unbalanced async slices"


def test_trace_of_a_run(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir()
    meta, events = load_events(out / "trace.json")
    check_valid(events)
    steps = [e for e in events if e["ph"] == "X"]
    assert len(steps) == result.summary["iterations"] == meta["steps_total"]
    assert {e["name"] for e in steps} <= {"prefill", "decode", "mixed"}
    assert (
        sum(e["args"]["decode_tokens"] for e in steps) == result.summary["decode_tokens_computed"]
    )
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {"instance 0"}
    requests = [e for e in events if e["ph"] == "b" and e["name"].startswith("request ")]
    assert len(requests) == 60
    phases = [e["name"] for e in events if e["ph"] == "b" and e["id"] == 0]
    assert phases[0] == "request 0"
    assert phases[1:] in (["queued", "prefill", "decode"], ["prefill", "decode"])
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert counters == {"KV blocks used", "queue"}


def test_sampling_bounds_the_trace(run_to_dir: RunToDir) -> None:
    out, result = run_to_dir("outputs.trace_max_steps=100", "outputs.trace_request_every=7")
    meta, events = load_events(out / "trace.json")
    check_valid(events)
    steps = [e for e in events if e["ph"] == "X"]
    assert 50 < len(steps) <= 100
    assert meta["step_every"] > 1
    assert {e["args"]["step"] % meta["step_every"] for e in steps} == {0}
    # The kept steps span the whole run, not just its start.
    assert max(e["ts"] for e in steps) > 0.8e6 * result.summary["simulated_time_s"]
    ids = {e["id"] for e in events if e["ph"] == "b"}
    assert ids == set(range(0, 60, 7))


def test_request_stride() -> None:
    assert request_stride(100_000, 0, 10_000) == 10
    assert request_stride(100_001, 0, 10_000) == 11
    assert request_stride(50, 0, 10_000) == 1
    assert request_stride(100_000, 3, 10_000) == 3


def test_pipeline_parallel_steps_get_a_thread_per_virtual_engine(run_to_dir: RunToDir) -> None:
    out, _ = run_to_dir("cluster.pipeline_parallel=2", "workload.arrival.rate=40")
    _, events = load_events(out / "trace.json")
    check_valid(events)  # micro-batches overlap in time, but never on one thread
    tids = {e["tid"] for e in events if e["ph"] == "X"}
    assert tids == {0, 1}
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"steps", "steps (virtual engine 1)"}


def test_disaggregated_requests_span_their_prefill_and_decode_instances(
    run_to_dir: RunToDir,
) -> None:
    out, result = run_to_dir(
        "cluster.pools=[{name: p, role: prefill, count: 1}, {name: d, role: decode, count: 2}]"
    )
    _, events = load_events(out / "trace.json")
    check_valid(events)
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {
        0: "instance 0 (p, prefill)",
        1: "instance 1 (d, decode)",
        2: "instance 2 (d, decode)",
    }
    for record in result.metrics.records[:10]:
        mine = [(e["pid"], e["name"]) for e in events if e["ph"] == "b" and e["id"] == record.id]
        queued = [(0, "queued")] if record.first_scheduled_s > record.arrival_s else []
        transfer = [(record.instance, "kv transfer")] if record.kv_transfer_s > 0 else []
        assert mine == [
            (0, f"request {record.id}"),
            *queued,
            (0, "prefill"),
            (record.instance, f"request {record.id}"),
            *transfer,
            (record.instance, "decode"),
        ]
    table = pq.read_table(out / "requests.parquet").to_pylist()
    assert {row["prefill_instance"] for row in table} == {0}
    assert all(row["kv_transfer_s"] > 0 for row in table)
    assert {row["instance"] for row in table} == {1, 2}


class RememberedRecorder(TraceRecorder):
    """The run's recorder, kept with what it was asked to write."""

    seen: ClassVar[list[tuple[TraceRecorder, list[str], dict[str, Any] | None]]] = []

    def write(
        self, path: Path, instance_names: Sequence[str], metadata: dict[str, Any] | None = None
    ) -> Path:
        RememberedRecorder.seen.append((self, list(instance_names), metadata))
        return super().write(path, instance_names, metadata)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("cluster.pipeline_parallel=2", "workload.arrival.rate=40"),
        ("cluster.pools=[{name: p, role: prefill, count: 1}, {name: d, role: decode, count: 2}]",),
        ("cluster.instances=3", "outputs.trace_max_steps=100", "outputs.trace_request_every=7"),
        ("workload.num_requests=300", "workload.arrival.rate=12500", "scheduler.max_queue=32"),
    ],
    ids=["one-instance", "pp2", "pd", "thinned-3-instances", "rejected"],
)
def test_trace_text_is_the_json_dumps_of_each_event(
    run_to_dir: RunToDir, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...]
) -> None:
    monkeypatch.setattr(run_outputs, "TraceRecorder", RememberedRecorder)
    monkeypatch.setattr(RememberedRecorder, "seen", [])
    out, _ = run_to_dir(*overrides)
    [(recorder, names, metadata)] = RememberedRecorder.seen
    assert (out / "trace.json").read_text() == reference_text(recorder, names, metadata)


_times = (
    st.floats(-1e300, 1e300)
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
    | st.floats(-1.0, 100.0)
)
_counts = st.integers(0, 2**31 - 1)


@st.composite
def request_records(draw: st.DrawFn) -> RequestRecord:
    status = draw(st.sampled_from(STATUSES))
    return RequestRecord(
        id=draw(st.integers(0, 2**62)),
        instance=draw(st.integers(0, 9)),
        arrival_s=draw(_times),
        first_token_s=draw(_times),
        finish_s=draw(_times),
        input_tokens=draw(_counts),
        output_tokens=draw(_counts),
        cached_tokens=0,
        preemptions=draw(st.integers(0, 5)),
        status=status,
        fail_reason="" if status == "finished" else draw(st.text()),
        prefill_instance=draw(st.sampled_from([-1, 0, 3])),
        kv_transfer_s=draw(_times),
        first_scheduled_s=draw(_times),
    )


@st.composite
def step_chunks(draw: st.DrawFn) -> StepChunk:
    n = draw(st.integers(0, 40))
    ints = st.lists(st.integers(0, 3), min_size=n, max_size=n)
    floats = st.lists(_times, min_size=n, max_size=n)
    columns: dict[str, np.ndarray[Any, Any]] = {}
    for name in StepChunk.__dataclass_fields__:
        is_float = name in ("start_s", "duration_s", "power_w")
        values = draw(floats if is_float else ints)
        columns[name] = np.array(values, dtype=np.float64 if is_float else np.int64)
    return StepChunk(**columns)


@settings(max_examples=40, deadline=None)
@given(
    records=st.lists(request_records(), max_size=8),
    chunks=st.lists(step_chunks(), max_size=3),
    max_steps=st.integers(1, 60),
)
def test_any_steps_and_requests_encode_as_json_dumps_would(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[RequestRecord],
    chunks: list[StepChunk],
    max_steps: int,
) -> None:
    """Odd values too: NaN and infinite times, quotes and non-ASCII text in a fail reason."""
    recorder = TraceRecorder(len(records), 1, 10_000, max_steps)
    if records:
        recorder.write_requests(RequestChunk.from_records(records))
    for chunk in chunks:
        recorder.write_steps(chunk)
    path = tmp_path_factory.mktemp("trace") / "trace.json"
    names = [f'instance "{i}" ü' for i in range(10)]
    recorder.write(path, names, {"config": {"seed": 1}})
    assert path.read_text() == reference_text(recorder, names, {"config": {"seed": 1}})
