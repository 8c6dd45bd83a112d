"""summary.json of a finished run: request metrics, per-instance load and energy, cost, KV
cache, pools, and the counters of the perf backends, LoRA and speculative decoding."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmservingsim import __version__
from llmservingsim.cluster.autoscale import Autoscaler
from llmservingsim.cluster.cluster import Cluster, Pool
from llmservingsim.hardware.backends import backend_stats
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.kv_summary import kv_summary
from llmservingsim.metrics.request_log import FINISHED
from llmservingsim.metrics.summary import request_metrics
from llmservingsim.perf.pim import PimIterationTimer
from llmservingsim.scenario import Scenario
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.lora import LoraStats
from llmservingsim.serving.speculative import SpecStats


def summarize(
    scenario: Scenario,
    cluster: Cluster,
    metrics: MetricsCollector,
    end_time: float,
    wall_s: float,
    scaler: Autoscaler | None = None,
) -> dict[str, Any]:
    """The run's summary.json. With an autoscaler, cost and idle energy count each instance's
    provisioned time only (without one, every instance is provisioned for the whole run)."""
    cfg = scenario.config
    instances = cluster.instances
    provisioned = [end_time] * len(instances) if scaler is None else scaler.finish(end_time)
    summary = request_metrics(metrics.requests, metrics.itl, cfg.slo)
    per_instance = _instance_rows(instances, metrics, provisioned)
    energy = sum(row["energy_j"] for row in per_instance)
    cost = sum(
        (
            inst.num_devices * inst.device.cost_per_hour_usd
            + sum(count * spec.cost_per_hour_usd for spec, count in inst.attached_devices)
        )
        * seconds
        / 3600.0
        for inst, seconds in zip(instances, provisioned, strict=True)
    )
    timers = {id(inst.timer): inst.timer for inst in instances}.values()
    lookups = sum(t.cache_lookups for t in timers)
    hits = sum(t.cache_hits for t in timers)
    totals = [inst.totals for inst in instances]
    # Tokens of context the full-attention layers hold (memory.py MemoryPlan.kv_tokens).
    kv_capacity = sum(inst.num_blocks // inst.memory.kv_full_units for inst in instances)
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
                [ve.scheduler.kv_stats() for inst in instances for ve in inst.virtual_engines],
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
            "busy_fraction": busy / sum(provisioned),
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
    if scaler is not None:
        summary["instance_seconds"] = sum(provisioned)
        summary["initial_instances"] = cfg.cluster.initial_instances
        summary["scale_up_s"] = scaler.scale_up_s
        summary["scale_events"] = [event.as_dict() for event in scaler.events]
    summary.update(backend_stats(t.backend for t in timers))
    if scenario.perf.fp8_scaling != "none":
        summary["fp8_scaling"] = scenario.perf.fp8_scaling  # auto resolved for the model
    if scenario.uses_lora:
        lora_stats = LoraStats()
        for inst in instances:
            for ve in inst.virtual_engines:
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
        "data_parallel": first.dp,
        "memory": first.memory.as_dict(),
    }


def _instance_rows(
    instances: list[Instance], metrics: MetricsCollector, provisioned: list[float]
) -> list[dict[str, Any]]:
    """Per-instance load: requests finished there, tokens, busy fraction, KV peak, energy
    (``provisioned``: seconds each instance was provisioned; its idle power counts then)."""
    log = metrics.requests
    done = log.column("status") == FINISHED
    where = log.column("instance")[done]
    finished = np.bincount(where, minlength=len(instances)).tolist()
    output_sums = np.zeros(len(instances), dtype=np.int64)
    np.add.at(output_sums, where, log.column("output_tokens")[done])
    output = output_sums.tolist()
    rows = []
    for inst, alive_s in zip(instances, provisioned, strict=True):
        t = inst.totals
        device_s = alive_s * inst.num_devices
        idle_device_s = max(0.0, device_s - t.busy_device_s)
        energy = t.energy_busy_j + idle_device_s * inst.device.power.idle_w
        # Attached devices (PIM) draw idle power whenever the instance runs no step.
        idle_s = max(0.0, alive_s - t.busy_s)
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
                "kv_capacity_tokens": inst.num_blocks
                // inst.memory.kv_full_units
                * inst.memory.block_size,
                "preemptions": inst.preemptions,
                "energy_j": energy,
                "average_power_w": energy / alive_s if alive_s > 0 else None,
            }
        )
    return rows
