"""Which LoRA adapter each request names (``workload.lora``): uniform or Zipf popularity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from llmservingsim.config import WorkloadLoraConfig
from llmservingsim.workload.request_spec import RequestSpec


def adapter_name(index: int) -> str:
    return f"lora-{index}"


def adapter_popularity(cfg: WorkloadLoraConfig) -> np.ndarray:
    """P(adapter k), k = 0..n-1: equal, or ∝ (k+1)^-alpha (adapter 0 the most popular)."""
    n = cfg.num_adapters
    if cfg.popularity == "uniform":
        return np.full(n, 1.0 / n)
    weights = np.arange(1, n + 1, dtype=float) ** -cfg.alpha
    return np.asarray(weights / weights.sum())


def assign_adapters(
    requests: list[RequestSpec], cfg: WorkloadLoraConfig, rng: np.random.Generator
) -> list[RequestSpec]:
    picks = rng.choice(cfg.num_adapters, size=len(requests), p=adapter_popularity(cfg))
    return [replace(r, lora=adapter_name(int(k))) for r, k in zip(requests, picks, strict=True)]
