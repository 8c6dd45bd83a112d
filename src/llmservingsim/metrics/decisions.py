"""The run's decisions as rows (``outputs.decisions: true``; decisions.parquet, docs/outputs.md).

A row is one decision about one request (or, for ``scale``, about the fleet): a router picking
an instance, admission control refusing a request, a scheduler preempting a running request.
Each row names its candidates, each candidate's score where the policy has one, and the
choice, so a run can be explained and two runs compared decision by decision.

Recording costs nothing when decisions are off: the callers hold ``None`` and test for it
(the cluster for routes, ``MetricsCollector.on_drop`` for admission, the schedulers'
:class:`DecisionSite` for preemptions). When on, a row is one ``struct`` pack into a byte
buffer plus its candidates and scores appended to two flat lists (a pointer copy each; no
object per row is kept, so the garbage collector has nothing more to scan); every
``chunk_size`` rows
(or ``max_values`` candidates) the open rows are sealed into a :class:`DecisionChunk` of numpy
columns and handed to the sinks (outputs/tables.py writes each as a Parquet row group), so a
run of any length holds one chunk at a time.

Adding a decision from new code is one line: ``metrics.decide(kind, now, ...)`` (a no-op when
decisions are off; docs/extending.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence as SequenceOf
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from llmservingsim.sequence import Sequence

AnyArray = npt.NDArray[Any]

KINDS: Final = ("route", "decode_route", "admission", "preemption", "scale")
"""Decision kinds by code (``DecisionChunk["kind"]``)."""
KIND_CODE: Final = {name: code for code, name in enumerate(KINDS)}
ROUTE: Final = 0
DECODE_ROUTE: Final = 1
ADMISSION: Final = 2
PREEMPTION: Final = 3

# Column name -> struct typecode of the fixed part of a row, in row order. String columns
# (policy, outcome, reason) are codes into DecisionLog.strings (-1: null); request, instance
# and chosen are -1 when null; ``candidates`` counts the row's candidates; ``scored`` is 1
# when the row has scores (one per candidate).
COLUMNS: Final = {
    "time_s": "d",
    "kind": "b",
    "request_id": "q",
    "instance": "i",
    "policy": "i",
    "chosen": "q",
    "outcome": "i",
    "reason": "i",
    "candidates": "i",
    "scored": "b",
}
_NUMPY_TYPES: Final = {"q": np.int64, "i": np.int32, "b": np.int8, "d": np.float64}
_ROW: Final = struct.Struct("=" + "".join(COLUMNS.values()))
_ROW_DTYPE: Final = np.dtype([(name, _NUMPY_TYPES[t]) for name, t in COLUMNS.items()])


class DecisionChunk:
    """Consecutive decision rows as numpy columns.

    ``candidate_values`` / ``score_values`` hold every row's candidates and scores back to
    back; ``offsets`` (one more than the rows) says where each row's start: row k's
    candidates are ``candidate_values[offsets[k]:offsets[k + 1]]``, its scores the same slice
    of ``score_values`` when ``scored[k]`` (NaN-filled otherwise). ``strings`` is the log's
    string table, which the policy, outcome and reason codes index.
    """

    __slots__ = ("_columns", "candidate_values", "offsets", "score_values", "strings")

    def __init__(
        self,
        columns: dict[str, AnyArray],
        offsets: npt.NDArray[np.int64],
        candidate_values: npt.NDArray[np.int64],
        score_values: npt.NDArray[np.float64],
        strings: list[str],
    ) -> None:
        self._columns = columns
        self.offsets = offsets
        self.candidate_values = candidate_values
        self.score_values = score_values
        self.strings = strings

    def __len__(self) -> int:
        return int(self._columns["time_s"].size)

    def __getitem__(self, name: str) -> AnyArray:
        return self._columns[name]

    def kind_names(self) -> list[str]:
        return [KINDS[code] for code in self._columns["kind"].tolist()]

    def names(self, column: str) -> list[str | None]:
        """A string column (policy, outcome, reason) as strings; None for null."""
        table = self.strings
        return [table[c] if c >= 0 else None for c in self._columns[column].tolist()]

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts, as decisions.parquet has them (tests, small runs)."""
        offsets = self.offsets.tolist()
        candidates = self.candidate_values.tolist()
        scores = self.score_values.tolist()
        cols = {name: self._columns[name].tolist() for name in COLUMNS}
        strings = {name: self.names(name) for name in ("policy", "outcome", "reason")}
        kinds = self.kind_names()
        out: list[dict[str, Any]] = []
        for k in range(len(self)):
            lo, hi = offsets[k], offsets[k + 1]
            out.append(
                {
                    "time_s": cols["time_s"][k],
                    "kind": kinds[k],
                    "request_id": cols["request_id"][k] if cols["request_id"][k] >= 0 else None,
                    "instance": cols["instance"][k] if cols["instance"][k] >= 0 else None,
                    "policy": strings["policy"][k],
                    "candidates": candidates[lo:hi],
                    "scores": scores[lo:hi] if cols["scored"][k] else None,
                    "chosen": cols["chosen"][k] if cols["chosen"][k] >= 0 else None,
                    "outcome": strings["outcome"][k],
                    "reason": strings["reason"][k],
                }
            )
        return out


class DecisionSink(Protocol):
    def write_decisions(self, chunk: DecisionChunk) -> None: ...


class DecisionLog:
    """Append-only decision rows, sealed into chunks for the sinks as the run goes.

    ``keep``: also keep the sealed chunks (:attr:`chunks`), for callers that read the
    decisions in memory (tests, ``compare``); a run that writes files keeps none, so memory
    stays at one chunk however many decisions the run takes.
    """

    def __init__(
        self,
        sinks: list[DecisionSink] | None = None,
        keep: bool = False,
        chunk_size: int = 65_536,
        max_values: int = 1 << 22,
    ) -> None:
        self.sinks: list[DecisionSink] = [] if sinks is None else sinks
        self.keep = keep
        self.chunks: list[DecisionChunk] = []
        self.strings: list[str] = []
        self._codes: dict[str, int] = {}
        self._rows = bytearray()
        self._pack = _ROW.pack
        self._seal_at = chunk_size * _ROW.size
        self._max_values = max_values
        # The open rows' candidates, and the scores of those that have scores, back to back
        # (numpy arrays only when the rows are sealed: one C conversion per chunk).
        self._candidate_values: list[int] = []
        self._score_values: list[float] = []
        self.count = 0  # rows added so far

    def __len__(self) -> int:
        return self.count

    def code(self, text: str | None) -> int:
        """The code of a string (policy, outcome, reason) in :attr:`strings`; -1 for none."""
        if not text:
            return -1
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self.strings)
            self.strings.append(text)
        return code

    def add(
        self,
        kind: str,
        time_s: float,
        *,
        request_id: int = -1,
        instance: int = -1,
        policy: str | None = None,
        candidates: SequenceOf[int] = (),
        scores: SequenceOf[float] | None = None,
        chosen: int = -1,
        outcome: str | None = None,
        reason: str | None = None,
    ) -> None:
        """One decision of ``kind`` (one of :data:`KINDS`) taken at ``time_s``; -1 / None
        leaves a column null. ``scores``, when given, has one score per candidate."""
        code = KIND_CODE.get(kind)
        if code is None:
            raise ValueError(f"unknown decision kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.record(
            code,
            time_s,
            request_id,
            instance,
            self.code(policy),
            list(candidates),
            None if scores is None else list(scores),
            chosen,
            self.code(outcome),
            self.code(reason),
        )

    def record(
        self,
        kind: int,
        time_s: float,
        request_id: int,
        instance: int,
        policy: int,
        candidates: list[int],
        scores: SequenceOf[float] | None,
        chosen: int,
        outcome: int,
        reason: int,
    ) -> None:
        """:meth:`add` with codes (the hot path: the cluster's routes)."""
        count = len(candidates)
        if scores is not None and len(scores) != count:
            raise ValueError(
                f"a {KINDS[kind]} decision reported {len(scores)} scores for {count} candidates"
            )
        self._candidate_values.extend(candidates)
        if scores is not None:
            self._score_values.extend(scores)
        rows = self._rows
        rows += self._pack(
            time_s,
            kind,
            request_id,
            instance,
            policy,
            chosen,
            outcome,
            reason,
            count,
            scores is not None,
        )
        self.count += 1
        if len(rows) >= self._seal_at or len(self._candidate_values) >= self._max_values:
            self.flush()

    def flush(self) -> None:
        """Seal the open rows (if any) into a chunk and hand it to the sinks."""
        if not self._rows:
            return
        table = np.frombuffer(self._rows, dtype=_ROW_DTYPE)
        columns = {name: table[name].copy() for name in COLUMNS}
        del table  # (a bytearray cannot be resized while numpy views it)
        counts = columns["candidates"]
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        candidates = np.array(self._candidate_values, dtype=np.int64)
        scores = np.full(candidates.size, np.nan)
        if self._score_values:
            where = np.repeat(columns["scored"].astype(bool), counts)
            scores[where] = np.array(self._score_values, dtype=np.float64)
        chunk = DecisionChunk(columns, offsets, candidates, scores, self.strings)
        self._rows = bytearray()
        self._candidate_values = []
        self._score_values = []
        if self.keep:
            self.chunks.append(chunk)
        for sink in self.sinks:
            sink.write_decisions(chunk)

    def rows(self) -> list[dict[str, Any]]:
        """Every kept row as a dict (``keep=True``; seals the open rows first)."""
        self.flush()
        return [row for chunk in self.chunks for row in chunk.rows()]


class DecisionSite:
    """What a scheduler logs its preemptions through: the run's log, the instance it serves,
    and the time of the step being scheduled (the instance sets ``now`` before each
    ``schedule()``). A scheduler without one (``Scheduler.decisions is None``) logs nothing."""

    def __init__(self, log: DecisionLog, instance: int, policy: str) -> None:
        self.log = log
        self.instance = instance
        self.policy = log.code(policy)
        self.now = 0.0

    def preempted(
        self,
        victim: Sequence,
        candidates: list[Sequence],
        scores: list[float] | None,
        cause: Sequence | None,
        swapped: bool,
        reason: str,
    ) -> None:
        """``victim`` was preempted among the running ``candidates`` (it included) on behalf
        of ``cause`` (the request that needed the room; None: not known)."""
        log = self.log
        log.record(
            PREEMPTION,
            self.now,
            victim.spec.id if cause is None else cause.spec.id,
            self.instance,
            self.policy,
            [seq.spec.id for seq in candidates],
            scores,
            victim.spec.id,
            log.code("swap" if swapped else "recompute"),
            log.code(reason),
        )
