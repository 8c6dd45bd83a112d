"""Run one simulation: resolve the config (scenario.py), build the cluster (build.py), feed
the engine the workload, and summarize (run_summary.py).

This is the one place that wires the layers together (workload → instance → engine →
metrics); every layer below it only knows its own job.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceOf
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llmservingsim.build import build_autoscaler, build_cluster
from llmservingsim.build_info import engine_build
from llmservingsim.cluster.admission import Admission
from llmservingsim.cluster.cluster import Cluster
from llmservingsim.config import SimConfig
from llmservingsim.engine import (
    INF,
    ClientTimeouts,
    ClosedLoop,
    Engine,
    EngineHooks,
    chain,
    send_to_engine,
)
from llmservingsim.errors import InputWarning
from llmservingsim.invariants import InvariantChecker, invariants_requested
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.decisions import DecisionLog
from llmservingsim.metrics.workload_summary import workload_summary
from llmservingsim.perf.frontend import ClientClock
from llmservingsim.run_summary import summarize
from llmservingsim.scenario import Scenario, resolve
from llmservingsim.serving.memory import MemoryPlan
from llmservingsim.workload import load_workload
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import RequestTable, in_arrival_order


@dataclass
class SimulationResult:
    summary: dict[str, Any]
    metrics: MetricsCollector
    memory: MemoryPlan


def client_clock(scenario: Scenario, cluster: Cluster) -> ClientClock | None:
    """The client times of the run's requests (perf/frontend.py), or None without a frontend;
    each instance's host step is the one its timer adds to every step."""
    if scenario.frontend is None:
        return None
    steps = tuple(instance.timer.step_overhead for instance in cluster.instances)
    return ClientClock(scenario.frontend, {}, steps)


def _admit(
    scenario: Scenario,
    requests: SequenceOf[RequestSpec],
    metrics: MetricsCollector,
    clock: ClientClock | None,
) -> SequenceOf[RequestSpec]:
    """What the engine is fed: requests longer than max_model_len are rejected (logged as
    ``rejected`` at their arrival, as vLLM's API server refuses them), and with a frontend the
    others reach the engine ``arrival_delay_s`` later (their client times are kept)."""
    frontend = scenario.frontend
    limit = scenario.config.max_model_len
    if limit is None and frontend is None:
        return requests
    served: list[RequestSpec] = []
    arrivals = None if clock is None else clock.client_arrival
    for spec in requests:
        sent = send_to_engine(spec, spec.arrival_s, limit, frontend, metrics, arrivals)
        if sent is not None:
            served.append(sent)
    metrics.requests.client_clock = clock
    return served


def _sent_within(
    closed: ClosedLoop, asked: SequenceOf[RequestSpec], duration_s: float
) -> SequenceOf[RequestSpec]:
    """The requests a closed loop bounded by workload.duration_s sent (the first ones, in the
    order they are sent; the rest were never sent and are in no row or count). Warns when
    num_requests ran out first."""
    if closed.sent == len(asked):
        warnings.warn(
            InputWarning(
                f"workload.duration_s={duration_s:g}: all {closed.sent} requests of "
                f"workload.num_requests were sent by t = {closed.last_send:.3g} s; raise "
                "num_requests to keep the clients busy until duration_s"
            ),
            stacklevel=2,
        )
        return asked
    if isinstance(asked, RequestTable):
        return asked.head(closed.sent)
    return list(in_arrival_order(asked))[: closed.sent]


def client_timeouts(cfg: SimConfig, metrics: MetricsCollector) -> ClientTimeouts | None:
    """When clients give up on their requests (workload.timeout_s), or None when none does."""
    timeouts = [INF if t is None else t for t in cfg.workload.client_timeouts()]
    if all(t == INF for t in timeouts):
        return None
    clock = metrics.requests.client_clock
    default = INF if cfg.workload.timeout_s is None else cfg.workload.timeout_s
    return ClientTimeouts(timeouts, default, None if clock is None else clock.client_arrival)


def load_requests(cfg: SimConfig | Scenario) -> RequestTable:
    """The config's workload (synthetic, or read from its trace)."""
    scenario = cfg if isinstance(cfg, Scenario) else None
    config = cfg.config if isinstance(cfg, Scenario) else cfg
    if scenario is not None:
        context = scenario.model.max_context
    else:
        from llmservingsim.catalog import load_model

        context = load_model(config.model).max_context
    return load_workload(config.workload, context, config.seed)


_OBSERVERS: list[EngineHooks] = []


@contextmanager
def observing(*hooks: EngineHooks) -> Iterator[None]:
    """Every :func:`simulate` inside the block also runs ``hooks`` (engine.EngineHooks): for
    tests and tools that watch runs started by code they do not call themselves."""
    _OBSERVERS.extend(hooks)
    try:
        yield
    finally:
        del _OBSERVERS[len(_OBSERVERS) - len(hooks) :]


def simulate(
    cfg: SimConfig | Scenario,
    requests: SequenceOf[RequestSpec] | None = None,
    progress: Callable[[float, int], None] | None = None,
    metrics: MetricsCollector | None = None,
    check_invariants: bool | None = None,
    hooks: SequenceOf[EngineHooks] = (),
) -> SimulationResult:
    """Run one simulation of a config, or of a scenario already resolved from one
    (:func:`~llmservingsim.scenario.resolve`). ``requests`` overrides the config's workload
    (tests, sweeps);
    ``metrics`` may carry output sinks (outputs/run_outputs.py) fed while the run goes;
    with ``outputs.decisions`` and no ``metrics.decisions`` log, the decisions are kept in
    memory (``result.metrics.decisions``);
    ``check_invariants`` (default: the LLMSERVINGSIM_CHECK_INVARIANTS environment variable)
    checks the runtime invariants of invariants.py and raises InvariantError on a violation;
    ``hooks`` observe the engine (engine.EngineHooks), after the invariant checker."""
    scenario = cfg if isinstance(cfg, Scenario) else resolve(cfg)
    cfg = scenario.config
    metrics = MetricsCollector() if metrics is None else metrics
    cluster = build_cluster(scenario, metrics)
    if cfg.outputs.decisions:
        if metrics.decisions is None:  # no file to stream to: kept in memory
            metrics.decisions = DecisionLog(keep=True)
        cluster.log_decisions(metrics.decisions)
    if requests is None:
        requests = load_requests(scenario)
    scenario.check_requests(requests)
    asked = requests  # as the clients sent them (the invariants check the log against these)
    checker = (
        InvariantChecker(cluster.instances) if invariants_requested(check_invariants) else None
    )
    hook = None if progress is None else (lambda now: progress(now, len(metrics.records)))
    observers: list[EngineHooks] = [] if checker is None else [checker]
    arrival = cfg.workload.arrival
    closed = None
    if arrival.process == "closed":
        assert arrival.concurrency is not None  # config.py: closed needs it
        # Each request is sent when a client frees up: max_model_len and the frontend's
        # arrival delay apply then (ClosedLoop), not to the whole list up front.
        frontend = scenario.frontend
        metrics.requests.client_clock = client_clock(scenario, cluster)
        duration = INF if cfg.workload.duration_s is None else cfg.workload.duration_s
        closed = ClosedLoop(
            arrival.concurrency,
            arrival.think_time_s,
            metrics,
            frontend,
            cfg.max_model_len,
            duration,
        )
    else:
        requests = _admit(scenario, requests, metrics, client_clock(scenario, cluster))
    admission = None
    client_names = [c.name for c in cfg.workload.clients or []]
    if cfg.admission.token_bucket is not None or cfg.admission.max_queue:
        admission = Admission(cfg.admission, client_names, metrics)
    scaler = build_autoscaler(scenario, cluster, metrics)
    engine = Engine(
        cluster,
        progress=hook,
        hooks=chain([*observers, *hooks, *_OBSERVERS]),
        closed=closed,
        admission=admission,
        timeouts=client_timeouts(cfg, metrics),
        scaler=scaler,
    )
    wall_start = time.perf_counter()
    end_time = engine.run(requests)
    wall = time.perf_counter() - wall_start
    if closed is not None and cfg.workload.duration_s is not None:
        asked = _sent_within(closed, asked, cfg.workload.duration_s)
    if checker is not None and not engine.interrupted:
        checker.check_end(asked, metrics.records)
    summary = summarize(scenario, cluster, metrics, end_time, wall, scaler)
    summary["requests_total"] = len(asked)
    duration = summary["benchmark_duration_s"]
    summary.update(workload_summary(cfg, asked, metrics.requests, duration))
    if admission is not None:
        summary["admission"] = admission.summary()
    summary["engine_preset"] = cfg.engine_preset
    summary["engine_build"] = engine_build()
    summary["interrupted"] = engine.interrupted
    # Stopped early (Ctrl-C, SIGTERM): the numbers cover the requests that finished by then.
    summary["partial"] = engine.interrupted
    return SimulationResult(summary, metrics, scenario.memory)
