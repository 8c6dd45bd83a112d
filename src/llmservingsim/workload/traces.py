"""Trace readers, one per ``TraceConfig.format``, and the loader that turns rows into requests.

Readers stream the file line by line and yield :class:`TraceRow` values with exact integer
nanosecond arrivals; the loader then sorts, truncates, rescales and clips them. Every bad row
is a :class:`TraceError` naming ``file:line`` and what was wrong, so a user can fix the trace.

What the prompt *is* (for prefix caching) comes from optional JSON-lines keys:
``input_tok_ids`` (LLMServingSim: one token id per prompt token) or ``hash_ids`` (Mooncake:
one id per ``trace.hash_block_size`` = 512 prompt tokens, the last id covering the rest). Both
become a :class:`TokenContent`; the KV cache then cuts it into its own blocks
(serving/prefix_cache.py), so any ``block_size`` works: a 16-token block inside hash block
``h`` is "tokens 32..47 of h", and equal ids in the same position mean a shared prefix.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from llmservingsim.config import WorkloadConfig
from llmservingsim.errors import ConfigError, InputWarning, TraceError
from llmservingsim.ranges import MAX_TOKENS
from llmservingsim.registry import Registry
from llmservingsim.workload.arrival import arrival_times
from llmservingsim.workload.lengths import clip_to_context
from llmservingsim.workload.request_spec import RequestSpec, TokenContent

NS_PER_S = 1_000_000_000
_HUGE = Decimal(2**62)
# Arrivals are int64 nanoseconds (numpy sorts and rebases them): 2^63 ns is the year 2262.
_MAX_ARRIVAL_NS = 2**63 - 1
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request as read from a trace; ``arrival_ns`` is None for length-only traces."""

    line_no: int
    arrival_ns: int | None
    input_len: int
    output_len: int
    token_ids: tuple[int, ...] | None = None
    hash_ids: tuple[int, ...] | None = None
    lora: str | None = None  # the LoRA adapter the request names (optional field 'lora')
    client: str | None = None  # the workload.clients entry it belongs to (field 'client')


LORA_FIELD = "lora"
CLIENT_FIELD = "client"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a format keeps each field, and how its arrival value becomes nanoseconds.

    ``arrival_optional``: the file may omit the arrival field (lengths-only traces).
    """

    input: str
    output: str
    arrival: str
    parse_arrival: Callable[[object], int | None]
    arrival_expected: str
    arrival_optional: bool = False
    token_ids: str | None = None  # optional key: one token id per prompt token
    hash_ids: str | None = None  # optional key: one id per hash block of the prompt

    def fields(self) -> str:
        return ", ".join((self.arrival, self.input, self.output))


TraceReader = Callable[[Path], Iterator[TraceRow]]


@dataclass(frozen=True, slots=True)
class TraceFormat:
    """A reader plus whether its arrivals are clock times to shift so the earliest is t = 0."""

    read: TraceReader
    rebase: bool = False


TRACE_FORMATS: Registry[TraceFormat] = Registry("trace format")


# ----------------------------------------------------------------------------- value parsing


def _decimal(raw: object) -> Decimal | None:
    """A finite number from a CSV cell or JSON value (bools and junk are not numbers)."""
    if isinstance(raw, bool):
        return None
    try:
        if isinstance(raw, int):
            value = Decimal(raw)
        elif isinstance(raw, float):
            value = Decimal(repr(raw))
        elif isinstance(raw, str):
            value = Decimal(raw.strip())
        else:
            return None
    except InvalidOperation:
        return None
    # A bound keeps absurd values like 1e999999 from becoming billion-digit integers.
    return value if value.is_finite() and abs(value) < _HUGE else None


def _count(raw: object, minimum: int) -> int | None:
    """A whole token count in [``minimum``, 2^31) (``12`` and ``12.0`` both read as 12)."""
    value = _decimal(raw)
    if value is None or value != value.to_integral_value() or not minimum <= value < MAX_TOKENS:
        return None
    return int(value)


def _scaled_ns(ns_per_unit: int) -> Callable[[object], int | None]:
    """Parser for a non-negative number in some unit, returned as whole nanoseconds."""

    def parse(raw: object) -> int | None:
        value = _decimal(raw)
        if value is None or value < 0:
            return None
        return int((value * ns_per_unit).to_integral_value())

    return parse


def _timestamp_ns(raw: object) -> int | None:
    """``2023-11-16 18:15:46.6805900`` → ns since 1970, exact (Azure writes 7 fraction digits,
    which ``datetime`` cannot hold)."""
    if not isinstance(raw, str):
        return None
    whole, _, frac = raw.strip().partition(".")
    if len(frac) > 9 or (frac and not frac.isdigit()):
        return None
    try:
        moment = datetime.fromisoformat(whole)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.replace(tzinfo=None) - (moment.utcoffset() or timedelta(0))
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds * NS_PER_S + int(frac.ljust(9, "0") or "0")


AZURE = Layout(
    input="ContextTokens",
    output="GeneratedTokens",
    arrival="TIMESTAMP",
    parse_arrival=_timestamp_ns,
    arrival_expected="a timestamp like '2023-11-16 18:15:46.6805900'",
)
REPLAY = Layout(
    input="input_tokens",
    output="output_tokens",
    arrival="arrival_s",
    parse_arrival=_scaled_ns(NS_PER_S),
    arrival_expected="a non-negative number of seconds",
)
VIDUR = Layout(
    input="num_prefill_tokens",
    output="num_decode_tokens",
    arrival="arrived_at",
    parse_arrival=_scaled_ns(NS_PER_S),
    arrival_expected="a non-negative number of seconds",
    arrival_optional=True,
)
LLMSERVINGSIM = Layout(
    input="input_toks",
    output="output_toks",
    arrival="arrival_time_ns",
    parse_arrival=_scaled_ns(1),
    arrival_expected="a non-negative number of nanoseconds",
    token_ids="input_tok_ids",
)
MOONCAKE = Layout(
    input="input_length",
    output="output_length",
    arrival="timestamp",
    parse_arrival=_scaled_ns(1_000_000),
    arrival_expected="a non-negative number of milliseconds",
    hash_ids="hash_ids",
)


@dataclass(frozen=True, slots=True)
class _Where:
    """A record's place in its file, for error messages; ``kind`` is 'column' or 'key'."""

    path: Path
    line_no: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_no}"


def _row(
    values: Mapping[str, object], layout: Layout, has_arrival: bool, where: _Where
) -> TraceRow:
    """Validate one record's fields (already checked to be present) into a row."""

    def bad(name: str, expected: str) -> TraceError:
        shown = values[name]
        return TraceError(f"{where}: {where.kind} '{name}' is {shown!r}, expected {expected}")

    input_len = _count(values[layout.input], minimum=1)
    if input_len is None:
        raise bad(
            layout.input, "a positive integer below 2^31 (a request needs at least 1 input token)"
        )
    output_len = _count(values[layout.output], minimum=0)
    if output_len is None:
        raise bad(layout.output, "a non-negative integer below 2^31")
    arrival_ns = None
    if has_arrival:
        arrival_ns = layout.parse_arrival(values[layout.arrival])
        if arrival_ns is None:
            raise bad(layout.arrival, layout.arrival_expected)
        if arrival_ns >= _MAX_ARRIVAL_NS:
            raise bad(layout.arrival, f"{layout.arrival_expected} before year 2262 (int64 ns)")
    token_ids = _ids(values, layout.token_ids, where)
    if token_ids is not None and len(token_ids) != input_len:
        raise TraceError(
            f"{where}: key '{layout.token_ids}' has {len(token_ids)} ids, expected one per "
            f"input token ({input_len})"
        )
    hash_ids = _ids(values, layout.hash_ids, where)
    lora = values.get(LORA_FIELD)
    if lora is not None and not isinstance(lora, str):
        raise bad(LORA_FIELD, "an adapter name (a string) or null")
    lora = lora.strip() if lora else None
    client = values.get(CLIENT_FIELD)
    if client is not None and not isinstance(client, str):
        raise bad(CLIENT_FIELD, "a client name (a string) or null")
    client = client.strip() if client else None
    return TraceRow(
        where.line_no,
        arrival_ns,
        input_len,
        output_len,
        token_ids,
        hash_ids,
        lora or None,
        client or None,
    )


def _ids(values: Mapping[str, object], name: str | None, where: _Where) -> tuple[int, ...] | None:
    """An optional list of integer ids (token or hash ids)."""
    if name is None or name not in values:
        return None
    raw = values[name]
    if not isinstance(raw, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in raw
    ):
        shown = raw if not isinstance(raw, list) else "a list with a non-integer"
        raise TraceError(f"{where}: key '{name}' is {shown!r}, expected a list of integer ids")
    return tuple(raw)


# ----------------------------------------------------------------------------- file readers


def _open(path: Path, expected: str) -> IO[str]:
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TraceError(
            f"{path}: cannot read trace ({exc.strerror}); expected {expected}"
        ) from None


def _read_csv(path: Path, layout: Layout) -> Iterator[TraceRow]:
    """Rows of a CSV file with a header naming (at least) the layout's columns."""
    expected = f"a CSV file with header columns {layout.fields()}"
    with _open(path, expected) as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader, [])]
            index = {name: i for i, name in enumerate(header)}
            has_arrival = layout.arrival in index
            needed = [layout.input, layout.output]
            if not (has_arrival or layout.arrival_optional):
                needed.insert(0, layout.arrival)
            missing = [name for name in needed if name not in index]
            if missing:
                found = ", ".join(header) if header else "nothing"
                raise TraceError(
                    f"{path}:1: missing column(s) {', '.join(missing)}; "
                    f"expected {expected} (found {found})"
                )
            fields = (layout.arrival, layout.input, layout.output, LORA_FIELD, CLIENT_FIELD)
            used = [name for name in fields if name in index]
            for cells in reader:
                where = _Where(path, reader.line_num, "column")
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    raise TraceError(
                        f"{where}: expected {len(header)} fields ({', '.join(header)}), "
                        f"got {len(cells)}"
                    )
                values = {name: cells[index[name]] for name in used}
                yield _row(values, layout, has_arrival, where)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}:{reader.line_num + 1}: unreadable CSV ({exc})") from None


def _read_jsonl(path: Path, layouts: tuple[Layout, ...]) -> Iterator[TraceRow]:
    """Rows of a JSON-lines file; each object uses the keys of one of ``layouts``."""
    options = " or ".join(layout.fields() for layout in layouts)
    expected = f"a JSON-lines file with keys {options}"
    with _open(path, expected) as handle:
        line_no = 0
        try:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = _Where(path, line_no, "key")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{where}: invalid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise TraceError(f"{where}: expected a JSON object with keys {options}")
                layout = next((lay for lay in layouts if lay.input in record), None)
                if layout is None:
                    raise TraceError(f"{where}: missing keys; expected {options}")
                missing = [k for k in (layout.arrival, layout.output) if k not in record]
                if missing:
                    raise TraceError(
                        f"{where}: missing key(s) {', '.join(missing)}; expected {layout.fields()}"
                    )
                yield _row(record, layout, True, where)
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}:{line_no + 1}: not UTF-8 text ({exc.reason})") from None


def _register(name: str, read: TraceReader, *, rebase: bool = False) -> None:
    TRACE_FORMATS.register(name)(TraceFormat(read, rebase))


# Azure timestamps are wall-clock times: shift them so the first request arrives at t = 0.
_register("azure", partial(_read_csv, layout=AZURE), rebase=True)
_register("csv", partial(_read_csv, layout=REPLAY))
_register("vidur_csv", partial(_read_csv, layout=VIDUR))
_register("jsonl", partial(_read_jsonl, layouts=(LLMSERVINGSIM, MOONCAKE)))
_register("mooncake", partial(_read_jsonl, layouts=(MOONCAKE,)))


# ----------------------------------------------------------------------------- loading

_CSV_MARKERS = (
    ("TIMESTAMP", "azure"),
    ("arrived_at", "vidur_csv"),
    ("num_prefill_tokens", "vidur_csv"),
)


def detect_format(path: Path) -> str:
    """The format of a trace whose ``trace.format`` is not given: ``.csv`` files by their
    header (Azure, Vidur or the plain csv layout), anything else JSON lines."""
    if path.suffix.lower() != ".csv":
        return "jsonl"
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = {name.strip() for name in next(csv.reader(handle), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return "csv"  # the reader reports what is wrong with the file
    return next((fmt for column, fmt in _CSV_MARKERS if column in header), "csv")


def read_trace(
    cfg: WorkloadConfig, max_context: int, rng: np.random.Generator
) -> list[RequestSpec]:
    """Requests of ``cfg.trace`` in arrival order, ids 0..n-1, lengths clipped to the context.

    Arrival gaps (including the one from t = 0 to the first request) are multiplied by
    ``time_scale``; rows are stably sorted by arrival, then ``max_requests`` keeps the earliest
    N. A lengths-only trace keeps its file order, takes its first N rows, and draws arrivals
    from ``cfg.arrival`` with ``rng`` (``time_scale`` does not apply: the rate already says it).
    """
    trace = cfg.trace
    if trace is None:
        raise ConfigError("workload.trace: a trace workload needs a trace section with a path")
    fmt = TRACE_FORMATS.get(trace.format or detect_format(trace.path))
    rows = list(fmt.read(trace.path))
    if not rows:
        raise TraceError(f"{trace.path}: the trace has no requests")
    limit = trace.max_requests or len(rows)
    if rows[0].arrival_ns is None:
        rows = rows[:limit]
        arrivals = arrival_times(cfg.arrival, len(rows), rng)
        if not cfg.arrival.model_fields_set:  # (a closed loop sets them)
            warnings.warn(
                f"{trace.path}: the trace has no arrival times; requests arrive as "
                f"workload.arrival says ({cfg.arrival.process}, {cfg.arrival.rate:g} req/s, "
                "the default): set workload.arrival to choose",
                InputWarning,
                stacklevel=2,
            )
    else:
        # A closed loop sends the trace's rows in timestamp order (engine.ClosedLoop).
        if cfg.arrival.model_fields_set and cfg.arrival.process != "closed":
            raise ConfigError(
                f"workload.arrival: {trace.path} times its own requests, so "
                f"workload.arrival.{sorted(cfg.arrival.model_fields_set)[0]} would be ignored; "
                "remove it (stretch or squeeze the trace with workload.trace.time_scale)"
            )
        ns = np.array([row.arrival_ns for row in rows], dtype=np.int64)
        if fmt.rebase:
            ns -= ns.min()
        order = np.argsort(ns, kind="stable")[:limit]
        rows = [rows[i] for i in order]
        arrivals = ns[order].astype(np.float64) / NS_PER_S * trace.time_scale
    raw_inputs = np.array([row.input_len for row in rows], dtype=np.int64)
    raw_outputs = np.array([row.output_len for row in rows], dtype=np.int64)
    inputs, outputs = clip_to_context(raw_inputs, raw_outputs, max_context)
    clients = _row_clients(cfg, rows, trace.path)
    priorities = [c.priority for c in cfg.clients or ()]
    requests = [
        RequestSpec(
            id=i,
            arrival_s=float(t),
            input_len=int(a),
            output_len=int(b),
            content=row_content(row, trace.path, trace.hash_block_size, int(a)),
            lora=row.lora,
            priority=priorities[k] if k >= 0 else 0,
            client=k,
        )
        for i, (row, t, a, b, k) in enumerate(
            zip(rows, arrivals, inputs, outputs, clients, strict=True)
        )
    ]
    # Only a trace that passed every check is clipped: its warning never precedes an error.
    _warn_clipped(trace.path, rows, raw_inputs + raw_outputs > max_context, max_context)
    return requests


def _row_clients(cfg: WorkloadConfig, rows: list[TraceRow], path: Path) -> list[int]:
    """Each row's index into ``workload.clients`` (-1 for every row when none are listed)."""
    if cfg.clients is None:
        named = next((row for row in rows if row.client is not None), None)
        if named is not None:
            raise TraceError(
                f"{path}:{named.line_no}: unknown client {named.client!r} (workload.clients "
                "lists none: add it there, with its priority and slo)"
            )
        return [-1] * len(rows)
    index = {c.name: k for k, c in enumerate(cfg.clients)}
    out = []
    for row in rows:
        k = index.get(row.client or "")
        if k is None:
            what = "no client" if row.client is None else f"unknown client {row.client!r}"
            raise TraceError(
                f"{path}:{row.line_no}: {what}; expected one of workload.clients: "
                f"{', '.join(index)}"
            )
        out.append(k)
    return out


def _warn_clipped(
    path: Path, rows: list[TraceRow], clipped: np.ndarray[Any, Any], max_context: int
) -> None:
    """Requests longer than the model's window are served cut to fit it, said once per file."""
    count = int(clipped.sum())
    if count:
        first = rows[int(np.argmax(clipped))].line_no
        warnings.warn(
            f"{path}: {count} request(s) longer than the {max_context}-token context of the "
            f"model clipped to fit (first at line {first})",
            InputWarning,
            stacklevel=2,
        )


def row_content(
    row: TraceRow, path: Path, hash_block_size: int, input_len: int
) -> TokenContent | None:
    """The row's prompt content, cut to its (clipped) ``input_len``; None when not given."""
    if row.token_ids is not None:
        content = TokenContent("tokens", tuple((t, 1) for t in row.token_ids))
    elif row.hash_ids is not None:
        ids = row.hash_ids
        expected = -(-row.input_len // hash_block_size)
        if len(ids) != expected:
            raise TraceError(
                f"{path}:{row.line_no}: 'hash_ids' has {len(ids)} ids; an input of "
                f"{row.input_len} tokens in blocks of trace.hash_block_size={hash_block_size} "
                f"needs {expected}"
            )
        last = row.input_len - hash_block_size * (len(ids) - 1)
        runs = [(h, hash_block_size) for h in ids[:-1]] + [(ids[-1], last)]
        content = TokenContent("hash", tuple(runs))
    else:
        return None
    return content.truncated(input_len) if input_len < row.input_len else content
