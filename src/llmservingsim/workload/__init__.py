"""Workloads: the stream of requests a simulation serves, synthetic or replayed from a trace."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceOf

import numpy as np

from llmservingsim.config import ClientConfig, WorkloadConfig
from llmservingsim.errors import ConfigError
from llmservingsim.ranges import MAX_SECONDS
from llmservingsim.registry import Registry
from llmservingsim.state_memory import check_state_memory
from llmservingsim.workload.adapters import pick_adapters
from llmservingsim.workload.arrival import ARRIVAL_PROCESSES, arrival_times
from llmservingsim.workload.lengths import LENGTH_DISTS, clip_to_context, sample_lengths
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import NamedAdapters, RequestTable
from llmservingsim.workload.synthetic import generate_synthetic
from llmservingsim.workload.traces import TRACE_FORMATS, TraceRow, read_trace

WorkloadSource = Callable[[WorkloadConfig, int, np.random.Generator], SequenceOf[RequestSpec]]

WORKLOAD_KINDS: Registry[WorkloadSource] = Registry("workload kind")
WORKLOAD_KINDS.register("synthetic")(generate_synthetic)
WORKLOAD_KINDS.register("trace")(read_trace)

__all__ = [
    "ARRIVAL_PROCESSES",
    "LENGTH_DISTS",
    "TRACE_FORMATS",
    "WORKLOAD_KINDS",
    "RequestSpec",
    "RequestTable",
    "TraceRow",
    "arrival_times",
    "clip_to_context",
    "generate_synthetic",
    "load_workload",
    "read_trace",
    "sample_lengths",
]


def check_arrivals(arrival_s: np.ndarray) -> None:
    """Refuse a workload whose simulated time would not be finite (or not fit float64 seconds
    with sub-microsecond resolution): a rate of 1e-320, a time_scale or think time of 1e300."""
    if not arrival_s.size:
        return
    last = float(np.max(arrival_s))
    if not np.isfinite(arrival_s).all() or last > MAX_SECONDS:
        raise ConfigError(
            f"workload: the last request would arrive at t = {last:.3g} s, beyond the "
            f"{MAX_SECONDS:.0e} s a simulation covers: raise workload.arrival.rate, or lower "
            "workload.trace.time_scale / workload.sessions.think_time_s"
        )


def load_workload(cfg: WorkloadConfig, max_context: int, seed: int) -> RequestTable:
    """The requests of ``cfg`` in arrival order with ids 0..n-1, reproducible from ``seed``.

    Every request fits the model: input_len <= max_context - 1 and
    input_len + output_len <= max_context. The table builds each request's object when read
    (request_table.py), so a million requests cost columns, not a million objects.
    """
    if cfg.kind == "synthetic":
        check_state_memory(num_requests=cfg.num_requests)
    rng = np.random.default_rng(seed)
    requests = WORKLOAD_KINDS.get(cfg.kind)(cfg, max_context, rng)
    if isinstance(requests, RequestTable):
        table = requests
        if not len(table) and cfg.stages is not None:
            expected = sum(s.rate * s.duration_s for s in cfg.stages)
            raise ConfigError(
                f"workload.stages: no request arrived (rate × duration_s sums to {expected:g}); "
                "lengthen the stages or raise their rates"
            )
    else:
        names = tuple(c.name for c in cfg.clients or ())
        table = RequestTable.from_specs(requests, client_names=names)
    check_arrivals(table.arrival_s)
    if cfg.lora is not None:
        # Its own generator: the same seed gives the same traffic with or without adapters.
        picks = pick_adapters(len(table), cfg.lora, np.random.default_rng([seed, 12]))
        table = table.with_adapters(picks)
    if cfg.clients is not None and any(c.lora is not None for c in cfg.clients):
        table = _client_adapters(table, cfg.clients)
    return table


def _client_adapters(table: RequestTable, clients: list[ClientConfig]) -> RequestTable:
    """Every request of a client that names an adapter runs it (whatever it ran before)."""
    assert table.client is not None
    names: list[str] = []
    loras = table.loras
    if loras is None:
        codes = np.full(len(table), -1, dtype=np.int64)
    else:
        index: dict[str, int] = {}
        codes = np.fromiter(
            (-1 if name is None else index.setdefault(name, len(index)) for name in loras),
            dtype=np.int64,
            count=len(table),
        )
        names = list(index)
    for k, client in enumerate(clients):
        if client.lora is not None:
            if client.lora not in names:
                names.append(client.lora)
            codes[table.client == k] = names.index(client.lora)
    return table.with_loras(NamedAdapters(codes, names))
