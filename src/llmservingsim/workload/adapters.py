"""Which LoRA adapter each request names (``workload.lora``): uniform or Zipf popularity."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llmservingsim.config import WorkloadLoraConfig


def adapter_name(index: int) -> str:
    return f"lora-{index}"


def adapter_popularity(cfg: WorkloadLoraConfig) -> np.ndarray:
    """P(adapter k), k = 0..n-1: equal, or ∝ (k+1)^-alpha (adapter 0 the most popular)."""
    n = cfg.num_adapters
    if cfg.popularity == "uniform":
        return np.full(n, 1.0 / n)
    weights = np.arange(1, n + 1, dtype=float) ** -cfg.alpha
    return np.asarray(weights / weights.sum())


def pick_adapters(
    num_requests: int, cfg: WorkloadLoraConfig, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """The adapter index of each of ``num_requests`` requests (name: :func:`adapter_name`)."""
    picks = rng.choice(cfg.num_adapters, size=num_requests, p=adapter_popularity(cfg))
    return np.asarray(picks, dtype=np.int64)
