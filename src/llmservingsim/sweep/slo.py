"""Service-level objectives on latency percentiles: ``--slo ttft_p99=0.5`` (seconds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmservingsim.errors import ConfigError

METRICS = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p99", "max")


@dataclass(frozen=True)
class Slo:
    """``column`` (a flattened summary column such as ttft_s_p99) must be <= ``limit_s``."""

    name: str
    column: str
    limit_s: float

    def __str__(self) -> str:
        return f"{self.name}<={self.limit_s:g}s"


def parse_slo(text: str) -> Slo:
    """``ttft_p99=0.5`` (or ``ttft_s_p99=0.5``) → Slo; mistakes are one-line ConfigErrors."""
    name, sep, value = text.partition("=")
    name = name.strip()
    metric, _, stat = name.replace("_s_", "_").partition("_")
    if not sep or metric not in METRICS or stat not in STATS:
        raise ConfigError(
            f"--slo {text!r}: expected METRIC_STAT=SECONDS with METRIC one of "
            f"{', '.join(METRICS)} and STAT one of {', '.join(STATS)} (e.g. ttft_p99=0.5)"
        )
    try:
        limit = float(value)
    except ValueError:
        raise ConfigError(f"--slo {text!r}: {value.strip()!r} is not a number of seconds") from None
    if not limit > 0 or math.isinf(limit):
        raise ConfigError(f"--slo {text!r}: the limit must be a positive number of seconds")
    return Slo(f"{metric}_{stat}", f"{metric}_s_{stat}", limit)


def parse_slos(texts: Sequence[str]) -> tuple[Slo, ...]:
    if not texts:
        raise ConfigError("plan needs at least one --slo (e.g. --slo ttft_p99=0.5)")
    slos = tuple(parse_slo(t) for t in texts)
    names = [s.name for s in slos]
    if len(set(names)) != len(names):
        raise ConfigError(f"--slo: a metric is given twice ({', '.join(names)})")
    return slos


def slo_violations(row: Mapping[str, Any], slos: Sequence[Slo]) -> list[str]:
    """What a simulated row misses; empty when it meets every SLO.

    Failed requests break the SLO outright: a deployment that drops requests does not serve
    the traffic, whatever the latency of the rest.
    """
    missed: list[str] = []
    unserved = ("requests_failed", "requests_rejected", "requests_timed_out")
    failed = sum(row.get(key) or 0 for key in unserved)
    if failed:
        missed.append(f"{failed} requests failed")
    for slo in slos:
        value = row.get(slo.column)
        if value is None:
            missed.append(f"no {slo.name} samples")
        elif value > slo.limit_s:
            missed.append(f"{slo.name} {value:.3g}s > {slo.limit_s:g}s")
    return missed
