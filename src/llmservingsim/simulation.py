"""Build a simulation from a config, run it, and gather the results.

This is the one place that wires the layers together (workload → instance → engine →
metrics); every layer below it only knows its own job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceOf
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from llmservingsim import __version__
from llmservingsim.build_info import engine_build
from llmservingsim.catalog import load_device, load_model
from llmservingsim.cluster.cluster import Cluster, Pool
from llmservingsim.cluster.placement import place_instances
from llmservingsim.config import LinkOverride, PoolConfig, SimConfig
from llmservingsim.engine import ClosedLoop, Engine, EngineHooks, chain
from llmservingsim.errors import ConfigError, DoesNotFitError
from llmservingsim.hardware.backends import backend_stats, build_backend, with_backend_collectives
from llmservingsim.hardware.device import DeviceSpec, Link
from llmservingsim.invariants import InvariantChecker, invariants_requested
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.kv_summary import kv_summary
from llmservingsim.metrics.request_log import FINISHED
from llmservingsim.metrics.summary import request_metrics
from llmservingsim.metrics.workload_summary import workload_summary
from llmservingsim.network.topology import Topology
from llmservingsim.perf.frontend import ClientClock, Frontend
from llmservingsim.perf.iteration import IterationTimer
from llmservingsim.perf.pim import PimIterationTimer
from llmservingsim.plugins import load_plugins
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.kv_setup import build_kv_cache
from llmservingsim.serving.lora import (
    AdapterSlots,
    LoraCompute,
    LoraStats,
    adapter_bytes_per_device,
    reserved_lora_bytes,
)
from llmservingsim.serving.memory import MemoryPlan, PimMemory, plan_memory
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.serving.sequence import Sequence
from llmservingsim.serving.speculative import (
    SpecStats,
    Speculator,
    load_draft_model,
    make_proposer,
    proposer_memory,
)
from llmservingsim.workload import load_workload
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import RequestTable, first_with_lora


@dataclass
class SimulationResult:
    summary: dict[str, Any]
    metrics: MetricsCollector
    memory: MemoryPlan


def _reject_unsupported(cfg: SimConfig) -> None:
    """Config values that name features not built yet: a clear error, never a silent fallback."""
    pools = cfg.cluster.resolved_pools(cfg.hardware)
    closed = cfg.workload.arrival.process == "closed"
    unsupported = {
        "pim.enabled with pipeline_parallel > 1": cfg.pim.enabled
        and any(p.pipeline_parallel > 1 for p in pools),
        # The KV cache then lives in PIM memory; its copies to host memory are not modelled.
        "scheduler.preemption: swap or scheduler.kv_offload with pim.enabled": cfg.pim.enabled
        and (cfg.scheduler.preemption == "swap" or cfg.scheduler.kv_offload is not None),
        "speculative decoding with pipeline_parallel > 1": cfg.speculative.enabled
        and any(p.pipeline_parallel > 1 for p in pools),
        "speculative decoding with pim.enabled": cfg.speculative.enabled and cfg.pim.enabled,
        "speculative decoding with scheduler.policy: static": cfg.speculative.enabled
        and cfg.scheduler.policy == "static",
        "LoRA adapters with pipeline_parallel > 1": uses_lora(cfg)
        and any(p.pipeline_parallel > 1 for p in pools),
        "LoRA adapters with scheduler.policy: static": uses_lora(cfg)
        and cfg.scheduler.policy == "static",
        # The client would send again when it sees the end (the frontend's times), and its
        # request reach the engine later: set frontend.enabled: false.
        "workload.arrival.process: closed with frontend.enabled": closed and cfg.frontend.enabled,
        # Requests over max_model_len are refused before the engine runs, not when sent.
        "workload.arrival.process: closed with max_model_len": closed
        and cfg.max_model_len is not None,
    }
    for what, used in unsupported.items():
        if used:
            raise ConfigError(f"{what} is not yet supported")


def uses_lora(cfg: SimConfig) -> bool:
    """Requests name LoRA adapters: slots are reserved and the adapter machinery runs."""
    return cfg.workload.lora is not None or cfg.lora.enabled


def adapter_rank(cfg: SimConfig) -> int:
    """Rank of the served adapters: the generator's, or (a trace's adapters) the slot rank."""
    return cfg.workload.lora.rank if cfg.workload.lora is not None else cfg.lora.max_lora_rank


def _check_trace_adapters(cfg: SimConfig, requests: SequenceOf[RequestSpec]) -> None:
    if uses_lora(cfg):
        return
    named = first_with_lora(requests)
    if named is not None:
        raise ConfigError(
            f"workload: request {named.id} names LoRA adapter {named.lora!r} (trace column "
            "'lora'); set lora.enabled: true to serve adapters"
        )


def _check_lora(cfg: SimConfig) -> None:
    workload = cfg.workload.lora
    if workload is not None and workload.rank > cfg.lora.max_lora_rank:
        raise ConfigError(
            f"workload.lora.rank={workload.rank} exceeds lora.max_lora_rank="
            f"{cfg.lora.max_lora_rank}: raise max_lora_rank (the slots are sized for it)"
        )


def pim_device(cfg: SimConfig) -> DeviceSpec | None:
    """The PIM device attached to every instance, or None; checks the ``pim`` section."""
    if not cfg.pim.enabled:
        return None
    device = load_device(cfg.pim.device)
    if device.type != "pim":
        raise ConfigError(
            f"pim.device {cfg.pim.device!r} is a {device.type} device; PIM offload needs a "
            "device of type pim (e.g. the catalog's 'pim')"
        )
    return device


def plan_instance_memory(cfg: SimConfig, pool: PoolConfig | None = None) -> MemoryPlan:
    """Memory of one device of an instance of ``pool`` (default: the first pool)."""
    pool = pool or cfg.cluster.resolved_pools(cfg.hardware)[0]
    hardware = pool.hardware or cfg.hardware
    spec = load_model(cfg.model)
    device = load_device(hardware)
    tp, pp = pool.tensor_parallel, pool.pipeline_parallel
    pim = pim_device(cfg)
    draft = load_draft_model(cfg.speculative, spec, tp)
    draft_weights, draft_kv = proposer_memory(
        cfg.speculative, spec, draft, cfg.dtype, cfg.resolved_kv_dtype, tp
    )
    lora_bytes = reserved_lora_bytes(cfg.lora, spec, cfg.dtype, tp) if uses_lora(cfg) else 0.0
    plan = plan_memory(
        spec,
        device,
        dtype=cfg.dtype,
        kv_dtype=cfg.resolved_kv_dtype,
        tp=tp,
        pp=pp,
        block_size=cfg.scheduler.block_size,
        gpu_memory_utilization=cfg.scheduler.gpu_memory_utilization,
        max_batched_tokens=cfg.scheduler.max_num_batched_tokens,
        max_seqs=cfg.scheduler.max_num_seqs,
        ep=pool.expert_parallel,
        pim=None if pim is None else PimMemory(pim, cfg.pim.count),
        draft_weight_bytes=draft_weights,
        draft_kv_bytes_per_token=draft_kv,
        lora_bytes=lora_bytes,
    )
    if plan.num_blocks < pp:
        shape = f"{tp}× {hardware}" if pp == 1 else f"{tp}×{pp} (TP×PP) {hardware}"
        raise DoesNotFitError(
            f"{cfg.model} ({cfg.dtype}) does not fit {shape}: {plan.describe()}. "
            "Raise tensor_parallel or pipeline_parallel, use a smaller dtype (fp8/int8/int4) "
            "or a device with more memory."
        )
    override = cfg.scheduler.num_gpu_blocks_override
    if override is not None:
        plan = replace(plan, num_blocks=override)
    return plan


def frontend_model(cfg: SimConfig) -> Frontend | None:
    """The frontend (perf/frontend.py) the config turns on, or None."""
    fe = cfg.frontend
    if not fe.enabled:
        return None
    return Frontend(
        request_s=fe.request_overhead_us * 1e-6,
        per_prompt_token_s=fe.per_prompt_token_us * 1e-6,
        token_out_s=fe.token_out_us * 1e-6,
        async_scheduling=fe.async_scheduling,
        step_s=None if fe.step_overhead_us is None else fe.step_overhead_us * 1e-6,
        per_seq_s=None if fe.per_seq_overhead_us is None else fe.per_seq_overhead_us * 1e-6,
    )


def _check_max_model_len(cfg: SimConfig) -> None:
    limit, context = cfg.max_model_len, load_model(cfg.model).max_context
    if limit is not None and limit > context:
        raise ConfigError(
            f"max_model_len={limit} exceeds {cfg.model}'s context of {context} tokens "
            f"(expected at most {context})"
        )


def _admit(
    cfg: SimConfig, requests: SequenceOf[RequestSpec], metrics: MetricsCollector
) -> SequenceOf[RequestSpec]:
    """What the engine is fed: requests longer than max_model_len are rejected (logged as
    ``rejected`` at their arrival, as vLLM's API server refuses them), and with a frontend the
    others reach the engine ``arrival_delay_s`` later (their client times are kept)."""
    frontend = frontend_model(cfg)
    limit = cfg.max_model_len
    if limit is None and frontend is None:
        return requests
    served: list[RequestSpec] = []
    clock = None if frontend is None else ClientClock(frontend, {})
    for spec in requests:
        if limit is not None and spec.input_len + spec.output_len > limit:
            reason = (
                f"prompt + output = {spec.input_len + spec.output_len} tokens > "
                f"max_model_len {limit}"
            )
            metrics.on_drop(Sequence(spec), -1, spec.arrival_s, "rejected", reason)
            continue
        if clock is not None and frontend is not None:
            clock.client_arrival[spec.id] = spec.arrival_s
            delay = frontend.arrival_delay_s(spec.input_len)
            spec = spec.replaced(arrival_s=spec.arrival_s + delay)
        served.append(spec)
    metrics.requests.client_clock = clock
    return served


def _check_parallelism(cfg: SimConfig, pool: PoolConfig) -> None:
    spec = load_model(cfg.model)
    where = "cluster" if cfg.cluster.pools is None else f"cluster.pools[{pool.name}]"
    if spec.num_heads % pool.tensor_parallel:
        raise ConfigError(
            f"{where}.tensor_parallel={pool.tensor_parallel} must divide the "
            f"{spec.num_heads} attention heads of {cfg.model}"
        )
    kv_heads, tp = spec.num_kv_heads, pool.tensor_parallel
    if (kv_heads % tp) if kv_heads >= tp else (tp % kv_heads):
        # vLLM: TP shards the KV heads evenly, or replicates each on tp / kv_heads devices.
        raise ConfigError(
            f"{where}.tensor_parallel={tp} cannot split the {kv_heads} KV heads of "
            f"{cfg.model}: it must divide them or be a multiple of them"
        )
    if pool.pipeline_parallel > spec.num_layers:
        raise ConfigError(
            f"{where}.pipeline_parallel={pool.pipeline_parallel} exceeds the "
            f"{spec.num_layers} layers of {cfg.model}"
        )
    ep = pool.expert_parallel
    if ep > 1:
        if not spec.is_moe:
            raise ConfigError(
                f"{where}.expert_parallel={ep} needs a mixture-of-experts model; "
                f"{cfg.model} is dense"
            )
        if spec.num_experts % ep:
            raise ConfigError(
                f"{where}.expert_parallel={ep} must divide the {spec.num_experts} experts "
                f"of {cfg.model}"
            )
        if ep != pool.tensor_parallel:
            raise ConfigError(
                f"{where}.expert_parallel={ep} must be 1 or equal tensor_parallel="
                f"{pool.tensor_parallel}: experts are split over the TP group's devices "
                "(docs/models.md)"
            )
    device = load_device(pool.hardware or cfg.hardware)
    if device.type == "pim":
        raise ConfigError(
            f"hardware {device.name!r} is a PIM device: it only runs decode attention; attach "
            f"it to a GPU/NPU with pim.enabled: true and pim.device: {device.name}"
        )


def _topology(cfg: SimConfig, device: DeviceSpec) -> Topology:
    net = cfg.cluster.network

    def link(base: Link, override: LinkOverride) -> Link:
        changes = override.model_dump(exclude_none=True)
        return base.model_copy(update=changes) if changes else base

    return Topology.build(
        device,
        devices_per_node=net.devices_per_node,
        nodes_per_rack=net.nodes_per_rack,
        oversubscription=net.oversubscription,
        intra_node=link(device.links.intra_node, net.intra_node),
        inter_node=link(device.links.inter_node, net.inter_node),
        custom_allreduce=net.custom_allreduce,
    )


def _timer(
    cfg: SimConfig,
    pool_cfg: PoolConfig,
    device: DeviceSpec,
    topology: Topology,
    first_device: int,
    pim: DeviceSpec | None,
) -> IterationTimer:
    spec = load_model(cfg.model)
    backend = build_backend(cfg, device)
    topology = with_backend_collectives(topology, backend)  # measured tables (kernel_db)
    common: dict[str, Any] = {
        "tensor_parallel": pool_cfg.tensor_parallel,
        "first_device": first_device,
        "dtype": cfg.dtype,
        "kv_dtype": cfg.resolved_kv_dtype,
        "expert_parallel": pool_cfg.expert_parallel,
        "moe_imbalance": cfg.moe.imbalance,
    }
    if pim is not None:
        return PimIterationTimer(
            spec,
            device,
            backend,
            topology,
            pim=pim,
            pim_count=cfg.pim.count,
            sub_batch_interleaving=cfg.pim.sub_batch_interleaving,
            **common,
        )
    frontend = frontend_model(cfg)
    host = None
    if frontend is not None:
        eff = device.efficiency
        host = frontend.host_overhead_s(
            eff.iteration_overhead_us * 1e-6, eff.per_seq_overhead_us * 1e-6
        )
    return IterationTimer(
        spec,
        device,
        backend,
        topology,
        pipeline_parallel=pool_cfg.pipeline_parallel,
        host_overhead_s=host,
        **common,
    )


def build_cluster(cfg: SimConfig, metrics: MetricsCollector) -> Cluster:
    spec = load_model(cfg.model)
    pim = pim_device(cfg)
    attached = () if pim is None else ((pim, cfg.pim.count),)
    pools: list[Pool] = []
    next_device = 0
    for pool_cfg in cfg.cluster.resolved_pools(cfg.hardware):
        _check_parallelism(cfg, pool_cfg)
        device = load_device(pool_cfg.hardware or cfg.hardware)
        topology = _topology(cfg, device)
        memory = plan_instance_memory(cfg, pool_cfg)
        tp, pp = pool_cfg.tensor_parallel, pool_cfg.pipeline_parallel
        firsts, next_device = place_instances(
            next_device, pool_cfg.count, tp * pp, topology.devices_per_node
        )
        # Instances of a pool are placed alike, so they share one timer and its memo caches.
        timer = _timer(cfg, pool_cfg, device, topology, firsts[0], pim)
        policy = SCHEDULERS.get(cfg.scheduler.policy)
        proposer = None
        if cfg.speculative.enabled:
            draft = load_draft_model(cfg.speculative, spec, tp)
            proposer = make_proposer(
                cfg.speculative, spec, draft, timer, device, cfg.dtype, cfg.resolved_kv_dtype
            )
        lora = None
        if uses_lora(cfg):
            rank, targets = adapter_rank(cfg), cfg.lora.target_modules
            lora = LoraCompute(spec, targets, rank, timer)
            device_bytes = adapter_bytes_per_device(
                spec, targets, rank, cfg.dtype, tp, spec.num_layers
            )
            total_bytes = adapter_bytes_per_device(
                spec, targets, rank, cfg.dtype, 1, spec.num_layers
            )
        instances: list[Instance] = []
        base_index = sum(len(p.instances) for p in pools)
        for first in firsts:
            index = base_index + len(instances)
            speculator = None
            if proposer is not None:
                speculator = Speculator(cfg.speculative, proposer, seed=f"{cfg.seed}:{index}")
            schedulers = [
                policy(cfg.scheduler, *build_kv_cache(cfg.scheduler, memory, device, tp, pp))
                for _ in range(pp)
            ]
            if lora is not None:
                for scheduler in schedulers:
                    scheduler.adapters = AdapterSlots(cfg.lora, device_bytes, total_bytes, device)
            instances.append(
                Instance(
                    index,
                    schedulers,
                    timer,
                    memory,
                    device,
                    cfg.compute_dtype,
                    metrics,
                    role=pool_cfg.role,
                    pool=pool_cfg.name or "default",
                    first_device=first,
                    attached_devices=attached,
                    speculator=speculator,
                    lora=lora,
                    fast_forward=cfg.simulator.fast_forward,
                )
            )
        kv_per_token = spec.kv_bytes_per_token(cfg.resolved_kv_dtype)
        pools.append(
            Pool(pool_cfg.name or "default", pool_cfg.role, instances, topology, kv_per_token)
        )
    router = cfg.cluster.router
    return Cluster(pools, router, cfg.cluster.decode_router or router, cfg.seed)


def load_requests(cfg: SimConfig) -> RequestTable:
    return load_workload(cfg.workload, load_model(cfg.model).max_context, cfg.seed)


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
    cfg: SimConfig,
    requests: SequenceOf[RequestSpec] | None = None,
    progress: Callable[[float, int], None] | None = None,
    metrics: MetricsCollector | None = None,
    check_invariants: bool | None = None,
    hooks: SequenceOf[EngineHooks] = (),
) -> SimulationResult:
    """Run one simulation. ``requests`` overrides the config's workload (tests, sweeps);
    ``metrics`` may carry output sinks (outputs/run_outputs.py) fed while the run goes;
    ``check_invariants`` (default: the LLMSERVINGSIM_CHECK_INVARIANTS environment variable)
    checks the runtime invariants of invariants.py and raises InvariantError on a violation;
    ``hooks`` observe the engine (engine.EngineHooks), after the invariant checker."""
    load_plugins(cfg.plugins)
    _reject_unsupported(cfg)
    _check_lora(cfg)
    _check_max_model_len(cfg)
    metrics = MetricsCollector() if metrics is None else metrics
    cluster = build_cluster(cfg, metrics)
    if requests is None:
        requests = load_requests(cfg)
    _check_trace_adapters(cfg, requests)
    asked = requests  # as the clients sent them (the invariants check the log against these)
    requests = _admit(cfg, requests, metrics)
    checker = (
        InvariantChecker(cluster.instances) if invariants_requested(check_invariants) else None
    )
    hook = None if progress is None else (lambda now: progress(now, len(metrics.records)))
    observers: list[EngineHooks] = [] if checker is None else [checker]
    arrival = cfg.workload.arrival
    closed = None
    if arrival.process == "closed":
        assert arrival.concurrency is not None  # config.py: closed needs it
        closed = ClosedLoop(arrival.concurrency, arrival.think_time_s, metrics.requests)
    engine = Engine(
        cluster, progress=hook, hooks=chain([*observers, *hooks, *_OBSERVERS]), closed=closed
    )
    wall_start = time.perf_counter()
    end_time = engine.run(requests)
    wall = time.perf_counter() - wall_start
    if checker is not None and not engine.interrupted:
        checker.check_end(asked, metrics.records)
    summary = summarize(cfg, cluster, metrics, end_time, wall)
    summary["requests_total"] = len(asked)
    duration = summary["benchmark_duration_s"]
    summary.update(workload_summary(cfg, asked, metrics.requests, duration))
    summary["engine_preset"] = cfg.engine_preset
    summary["engine_build"] = engine_build()
    summary["interrupted"] = engine.interrupted
    # Stopped early (Ctrl-C, SIGTERM): the numbers cover the requests that finished by then.
    summary["partial"] = engine.interrupted
    return SimulationResult(summary, metrics, cluster.instances[0].memory)


def summarize(
    cfg: SimConfig,
    cluster: Cluster,
    metrics: MetricsCollector,
    end_time: float,
    wall_s: float,
) -> dict[str, Any]:
    instances = cluster.instances
    summary = request_metrics(metrics.requests, metrics.itl, cfg.slo)
    per_instance = _instance_rows(instances, metrics, end_time)
    energy = sum(row["energy_j"] for row in per_instance)
    cost = sum(
        (
            inst.num_devices * inst.device.cost_per_hour_usd
            + sum(count * spec.cost_per_hour_usd for spec, count in inst.attached_devices)
        )
        * end_time
        / 3600.0
        for inst in instances
    )
    timers = {id(inst.timer): inst.timer for inst in instances}.values()
    lookups = sum(t.cache_lookups for t in timers)
    hits = sum(t.cache_hits for t in timers)
    totals = [inst.totals for inst in instances]
    kv_capacity = sum(inst.num_blocks for inst in instances)
    summary.update(
        {
            "simulated_time_s": end_time,
            "sim_wall_s": wall_s,
            "iterations": sum(t.iterations for t in totals),
            "kv_cache_peak_util": max((row["kv_peak_util"] for row in per_instance), default=0.0),
            "kv_cache_capacity_tokens": kv_capacity * cfg.scheduler.block_size,
            "preemptions": sum(inst.preemptions for inst in instances),
            "max_batch_size": max(t.max_batch_size for t in totals),
            "prefill_tokens_computed": sum(t.prefill_tokens for t in totals),
            "decode_tokens_computed": sum(t.decode_tokens for t in totals),
            "perf_cache_hit_rate": hits / lookups if lookups else 0.0,
            "num_instances": len(instances),
            "num_devices": sum(inst.num_devices for inst in instances),
            "energy_j": energy,
            "joules_per_token": energy / summary["output_tokens"]
            if summary["output_tokens"]
            else None,
            "average_power_w": energy / end_time if end_time > 0 else None,
            "cost_usd": cost,
            **kv_summary(
                cfg.scheduler,
                [ve.scheduler.kv_stats() for inst in instances for ve in inst.engines],
                metrics.requests,
            ),
            "memory": instances[0].memory.as_dict(),
            "pools": [_pool_row(pool) for pool in cluster.pools],
            "instances": per_instance,
            "config": cfg.model_dump(mode="json"),
            "version": __version__,
        }
    )
    pim_timers = [t for t in timers if isinstance(t, PimIterationTimer)]
    if pim_timers and end_time > 0:
        # Busy time of one PIM device, summed over the instances' steps.
        busy = sum(t.pim_busy_s for t in pim_timers)
        summary["pim"] = {
            "device": cfg.pim.device,
            "devices": sum(n for inst in instances for _, n in inst.attached_devices),
            "busy_fraction": busy / (end_time * len(instances)),
        }
    if cluster.disaggregated:
        handed_off = metrics.requests.column("prefill_instance") >= 0
        # Python's sum, left to right, as the per-record code summed them.
        transfers = metrics.requests.column("kv_transfer_s")[handed_off].tolist()
        summary["kv_transfers"] = len(transfers)
        summary["kv_transfer_s"] = {
            "mean": sum(transfers) / len(transfers) if transfers else None,
            "max": max(transfers, default=None),
        }
    summary.update(backend_stats(t.backend for t in timers))
    if uses_lora(cfg):
        lora_stats = LoraStats()
        for inst in instances:
            for ve in inst.engines:
                if ve.scheduler.adapters is not None:
                    lora_stats.add(ve.scheduler.adapters.stats)
        summary.update(lora_stats.summary())
    if cfg.speculative.enabled:
        spec_stats = SpecStats()
        for inst in instances:
            if inst.speculator is not None:
                spec_stats.add(inst.speculator.stats)
        summary.update(spec_stats.summary())
    return summary


def _pool_row(pool: Pool) -> dict[str, Any]:
    first = pool.instances[0]
    return {
        "name": pool.name,
        "role": pool.role,
        "count": len(pool.instances),
        "hardware": first.device.name,
        "tensor_parallel": first.tp,
        "pipeline_parallel": first.pp,
        "expert_parallel": first.timer.ep,
        "memory": first.memory.as_dict(),
    }


def _instance_rows(
    instances: list[Instance], metrics: MetricsCollector, end_time: float
) -> list[dict[str, Any]]:
    """Per-instance load: requests finished there, tokens, busy fraction, KV peak, energy."""
    log = metrics.requests
    done = log.column("status") == FINISHED
    where = log.column("instance")[done]
    finished = np.bincount(where, minlength=len(instances)).tolist()
    output_sums = np.zeros(len(instances), dtype=np.int64)
    np.add.at(output_sums, where, log.column("output_tokens")[done])
    output = output_sums.tolist()
    rows = []
    for inst in instances:
        t = inst.totals
        device_s = end_time * inst.num_devices
        idle_device_s = max(0.0, device_s - t.busy_device_s)
        energy = t.energy_busy_j + idle_device_s * inst.device.power.idle_w
        # Attached devices (PIM) draw idle power whenever the instance runs no step.
        idle_s = max(0.0, end_time - t.busy_s)
        energy += sum(n * spec.power.idle_w * idle_s for spec, n in inst.attached_devices)
        rows.append(
            {
                "index": inst.index,
                "pool": inst.pool,
                "role": inst.role,
                "requests_completed": finished[inst.index],
                "output_tokens": output[inst.index],
                "prefill_tokens": t.prefill_tokens,
                "decode_tokens": t.decode_tokens,
                "iterations": t.iterations,
                "utilization": t.busy_device_s / device_s if device_s > 0 else 0.0,
                "kv_peak_util": t.kv_peak_blocks / inst.num_blocks if inst.num_blocks else 0.0,
                "kv_capacity_tokens": inst.num_blocks * inst.memory.block_size,
                "preemptions": inst.preemptions,
                "energy_j": energy,
                "average_power_w": energy / end_time if end_time > 0 else None,
            }
        )
    return rows
