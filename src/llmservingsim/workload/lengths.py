"""Token-length samplers, one per length distribution, plus clipping to the context window.

All samplers are vectorized and return int64 arrays whose values are at least 1 and lie in the
distribution's ``[min, max]`` when those are given (continuous draws are rounded, then clipped,
so mass beyond a bound piles up on the bound rather than being resampled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from llmservingsim.config import (
    EmpiricalLength,
    FixedLength,
    LengthDist,
    LognormalLength,
    NormalLength,
    UniformLength,
    ZipfLength,
)
from llmservingsim.errors import ConfigError
from llmservingsim.registry import Registry

IntArray = npt.NDArray[np.int64]
LengthSampler = Callable[[Any, int, np.random.Generator], IntArray]

LENGTH_DISTS: Registry[LengthSampler] = Registry("length distribution")


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> IntArray:
    """``n`` token lengths drawn from ``dist`` (each an int >= 1)."""
    values = LENGTH_DISTS.get(dist.dist)(dist, n, rng)
    return np.maximum(values, 1).astype(np.int64)


def clip_to_context(
    input_len: IntArray, output_len: IntArray, max_context: int
) -> tuple[IntArray, IntArray]:
    """Fit every request in the model's window: input <= max_context - 1, input + output <= it.

    The prompt is cut first (keeping room for at least one generated token), then the output is
    cut to the room left; outputs of 0 become 1, since every served request emits a token.
    """
    if max_context < 2:
        raise ConfigError(f"model context window {max_context} is too small (need at least 2)")
    inp = np.clip(input_len, 1, max_context - 1).astype(np.int64)
    out = np.clip(output_len, 1, None).astype(np.int64)
    out = np.minimum(out, max_context - inp).astype(np.int64)
    return inp, out


def _rounded(draws: npt.NDArray[np.float64], low: int, high: int | None) -> IntArray:
    """Round continuous draws to token counts inside ``[low, high]``."""
    upper = float(high) if high is not None else float(np.iinfo(np.int64).max // 2)
    clipped = np.clip(np.rint(draws), float(max(low, 1)), upper)
    return clipped.astype(np.int64)


@LENGTH_DISTS.register("fixed")
def _fixed(dist: FixedLength, n: int, rng: np.random.Generator) -> IntArray:
    return np.full(n, dist.value, dtype=np.int64)


@LENGTH_DISTS.register("uniform")
def _uniform(dist: UniformLength, n: int, rng: np.random.Generator) -> IntArray:
    """Integers uniform on ``[min, max]``, both ends included."""
    return rng.integers(dist.min, dist.max, size=n, endpoint=True, dtype=np.int64)


@LENGTH_DISTS.register("normal")
def _normal(dist: NormalLength, n: int, rng: np.random.Generator) -> IntArray:
    return _rounded(rng.normal(dist.mean, dist.std, n), dist.min, dist.max)


@LENGTH_DISTS.register("lognormal")
def _lognormal(dist: LognormalLength, n: int, rng: np.random.Generator) -> IntArray:
    """Parameterized by the distribution's mean, as dataset statistics report it.

    For log-space N(mu, sigma²) the mean is exp(mu + sigma²/2), so mu = ln(mean) - sigma²/2.
    """
    mu = math.log(dist.mean) - dist.sigma * dist.sigma / 2.0
    return _rounded(rng.lognormal(mu, dist.sigma, n), dist.min, dist.max)


@LENGTH_DISTS.register("zipf")
def _zipf(dist: ZipfLength, n: int, rng: np.random.Generator) -> IntArray:
    """P(k) ∝ k^-alpha on ``[min, max]``, by inverting the exact truncated CDF."""
    support = np.arange(dist.min, dist.max + 1, dtype=np.int64)
    weights = support.astype(np.float64) ** -dist.alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(n), side="right")
    return support[np.minimum(idx, support.size - 1)]


@LENGTH_DISTS.register("empirical")
def _empirical(dist: EmpiricalLength, n: int, rng: np.random.Generator) -> IntArray:
    """Uniform draws from the listed values (repeat a value to weight it)."""
    values = np.asarray(dist.values, dtype=np.int64)
    return values[rng.integers(0, values.size, size=n)]
