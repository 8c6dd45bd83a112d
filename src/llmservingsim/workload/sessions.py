"""Multi-turn chat sessions that resend their history (``workload.sessions``).

Turn k of a session sends [system prompt] + user_1 + answer_1 + ... + user_k and expects
answer_k. The request's content covers its prompt *and* its answer under the ids the next
turn resends, so the prefix cache can reuse the answer's blocks too (as vLLM does: generated
tokens fill blocks that are cached like prompt blocks).

Open loop: session starts follow ``workload.arrival`` (or ``workload.stages``); turn k+1
arrives a think time after turn k arrived, whatever the simulated latency. A session stops at
the first turn whose prompt plus answer would not fit the model's context (its first turn is
clipped instead). With a prompt pool, each turn's user message is the next prompt of the pool
(and its answer has that prompt's output length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmservingsim.config import LengthDist, SessionConfig, SystemPromptConfig
from llmservingsim.workload.lengths import sample_lengths
from llmservingsim.workload.request_spec import ContentRun, TokenContent
from llmservingsim.workload.system_prompts import NAMESPACE

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PoolPrompts:
    """A prompt pool's prompts: content ids ``first_id + p``, lengths by prompt, the order."""

    first_id: int
    input_len: IntArray
    output_len: IntArray
    order: str
    system: IntArray | None = None
    """Prompt p's system prompt (an index into ``prefix``'s prompts), when it has one."""
    prefix: SystemPromptConfig | None = None

    @property
    def size(self) -> int:
        return int(self.input_len.size)

    def picks(self, n: int, rng: np.random.Generator) -> IntArray:
        """Which prompt each of ``n`` consecutive requests sends."""
        if self.order == "cycle":
            return np.arange(n, dtype=np.int64) % self.size
        return rng.integers(0, self.size, size=n, dtype=np.int64)


@dataclass(frozen=True)
class PlannedTurns:
    """Turns as columns: session index, offset from the session's start, lengths, content."""

    session: IntArray
    offset: npt.NDArray[np.float64]
    input_len: IntArray
    output_len: IntArray
    contents: list[TokenContent]
    next_id: int
    """First content id the turns left unused."""


def plan_sessions(
    sessions: SessionConfig,
    input_dist: LengthDist,
    output_dist: LengthDist,
    max_context: int,
    *,
    num_turns: int | None,
    num_sessions: int | None,
    prefix: SystemPromptConfig | None,
    system_prompts: IntArray | None,
    pool: PoolPrompts | None,
    first_id: int,
    rngs: tuple[np.random.Generator, ...],
) -> PlannedTurns:
    """``num_turns`` turns (the last session may be cut short), or every turn of
    ``num_sessions`` sessions. ``system_prompts[s]`` is session s's system prompt (ids of the
    prefix), ``first_id`` the first content id free for user messages and answers.

    ``rngs`` = (input, output, session, pool) generators.
    """
    input_rng, output_rng, session_rng, pool_rng = rngs
    turns_rng, think_rng = session_rng.spawn(2)
    if num_turns is not None:
        # Every session has at least one turn, so n draws of each stream are always enough.
        n = num_turns
        user = sample_lengths(input_dist, n, input_rng)
        answer = sample_lengths(output_dist, n, output_rng)
        turns = sample_lengths(sessions.turns, n, turns_rng)
        session_cap = n
    else:
        assert num_sessions is not None
        turns = sample_lengths(sessions.turns, num_sessions, turns_rng)
        n = int(turns.sum())
        user = sample_lengths(input_dist, n, input_rng)
        answer = sample_lengths(output_dist, n, output_rng)
        session_cap = num_sessions
    if sessions.think_time_dist == "fixed":
        think = np.full(n, sessions.think_time_s)
    else:
        think = think_rng.exponential(sessions.think_time_s, n)
    user_ids = np.full(n, -1, dtype=np.int64)
    if pool is not None:
        picks = pool.picks(n, pool_rng)
        user = pool.input_len[picks]
        answer = pool.output_len[picks]
        user_ids = pool.first_id + picks
    user_list, answer_list, ids_list = user.tolist(), answer.tolist(), user_ids.tolist()
    prompts_list = [] if system_prompts is None else system_prompts.tolist()
    session_col: list[int] = []
    offsets: list[float] = []
    prompt_lens: list[int] = []
    out_lens: list[int] = []
    contents: list[TokenContent] = []
    next_id = first_id
    session = 0
    system: list[ContentRun] = []
    while len(contents) < n and session < session_cap:
        if prefix is not None:
            system = [(int(prompts_list[session]), prefix.system_prompt_len)]
        history = list(system)
        history_len = sum(count for _, count in history)
        offset = 0.0
        for turn in range(int(turns[session])):
            k = len(contents)
            if k == n:
                break
            prompt_len = history_len + user_list[k]
            out_len = answer_list[k]
            if prompt_len + out_len > max_context:
                if turn > 0:
                    break  # the history outgrew the context: the session ends here
                prompt_len = min(prompt_len, max_context - 1)
                out_len = min(out_len, max_context - prompt_len)
            own = ids_list[k]
            user_run = (next_id if own < 0 else own, user_list[k])
            answer_run = (next_id + 1, out_len)
            next_id += 2
            prompt = TokenContent(NAMESPACE, (*history, user_run)).truncated(prompt_len)
            contents.append(TokenContent(NAMESPACE, (*prompt.runs, answer_run)))
            session_col.append(session)
            offsets.append(offset)
            prompt_lens.append(prompt_len)
            out_lens.append(out_len)
            history.extend((user_run, answer_run))
            history_len += user_list[k] + out_len
            offset += float(think[k])
        session += 1
    return PlannedTurns(
        np.asarray(session_col, dtype=np.int64),
        np.asarray(offsets, dtype=np.float64),
        np.asarray(prompt_lens, dtype=np.int64),
        np.asarray(out_lens, dtype=np.int64),
        contents,
        next_id,
    )
