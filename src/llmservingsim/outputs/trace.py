"""trace.json: the run as Chrome trace events, for Perfetto (ui.perfetto.dev) or chrome://tracing.

Each instance is a process. Its engine steps are complete ("X") slices on a "steps" thread (one
per virtual engine with pipeline parallelism, whose micro-batches overlap), named by what they
computed (prefill, decode or mixed) with batch size and token counts as args; KV-cache use and
queue length are counters ("C"). Each request is an async slice ("b"/"e") from arrival to
finish with nested queued / prefill / decode phases (the phases of a request's first pass: a
preempted request's recompute is inside its decode phase, and its preemption count is in the
args). With P/D disaggregation a request has one slice on its prefill instance (arrival → first
token) and one on its decode instance (kv transfer, then decode).

The file stays bounded for huge runs: only every k-th request (by id) is kept, k chosen so at
most ``max_requests`` remain unless set explicitly, and when there are more than ``max_steps``
steps, every 2nd (then 4th, ...) step is kept, so the sample still spans the whole run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmservingsim import __version__
from llmservingsim.metrics.request_log import RequestChunk, RequestRecord
from llmservingsim.metrics.steps import StepChunk
from llmservingsim.outputs.files import atomic_path

_US = 1e6


def request_stride(num_requests: int, every: int, max_requests: int) -> int:
    """``every`` when given (> 0), else the smallest k keeping at most ``max_requests``."""
    if every > 0:
        return every
    return max(1, math.ceil(num_requests / max_requests))


class TraceRecorder:
    """Collects a bounded sample of steps and requests during the run; :meth:`write` at the end."""

    def __init__(self, num_requests: int, request_every: int, max_requests: int, max_steps: int):
        self.request_every = request_stride(num_requests, request_every, max_requests)
        self.max_steps = max_steps
        self.step_every = 1
        self._steps_seen = 0
        self._kept: list[tuple[np.ndarray[Any, Any], StepChunk]] = []  # (step numbers, steps)
        self._num_kept = 0
        self._requests: list[RequestRecord] = []

    def write_requests(self, chunk: RequestChunk) -> None:
        self._requests.extend(chunk.records(chunk["id"] % self.request_every == 0))

    def write_steps(self, steps: StepChunk) -> None:
        numbers = np.arange(self._steps_seen, self._steps_seen + len(steps))
        self._steps_seen += len(steps)
        keep = numbers % self.step_every == 0
        self._kept.append((numbers[keep], steps.take(keep)))
        self._num_kept += int(keep.sum())
        while self._num_kept > self.max_steps:
            self.step_every *= 2
            thinned = []
            for nums, chunk in self._kept:
                keep = nums % self.step_every == 0
                thinned.append((nums[keep], chunk.take(keep)))
            self._kept = thinned
            self._num_kept = sum(len(nums) for nums, _ in thinned)

    def events(self, instance_names: Sequence[str]) -> Iterator[dict[str, Any]]:
        for pid, name in enumerate(instance_names):
            yield {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}
            yield {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}
        steps = StepChunk.concat([chunk for _, chunk in self._kept])
        threads = set(zip(steps.instance.tolist(), steps.engine.tolist(), strict=True))
        for pid, tid in sorted(threads):
            name = "steps" if tid == 0 else f"steps (virtual engine {tid})"
            yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
        for numbers, chunk in self._kept:
            yield from _step_events(numbers, chunk)
        pids, times = steps.instance.tolist(), (steps.start_s * _US).tolist()
        yield from _counter_events(
            "KV blocks used", "blocks", pids, times, steps.kv_blocks_used.tolist()
        )
        yield from _counter_events("queue", "waiting", pids, times, steps.waiting.tolist())
        for record in sorted(self._requests, key=lambda r: r.id):
            yield from _request_events(record)

    def write(
        self,
        path: Path,
        instance_names: Sequence[str],
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        """Write the trace; ``metadata`` (version, resolved config) goes into ``otherData``."""
        sampling: dict[str, Any] = {
            "request_every": self.request_every,
            "requests_kept": len(self._requests),
            "step_every": self.step_every,
            "steps_kept": self._num_kept,
            "steps_total": self._steps_seen,
        }
        with atomic_path(path) as tmp, tmp.open("w") as fh:
            fh.write('{"displayTimeUnit": "ms", "otherData": ')
            other = {"generator": f"llmservingsim {__version__}", **sampling, **(metadata or {})}
            json.dump(other, fh)
            fh.write(', "traceEvents": [\n')
            first = True
            for event in self.events(instance_names):
                if not first:
                    fh.write(",\n")
                fh.write(json.dumps(event, separators=(",", ":")))
                first = False
            fh.write("\n]}\n")
        return path


def _step_name(prefill: int, decode: int) -> str:
    if prefill and decode:
        return "mixed"
    return "prefill" if prefill else "decode"


def _step_events(numbers: np.ndarray[Any, Any], s: StepChunk) -> Iterator[dict[str, Any]]:
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
        yield {
            "ph": "X",
            "name": _step_name(prefill, decode),
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


def _counter_events(
    name: str, arg: str, pids: list[int], times: list[float], values: list[int]
) -> Iterator[dict[str, Any]]:
    """A counter track per instance, with an event only where the value changes."""
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


def _request_events(r: RequestRecord) -> Iterator[dict[str, Any]]:
    """The request as an async slice per instance it ran on; phases nest inside in time order."""
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
    arrived = r.first_token_s + r.kv_transfer_s  # on the decode instance
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
