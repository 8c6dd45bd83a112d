"""Shared system prompts for synthetic workloads (``workload.prefix``).

Synthetic requests describe their tokens in the "synthetic" content namespace: system prompt
k is content id k; user messages and answers get fresh ids after the system prompts.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llmservingsim.config import SystemPromptConfig

NAMESPACE = "synthetic"


def pick_system_prompts(
    cfg: SystemPromptConfig, n: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Which system prompt each of ``n`` requests (or sessions) uses: uniform or Zipf."""
    count = cfg.num_system_prompts
    if cfg.popularity == "uniform":
        return rng.integers(0, count, size=n, dtype=np.int64)
    weights = np.arange(1, count + 1, dtype=np.float64) ** -cfg.zipf_alpha
    return rng.choice(count, size=n, p=weights / weights.sum()).astype(np.int64)
