"""Checks made before any simulation time is spent: where the outputs go, and what a run
would cost (memory for the request table, a finite simulated time).

Each failure is a one-line :class:`~llmservingsim.errors.UserError`; nothing here allocates
in proportion to the workload.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence as SequenceOf
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmservingsim.errors import ConfigError, DoesNotFitError, InputWarning
from llmservingsim.state_memory import check_state_memory

if TYPE_CHECKING:
    from llmservingsim.config import SimConfig
    from llmservingsim.scenario import Scenario
    from llmservingsim.workload.request_spec import RequestSpec


def check_out_dir(out_dir: Path, flag: str = "--out") -> None:
    """``out_dir`` is a directory that exists or can be made: not a file, under no file, and
    its first existing ancestor writable."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{flag} {out_dir}: is a file, expected a directory (or a new path)")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {out_dir}: {parent} is a file, not a directory")
            if not out_dir.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {out_dir}: cannot create it ({parent} is not writable)")
            return


def check_run_cost(cfg: SimConfig) -> None:
    """:func:`check_state_memory` for a whole config (synthetic requests and every pool)."""
    requests = cfg.workload.num_requests if cfg.workload.kind == "synthetic" else 0
    instances = sum(pool.count for pool in cfg.cluster.resolved_pools(cfg.hardware))
    check_state_memory(requests, instances)


def _kv_tokens(requests: SequenceOf[RequestSpec]) -> np.ndarray:
    """Tokens whose KV each request holds at its largest (the last token's is never written)."""
    from llmservingsim.workload.request_table import RequestTable

    if isinstance(requests, RequestTable):
        return requests.input_len + requests.output_len - 1
    return np.fromiter(
        (r.input_len + r.output_len - 1 for r in requests), dtype=np.int64, count=len(requests)
    )


def check_kv_fits(scenario: Scenario, requests: SequenceOf[RequestSpec], warn: bool = True) -> None:
    """Like vLLM at start-up: refuse (exit 3) a KV cache too small for every request, before
    simulating; warn when only some requests can never fit (they are served as failed)."""
    from llmservingsim.serving.block_manager import BlockManager

    if not len(requests):
        return
    tokens = _kv_tokens(requests)
    distinct, where = np.unique(tokens, return_inverse=True)
    block = scenario.config.scheduler.block_size
    fits = np.zeros(len(requests), dtype=bool)
    holds: dict[str, int] = {}  # the most tokens one request may hold, per pool
    for plan in scenario.pools:
        memory = plan.memory
        capacity = memory.num_blocks // plan.pp
        layout = BlockManager(
            capacity,
            block,
            memory.kv_full_units,
            memory.kv_sliding_units,
            memory.kv_sliding_blocks,
        )
        needed = np.array([layout.blocks_needed(int(n)) for n in distinct], dtype=np.int64)
        fits |= (needed <= capacity)[where]
        holds[plan.name] = layout.tokens_held(capacity)
    if not fits.any():
        pool, most = max(holds.items(), key=lambda item: item[1])
        smallest = int(np.argmin(tokens))
        spec = requests[smallest]
        raise DoesNotFitError(
            f"the KV cache holds {most:,} tokens (blocks of {block}) per engine of pool {pool}; "
            f"the smallest request needs {int(tokens[smallest]):,} "
            f"({spec.input_len:,} in + {spec.output_len:,} out): no request can be served. "
            "Raise scheduler.gpu_memory_utilization or tensor_parallel, use a smaller kv_dtype, "
            "or shorten the requests"
        )
    never = int(np.count_nonzero(~fits))
    if never and warn:
        warnings.warn(
            f"workload: {never:,} of {len(requests):,} request(s) need more KV than the cache "
            f"holds ({max(holds.values()):,} tokens per engine) and will be reported as failed",
            InputWarning,
            stacklevel=2,
        )
