"""Build the serving objects of a resolved :class:`~llmservingsim.scenario.Scenario`: per pool
a step timer (perf/), the instances with their schedulers, KV caches, adapter slots and
speculators (serving/), placed on the cluster's devices (cluster/)."""

from __future__ import annotations

import dataclasses
from typing import Any

from llmservingsim.cluster.autoscale import Autoscaler
from llmservingsim.cluster.cluster import Cluster, Pool
from llmservingsim.cluster.placement import place_instances
from llmservingsim.config import CudaGraphsConfig
from llmservingsim.errors import plugin_base_error
from llmservingsim.hardware.backends import PerfBackend, build_backend
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.model.fusion import Fusion
from llmservingsim.model.lora import adapter_bytes_per_device
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import CudaGraphPolicy, IterationTimer
from llmservingsim.perf.lora import LoraCompute, adapter_load_seconds, disk_read_seconds
from llmservingsim.perf.pim import PimIterationTimer
from llmservingsim.scenario import PoolPlan, Scenario
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.kv_setup import build_kv_cache
from llmservingsim.serving.lora import AdapterSlots
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.serving.speculative import Speculator, make_proposer


def with_backend_collectives(topology: Topology, backend: PerfBackend) -> Topology:
    """The topology a timer uses with this backend: asking the backend's measured collective
    tables first when it has them (``collectives``), unchanged otherwise."""
    measured = getattr(backend, "collectives", None)
    if measured is None:
        return topology
    return dataclasses.replace(topology, measured=measured)


def build_timer(scenario: Scenario, pool: PoolPlan, first_device: int) -> IterationTimer:
    """The step timer of ``pool``'s instances (placed alike, they share it and its caches)."""
    cfg, device = scenario.config, pool.device
    backend = build_backend(scenario.perf, device)
    topology = with_backend_collectives(pool.topology, backend)  # measured tables (kernel_db)
    common: dict[str, Any] = {
        "tensor_parallel": pool.tp,
        "first_device": first_device,
        "dtype": cfg.dtype,
        "kv_dtype": cfg.resolved_kv_dtype,
        "expert_parallel": pool.ep,
        "moe_imbalance": cfg.moe.imbalance,
        "fusion": Fusion(**cfg.perf.fusion.model_dump()),
    }
    host = None
    if scenario.frontend is not None:
        eff = device.efficiency
        host = scenario.frontend.host_overhead_s(
            eff.iteration_overhead_us * 1e-6, eff.per_seq_overhead_us * 1e-6
        )
    if scenario.pim is not None:
        return PimIterationTimer(
            scenario.model,
            device,
            backend,
            topology,
            pim=scenario.pim,
            pim_count=cfg.pim.count,
            sub_batch_interleaving=cfg.pim.sub_batch_interleaving,
            host_overhead_s=host,
            **common,
        )
    return IterationTimer(
        scenario.model,
        device,
        backend,
        topology,
        pipeline_parallel=pool.pp,
        host_overhead_s=host,
        host_overlap=cfg.perf.host_overlap,
        data_parallel=pool.dp,
        cuda_graphs=cuda_graph_policy(cfg.perf.cuda_graphs),
        **common,
    )


def cuda_graph_policy(graphs: CudaGraphsConfig) -> CudaGraphPolicy:
    """perf.cuda_graphs as the timer uses it."""
    return CudaGraphPolicy(graphs.mode, graphs.sizes(), graphs.padding, graphs.launch_us * 1e-6)


def build_cluster(scenario: Scenario, metrics: MetricsCollector) -> Cluster:
    cfg, spec = scenario.config, scenario.model
    attached = () if scenario.pim is None else ((scenario.pim, cfg.pim.count),)
    policy = SCHEDULERS.get(cfg.scheduler.policy)
    pools: list[Pool] = []
    next_device = 0
    for plan in scenario.pools:
        device, memory, tp, pp, dp = plan.device, plan.memory, plan.tp, plan.pp, plan.dp
        firsts, next_device = place_instances(
            next_device, plan.count, tp * pp * dp, plan.topology.devices_per_node
        )
        timer = build_timer(scenario, plan, firsts[0])
        proposer = None
        if cfg.speculative.enabled:
            proposer = make_proposer(
                cfg.speculative,
                spec,
                scenario.draft,
                timer,
                device,
                cfg.dtype,
                cfg.resolved_kv_dtype,
            )
        lora = None
        if scenario.uses_lora:
            rank, targets = scenario.adapter_rank, cfg.lora.target_modules
            lora = LoraCompute(spec, targets, rank, timer)
            layers = spec.num_layers
            device_bytes = adapter_bytes_per_device(spec, targets, rank, cfg.dtype, tp, layers)
            total_bytes = adapter_bytes_per_device(spec, targets, rank, cfg.dtype, 1, layers)
            load_s = adapter_load_seconds(device, device_bytes)
            disk_s = disk_read_seconds(total_bytes, cfg.lora.disk_bandwidth_gbps)
        instances: list[Instance] = []
        base_index = sum(len(p.instances) for p in pools)
        for first in firsts:
            index = base_index + len(instances)
            speculator = None
            if proposer is not None:
                speculator = Speculator(cfg.speculative, proposer, seed=f"{cfg.seed}:{index}")
            # PP: virtual engines share the blocks; DP: each rank has the plan's blocks.
            try:
                schedulers = [
                    policy(cfg.scheduler, *build_kv_cache(cfg.scheduler, memory, device, tp, pp))
                    for _ in range(pp * dp)
                ]
            except TypeError as exc:
                error = plugin_base_error("scheduler.policy", cfg.scheduler.policy, exc)
                if error is None:
                    raise
                raise error from None
            if lora is not None:
                for scheduler in schedulers:
                    scheduler.adapters = AdapterSlots(cfg.lora, load_s, disk_s)
            instances.append(
                Instance(
                    index,
                    schedulers,
                    timer,
                    memory,
                    device,
                    cfg.compute_dtype,
                    metrics,
                    role=plan.config.role,
                    pool=plan.name,
                    first_device=first,
                    attached_devices=attached,
                    speculator=speculator,
                    lora=lora,
                    fast_forward=cfg.simulator.fast_forward,
                )
            )
        kv_per_token = spec.kv_bytes_per_token(cfg.resolved_kv_dtype)
        pools.append(Pool(plan.name, plan.config.role, instances, plan.topology, kv_per_token))
    router = cfg.cluster.router
    return Cluster(pools, router, cfg.cluster.decode_router or router, cfg.seed)


def build_autoscaler(
    scenario: Scenario, cluster: Cluster, metrics: MetricsCollector | None = None
) -> Autoscaler | None:
    """The autoscaler ``cluster.autoscale`` asks for (cluster/autoscale.py), or None."""
    scale, scale_up_s = scenario.config.cluster.autoscale, scenario.scale_up_s
    if scale is None or scale_up_s is None:
        return None
    initial = scenario.config.cluster.initial_instances
    return Autoscaler(scale, cluster, initial, scale_up_s, metrics)
