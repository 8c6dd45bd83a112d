"""External backend: any program that answers op timings as JSON lines on stdin/stdout.

This is how a cycle-level NPU/accelerator simulator plugs in (examples/npu_sim). One
subprocess per backend (per run and instance) stays alive for the whole run; in front of it
sits a persistent on-disk cache, so each op shape is simulated once across runs. Protocol
(docs/extending.md "External perf backends"), one JSON object per line:

    → {"type": "hello", "protocol": 1, "device": {...device YAML...}, "dtype": "bf16"}
    ← {"name": "npu_sim", "version": "1.0"}
    → {"type": "time", "op": "qkv_proj", "kind": "gemm", "dims": {"m": 8, "n": 6144,
       "k": 4096}, "flops": ..., "bytes": ..., "dtype": "bf16", "device": "npu"}
    ← {"seconds": 1.7e-05}            (or {"error": "why"})

The cache file is ``<cache_dir>/<namespace>.jsonl``; the namespace hashes the command, the
tool's name and version from its hello answer, the device spec, the dtype and this package's
version, so a changed device or a new tool version never reuses stale answers. A tool that
crashes, answers garbage or stays silent longer than ``perf.timeout_s`` stops the run with a
:class:`~llmservingsim.errors.BackendError` (exit 2) quoting its last stderr line, never a
hang.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shlex
import subprocess
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import Any, TextIO

from llmservingsim import __version__
from llmservingsim.errors import BackendError, ConfigError
from llmservingsim.hardware.backends.base import PERF_BACKENDS, PerfSetup
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.op import is_sixteen_bit
from llmservingsim.model.ops import Op

PROTOCOL = 1
STDERR_LINES = 20


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmservingsim" / "external"


def _pump(stream: TextIO, sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)  # end of stream: the process exited or closed stdout


def _drain(stream: TextIO, tail: deque[str]) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


class ToolProcess:
    """One running tool: write a request line, wait (bounded) for one answer line."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL character in the command
            reason = getattr(exc, "strerror", None) or exc
            raise BackendError(f"{self._name()}: cannot start: {reason}") from None
        assert self.process.stdout is not None and self.process.stderr is not None
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        threading.Thread(
            target=_pump, args=(self.process.stdout, self._answers), daemon=True
        ).start()
        self._stderr_reader = threading.Thread(
            target=_drain, args=(self.process.stderr, self._stderr), daemon=True
        )
        self._stderr_reader.start()
        self._finalizer = weakref.finalize(self, _stop, self.process)

    def _name(self) -> str:
        return f"external perf backend `{shlex.join(self.argv)}`"

    def fail(self, what: str) -> BackendError:
        """Stop the tool and build the error that quotes its stderr."""
        if self.process.poll() is None:
            self.process.kill()  # a tool that misbehaved once is not trusted to exit
        self.close()
        # The tool has exited: its stderr ends soon; read it all before quoting it (its end of
        # stdout may be seen before its last stderr line was read).
        self._stderr_reader.join(timeout=2)
        lines = [line for line in self._stderr if line.strip()]
        last = repr(lines[-1].strip()) if lines else "(nothing)"
        return BackendError(f"{self._name()} {what}; its last stderr line: {last}")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self.fail(f"exited (code {self.process.poll()}) before a request") from None
        try:
            line = self._answers.get(timeout=self.timeout_s)
        except queue.Empty:
            raise self.fail(
                f"gave no answer within perf.timeout_s = {self.timeout_s:g} s to {request}"
            ) from None
        if line is None:
            try:
                code = self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            raise self.fail(f"exited (code {code}) instead of answering {request}")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            raise self.fail(f"answered a line that is not JSON: {line.strip()[:200]!r}") from None
        if not isinstance(answer, dict):
            raise self.fail(f"answered {line.strip()[:200]!r}, expected a JSON object")
        if "error" in answer:
            raise self.fail(f"reported an error: {answer['error']}")
        return answer

    def close(self) -> None:
        self._finalizer()


class ResultCache:
    """Append-only JSON-lines file of (op key, seconds), loaded whole at start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, float] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = float(entry["seconds"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut short by an interrupted run

    def get(self, key: str) -> float | None:
        return self.entries.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.entries[key] = seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "seconds": seconds}) + "\n")


def op_key(op: Op) -> str:
    return json.dumps([op.name, op.kind, [list(d) for d in op.dims]])


@PERF_BACKENDS.register("external")
class ExternalBackend:
    def __init__(
        self,
        device: DeviceSpec,
        dtype: str,
        command: list[str],
        cache_dir: Path,
        timeout_s: float = 60.0,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.tool = ToolProcess(command, timeout_s)
        hello = self.tool.ask(
            {
                "type": "hello",
                "protocol": PROTOCOL,
                "device": device.model_dump(mode="json"),
                "dtype": dtype,
            }
        )
        identity = {
            "command": command,
            "tool": [str(hello.get("name", "")), str(hello.get("version", ""))],
            "device": device.model_dump(mode="json"),
            "dtype": dtype,
            "llmservingsim": __version__,
            "protocol": PROTOCOL,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.cache = ResultCache(cache_dir / f"{digest[:20]}.jsonl")
        self.requests = 0
        self.cache_hits = 0

    @classmethod
    def from_config(cls, device: DeviceSpec, setup: PerfSetup) -> ExternalBackend:
        command = setup.perf.command
        if not command:
            raise ConfigError("perf.backend 'external' needs perf.command (the program to run)")
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        cache_dir = setup.perf.cache_dir or default_cache_dir()
        return cls(device, setup.compute_dtype, argv, cache_dir, setup.perf.timeout_s)

    def time(self, op: Op) -> float:
        key = op_key(op)
        cached = self.cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        answer = self.tool.ask(
            {
                "type": "time",
                "op": op.name,
                "kind": op.kind,
                "dims": dict(op.dims),
                "flops": op.flops,
                "bytes": op.bytes,
                # GEMMs a quantized checkpoint keeps in 16 bits (model/op.py) compute in bf16
                "dtype": "bf16" if is_sixteen_bit(op) else self.dtype,
                "device": self.device.name,
            }
        )
        seconds = answer.get("seconds")
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise self.tool.fail(f"answered {answer} for {op.name}, expected {{'seconds': >= 0}}")
        self.requests += 1
        self.cache.put(key, float(seconds))
        return float(seconds)

    def close(self) -> None:
        self.tool.close()

    def stats(self) -> dict[str, Any]:
        return {"external_requests": self.requests, "external_cache_hits": self.cache_hits}
