"""Multi-turn chat sessions that resend their history (``workload.sessions``).

Turn k of a session sends [system prompt] + user_1 + answer_1 + ... + user_k and expects
answer_k. The request's content covers its prompt *and* its answer under the ids the next
turn resends, so the prefix cache can reuse the answer's blocks too (as vLLM does: generated
tokens fill blocks that are cached like prompt blocks).

Open loop: session starts follow ``workload.arrival``; turn k+1 arrives a think time after
turn k arrived, whatever the simulated latency. A session stops at the first turn whose
prompt plus answer would not fit the model's context (its first turn is clipped instead).
"""

from __future__ import annotations

import numpy as np

from llmservingsim.config import WorkloadConfig
from llmservingsim.workload.arrival import arrival_times
from llmservingsim.workload.lengths import sample_lengths
from llmservingsim.workload.request_spec import ContentRun, RequestSpec, TokenContent
from llmservingsim.workload.system_prompts import NAMESPACE, pick_system_prompts


def generate_sessions(
    cfg: WorkloadConfig,
    max_context: int,
    arrival_rng: np.random.Generator,
    input_rng: np.random.Generator,
    output_rng: np.random.Generator,
    prefix_rng: np.random.Generator,
    session_rng: np.random.Generator,
) -> list[RequestSpec]:
    """``cfg.num_requests`` turns, grouped in sessions (the last session may be cut short)."""
    sessions = cfg.sessions
    assert sessions is not None
    n = cfg.num_requests
    # Every session has at least one turn, so n draws of each stream are always enough.
    user = sample_lengths(cfg.input_len, n, input_rng)
    answer = sample_lengths(cfg.output_len, n, output_rng)
    turns_rng, think_rng = session_rng.spawn(2)
    turns = sample_lengths(sessions.turns, n, turns_rng)
    if sessions.think_time_dist == "fixed":
        think = np.full(n, sessions.think_time_s)
    else:
        think = think_rng.exponential(sessions.think_time_s, n)
    system: list[ContentRun] = []
    prompts = np.zeros(n, dtype=np.int64)
    next_id = 0
    if cfg.prefix is not None:
        prompts = pick_system_prompts(cfg.prefix, n, prefix_rng)
        next_id = cfg.prefix.num_system_prompts
    # (session, offset from the session's start, prompt length, answer length, content)
    planned: list[tuple[int, float, int, int, TokenContent]] = []
    session = 0
    while len(planned) < n:
        if cfg.prefix is not None:
            system = [(int(prompts[session]), cfg.prefix.system_prompt_len)]
        history = list(system)
        offset = 0.0
        for turn in range(int(turns[session])):
            k = len(planned)
            if k == n:
                break
            prompt_len = sum(count for _, count in history) + int(user[k])
            out_len = int(answer[k])
            if prompt_len + out_len > max_context:
                if turn > 0:
                    break  # the history outgrew the context: the session ends here
                prompt_len = min(prompt_len, max_context - 1)
                out_len = min(out_len, max_context - prompt_len)
            user_run = (next_id, int(user[k]))
            answer_run = (next_id + 1, out_len)
            next_id += 2
            prompt = TokenContent(NAMESPACE, (*history, user_run)).truncated(prompt_len)
            content = TokenContent(NAMESPACE, (*prompt.runs, answer_run))
            planned.append((session, offset, prompt_len, out_len, content))
            history.extend((user_run, answer_run))
            offset += float(think[k])
        session += 1
    starts = arrival_times(cfg.arrival, session, arrival_rng)
    return [
        RequestSpec(
            id=i,
            arrival_s=float(starts[s] + offset),
            input_len=prompt_len,
            output_len=out_len,
            content=content,
        )
        for i, (s, offset, prompt_len, out_len, content) in enumerate(planned)
    ]
