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

Each event's text is formatted straight from the recorded columns, exactly as
``json.dumps(event, separators=(",", ":"))`` would write the event as a dict (floats by repr,
strings escaped by the json module); a dict and a ``json.dumps`` call per event took ~5× as
long. tests/trace_reference.py keeps that encoding, and the tests compare the two byte for byte.
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
from llmservingsim.metrics.steps import FloatArray, IntArray, StepChunk
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

    def event_blocks(self, instance_names: Sequence[str]) -> Iterator[list[str]]:
        """The events' JSON texts, in file order, a list at a time (see module docstring)."""
        meta: list[dict[str, Any]] = []
        for pid, name in enumerate(instance_names):
            meta.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
            meta.append(
                {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}
            )
        steps = StepChunk.concat([chunk for _, chunk in self._kept])
        threads = set(zip(steps.instance.tolist(), steps.engine.tolist(), strict=True))
        for pid, tid in sorted(threads):
            name = "steps" if tid == 0 else f"steps (virtual engine {tid})"
            meta.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
            )
        yield [_compact_json(event) for event in meta]
        numbers = np.concatenate([nums for nums, _ in self._kept] or [np.zeros(0, np.int64)])
        yield _step_lines(numbers, steps)
        pids, times = steps.instance, _json_floats(steps.start_s * _US)
        yield _counter_lines("KV blocks used", "blocks", pids, times, steps.kv_blocks_used)
        yield _counter_lines("queue", "waiting", pids, times, steps.waiting)
        lines: list[str] = []
        for record in sorted(self._requests, key=lambda r: r.id):
            lines.extend(_request_lines(record))
        yield lines

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
            separator = ""
            for block in self.event_blocks(instance_names):
                if block:
                    fh.write(separator)
                    fh.write(",\n".join(block))
                    separator = ",\n"
            fh.write("\n]}\n")
        return path


_compact_json = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(value, separators=(",", ":"))``: the text of one event."""

_STEP = (
    '{"ph":"X","name":"%s","cat":"step","pid":%d,"tid":%d,"ts":%s,"dur":%s,'
    '"args":{"step":%d,"batch_size":%d,"prefill_tokens":%d,"decode_tokens":%d}}'
)
_COUNTER = '{"ph":"C","name":%s,"pid":%d,"ts":%s,"args":{%s:%d}}'
_ASYNC = '{"ph":"%s","name":%s,"cat":"request","id":%d,"pid":%d,"ts":%s%s}'
_PHASES = {name: _compact_json(name) for name in ("queued", "prefill", "decode", "kv transfer")}


def _json_float(value: float) -> str:
    """The float as ``json.dumps`` writes it: its repr, or NaN / Infinity / -Infinity."""
    return float.__repr__(value) if math.isfinite(value) else _compact_json(value)


def _json_floats(values: FloatArray) -> list[str]:
    """:func:`_json_float` of each value."""
    texts = list(map(float.__repr__, values.tolist()))
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        texts[i] = _compact_json(values[i].item())
    return texts


def _step_lines(numbers: IntArray, s: StepChunk) -> list[str]:
    """Each step as a complete slice named by what it computed (prefill, decode or mixed)."""
    prefill, decode = s.prefill_tokens != 0, s.decode_tokens != 0
    names = np.where(prefill & decode, "mixed", np.where(prefill, "prefill", "decode"))
    rows = zip(
        names.tolist(),
        s.instance.tolist(),
        s.engine.tolist(),
        _json_floats(s.start_s * _US),
        _json_floats(s.duration_s * _US),
        numbers.tolist(),
        s.num_seqs.tolist(),
        s.prefill_tokens.tolist(),
        s.decode_tokens.tolist(),
        strict=True,
    )
    return [_STEP % row for row in rows]


def _counter_lines(
    name: str, arg: str, pids: IntArray, times: list[str], values: IntArray
) -> list[str]:
    """A counter track per instance, with an event only where the value changes."""
    order = np.argsort(pids, kind="stable")  # each instance's rows, in log order
    changed = np.ones(pids.size, dtype=bool)
    changed[1:] = (np.diff(pids[order]) != 0) | (np.diff(values[order]) != 0)
    keep = np.empty_like(changed)
    keep[order] = changed
    name_text, arg_text = _compact_json(name), _compact_json(arg)
    return [
        _COUNTER % (name_text, pid, times[row], arg_text, value)
        for row, pid, value in zip(
            np.flatnonzero(keep).tolist(),
            pids[keep].tolist(),
            values[keep].tolist(),
            strict=True,
        )
    ]


def _request_lines(r: RequestRecord) -> list[str]:
    """The request as an async slice per instance it ran on; phases nest inside in time order."""
    title = _compact_json(f"request {r.id}" + (f" ({r.status})" if r.status != "finished" else ""))
    args = (
        f'"input_tokens":{r.input_tokens},"output_tokens":{r.output_tokens},'
        f'"preemptions":{r.preemptions},"status":{_compact_json(r.status)}'
    )
    if r.status != "finished":
        args += ',"reason":' + _compact_json(r.fail_reason)
    if r.prefill_instance < 0:
        return _slice_lines(
            r.id,
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
    arrived = r.first_token_s + r.kv_transfer_s  # on the decode instance
    decode_args = (
        f'{args},"kv_transfer_s":{_json_float(r.kv_transfer_s)},'
        f'"prefill_instance":{r.prefill_instance}'
    )
    return _slice_lines(
        r.id,
        r.prefill_instance,
        title,
        r.arrival_s,
        r.first_token_s,
        [
            ("queued", r.arrival_s, r.first_scheduled_s),
            ("prefill", r.first_scheduled_s, r.first_token_s),
        ],
        args,
    ) + _slice_lines(
        r.id,
        r.instance,
        title,
        r.first_token_s,
        r.finish_s,
        [("kv transfer", r.first_token_s, arrived), ("decode", arrived, r.finish_s)],
        decode_args,
    )


def _slice_lines(
    rid: int,
    pid: int,
    title: str,
    begin: float,
    end: float,
    phases: list[tuple[str, float, float]],
    args: str,
) -> list[str]:
    """``b``/``e`` events of one slice (``title`` and ``args`` already JSON): the args on its
    begin event, then each phase that has a duration."""
    lines = [_ASYNC % ("b", title, rid, pid, _json_float(begin * _US), ',"args":{' + args + "}")]
    for name, t0, t1 in phases:
        if 0 <= t0 < t1:
            text = _PHASES[name]
            lines.append(_ASYNC % ("b", text, rid, pid, _json_float(t0 * _US), ""))
            lines.append(_ASYNC % ("e", text, rid, pid, _json_float(t1 * _US), ""))
    lines.append(_ASYNC % ("e", title, rid, pid, _json_float(end * _US), ""))
    return lines
