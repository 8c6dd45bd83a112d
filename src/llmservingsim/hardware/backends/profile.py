"""Profile backend: op times interpolated from measured tables, roofline outside them.

Tables (hardware/profiles: Vidur ``mlp.csv`` / ``attention.csv`` or the native CSV of
docs/profiles.md) become one curve per op *shape*: the op name and every dim except the ones
the kernel's time is interpolated over (:data:`AXES`, by op kind). A lookup on a table point
returns the measured time; between points it interpolates log(time) linearly in
log(1 + axis) — times grow as power laws of tokens and context. An op whose shape is not in
the tables, or whose axis values fall outside them, is timed by the roofline backend and
counted (``perf_fallbacks`` and ``perf_fallback_ops`` in summary.json): the backend never
extrapolates silently.

Tables apply to a run whose weight dtype is the tables' dtype (bf16 and fp16 are the same
here); attention tables also need the KV cache in that dtype.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # scipy is imported when a surface is built: it costs ~0.5 s at start-up
    from scipy.interpolate import LinearNDInterpolator
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.base import PERF_BACKENDS, PerfSetup
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.hardware.profiles import ProfilePoint, canonical_dtype, load_profiles
from llmservingsim.model.ops import Op

# op kind -> the dims its time is interpolated over (all other dims must match exactly)
AXES: dict[str, tuple[str, ...]] = {
    "gemm": ("m",),
    "memory": ("m",),
    "attention_prefill": ("new", "ctx"),
    "attention_decode": ("batch", "context"),
}
ATTENTION_KINDS = ("attention_prefill", "attention_decode")

ShapeKey = tuple[str, tuple[tuple[str, int], ...]]


def _log_axes(points: list[tuple[int, ...]]) -> NDArray[np.float64]:
    """log(1 + x) of every axis value (context may be 0), one row per point."""
    return np.asarray(np.log1p(np.asarray(points, dtype=float)), dtype=float)


@dataclass
class Curve:
    """Measured times of one op shape over its interpolation axes."""

    exact: dict[tuple[int, ...], float]
    lower: tuple[int, ...]
    upper: tuple[int, ...]
    xs: NDArray[np.float64]  # one axis: sorted log(1 + x); unused for two
    log_t: NDArray[np.float64]
    surface: LinearNDInterpolator | None = None

    @classmethod
    def build(cls, samples: dict[tuple[int, ...], list[float]]) -> Curve:
        exact = {x: float(np.median(ts)) for x, ts in samples.items()}
        points = sorted(exact)
        columns = list(zip(*points, strict=True))
        lower = tuple(min(c) for c in columns)
        upper = tuple(max(c) for c in columns)
        log_t = np.log([exact[p] for p in points])
        surface = None
        if len(columns) > 1 and all(len(set(c)) > 1 for c in columns):
            from scipy.interpolate import LinearNDInterpolator
            from scipy.spatial import QhullError

            try:
                surface = LinearNDInterpolator(_log_axes(points), log_t)
            except (QhullError, ValueError):
                surface = None  # degenerate layout: only table points are answered
        xs = _log_axes(points)[:, 0] if len(columns) == 1 else np.empty(0)
        return cls(exact, lower, upper, xs, log_t, surface)

    def seconds(self, x: tuple[int, ...]) -> float | None:
        """Measured or interpolated time; None outside the table."""
        hit = self.exact.get(x)
        if hit is not None:
            return hit
        if any(v < lo or v > hi for v, lo, hi in zip(x, self.lower, self.upper, strict=True)):
            return None
        if len(x) == 1:
            if len(self.xs) < 2:
                return None
            return math.exp(float(np.interp(math.log1p(x[0]), self.xs, self.log_t)))
        if self.surface is None:
            return None
        value = float(self.surface(_log_axes([x]))[0])
        return None if math.isnan(value) else math.exp(value)


def shape_key(op: Op) -> tuple[ShapeKey, tuple[int, ...]] | None:
    """(the op's shape without its axes, its axis values); None for kinds without tables."""
    axes = AXES.get(op.kind)
    if axes is None:
        return None
    dims = dict(op.dims)
    if not all(a in dims for a in axes):
        return None
    # ``moe_*`` dims describe the whole MoE block an expert GEMM belongs to (model/moe.py),
    # not the kernel's shape: tables key the GEMM by (n, k) alone.
    fixed = tuple((k, v) for k, v in op.dims if k not in axes and not k.startswith("moe_"))
    return (op.name, fixed), tuple(dims[a] for a in axes)


def build_curves(points: list[ProfilePoint]) -> dict[ShapeKey, Curve]:
    samples: dict[ShapeKey, dict[tuple[int, ...], list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for point in points:
        key = shape_key(point.op)
        if key is not None:
            samples[key[0]][key[1]].append(point.seconds)
    return {key: Curve.build(by_x) for key, by_x in samples.items()}


@PERF_BACKENDS.register("profile")
class ProfileBackend:
    def __init__(
        self,
        device: DeviceSpec,
        dtype: str,
        points: list[ProfilePoint],
        fallback: RooflineBackend | None = None,
    ) -> None:
        self.device = device
        self.fallback = RooflineBackend(device, dtype) if fallback is None else fallback
        self.curves = build_curves(points)
        self.lookups = 0
        self.fallbacks: Counter[str] = Counter()

    @classmethod
    def from_config(cls, device: DeviceSpec, setup: PerfSetup) -> ProfileBackend:
        if setup.perf.profile_dir is None:
            raise ConfigError("perf.backend 'profile' needs perf.profile_dir (a folder of tables)")
        points = load_profiles([setup.perf.profile_dir])
        weights = canonical_dtype(setup.dtype)
        kv = canonical_dtype(setup.kv_dtype)
        usable = [
            p
            for p in points
            if canonical_dtype(p.dtype) == weights
            and (p.op.kind not in ATTENTION_KINDS or canonical_dtype(p.dtype) == kv)
        ]
        if not usable:
            have = ", ".join(sorted({p.dtype for p in points}))
            raise ConfigError(
                f"perf.profile_dir {setup.perf.profile_dir}: no table for dtype {setup.dtype} "
                f"(tables hold: {have})"
            )
        return cls(device, setup.compute_dtype, usable, RooflineBackend.from_config(device, setup))

    def time(self, op: Op) -> float:
        self.lookups += 1
        key = shape_key(op)
        if key is not None:
            curve = self.curves.get(key[0])
            if curve is not None:
                seconds = curve.seconds(key[1])
                if seconds is not None:
                    return seconds
        self.fallbacks[op.name] += 1
        return self.fallback.time(op)

    def stats(self) -> dict[str, Any]:
        return {
            "perf_lookups": self.lookups,
            "perf_fallbacks": sum(self.fallbacks.values()),
            "perf_fallback_ops": dict(self.fallbacks),
        }
