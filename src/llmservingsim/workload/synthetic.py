"""Synthetic workloads: an arrival process plus input and output length distributions."""

from __future__ import annotations

import numpy as np

from llmservingsim.config import WorkloadConfig
from llmservingsim.workload.arrival import arrival_times
from llmservingsim.workload.lengths import clip_to_context, sample_lengths
from llmservingsim.workload.request_spec import RequestSpec


def generate_synthetic(
    cfg: WorkloadConfig, max_context: int, rng: np.random.Generator
) -> list[RequestSpec]:
    """``cfg.num_requests`` requests with lengths clipped to the model's context window.

    Arrivals, input lengths and output lengths each get their own child generator, so the
    streams are independent of one another: changing the arrival rate or process keeps the
    lengths of a seed identical (a sweep over rates replays the same requests), and changing
    the rate alone only rescales the gaps.
    """
    arrival_rng, input_rng, output_rng = rng.spawn(3)
    n = cfg.num_requests
    arrivals = arrival_times(cfg.arrival, n, arrival_rng)
    inputs, outputs = clip_to_context(
        sample_lengths(cfg.input_len, n, input_rng),
        sample_lengths(cfg.output_len, n, output_rng),
        max_context,
    )
    return [
        RequestSpec(id=i, arrival_s=float(t), input_len=int(a), output_len=int(b))
        for i, (t, a, b) in enumerate(zip(arrivals, inputs, outputs, strict=True))
    ]
