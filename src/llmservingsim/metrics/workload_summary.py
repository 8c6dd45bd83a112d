"""summary.json sections about the workload's shape: per client, per stage, and saturation.

Every number here is read from the request rows (``RequestLog`` columns) joined by request
id with the workload's columns (``RequestTable.client`` / ``.stage``), so it holds for any
engine that writes the rows. Latency definitions are those of :mod:`metrics.summary`.

Saturation (docs/workloads.md): a window of arrivals (the run, or one stage) is saturated when
the waiting queue (requests arrived but not yet scheduled) grew over its second half by more
than arrival noise explains (3·sqrt(arrivals) + 10 requests), when more than 1% of its
requests were rejected or timed out, or when all its requests arrived at one instant. It is
too short to have reached steady state when its arrivals span less than 5 mean E2E latencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from llmservingsim.config import SimConfig, SloConfig
from llmservingsim.metrics.request_log import FINISHED, STATUS_CODE, RequestLog
from llmservingsim.metrics.summary import latency_stats, meets_slo_each
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import RequestTable

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

STEADY_E2E_MULTIPLE = 5.0
"""A window shorter than this many mean E2E latencies is mostly warm-up and drain."""
STEADY_MIN_FRACTION = 0.75
"""A window whose completed throughput is below this fraction of its offered rate is too short
(when no queue grew): a deployment that keeps up still measures span / (span + drain) of the
offered rate, the drain after the last arrival being about one long request's E2E latency;
0.75 allows a drain of up to a third of the arrival window."""
DROPPED_SHARE = 0.01
"""More than this share of a window's requests rejected or timed out: saturated."""
NOISE_SIGMAS = 3.0
QUEUE_SLACK = 10
"""Queue growth above NOISE_SIGMAS·sqrt(arrivals) + QUEUE_SLACK counts as growing."""


SaturationCause = Literal[
    "offline_batch", "arrival_above_service_rate", "queue_growing", "too_short"
]
"""summary.json ``saturation_cause``: the first three make a window saturated; ``too_short``
does not, but its numbers are mostly warm-up and drain (the run table warns)."""


@dataclass(frozen=True)
class Verdict:
    """Whether a window of arrivals saturated the deployment, or was too short to tell."""

    saturated: bool
    cause: SaturationCause | None
    reason: str | None

    def fields(self, prefix: str = "") -> dict[str, Any]:
        """summary.json's keys: ``saturated``, ``saturation_cause``, ``saturation_reason``
        (the reason prefixed, e.g. with the stage it comes from)."""
        reason = None if self.reason is None else prefix + self.reason
        return {
            "saturated": self.saturated,
            "saturation_cause": self.cause,
            "saturation_reason": reason,
        }


NOT_SATURATED = Verdict(False, None, None)


@dataclass(frozen=True)
class Rows:
    """The request rows as columns, ordered by request id."""

    id: npt.NDArray[np.int64]
    status: npt.NDArray[np.int8]
    arrival: FloatArray
    left_queue: FloatArray
    first_token: FloatArray
    finish: FloatArray
    input_tokens: npt.NDArray[np.int32]
    output_tokens: npt.NDArray[np.int32]

    @staticmethod
    def of(log: RequestLog) -> Rows:
        ids = log.column("id")
        order = np.argsort(ids, kind="stable")
        scheduled = log.column("first_scheduled_s")[order]
        finish = log.column("finish_s")[order]
        return Rows(
            ids[order],
            log.column("status")[order],
            log.column("arrival_s")[order],
            # A request leaves the queue when it is first scheduled, or when it is dropped.
            np.where(scheduled >= 0, scheduled, finish),
            log.column("first_token_s")[order],
            finish,
            log.column("input_tokens")[order],
            log.column("output_tokens")[order],
        )


def workload_summary(
    cfg: SimConfig, requests: SequenceOf[RequestSpec], log: RequestLog, duration_s: float
) -> dict[str, Any]:
    """``clients``, ``stages`` (when the workload has them), ``saturated``,
    ``saturation_reason``; ``duration_s`` is the run's benchmark duration (the throughput
    denominator of the whole-run numbers)."""
    rows = Rows.of(log)
    out: dict[str, Any] = {}
    table = requests if isinstance(requests, RequestTable) else None
    if table is not None and table.client is not None:
        client = table.client[rows.id]
        configs = {c.name: c for c in cfg.workload.clients or ()}
        out["clients"] = {}
        for k, name in enumerate(table.client_names):
            client_cfg = configs.get(name)
            slo = cfg.slo if client_cfg is None or client_cfg.slo is None else client_cfg.slo
            out["clients"][name] = {
                "priority": 0 if client_cfg is None else client_cfg.priority,
                **group_metrics(rows, client == k, slo, duration_s),
            }
    verdicts: list[Verdict] = []
    stages = cfg.workload.stages
    if table is not None and table.stage is not None and stages is not None:
        stage = table.stage[rows.id]
        entries = []
        start = 0.0
        for k, spec in enumerate(stages):
            end = start + spec.duration_s
            mask = stage == k
            entry: dict[str, Any] = {
                "index": k,
                "start_s": start,
                "end_s": end,
                "duration_s": spec.duration_s,
                "rate": spec.rate,
                "arrival_rate": int(np.count_nonzero(mask)) / spec.duration_s,
                "completions_per_s": int(
                    np.count_nonzero(
                        (rows.status == FINISHED) & (rows.finish >= start) & (rows.finish < end)
                    )
                )
                / spec.duration_s,
            }
            entry.update(group_metrics(rows, mask, cfg.slo, spec.duration_s, throughput=False))
            verdict = saturation(rows, mask, start, end)
            entry.update(verdict.fields())
            entries.append(entry)
            verdicts.append(verdict)
            start = end
        out["stages"] = entries
        # The run: its first saturated stage, else its first too-short one.
        flagged = [k for k, v in enumerate(verdicts) if v.saturated] or [
            k for k, v in enumerate(verdicts) if v.cause is not None
        ]
        if flagged:
            out.update(verdicts[flagged[0]].fields(f"stage {flagged[0]}: "))
        else:
            out.update(NOT_SATURATED.fields())
        return out
    everything = np.ones(rows.id.size, dtype=bool)
    last = float(rows.arrival.max()) if rows.id.size else 0.0
    out.update(saturation(rows, everything, 0.0, last).fields())
    return out


def group_metrics(
    rows: Rows, mask: BoolArray, slo: SloConfig, duration_s: float, throughput: bool = True
) -> dict[str, Any]:
    """Counts, latency percentiles and goodput of the requests selected by ``mask``.

    Throughput (left out unless ``throughput``) and goodput are per second of ``duration_s``,
    so the clients' numbers add up to the run's."""
    status = rows.status[mask]
    done = status == FINISHED
    arrival = rows.arrival[mask][done]
    first_token = rows.first_token[mask][done]
    finish = rows.finish[mask][done]
    output = rows.output_tokens[mask][done].astype(np.int64)
    ttft = first_token - arrival
    e2e = finish - arrival
    multi = output > 1
    tpot = (finish[multi] - first_token[multi]) / (output[multi] - 1)
    num_done = int(np.count_nonzero(done))
    rate = 1.0 / duration_s if duration_s > 0 else 0.0
    out: dict[str, Any] = {
        "requests": int(status.size),
        "requests_completed": num_done,
        "requests_failed": int(np.count_nonzero(status == STATUS_CODE["failed"])),
        "requests_rejected": int(np.count_nonzero(status == STATUS_CODE["rejected"])),
        "requests_timed_out": int(np.count_nonzero(status == STATUS_CODE["timed_out"])),
        "input_tokens": int(rows.input_tokens[mask][done].astype(np.int64).sum()),
        "output_tokens": int(output.sum()),
        "ttft_s": latency_stats(ttft),
        "tpot_s": latency_stats(tpot),
        "e2e_s": latency_stats(e2e),
        "slo": slo.model_dump(),
    }
    if throughput:
        out["request_throughput"] = num_done * rate
        out["output_tokens_per_s"] = int(output.sum()) * rate
    if slo.given:
        count = int(np.count_nonzero(meets_slo_each(slo, ttft, tpot, e2e, multi)))
        out["goodput"] = count * rate
        out["slo_attainment"] = count / status.size if status.size else None
    else:
        out["goodput"] = None
        out["slo_attainment"] = None
    return out


def waiting(rows: Rows, t: float) -> int:
    """Requests arrived by ``t`` and not yet scheduled (or dropped) by ``t``."""
    arrived = int(np.count_nonzero(rows.arrival <= t))
    left = int(np.count_nonzero(rows.left_queue <= t))
    return arrived - left


def saturation(rows: Rows, mask: BoolArray, start: float, end: float) -> Verdict:
    """The saturation verdict of the requests of ``mask``, which arrived in [start, end]: the
    one place summary.json's ``saturated`` / ``saturation_cause`` / ``saturation_reason`` (of
    the run and of each stage) are decided (docs/workloads.md, "Saturation")."""
    n = int(np.count_nonzero(mask))
    if n == 0:
        return NOT_SATURATED
    arrival = rows.arrival[mask]
    status = rows.status[mask]
    first, last = float(arrival.min()), float(arrival.max())
    if n > 1 and first == last:
        return Verdict(
            True,
            "offline_batch",
            f"arrival rate above the measured service rate: all {n} requests arrive at "
            f"t = {first:g} s (an offline batch), the queue only drains",
        )
    dropped = int(
        np.count_nonzero((status == STATUS_CODE["rejected"]) | (status == STATUS_CODE["timed_out"]))
    )
    if dropped > DROPPED_SHARE * n:
        return Verdict(
            True,
            "arrival_above_service_rate",
            f"arrival rate above the measured service rate: {dropped} of {n} requests "
            f"({dropped / n:.0%}) were rejected or timed out",
        )
    mid = start + (end - start) / 2.0
    queue_mid, queue_end = waiting(rows, mid), waiting(rows, end)
    second_half = int(np.count_nonzero((rows.arrival > mid) & (rows.arrival <= end)))
    if end > mid and queue_end - queue_mid > NOISE_SIGMAS * math.sqrt(second_half) + QUEUE_SLACK:
        started = int(np.count_nonzero((rows.left_queue > mid) & (rows.left_queue <= end)))
        span = end - mid
        return Verdict(
            True,
            "queue_growing",
            f"queue growing through the run: {queue_mid} → {queue_end} waiting requests over "
            f"the second half ({mid:,.1f}-{end:,.1f} s); arrival rate {second_half / span:.3g} "
            f"req/s above the measured service rate {started / span:.3g} req/s",
        )
    done = status == FINISHED
    if not np.any(done):
        return NOT_SATURATED
    done_arrival = arrival[done]
    done_finish = rows.finish[mask][done]
    mean_e2e = float((done_finish - done_arrival).mean())
    span = end - start
    if span < STEADY_E2E_MULTIPLE * mean_e2e:
        return Verdict(
            False,
            "too_short",
            f"run too short to reach steady state: arrivals span {span:,.3g} s, less "
            f"than {STEADY_E2E_MULTIPLE:g}× the mean E2E latency ({mean_e2e:,.3g} s)",
        )
    # The throughput a run reports (completions over first arrival to last finish) counts the
    # drain after the last arrival; when the drain is long against the arrivals, that
    # throughput is far below the offered rate although no queue grew.
    completed = int(done_arrival.size)
    served_for = float(done_finish.max()) - float(done_arrival.min())
    if n > 1 and last > first and served_for > 0.0:
        offered = (n - 1) / (last - first)
        throughput = completed / served_for
        if throughput < STEADY_MIN_FRACTION * offered:
            return Verdict(
                False,
                "too_short",
                f"run too short to reach steady state: completed throughput {throughput:.3g} "
                f"req/s is {throughput / offered:.0%} of the {offered:.3g} req/s offered; the "
                f"last request finished {float(done_finish.max()) - last:,.3g} s after the last "
                f"arrival, against {last - first:,.3g} s of arrivals (raise "
                "workload.num_requests; a gap that stays means the load exceeds capacity)",
            )
    return NOT_SATURATED
