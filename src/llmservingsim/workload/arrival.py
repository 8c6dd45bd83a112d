"""Arrival-time generators, one per ``ArrivalConfig.process``.

Every process draws *unit* gaps (mean 1 request per second) and divides them by ``rate``, so
the same seed at a different rate gives the same arrival pattern, only stretched or squeezed.
Arrival times are the cumulative sum of the gaps: the clock starts at t = 0 and the first
request arrives after the first gap (for every process, constant included). That way n
requests span n gaps and the long-run rate is exactly ``rate``. ``rate = inf`` puts every
request at t = 0 whatever the process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from llmservingsim.config import ArrivalConfig, StageConfig
from llmservingsim.registry import Registry

FloatArray = npt.NDArray[np.float64]
GapSampler = Callable[[ArrivalConfig, int, np.random.Generator], FloatArray]

ARRIVAL_PROCESSES: Registry[GapSampler] = Registry("arrival process")


def arrival_times(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """``n`` non-decreasing arrival times in seconds for the configured process."""
    sampler = ARRIVAL_PROCESSES.get(cfg.process)
    if n <= 0:
        return np.zeros(0, dtype=np.float64)
    if math.isinf(cfg.rate):
        return np.zeros(n, dtype=np.float64)
    unit_gaps = sampler(cfg, n, rng)
    return np.cumsum(unit_gaps / cfg.rate)


def staged_arrival_times(
    cfg: ArrivalConfig, stages: Sequence[StageConfig], rng: np.random.Generator
) -> FloatArray:
    """Arrivals of ``stages`` run back to back, each ``rate`` requests per second in ``cfg``'s
    process for ``duration_s`` seconds (``cfg.rate`` is not used).

    Within a stage the process starts afresh at the stage's start (the first request arrives
    one gap after it) and runs until the stage ends: a request whose arrival would fall at or
    past the end is not sent. A Poisson stage of rate r and duration d thus sends
    Poisson(r·d) requests; a constant one floor(r·d) (or one fewer when r·d is whole).
    """
    sampler = ARRIVAL_PROCESSES.get(cfg.process)
    pieces: list[FloatArray] = []
    start = 0.0
    for stage in stages:
        end = start + stage.duration_s
        if stage.rate > 0:
            expected = stage.rate * stage.duration_s
            chunk = int(expected + 6.0 * math.sqrt(expected) + 16)
            times = np.zeros(0, dtype=np.float64)
            last = start
            while last < end:
                with np.errstate(over="ignore"):  # a tiny rate: gaps past the end are inf
                    more = last + np.cumsum(sampler(cfg, chunk, rng) / stage.rate)
                times = np.concatenate([times, more])
                last = float(more[-1])
            pieces.append(times[times < end])
        start = end
    if not pieces:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(pieces)


@ARRIVAL_PROCESSES.register("poisson")
def _poisson(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """Exponential gaps: memoryless, independent clients."""
    return rng.exponential(1.0, n)


@ARRIVAL_PROCESSES.register("gamma")
def _gamma(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """Gamma gaps with mean 1 and coefficient of variation ``cv`` (cv > 1: burstier)."""
    shape = 1.0 / (cfg.cv * cfg.cv)
    return rng.gamma(shape, 1.0 / shape, n)


@ARRIVAL_PROCESSES.register("constant")
def _constant(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """Evenly spaced requests, like a closed-loop benchmark at a fixed rate."""
    return np.ones(n, dtype=np.float64)


@ARRIVAL_PROCESSES.register("closed")
def _closed(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """Closed-loop clients: these times only set the order requests are sent in (Poisson, so
    several ``workload.clients`` interleave by their shares); the engine times each request
    when a client's previous one ends (engine.ClosedLoop)."""
    return rng.exponential(1.0, n)


@ARRIVAL_PROCESSES.register("burst")
def _burst(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """Groups of ``burst_size`` requests at one instant, Poisson between groups.

    The gap before each group has mean ``burst_size`` (unit rate), so the mean request rate
    stays ``rate``; requests inside a group have zero gaps. The last group may be smaller.
    """
    size = cfg.burst_size
    groups = -(-n // size)
    gaps = np.zeros(n, dtype=np.float64)
    gaps[::size] = rng.exponential(float(size), groups)
    return gaps
