"""summary.json: the run's numbers, with metric definitions from vLLM's benchmark_serving."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from llmservingsim.config import SloConfig
from llmservingsim.metrics.request_log import (
    FINISHED,
    STATUS_CODE,
    STATUSES,
    RequestLog,
    RequestRecord,
)
from llmservingsim.metrics.samples import RepeatedSamples

FAILED_LISTED = 100

FloatArray = npt.NDArray[np.float64]


def latency_stats(values: Iterable[float] | FloatArray) -> dict[str, float | None]:
    """{mean, p50, p90, p99, max} in seconds; None for each when there is no sample."""
    if isinstance(values, np.ndarray):
        data = values.astype(float, copy=False)
    else:
        data = np.fromiter(values, dtype=float)
    if data.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {
        "mean": float(data.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(data.max()),
    }


def meets_slo(record: RequestRecord, slo: SloConfig) -> bool:
    if slo.ttft_s is not None and record.ttft > slo.ttft_s:
        return False
    tpot = record.tpot
    if slo.tpot_s is not None and tpot is not None and tpot > slo.tpot_s:
        return False
    return not (slo.e2e_s is not None and record.e2e > slo.e2e_s)


def request_metrics(log: RequestLog, itl: RepeatedSamples, slo: SloConfig) -> dict[str, Any]:
    """Counts, throughput and latency percentiles of the requests in ``log``.

    Works on the log's columns; each number equals what the per-record definitions
    (``RequestRecord.ttft``/``tpot``/``e2e``, :func:`meets_slo`) give, value for value.
    """
    # Column by column, each whole-run column dropped once its finished rows are taken, so
    # the peak stays a few arrays of the finished requests.
    status = log.column("status")
    done = status == FINISHED
    unserved = np.flatnonzero(~done)
    unserved_status = status[unserved]
    del status
    arrival = log.column("arrival_s")[done]
    first_token = log.column("first_token_s")[done]
    finish = log.column("finish_s")[done]
    output = log.column("output_tokens")[done]
    num_done = int(np.count_nonzero(done))
    # Each unserved request and why (the first FAILED_LISTED by id; the requests table has all).
    unserved_ids = log.column("id")[unserved]
    order = np.argsort(unserved_ids, kind="stable")[:FAILED_LISTED]
    reasons = log.column("fail_reason")[unserved][order].tolist()
    failed = [
        {"id": rid, "status": STATUSES[code], "reason": log.reasons[reason] if reason >= 0 else ""}
        for rid, code, reason in zip(
            unserved_ids[order].tolist(), unserved_status[order].tolist(), reasons, strict=True
        )
    ]
    out: dict[str, Any] = {
        "requests_completed": num_done,
        "requests_failed": int(np.count_nonzero(unserved_status == STATUS_CODE["failed"])),
        "requests_rejected": int(np.count_nonzero(unserved_status == STATUS_CODE["rejected"])),
        "requests_timed_out": int(np.count_nonzero(unserved_status == STATUS_CODE["timed_out"])),
        "failed": failed,
        "input_tokens": int(log.column("input_tokens")[done].sum()),
        "output_tokens": int(output.sum()),
    }
    first_arrival = float(arrival.min()) if num_done else 0.0
    duration = (float(finish.max()) if num_done else 0.0) - first_arrival
    rate = 1.0 / duration if duration > 0 else 0.0
    ttft = first_token - arrival
    e2e = finish - arrival
    multi = output > 1
    tpot = (finish[multi] - first_token[multi]) / (output[multi] - 1)
    out["benchmark_duration_s"] = duration
    out["request_throughput"] = num_done * rate
    out["output_tokens_per_s"] = out["output_tokens"] * rate
    out["total_tokens_per_s"] = (out["input_tokens"] + out["output_tokens"]) * rate
    out["ttft_s"] = latency_stats(ttft)
    out["tpot_s"] = latency_stats(tpot)
    out["itl_s"] = itl.stats()
    out["e2e_s"] = latency_stats(e2e)
    if slo.given:
        out["goodput"] = int(np.count_nonzero(meets_slo_each(slo, ttft, tpot, e2e, multi))) * rate
    else:
        out["goodput"] = None
    return out


def meets_slo_each(
    slo: SloConfig,
    ttft: npt.NDArray[np.float64],
    tpot: npt.NDArray[np.float64],
    e2e: npt.NDArray[np.float64],
    multi: npt.NDArray[np.bool_],
) -> npt.NDArray[np.bool_]:
    """Per finished request: whether it meets every target the SLO gives. ``tpot`` holds the
    requests with more than one output token only (``multi`` marks them); the others have no
    TPOT and meet any TPOT target."""
    good = np.ones(ttft.size, dtype=bool)
    if slo.ttft_s is not None:
        good &= ~(ttft > slo.ttft_s)
    if slo.tpot_s is not None:
        slow = np.zeros(ttft.size, dtype=bool)
        slow[multi] = tpot > slo.tpot_s
        good &= ~slow
    if slo.e2e_s is not None:
        good &= ~(e2e > slo.e2e_s)
    return good
