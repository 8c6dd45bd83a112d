"""Synthetic workloads: an arrival process plus input and output length distributions.

Optional shapes on top: shared system prompts (``workload.prefix``, prepended to each prompt),
multi-turn sessions that resend their history (``workload.sessions``), a fixed pool of whole
prompts sent over and over (``workload.prompt_pool``), arrival stages at different rates
(``workload.stages``) and several clients, each its own stream with its own shapes
(``workload.clients``). All say what the tokens are (RequestSpec.content) so the prefix cache
can share them. docs/workloads.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmservingsim.config import (
    ArrivalConfig,
    ClientConfig,
    LengthDist,
    PromptPoolConfig,
    SessionConfig,
    StageConfig,
    SystemPromptConfig,
    WorkloadConfig,
)
from llmservingsim.errors import InputWarning
from llmservingsim.workload.arrival import arrival_times, staged_arrival_times
from llmservingsim.workload.lengths import clip_to_context, sample_lengths
from llmservingsim.workload.request_spec import TokenContent
from llmservingsim.workload.request_table import MergedRows, RequestTable, SyntheticContents
from llmservingsim.workload.sessions import PoolPrompts, plan_sessions
from llmservingsim.workload.system_prompts import NAMESPACE, pick_system_prompts

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Stream:
    """How one stream of requests arrives and what it sends."""

    arrival: ArrivalConfig
    stages: list[StageConfig] | None
    num_requests: int
    input_len: LengthDist
    output_len: LengthDist
    prefix: SystemPromptConfig | None
    prefix_first_id: int
    sessions: SessionConfig | None
    pool: PoolPrompts | None


@dataclass(frozen=True)
class Part:
    """One stream's requests as columns, in arrival order."""

    arrival_s: FloatArray
    input_len: IntArray
    output_len: IntArray
    contents: SequenceOf[TokenContent | None] | None
    next_id: int


def generate_synthetic(
    cfg: WorkloadConfig, max_context: int, rng: np.random.Generator
) -> RequestTable:
    """The requests of ``cfg``, lengths clipped to the model's context window.

    Arrivals, input lengths and output lengths each get their own child generator, so the
    streams are independent of one another: changing the arrival rate or process keeps the
    lengths of a seed identical (a sweep over rates replays the same requests), and changing
    the rate alone only rescales the gaps. Prompt choice, sessions and prompt pools draw from
    further children, so adding them leaves those three streams as they were. Each client
    draws from a child generator of its own.
    """
    if cfg.clients is None:
        next_id = 0
        prefix_first = 0
        if cfg.prefix is not None:
            next_id = cfg.prefix.num_system_prompts
        rngs = tuple(rng.spawn(6))
        pool = None
        if cfg.prompt_pool is not None:
            # The pool's lengths and picks draw from the sixth child, which nothing else uses.
            lengths_rng, picks_rng = rngs[5].spawn(2)
            rngs = (*rngs[:5], picks_rng)
            pool = _pool(
                cfg.prompt_pool, cfg.input_len, cfg.output_len, next_id, lengths_rng, cfg.prefix
            )
            next_id += pool.size
        stream = Stream(
            cfg.arrival,
            cfg.stages,
            cfg.num_requests,
            cfg.input_len,
            cfg.output_len,
            cfg.prefix,
            prefix_first,
            cfg.sessions,
            pool,
        )
        part = _generate_stream(stream, max_context, next_id, rngs)
        return RequestTable(
            part.arrival_s,
            part.input_len,
            part.output_len,
            part.contents,
            stage=_stage_of(part.arrival_s, cfg.stages),
        )
    return _generate_clients(cfg, cfg.clients, max_context, rng)


def _pool(
    cfg: PromptPoolConfig,
    input_dist: LengthDist,
    output_dist: LengthDist,
    first_id: int,
    rng: np.random.Generator,
    prefix: SystemPromptConfig | None,
) -> PoolPrompts:
    """``cfg.size`` prompts with lengths drawn once, content ids from ``first_id`` on.

    Behind system prompts, each prompt of the pool has its own for good (a whole prompt is
    resent whole): prompt p has system prompt p mod k with uniform popularity (k groups of
    equal size, as inference-perf's shared_prefix data builds them), a draw with Zipf.
    """
    input_rng, output_rng, system_rng = rng.spawn(3)
    system = None
    if prefix is not None:
        if prefix.popularity == "uniform":
            system = np.arange(cfg.size, dtype=np.int64) % prefix.num_system_prompts
        else:
            system = pick_system_prompts(prefix, cfg.size, system_rng)
    return PoolPrompts(
        first_id,
        sample_lengths(input_dist, cfg.size, input_rng),
        sample_lengths(output_dist, cfg.size, output_rng),
        cfg.order,
        system,
        prefix,
    )


def _generate_clients(
    cfg: WorkloadConfig,
    clients: list[ClientConfig],
    max_context: int,
    rng: np.random.Generator,
) -> RequestTable:
    """Every client's stream, merged in arrival order (ties: in client order)."""
    shared_rng, *client_rngs = rng.spawn(1 + len(clients))
    next_id = 0
    if cfg.prefix is not None:
        next_id = cfg.prefix.num_system_prompts
    shared_pool = None
    if cfg.prompt_pool is not None:
        shared_pool = _pool(
            cfg.prompt_pool, cfg.input_len, cfg.output_len, next_id, shared_rng, cfg.prefix
        )
        next_id += shared_pool.size
    rates = cfg.client_rates()
    by_rate = clients[0].rate is not None
    counts = _split(cfg.num_requests, rates)
    parts: list[Part] = []
    for client, rate, count, client_rng in zip(clients, rates, counts, client_rngs, strict=True):
        stream_rng, pool_rng = client_rng.spawn(2)
        input_dist = client.input_len or cfg.input_len
        output_dist = client.output_len or cfg.output_len
        prefix, prefix_first = cfg.prefix, 0
        if client.prefix is not None:
            prefix, prefix_first = client.prefix, next_id
            next_id += client.prefix.num_system_prompts
        pool = shared_pool
        if client.prompt_pool is not None:
            pool = _pool(client.prompt_pool, input_dist, output_dist, next_id, pool_rng, prefix)
            next_id += pool.size
        arrival = cfg.arrival.model_copy(
            update={"rate": rate if by_rate else cfg.arrival.rate * rate}
        )
        stages = None
        if cfg.stages is not None:
            stages = [s.model_copy(update={"rate": s.rate * rate}) for s in cfg.stages]
        stream = Stream(
            arrival,
            stages,
            count,
            input_dist,
            output_dist,
            prefix,
            prefix_first,
            client.sessions or cfg.sessions,
            pool,
        )
        part = _generate_stream(stream, max_context, next_id, tuple(stream_rng.spawn(6)))
        next_id = part.next_id
        parts.append(part)
    return _merge(parts, clients, cfg.stages)


def _split(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders; the counts sum to it)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return [int(c) for c in counts]


def _merge(
    parts: list[Part], clients: list[ClientConfig], stages: list[StageConfig] | None
) -> RequestTable:
    arrival = np.concatenate([p.arrival_s for p in parts])
    part_of = np.concatenate(
        [np.full(p.arrival_s.size, k, dtype=np.int32) for k, p in enumerate(parts)]
    )
    row_of = np.concatenate([np.arange(p.arrival_s.size, dtype=np.int64) for p in parts])
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    part_of, row_of = part_of[order], row_of[order]
    contents = None
    if any(p.contents is not None for p in parts):
        contents = MergedRows([p.contents for p in parts], part_of, row_of)
    table = RequestTable(
        arrival,
        np.concatenate([p.input_len for p in parts])[order],
        np.concatenate([p.output_len for p in parts])[order],
        contents,
        stage=_stage_of(arrival, stages),
    )
    return table.with_clients(
        part_of, tuple(c.name for c in clients), [c.priority for c in clients]
    )


def _stage_of(
    arrival: FloatArray, stages: list[StageConfig] | None
) -> npt.NDArray[np.int32] | None:
    """The stage each arrival falls in (session turns arriving after the last stage ends
    count in the last stage)."""
    if stages is None:
        return None
    ends = np.cumsum([s.duration_s for s in stages])
    index = np.searchsorted(ends, arrival, side="right")
    return np.minimum(index, len(stages) - 1).astype(np.int32)


def _generate_stream(
    stream: Stream, max_context: int, first_id: int, rngs: tuple[np.random.Generator, ...]
) -> Part:
    """One stream's requests in arrival order; content ids from ``first_id`` on.

    ``rngs``: the arrival, input, output, prefix, session and pool generators.
    """
    if stream.sessions is not None:
        return _sessions(stream, max_context, first_id, rngs)
    arrival_rng, input_rng, output_rng, prefix_rng, _, pool_rng = rngs
    if stream.stages is not None:
        arrivals = staged_arrival_times(stream.arrival, stream.stages, arrival_rng)
        n = int(arrivals.size)
    else:
        n = stream.num_requests
        arrivals = arrival_times(stream.arrival, n, arrival_rng)
    prompts = None
    system_len = 0
    pool = stream.pool
    picks = None if pool is None else pool.picks(n, pool_rng)
    if stream.prefix is not None:
        if pool is not None and pool.system is not None and pool.prefix is stream.prefix:
            assert picks is not None
            relative = pool.system[picks]  # each pool prompt keeps its system prompt
        else:
            relative = pick_system_prompts(stream.prefix, n, prefix_rng)
        prompts = stream.prefix_first_id + relative
        system_len = stream.prefix.system_prompt_len
    if pool is None or picks is None:
        user = sample_lengths(stream.input_len, n, input_rng)
        answer = sample_lengths(stream.output_len, n, output_rng)
        own_id = first_id + np.arange(n, dtype=np.int64)
        next_id = first_id + n
    else:
        user = pool.input_len[picks]
        answer = pool.output_len[picks]
        own_id = pool.first_id + picks
        next_id = first_id
    inputs, outputs = clip_to_context(user + system_len, answer, max_context)
    warn_clipped(user + system_len, answer, max_context)
    contents = None
    if prompts is not None or pool is not None:
        contents = SyntheticContents(NAMESPACE, prompts, system_len, own_id, user, inputs)
    # Cumulative sums of non-negative gaps: already in arrival order.
    return Part(arrivals, inputs, outputs, contents, next_id)


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


def _sessions(
    stream: Stream,
    max_context: int,
    first_id: int,
    rngs: tuple[np.random.Generator, ...],
) -> Part:
    arrival_rng, input_rng, output_rng, prefix_rng, session_rng, pool_rng = rngs
    sessions = stream.sessions
    assert sessions is not None
    starts = None
    if stream.stages is not None:
        # The stages time the session starts; every session runs all its turns.
        starts = staged_arrival_times(stream.arrival, stream.stages, arrival_rng)
        choices = int(starts.size)
        num_sessions: int | None = choices
        num_turns: int | None = None
    else:
        choices = stream.num_requests
        num_sessions, num_turns = None, choices
    prompts = None
    if stream.prefix is not None:
        prompts = stream.prefix_first_id + pick_system_prompts(stream.prefix, choices, prefix_rng)
    planned = plan_sessions(
        sessions,
        stream.input_len,
        stream.output_len,
        max_context,
        num_turns=num_turns,
        num_sessions=num_sessions,
        prefix=stream.prefix,
        system_prompts=prompts,
        pool=stream.pool,
        first_id=first_id,
        rngs=(input_rng, output_rng, session_rng, pool_rng),
    )
    if starts is None:
        starts = arrival_times(
            stream.arrival, int(planned.session.max(initial=-1)) + 1, arrival_rng
        )
    arrival = starts[planned.session] + planned.offset
    order = np.argsort(arrival, kind="stable")
    contents = [planned.contents[i] for i in order.tolist()]
    return Part(
        arrival[order],
        planned.input_len[order],
        planned.output_len[order],
        contents,
        planned.next_id,
    )
