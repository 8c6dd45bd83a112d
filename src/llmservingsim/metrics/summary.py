"""summary.json: the run's numbers, with metric definitions from vLLM's benchmark_serving."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from llmservingsim.config import SloConfig
from llmservingsim.metrics.collector import RequestRecord
from llmservingsim.metrics.samples import RepeatedSamples

FAILED_LISTED = 100


def latency_stats(values: Iterable[float]) -> dict[str, float | None]:
    """{mean, p50, p90, p99, max} in seconds; None for each when there is no sample."""
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


def request_metrics(
    records: list[RequestRecord], itl: RepeatedSamples, slo: SloConfig
) -> dict[str, Any]:
    done = [r for r in records if r.status == "finished"]
    unserved = [r for r in records if r.status != "finished"]
    out: dict[str, Any] = {
        "requests_completed": len(done),
        "requests_failed": sum(r.status == "failed" for r in unserved),
        "requests_rejected": sum(r.status == "rejected" for r in unserved),
        "requests_timed_out": sum(r.status == "timed_out" for r in unserved),
        # Each unserved request and why (the first FAILED_LISTED; the requests table has all).
        "failed": [
            {"id": r.id, "status": r.status, "reason": r.fail_reason}
            for r in sorted(unserved, key=lambda r: r.id)[:FAILED_LISTED]
        ],
        "input_tokens": sum(r.input_tokens for r in done),
        "output_tokens": sum(r.output_tokens for r in done),
    }
    first_arrival = min((r.arrival_s for r in done), default=0.0)
    duration = max((r.finish_s for r in done), default=0.0) - first_arrival
    rate = 1.0 / duration if duration > 0 else 0.0
    out["benchmark_duration_s"] = duration
    out["request_throughput"] = len(done) * rate
    out["output_tokens_per_s"] = out["output_tokens"] * rate
    out["total_tokens_per_s"] = (out["input_tokens"] + out["output_tokens"]) * rate
    out["ttft_s"] = latency_stats(r.ttft for r in done)
    out["tpot_s"] = latency_stats(t for r in done if (t := r.tpot) is not None)
    out["itl_s"] = itl.stats()
    out["e2e_s"] = latency_stats(r.e2e for r in done)
    out["goodput"] = sum(meets_slo(r, slo) for r in done) * rate if slo.given else None
    return out
