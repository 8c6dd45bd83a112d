"""summary.json's KV-cache numbers: prefix-cache hits, recomputation, swap and offload traffic.

``prefix_cache_hit_rate`` = Σ cached_tokens / Σ input_tokens over completed requests, where a
request's ``cached_tokens`` are the prompt tokens whose KV the prefix cache (or its offload
tier) supplied when the request was first admitted. None when prefix caching is off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from llmservingsim.config import SchedulerConfig
from llmservingsim.metrics.request_log import FINISHED, RequestLog


def kv_summary(
    cfg: SchedulerConfig, per_instance: Iterable[dict[str, int | float]], log: RequestLog
) -> dict[str, Any]:
    done = log.column("status") == FINISHED
    prompt = int(log.column("input_tokens")[done].sum())
    cached = int(log.column("cached_tokens")[done].sum())
    totals: Counter[str] = Counter()
    for stats in per_instance:
        totals.update(stats)
    hit_rate = (cached / prompt if prompt else 0.0) if cfg.enable_prefix_caching else None
    return {"prefix_cache_hit_rate": hit_rate, "cached_prompt_tokens": cached, **totals}
