"""``llmservingsim compare A.yaml B.yaml``: two configs on the identical request stream.

Both configs serve the requests of A's workload (A's seed and model context), so request i
is the same request on both sides and the per-request differences B − A of TTFT and E2E are
paired. The mean difference gets a bootstrap confidence interval; consecutive requests share
queues, so their differences are correlated and the bootstrap resamples blocks of
``ceil(n^(1/3))`` consecutive requests (a non-overlapping block bootstrap) rather than single
requests. docs/workloads.md, "Comparing two configs".

With ``outputs.decisions`` on both sides (``--set outputs.decisions=true``), the report also
says where the routing diverged: how many requests went to another instance and the first of
them, with both routers' candidates and scores (:func:`routing_divergence`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from llmservingsim.config import SimConfig
from llmservingsim.errors import ConfigError
from llmservingsim.metrics.decisions import ROUTE, DecisionChunk, DecisionLog
from llmservingsim.metrics.request_log import FINISHED, STATUSES, RequestLog
from llmservingsim.outputs.tables import TableFormat, write_table
from llmservingsim.workload.request_table import RequestTable

FloatArray = npt.NDArray[np.float64]

RESAMPLES = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 20
"""Seed of the bootstrap's own generator: the interval is reproducible run to run."""

DELTAS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("client", pa.string()),
        ("status_a", pa.string()),
        ("status_b", pa.string()),
        ("ttft_a_s", pa.float64()),
        ("ttft_b_s", pa.float64()),
        ("ttft_delta_s", pa.float64()),
        ("e2e_a_s", pa.float64()),
        ("e2e_b_s", pa.float64()),
        ("e2e_delta_s", pa.float64()),
    ]
)


@dataclass(frozen=True)
class Side:
    """One config's request rows by request id: finished, TTFT, E2E (NaN when unserved)."""

    status: npt.NDArray[np.int8]
    ttft: FloatArray
    e2e: FloatArray

    @staticmethod
    def of(log: RequestLog, num_requests: int) -> Side:
        ids = log.column("id")
        status = np.full(num_requests, -1, dtype=np.int8)
        ttft = np.full(num_requests, np.nan)
        e2e = np.full(num_requests, np.nan)
        code = log.column("status")
        arrival = log.column("arrival_s")
        done = code == FINISHED
        status[ids] = code
        ttft[ids[done]] = (log.column("first_token_s") - arrival)[done]
        e2e[ids[done]] = (log.column("finish_s") - arrival)[done]
        return Side(status, ttft, e2e)

    @property
    def finished(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.status == FINISHED)


def check_same_stream(
    cfg_a: SimConfig, cfg_b: SimConfig, requests: RequestTable, ctx: int
) -> str | None:
    """A one-line note when B's own workload differs (both serve A's); an error when A's
    requests do not fit B's model."""
    longest = int((requests.input_len + requests.output_len).max(initial=0))
    if longest > ctx:
        raise ConfigError(
            f"compare: a request of A's workload needs {longest} tokens, more than the "
            f"{ctx}-token context of B's model {cfg_b.model!r}; both sides serve A's requests"
        )
    differs = [
        key
        for key, a, b in (
            ("workload", cfg_a.workload, cfg_b.workload),
            ("seed", cfg_a.seed, cfg_b.seed),
        )
        if a != b
    ]
    if differs:
        return f"B's {' and '.join(differs)} differ from A's: both serve A's request stream"
    return None


def block_bootstrap(
    delta: FloatArray, resamples: int = RESAMPLES, level: float = LEVEL
) -> tuple[float, float, int]:
    """(low, high) of the ``level`` percentile interval of the mean of ``delta``, and the
    block length used (blocks of consecutive values, resampled with replacement)."""
    n = int(delta.size)
    if n == 0:
        return math.nan, math.nan, 0
    block = max(1, math.ceil(n ** (1.0 / 3.0)))
    starts = np.arange(0, n, block)
    sums = np.add.reduceat(delta, starts)
    sizes = np.diff(np.append(starts, n)).astype(np.float64)
    k = starts.size
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.empty(resamples)
    batch = max(1, 2_000_000 // k)
    for first in range(0, resamples, batch):
        count = min(batch, resamples - first)
        pick = rng.integers(0, k, size=(count, k))
        means[first : first + count] = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high), block


def _metric(a: FloatArray, b: FloatArray) -> dict[str, Any]:
    delta = b - a
    low, high, block = block_bootstrap(delta)
    empty = delta.size == 0
    return {
        "mean_a": None if empty else float(a.mean()),
        "mean_b": None if empty else float(b.mean()),
        "p99_a": None if empty else float(np.percentile(a, 99)),
        "p99_b": None if empty else float(np.percentile(b, 99)),
        "mean_delta": None if empty else float(delta.mean()),
        "median_delta": None if empty else float(np.median(delta)),
        "ci95": None if empty else [low, high],
        "bootstrap_block": block,
    }


def _paired(side_a: Side, side_b: Side, mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    both = mask & side_a.finished & side_b.finished
    return {
        "requests": int(np.count_nonzero(mask)),
        "paired": int(np.count_nonzero(both)),
        "finished_only_a": int(np.count_nonzero(mask & side_a.finished & ~side_b.finished)),
        "finished_only_b": int(np.count_nonzero(mask & side_b.finished & ~side_a.finished)),
        "ttft_s": _metric(side_a.ttft[both], side_b.ttft[both]),
        "e2e_s": _metric(side_a.e2e[both], side_b.e2e[both]),
    }


def paired_report(requests: RequestTable, log_a: RequestLog, log_b: RequestLog) -> dict[str, Any]:
    """Paired deltas B − A over all requests and per client (ids are request ids)."""
    n = len(requests)
    side_a, side_b = Side.of(log_a, n), Side.of(log_b, n)
    ids_a, ids_b = np.sort(log_a.column("id")), np.sort(log_b.column("id"))
    report: dict[str, Any] = {
        "same_request_ids": bool(np.array_equal(ids_a, ids_b)),
        **_paired(side_a, side_b, np.ones(n, dtype=bool)),
        "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": BOOTSTRAP_SEED},
    }
    if requests.client is not None:
        report["clients"] = {
            name: _paired(side_a, side_b, requests.client == k)
            for k, name in enumerate(requests.client_names)
        }
    return report


def _routes(log: DecisionLog, n: int) -> tuple[npt.NDArray[np.int64], list[tuple[int, int]]]:
    """Per request id, the instance its arrival was routed to (-1: none), and where its
    route row is: (chunk index, row in the chunk)."""
    log.flush()
    chosen = np.full(n, -1, dtype=np.int64)
    where: list[tuple[int, int]] = [(-1, -1)] * n
    for k, chunk in enumerate(log.chunks):
        rows = np.flatnonzero(chunk["kind"] == ROUTE)
        ids = chunk["request_id"][rows]
        chosen[ids] = chunk["chosen"][rows]
        for row, rid in zip(rows.tolist(), ids.tolist(), strict=True):
            where[rid] = (k, row)
    return chosen, where


def _route_row(chunk: DecisionChunk, row: int) -> dict[str, Any]:
    lo, hi = int(chunk.offsets[row]), int(chunk.offsets[row + 1])
    return {
        "time_s": float(chunk["time_s"][row]),
        "policy": chunk.names("policy")[row],
        "chosen": int(chunk["chosen"][row]),
        "candidates": chunk.candidate_values[lo:hi].tolist(),
        "scores": chunk.score_values[lo:hi].tolist() if chunk["scored"][row] else None,
    }


def routing_divergence(
    log_a: DecisionLog | None, log_b: DecisionLog | None, n: int
) -> dict[str, Any] | None:
    """Where A and B routed the same request to different instances (request ids are the
    same on both sides): how many of the requests routed on both did, and the first of them
    in arrival order with both sides' route decision. None unless both logged decisions."""
    if log_a is None or log_b is None:
        return None
    chosen_a, where_a = _routes(log_a, n)
    chosen_b, where_b = _routes(log_b, n)
    both = (chosen_a >= 0) & (chosen_b >= 0)
    differ = np.flatnonzero(both & (chosen_a != chosen_b))
    report: dict[str, Any] = {
        "routed_on_both": int(np.count_nonzero(both)),
        "routed_differently": int(differ.size),
        "first": None,
    }
    if differ.size:
        rid = int(differ[0])
        (ka, ra), (kb, rb) = where_a[rid], where_b[rid]
        report["first"] = {
            "request_id": rid,
            "a": _route_row(log_a.chunks[ka], ra),
            "b": _route_row(log_b.chunks[kb], rb),
        }
    return report


def write_deltas(
    out_dir: Path, requests: RequestTable, log_a: RequestLog, log_b: RequestLog, fmt: TableFormat
) -> Path:
    """deltas.parquet (or .csv): one row per request, both sides' TTFT and E2E and B − A
    (NaN where a side did not finish the request)."""
    n = len(requests)
    side_a, side_b = Side.of(log_a, n), Side.of(log_b, n)

    def names(status: npt.NDArray[np.int8]) -> list[str | None]:
        return [STATUSES[s] if s >= 0 else None for s in status.tolist()]

    client: list[str | None] = [None] * n
    if requests.client is not None:
        client = [requests.client_names[k] for k in requests.client.tolist()]
    columns = {
        "id": np.arange(n, dtype=np.int64),
        "client": client,
        "status_a": names(side_a.status),
        "status_b": names(side_b.status),
        "ttft_a_s": side_a.ttft,
        "ttft_b_s": side_b.ttft,
        "ttft_delta_s": side_b.ttft - side_a.ttft,
        "e2e_a_s": side_a.e2e,
        "e2e_b_s": side_b.e2e,
        "e2e_delta_s": side_b.e2e - side_a.e2e,
    }
    return write_table(out_dir, "deltas", DELTAS_SCHEMA, columns, fmt)
