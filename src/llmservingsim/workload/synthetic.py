"""Synthetic workloads: an arrival process plus input and output length distributions.

Optional shapes on top: shared system prompts (``workload.prefix``, prepended to each prompt)
and multi-turn sessions that resend their history (``workload.sessions``). Both say what the
tokens are (RequestSpec.content) so the prefix cache can share them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence as SequenceOf

import numpy as np

from llmservingsim.config import WorkloadConfig
from llmservingsim.errors import InputWarning
from llmservingsim.workload.arrival import arrival_times
from llmservingsim.workload.lengths import IntArray, clip_to_context, sample_lengths
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import PrefixContents, RequestTable
from llmservingsim.workload.sessions import generate_sessions
from llmservingsim.workload.system_prompts import NAMESPACE, pick_system_prompts


def generate_synthetic(
    cfg: WorkloadConfig, max_context: int, rng: np.random.Generator
) -> SequenceOf[RequestSpec]:
    """``cfg.num_requests`` requests with lengths clipped to the model's context window.

    Arrivals, input lengths and output lengths each get their own child generator, so the
    streams are independent of one another: changing the arrival rate or process keeps the
    lengths of a seed identical (a sweep over rates replays the same requests), and changing
    the rate alone only rescales the gaps. Prompt choice and sessions draw from further
    children, so adding them leaves those three streams as they were.
    """
    arrival_rng, input_rng, output_rng, prefix_rng, session_rng = rng.spawn(5)
    if cfg.sessions is not None:
        return generate_sessions(
            cfg, max_context, arrival_rng, input_rng, output_rng, prefix_rng, session_rng
        )
    n = cfg.num_requests
    arrivals = arrival_times(cfg.arrival, n, arrival_rng)
    user = sample_lengths(cfg.input_len, n, input_rng)
    prompts = None
    system_len = 0
    if cfg.prefix is not None:
        prompts = pick_system_prompts(cfg.prefix, n, prefix_rng)
        system_len = cfg.prefix.system_prompt_len
    drawn_outputs = sample_lengths(cfg.output_len, n, output_rng)
    inputs, outputs = clip_to_context(user + system_len, drawn_outputs, max_context)
    warn_clipped(user + system_len, drawn_outputs, max_context)
    contents = None
    if prompts is not None and cfg.prefix is not None:
        first_own = cfg.prefix.num_system_prompts
        contents = PrefixContents(NAMESPACE, prompts, system_len, user, inputs, first_own)
    # Cumulative sums of non-negative gaps: already in arrival order, ids are row numbers.
    return RequestTable(arrivals, inputs, outputs, contents)


def warn_clipped(prompts: IntArray, outputs: IntArray, max_context: int) -> None:
    """Say (one ``warning:`` line) how many drawn requests were cut to the model's context."""
    long_prompts = int(np.count_nonzero(prompts > max_context - 1))
    too_long = int(np.count_nonzero(prompts + outputs > max_context))
    if not too_long:
        return
    parts = []
    if long_prompts:
        parts.append(
            f"{long_prompts:,} prompt(s) (up to {int(prompts.max()):,} tokens) cut to "
            f"{max_context - 1:,} tokens"
        )
    if too_long > long_prompts or not long_prompts:
        parts.append("output lengths cut to the room left")
    warnings.warn(
        f"workload: {too_long:,} of {prompts.size:,} request(s) longer than the model's "
        f"{max_context:,}-token context clipped to fit: {'; '.join(parts)} "
        "(workload.input_len / workload.output_len)",
        InputWarning,
        stacklevel=2,
    )
