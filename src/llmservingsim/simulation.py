"""Build a simulation from a config, run it, and gather the results.

This is the one place that wires the layers together (workload → instance → engine →
metrics); every layer below it only knows its own job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmservingsim import __version__
from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import SimConfig
from llmservingsim.engine import Engine
from llmservingsim.errors import ConfigError, DoesNotFitError
from llmservingsim.hardware.backends import PERF_BACKENDS
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.summary import request_metrics
from llmservingsim.perf.iteration import IterationTimer
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.memory import MemoryPlan, plan_memory
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.workload import load_workload
from llmservingsim.workload.request_spec import RequestSpec


@dataclass
class SimulationResult:
    summary: dict[str, Any]
    metrics: MetricsCollector
    memory: MemoryPlan


def _reject_unsupported(cfg: SimConfig) -> None:
    """Config values that name features not built yet: a clear error, never a silent fallback."""
    unsupported = {
        "cluster.instances > 1 (multi-instance routing, issue #4)": cfg.cluster.instances > 1,
        "cluster.pipeline_parallel > 1 (issue #4)": cfg.cluster.pipeline_parallel > 1,
        "cluster.expert_parallel > 1 (issue #4)": cfg.cluster.expert_parallel > 1,
        "scheduler.enable_prefix_caching: true (issue #5)": cfg.scheduler.enable_prefix_caching,
        "scheduler.preemption: swap (issue #5)": cfg.scheduler.preemption == "swap",
    }
    for what, used in unsupported.items():
        if used:
            raise ConfigError(f"{what} is not yet supported")


def plan_instance_memory(cfg: SimConfig) -> MemoryPlan:
    spec = load_model(cfg.model)
    device = load_device(cfg.hardware)
    tp = cfg.cluster.tensor_parallel
    plan = plan_memory(
        spec,
        device,
        dtype=cfg.dtype,
        kv_dtype=cfg.resolved_kv_dtype,
        tp=tp,
        block_size=cfg.scheduler.block_size,
        gpu_memory_utilization=cfg.scheduler.gpu_memory_utilization,
        max_batched_tokens=cfg.scheduler.max_num_batched_tokens,
        max_seqs=cfg.scheduler.max_num_seqs,
    )
    if plan.num_blocks <= 0:
        raise DoesNotFitError(
            f"{cfg.model} ({cfg.dtype}) does not fit {tp}× {cfg.hardware}: {plan.describe()}. "
            "Raise cluster.tensor_parallel, use a smaller dtype (fp8/int8/int4) or a device "
            "with more memory."
        )
    return plan


def build_instance(cfg: SimConfig, index: int, metrics: MetricsCollector) -> Instance:
    spec = load_model(cfg.model)
    if spec.is_moe or spec.uses_mla:
        raise ConfigError(
            f"model {cfg.model}: mixture-of-experts / MLA models are not yet supported (issue #5)"
        )
    device = load_device(cfg.hardware)
    tp = cfg.cluster.tensor_parallel
    if spec.num_heads % tp:
        raise ConfigError(
            f"cluster.tensor_parallel={tp} must divide the {spec.num_heads} attention heads"
        )
    memory = plan_instance_memory(cfg)
    backend = PERF_BACKENDS.get(cfg.perf.backend)(device, cfg.compute_dtype)
    timer = IterationTimer(spec, device, backend, tp, cfg.dtype, cfg.resolved_kv_dtype)
    scheduler = SCHEDULERS.get(cfg.scheduler.policy)(
        cfg.scheduler, BlockManager(memory.num_blocks, cfg.scheduler.block_size)
    )
    return Instance(index, scheduler, timer, memory, device, cfg.compute_dtype, tp, metrics)


def load_requests(cfg: SimConfig) -> list[RequestSpec]:
    return load_workload(cfg.workload, load_model(cfg.model).max_context, cfg.seed)


def simulate(
    cfg: SimConfig,
    requests: list[RequestSpec] | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> SimulationResult:
    """Run one simulation. ``requests`` overrides the config's workload (tests, sweeps)."""
    _reject_unsupported(cfg)
    metrics = MetricsCollector()
    instance = build_instance(cfg, 0, metrics)
    if requests is None:
        requests = load_requests(cfg)
    hook = None if progress is None else (lambda now: progress(now, len(metrics.records)))
    engine = Engine([instance], router=lambda _spec: 0, progress=hook)
    wall_start = time.perf_counter()
    end_time = engine.run(requests)
    wall = time.perf_counter() - wall_start
    summary = summarize(cfg, [instance], metrics, end_time, wall)
    summary["requests_total"] = len(requests)
    summary["interrupted"] = engine.interrupted
    return SimulationResult(summary, metrics, instance.memory)


def summarize(
    cfg: SimConfig,
    instances: list[Instance],
    metrics: MetricsCollector,
    end_time: float,
    wall_s: float,
) -> dict[str, Any]:
    device = load_device(cfg.hardware)
    summary = request_metrics(metrics.records, metrics.itl, cfg.slo)
    totals = [inst.totals for inst in instances]
    num_devices = sum(inst.num_devices for inst in instances)
    busy_device_s = sum(
        t.busy_s * inst.num_devices for t, inst in zip(totals, instances, strict=True)
    )
    idle_device_s = max(0.0, end_time * num_devices - busy_device_s)
    energy = sum(t.energy_busy_j for t in totals) + idle_device_s * device.power.idle_w
    lookups = sum(inst.timer.cache_lookups for inst in instances)
    hits = sum(inst.timer.cache_hits for inst in instances)
    kv_capacity = sum(inst.memory.num_blocks for inst in instances)
    summary.update(
        {
            "simulated_time_s": end_time,
            "sim_wall_s": wall_s,
            "iterations": sum(t.iterations for t in totals),
            "kv_cache_peak_util": max(
                (
                    t.kv_peak_blocks / inst.memory.num_blocks
                    for t, inst in zip(totals, instances, strict=True)
                ),
                default=0.0,
            ),
            "kv_cache_capacity_tokens": kv_capacity * cfg.scheduler.block_size,
            "preemptions": sum(inst.scheduler.preemptions for inst in instances),
            "prefix_cache_hit_rate": None,
            "max_batch_size": max(t.max_batch_size for t in totals),
            "prefill_tokens_computed": sum(t.prefill_tokens for t in totals),
            "decode_tokens_computed": sum(t.decode_tokens for t in totals),
            "perf_cache_hit_rate": hits / lookups if lookups else 0.0,
            "num_devices": num_devices,
            "energy_j": energy,
            "joules_per_token": energy / summary["output_tokens"]
            if summary["output_tokens"]
            else None,
            "cost_usd": num_devices * device.cost_per_hour_usd * end_time / 3600.0,
            "memory": instances[0].memory.as_dict(),
            "config": cfg.model_dump(mode="json"),
            "version": __version__,
        }
    )
    return summary
