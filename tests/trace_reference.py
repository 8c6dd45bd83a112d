"""The straightforward trace.json encoding: every event a dict, each dumped by ``json.dumps``.

This is how trace.json was written before its events were formatted in bulk
(outputs/trace.py); tests compare the two texts byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from llmservingsim import __version__
from llmservingsim.metrics.request_log import RequestRecord
from llmservingsim.metrics.steps import StepChunk
from llmservingsim.outputs.trace import TraceRecorder

_US = 1e6


def reference_text(
    recorder: TraceRecorder, instance_names: Sequence[str], metadata: dict[str, Any] | None
) -> str:
    """The whole file, as :meth:`TraceRecorder.write` must write it."""
    sampling = {
        "request_every": recorder.request_every,
        "requests_kept": len(recorder._requests),
        "step_every": recorder.step_every,
        "steps_kept": recorder._num_kept,
        "steps_total": recorder._steps_seen,
    }
    other = {"generator": f"llmservingsim {__version__}", **sampling, **(metadata or {})}
    lines = [json.dumps(e, separators=(",", ":")) for e in events(recorder, instance_names)]
    head = '{"displayTimeUnit": "ms", "otherData": ' + json.dumps(other)
    return head + ', "traceEvents": [\n' + ",\n".join(lines) + "\n]}\n"


def events(recorder: TraceRecorder, instance_names: Sequence[str]) -> Iterator[dict[str, Any]]:
    for pid, name in enumerate(instance_names):
        yield {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}
        yield {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}
    steps = StepChunk.concat([chunk for _, chunk in recorder._kept])
    threads = set(zip(steps.instance.tolist(), steps.engine.tolist(), strict=True))
    for pid, tid in sorted(threads):
        name = "steps" if tid == 0 else f"steps (virtual engine {tid})"
        yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
    for numbers, chunk in recorder._kept:
        yield from step_events(numbers, chunk)
    pids, times = steps.instance.tolist(), (steps.start_s * _US).tolist()
    yield from counter_events(
        "KV blocks used", "blocks", pids, times, steps.kv_blocks_used.tolist()
    )
    yield from counter_events("queue", "waiting", pids, times, steps.waiting.tolist())
    for record in sorted(recorder._requests, key=lambda r: r.id):
        yield from request_events(record)


def step_events(numbers: np.ndarray[Any, Any], s: StepChunk) -> Iterator[dict[str, Any]]:
    columns = zip(
        numbers.tolist(),
        s.instance.tolist(),
        s.engine.tolist(),
        (s.start_s * _US).tolist(),
        (s.duration_s * _US).tolist(),
        s.num_seqs.tolist(),
        s.prefill_tokens.tolist(),
        s.decode_tokens.tolist(),
        strict=True,
    )
    for step, pid, tid, ts, dur, seqs, prefill, decode in columns:
        name = "mixed" if prefill and decode else "prefill" if prefill else "decode"
        yield {
            "ph": "X",
            "name": name,
            "cat": "step",
            "pid": pid,
            "tid": tid,
            "ts": ts,
            "dur": dur,
            "args": {
                "step": step,
                "batch_size": seqs,
                "prefill_tokens": prefill,
                "decode_tokens": decode,
            },
        }


def counter_events(
    name: str, arg: str, pids: list[int], times: list[float], values: list[int]
) -> Iterator[dict[str, Any]]:
    last: dict[int, int] = {}
    for pid, ts, value in zip(pids, times, values, strict=True):
        if last.get(pid) != value:
            last[pid] = value
            yield {"ph": "C", "name": name, "pid": pid, "ts": ts, "args": {arg: value}}


def _async(ph: str, name: str, r: RequestRecord, t: float, pid: int, **args: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ph": ph,
        "name": name,
        "cat": "request",
        "id": r.id,
        "pid": pid,
        "ts": t * _US,
    }
    if args:
        event["args"] = args
    return event


def request_events(r: RequestRecord) -> Iterator[dict[str, Any]]:
    title = f"request {r.id}" + (f" ({r.status})" if r.status != "finished" else "")
    args: dict[str, Any] = {
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "preemptions": r.preemptions,
        "status": r.status,
    }
    if r.status != "finished":
        args["reason"] = r.fail_reason
    if r.prefill_instance < 0:
        yield from _slice(
            r,
            r.instance,
            title,
            r.arrival_s,
            r.finish_s,
            [
                ("queued", r.arrival_s, r.first_scheduled_s),
                ("prefill", r.first_scheduled_s, r.first_token_s),
                ("decode", r.first_token_s, r.finish_s),
            ],
            args,
        )
        return
    arrived = r.first_token_s + r.kv_transfer_s
    yield from _slice(
        r,
        r.prefill_instance,
        title,
        r.arrival_s,
        r.first_token_s,
        [
            ("queued", r.arrival_s, r.first_scheduled_s),
            ("prefill", r.first_scheduled_s, r.first_token_s),
        ],
        args,
    )
    yield from _slice(
        r,
        r.instance,
        title,
        r.first_token_s,
        r.finish_s,
        [("kv transfer", r.first_token_s, arrived), ("decode", arrived, r.finish_s)],
        {**args, "kv_transfer_s": r.kv_transfer_s, "prefill_instance": r.prefill_instance},
    )


def _slice(
    r: RequestRecord,
    pid: int,
    title: str,
    begin: float,
    end: float,
    phases: list[tuple[str, float, float]],
    args: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    yield _async("b", title, r, begin, pid, **args)
    for name, t0, t1 in phases:
        if 0 <= t0 < t1:
            yield _async("b", name, r, t0, pid)
            yield _async("e", name, r, t1, pid)
    yield _async("e", title, r, end, pid)
