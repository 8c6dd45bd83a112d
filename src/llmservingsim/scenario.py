"""A config resolved once into what a run serves: the model, each pool's devices, network and
memory, the attached PIM devices, the frontend, the draft model, the perf backends' setup.

:func:`resolve` makes every check that needs the catalog (feature combinations, parallelism
against the model's shape, memory against the device) before any simulation time is spent;
the layers below receive the :class:`Scenario` and never read the config back out of built
objects.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, replace

from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import LinkOverride, PoolConfig, SimConfig
from llmservingsim.errors import ConfigError, DoesNotFitError, InputWarning
from llmservingsim.hardware.backends import PerfSetup
from llmservingsim.hardware.device import GIB, DeviceSpec, Link
from llmservingsim.model.spec import ModelSpec
from llmservingsim.network.topology import Topology
from llmservingsim.perf.frontend import Frontend
from llmservingsim.plugins import load_plugins
from llmservingsim.serving.lora import reserved_lora_bytes
from llmservingsim.serving.memory import MemoryPlan, PimMemory, plan_memory
from llmservingsim.serving.schedulers import SCHEDULERS
from llmservingsim.serving.schedulers.vllm import VllmScheduler
from llmservingsim.serving.speculative import load_draft_model, proposer_memory
from llmservingsim.workload.request_spec import RequestSpec
from llmservingsim.workload.request_table import first_with_lora


@dataclass(frozen=True)
class PoolPlan:
    """One pool of identical instances: its devices, parallelism, network and memory."""

    config: PoolConfig
    name: str
    device: DeviceSpec
    topology: Topology
    memory: MemoryPlan
    """Memory of one device of one instance."""

    @property
    def count(self) -> int:
        return self.config.count

    @property
    def tp(self) -> int:
        return self.config.tensor_parallel

    @property
    def pp(self) -> int:
        return self.config.pipeline_parallel

    @property
    def ep(self) -> int:
        return self.config.expert_parallel

    @property
    def dp(self) -> int:
        return self.config.data_parallel


@dataclass(frozen=True)
class Scenario:
    """What one run serves, resolved from its config (:func:`resolve`)."""

    config: SimConfig
    model: ModelSpec
    pools: tuple[PoolPlan, ...]
    pim: DeviceSpec | None
    """The PIM device attached to every instance (``pim.enabled``), or None."""
    frontend: Frontend | None
    """The serving frontend's time outside the GPU (``frontend.enabled``), or None."""
    draft: ModelSpec | None
    """The draft model of ``speculative.method: draft``, or None."""
    perf: PerfSetup
    """What the perf backends are built from."""

    @property
    def uses_lora(self) -> bool:
        return uses_lora(self.config)

    @property
    def adapter_rank(self) -> int:
        return adapter_rank(self.config)

    @property
    def memory(self) -> MemoryPlan:
        """Memory of one device of the first pool's instances."""
        return self.pools[0].memory

    @property
    def num_instances(self) -> int:
        return sum(pool.count for pool in self.pools)

    @property
    def scale_up_s(self) -> float | None:
        """Autoscaling: from a scale-up decision to the new instance taking requests
        (``cluster.autoscale.scale_up_s``; by default every device loads its shard of the
        weights over its own host link, in parallel); None without autoscale."""
        scale = self.config.cluster.autoscale
        if scale is None:
            return None
        if scale.scale_up_s is not None:
            return scale.scale_up_s
        pool = self.pools[0]
        host = pool.device.links.host
        bandwidth = host.bandwidth_gbps * 1e9 * host.efficiency
        return host.latency_us * 1e-6 + pool.memory.weights_gib * GIB / bandwidth

    def check_requests(self, requests: SequenceOf[RequestSpec]) -> None:
        """What a request table may name against this scenario: LoRA adapters need LoRA on."""
        if self.uses_lora:
            return
        named = first_with_lora(requests)
        if named is not None:
            raise ConfigError(
                f"workload: request {named.id} names LoRA adapter {named.lora!r} (trace column "
                "'lora'); set lora.enabled: true to serve adapters"
            )


def resolve(cfg: SimConfig) -> Scenario:
    """Resolve ``cfg`` (loading its plugins, models and devices) and check that it can run:
    a :class:`~llmservingsim.errors.ConfigError` or
    :class:`~llmservingsim.errors.DoesNotFitError` otherwise."""
    load_plugins(cfg.plugins)
    cfg = preset_separate_prefill(cfg)
    check_supported(cfg)
    model = load_model(cfg.model)
    _check_lora(cfg)
    _check_max_model_len(cfg, model)
    pim = pim_device(cfg)
    draft = None
    pools = []
    for pool_cfg in cfg.cluster.resolved_pools(cfg.hardware):
        check_parallelism(cfg, model, pool_cfg)
        device = load_device(pool_cfg.hardware or cfg.hardware)
        # The draft model runs at the pool's tensor parallelism: checked per pool.
        draft = load_draft_model(cfg.speculative, model, pool_cfg.tensor_parallel)
        memory = plan_pool_memory(cfg, model, pool_cfg, device, pim, draft)
        pools.append(
            PoolPlan(pool_cfg, pool_cfg.name or "default", device, _topology(cfg, device), memory)
        )
    setup = PerfSetup(
        perf=cfg.perf,
        model=model,
        dtype=cfg.dtype,
        kv_dtype=cfg.resolved_kv_dtype,
        compute_dtype=cfg.compute_dtype,
        fp8_scaling=cfg.resolved_fp8_scaling(model.is_moe, model.fp8_checkpoint),
    )
    return Scenario(cfg, model, tuple(pools), pim, frontend_model(cfg), draft, setup)


def check_supported(cfg: SimConfig) -> None:
    """Config values that name features not built yet: a clear error, never a silent fallback."""
    pools = cfg.cluster.resolved_pools(cfg.hardware)
    unsupported = {
        "perf.host_overlap with pim.enabled": cfg.pim.enabled and cfg.perf.host_overlap,
        # Graph replay and the launch floor are timed in perf/iteration.py; the PIM timer's
        # own step does not apply them yet.
        "perf.cuda_graphs.mode other than off with pim.enabled": cfg.pim.enabled
        and cfg.perf.cuda_graphs.mode != "off",
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
        # decisions.parquet has list columns (candidates, scores), which CSV cannot hold.
        "outputs.decisions with outputs.format: csv": cfg.outputs.decisions
        and cfg.outputs.format == "csv",
        "data_parallel > 1 with pipeline_parallel > 1": any(
            p.data_parallel > 1 and p.pipeline_parallel > 1 for p in pools
        ),
        "data_parallel > 1 with speculative decoding": cfg.speculative.enabled
        and any(p.data_parallel > 1 for p in pools),
        "data_parallel > 1 with LoRA adapters": uses_lora(cfg)
        and any(p.data_parallel > 1 for p in pools),
        "data_parallel > 1 with pim.enabled": cfg.pim.enabled
        and any(p.data_parallel > 1 for p in pools),
    }
    for what, used in unsupported.items():
        if used:
            raise ConfigError(f"{what} is not yet supported")
    if cfg.pim.enabled and cfg.scheduler.memory_fraction_of == "free":
        # The KV cache then lives in PIM memory, sized from the PIM devices' memory; the free
        # share of a GPU's memory after weights and activations says nothing about it.
        raise ConfigError(
            "scheduler.memory_fraction_of: free with pim.enabled is not supported (the KV "
            "cache is the PIM devices' memory × gpu_memory_utilization); use memory_fraction_of: "
            "total"
        )
    _check_chunked_prefill(cfg)
    _check_multi_step(cfg, pools)
    _check_context_holding(cfg, pools)
    _check_separate_prefill(cfg, pools)


def _check_chunked_prefill(cfg: SimConfig) -> None:
    """``scheduler.enable_chunked_prefill`` where a policy honours it: the schedulers built on
    VllmScheduler (its ``prefill_tokens`` reads it; ``orca`` only runs whole prompts) and
    ``static``, whose batches run whole prompts (false). Any other policy class, a plugin's
    included, would ignore it: a set value is refused."""
    chunked, policy = cfg.scheduler.enable_chunked_prefill, cfg.scheduler.policy
    if chunked is None:
        return
    if chunked and policy in ("orca", "static"):
        raise ConfigError(
            f"scheduler.enable_chunked_prefill: true with scheduler.policy: {policy}, which runs "
            "whole prompts; use policy: vllm for chunked prefill"
        )
    if policy == "static":
        return
    scheduler = SCHEDULERS.get(policy)
    if not (isinstance(scheduler, type) and issubclass(scheduler, VllmScheduler)):
        raise ConfigError(
            f"scheduler.enable_chunked_prefill: {str(chunked).lower()} with scheduler.policy: "
            f"{policy}, whose scheduler is not built on VllmScheduler and ignores it; leave it "
            "unset (null)"
        )


def separate_prefill_unsupported(cfg: SimConfig, pools: list[PoolConfig]) -> str | None:
    """What keeps ``scheduler.mixed_prefill: false`` (SGLang's separate prefill batches) from
    being modelled for ``cfg`` (None: nothing). It is modelled by the vllm family's step
    filling (VllmScheduler.fill_step, plugin policies built on it included), one engine step
    per schedule, no attention data-parallel ranks (whose SGLang batches synchronize their
    forward modes across ranks, not modelled) and no batch waiting (which holds context
    requests back only in steps that also decode)."""
    sched = cfg.scheduler
    if not issubclass(SCHEDULERS.get(sched.policy), VllmScheduler):
        return (
            f"with scheduler.policy: {sched.policy} (it needs a policy built on the vllm "
            "scheduler: vllm, sarathi, orca, no_evict, priority or a plugin subclassing it)"
        )
    if sched.num_scheduler_steps > 1:
        return "with scheduler.num_scheduler_steps > 1"
    if any(p.data_parallel > 1 for p in pools):
        return "with cluster.data_parallel > 1"
    if sched.batch_wait_timeout_iters > 0 or sched.batch_wait_max_tokens_ratio > 0:
        return "with scheduler.batch_wait_timeout_iters / batch_wait_max_tokens_ratio"
    return None


def _check_separate_prefill(cfg: SimConfig, pools: list[PoolConfig]) -> None:
    """``scheduler.mixed_prefill: false`` set by the user where it is not modelled: refused
    (from an engine preset: :func:`preset_separate_prefill`)."""
    if cfg.scheduler.mixed_prefill:
        return
    unsupported = separate_prefill_unsupported(cfg, pools)
    if unsupported is not None:
        raise ConfigError(f"scheduler.mixed_prefill: false {unsupported} is not yet supported")


def preset_separate_prefill(cfg: SimConfig) -> SimConfig:
    """``cfg``, or where its engine preset (not the user) set ``scheduler.mixed_prefill:
    false`` and that is not modelled for the rest of ``cfg``, a copy that runs mixed steps,
    with an InputWarning saying so."""
    preset = cfg.engine_preset
    if (
        cfg.scheduler.mixed_prefill
        or preset is None
        or "scheduler.mixed_prefill" not in preset["applied"]
    ):
        return cfg
    unsupported = separate_prefill_unsupported(cfg, cfg.cluster.resolved_pools(cfg.hardware))
    if unsupported is None:
        return cfg
    warnings.warn(
        f"engine {preset['engine']}: the preset's separate prefill batches "
        f"(scheduler.mixed_prefill: false) {unsupported} are not yet supported; the run uses "
        "scheduler.mixed_prefill: true (set it to silence this warning)",
        InputWarning,
        stacklevel=2,
    )
    scheduler = cfg.scheduler.model_copy(update={"mixed_prefill": True})
    return cfg.model_copy(update={"scheduler": scheduler})


def _check_context_holding(cfg: SimConfig, pools: list[PoolConfig]) -> None:
    """Batch waiting and attention-DP context balancing (TensorRT-LLM's) hold a step's context
    requests back, the receive interval (SGLang's) its arrivals (docs/engines.md): where that
    is modelled, and where the engine has it."""
    sched = cfg.scheduler
    waiting = sched.batch_wait_timeout_iters > 0 or sched.batch_wait_max_tokens_ratio > 0
    balance = sched.attention_dp_balance is not None
    receiving = sched.recv_interval > 1
    if not (waiting or balance or receiving):
        return
    what = (
        "scheduler.batch_wait_timeout_iters / batch_wait_max_tokens_ratio"
        if waiting
        else "scheduler.attention_dp_balance"
        if balance
        else f"scheduler.recv_interval={sched.recv_interval}"
    )
    if sched.policy not in ("vllm", "sarathi", "no_evict", "priority"):
        raise ConfigError(
            f"{what} with scheduler.policy: {sched.policy} is not yet supported (expected a "
            "chunked-prefill policy: vllm, sarathi, no_evict or priority)"
        )
    unsupported = {
        # A withdrawn request would have been swapped in already.
        "scheduler.preemption: swap": sched.preemption == "swap",
        "pipeline_parallel > 1": any(p.pipeline_parallel > 1 for p in pools),
        "LoRA adapters": uses_lora(cfg),
    }
    for name, used in unsupported.items():
        if used:
            raise ConfigError(f"{what} with {name} is not yet supported")
    if receiving and sched.policy == "priority":
        # The priority queue places an arrival by rank, ahead of ones already taken in.
        raise ConfigError(f"{what} with scheduler.policy: priority is not yet supported")
    dp = any(p.data_parallel > 1 for p in pools)
    if receiving and dp:
        raise ConfigError(f"{what} with cluster.data_parallel > 1 is not yet supported")
    if waiting and dp:
        raise ConfigError(
            f"{what} with cluster.data_parallel > 1: TensorRT-LLM applies batch waiting only "
            "without attention data parallelism (use scheduler.attention_dp_balance there)"
        )
    if balance and not dp:
        raise ConfigError(
            "scheduler.attention_dp_balance needs attention data-parallel ranks: set "
            "cluster.data_parallel > 1 or remove it"
        )
    timeout, ratio = sched.batch_wait_timeout_iters, sched.batch_wait_max_tokens_ratio
    if waiting and (timeout == 0 or ratio == 0):
        # TensorRT-LLM releases the held requests when either limit is reached: a limit of 0
        # is reached at once, so one of the two alone holds nothing.
        unset = "batch_wait_timeout_iters" if timeout == 0 else "batch_wait_max_tokens_ratio"
        raise ConfigError(
            f"scheduler.{unset}: 0 releases held context requests at once, so batch waiting "
            "needs both batch_wait_timeout_iters > 0 and batch_wait_max_tokens_ratio > 0 "
            "(TensorRT-LLM's two limits; either one releases them)"
        )


def _check_multi_step(cfg: SimConfig, pools: list[PoolConfig]) -> None:
    """``scheduler.num_scheduler_steps`` > 1 only where vLLM 0.6 had it and it is modelled:
    whole-prompt batches (``orca``, or ``vllm`` / ``sarathi`` with ``enable_chunked_prefill:
    false``: the same scheduler) of one engine per instance (docs/engines.md)."""
    steps = cfg.scheduler.num_scheduler_steps
    if steps == 1:
        return
    where = f"scheduler.num_scheduler_steps={steps}"
    policy, chunked = cfg.scheduler.policy, cfg.scheduler.enable_chunked_prefill
    whole_prompts = policy == "orca" or (policy in ("vllm", "sarathi") and chunked is False)
    if policy in ("vllm", "sarathi", "priority") and chunked is not False:
        raise ConfigError(
            f"{where} with scheduler.policy: {policy} (chunked prefill) is not supported by "
            "vLLM 0.6 ('Chunked prefill is not supported with multi-step'); use policy: orca "
            "or scheduler.enable_chunked_prefill: false"
        )
    if not whole_prompts:
        raise ConfigError(
            f"{where} with scheduler.policy: {policy} is not yet supported (expected "
            "policy: orca, vLLM 0.6's whole-prompt batches)"
        )
    if cfg.speculative.enabled:
        raise ConfigError(
            f"{where} with speculative decoding is not supported by vLLM 0.6 ('Speculative "
            "decoding is not supported with multi-step')"
        )
    unsupported = {
        # vLLM V1's one-step-late joining; V0 had no such thing and groups set when to join.
        "frontend.async_scheduling": cfg.frontend.enabled and cfg.frontend.async_scheduling,
        "LoRA adapters": uses_lora(cfg),
        "pim.enabled": cfg.pim.enabled,
        "pipeline_parallel > 1": any(p.pipeline_parallel > 1 for p in pools),
        "data_parallel > 1": any(p.data_parallel > 1 for p in pools),
    }
    for what, used in unsupported.items():
        if used:
            raise ConfigError(f"{where} with {what} is not yet supported")
    if load_model(cfg.model).has_local_layers:
        # A group's later steps carry no per-layer local context (and vLLM 0.6 predates these
        # models).
        raise ConfigError(
            f"{where} with {cfg.model}'s sliding-window or chunked attention is not yet supported"
        )


def uses_lora(cfg: SimConfig) -> bool:
    """Requests name LoRA adapters: slots are reserved and the adapter machinery runs."""
    return cfg.workload.lora is not None or cfg.lora.enabled


def adapter_rank(cfg: SimConfig) -> int:
    """Rank of the served adapters: the generator's, or (a trace's adapters) the slot rank."""
    return cfg.workload.lora.rank if cfg.workload.lora is not None else cfg.lora.max_lora_rank


def _check_lora(cfg: SimConfig) -> None:
    workload = cfg.workload.lora
    if workload is not None and workload.rank > cfg.lora.max_lora_rank:
        raise ConfigError(
            f"workload.lora.rank={workload.rank} exceeds lora.max_lora_rank="
            f"{cfg.lora.max_lora_rank}: raise max_lora_rank (the slots are sized for it)"
        )


def _check_max_model_len(cfg: SimConfig, model: ModelSpec) -> None:
    limit, context = cfg.max_model_len, model.max_context
    if limit is not None and limit > context:
        raise ConfigError(
            f"max_model_len={limit} exceeds {cfg.model}'s context of {context} tokens "
            f"(expected at most {context})"
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


def frontend_model(cfg: SimConfig) -> Frontend | None:
    """The frontend (perf/frontend.py) the config turns on, or None. Async output processing
    is off where vLLM 0.6 turns it off (ModelConfig.verify_async_output_proc: pipeline
    parallelism, enforce_eager, speculative decoding)."""
    fe = cfg.frontend
    if not fe.enabled:
        return None
    pools = cfg.cluster.resolved_pools(cfg.hardware)
    async_output = fe.async_output_processing and not (
        any(p.pipeline_parallel > 1 for p in pools)
        or cfg.perf.cuda_graphs.mode == "eager"
        or cfg.speculative.enabled
    )
    return Frontend(
        request_s=fe.request_overhead_us * 1e-6,
        per_prompt_token_s=fe.per_prompt_token_us * 1e-6,
        token_out_s=fe.token_out_us * 1e-6,
        async_scheduling=fe.async_scheduling,
        step_s=None if fe.step_overhead_us is None else fe.step_overhead_us * 1e-6,
        per_seq_s=None if fe.per_seq_overhead_us is None else fe.per_seq_overhead_us * 1e-6,
        async_output=async_output,
    )


def check_parallelism(cfg: SimConfig, model: ModelSpec, pool: PoolConfig) -> None:
    """The pool's TP / PP / EP can split ``model``, and its hardware can serve it."""
    where = "cluster" if cfg.cluster.pools is None else f"cluster.pools[{pool.name}]"
    if model.num_heads % pool.tensor_parallel:
        raise ConfigError(
            f"{where}.tensor_parallel={pool.tensor_parallel} must divide the "
            f"{model.num_heads} attention heads of {cfg.model}"
        )
    kv_heads, tp = model.num_kv_heads, pool.tensor_parallel
    if (kv_heads % tp) if kv_heads >= tp else (tp % kv_heads):
        # vLLM: TP shards the KV heads evenly, or replicates each on tp / kv_heads devices.
        raise ConfigError(
            f"{where}.tensor_parallel={tp} cannot split the {kv_heads} KV heads of "
            f"{cfg.model}: it must divide them or be a multiple of them"
        )
    if pool.pipeline_parallel > model.num_layers:
        raise ConfigError(
            f"{where}.pipeline_parallel={pool.pipeline_parallel} exceeds the "
            f"{model.num_layers} layers of {cfg.model}"
        )
    ep, dp = pool.expert_parallel, pool.data_parallel
    if dp > 1:
        if not model.is_moe:
            raise ConfigError(
                f"{where}.data_parallel={dp} needs a mixture-of-experts model; {cfg.model} is "
                f"dense: its DP ranks would be independent replicas, set {where}."
                f"{'instances' if cfg.cluster.pools is None else 'count'}={dp} instead"
            )
        if ep != dp * tp:
            raise ConfigError(
                f"{where}.expert_parallel={ep} must equal data_parallel × tensor_parallel = "
                f"{dp * tp} with data_parallel={dp}: the experts are split over every device "
                "of the DP ranks (vLLM --enable-expert-parallel); experts tensor-parallel "
                "across DP ranks are not yet supported"
            )
    if ep > 1:
        if not model.is_moe:
            raise ConfigError(
                f"{where}.expert_parallel={ep} needs a mixture-of-experts model; "
                f"{cfg.model} is dense"
            )
        if model.num_experts % ep:
            raise ConfigError(
                f"{where}.expert_parallel={ep} must divide the {model.num_experts} experts "
                f"of {cfg.model}"
            )
        if dp == 1 and ep != pool.tensor_parallel:
            raise ConfigError(
                f"{where}.expert_parallel={ep} must be 1 or equal tensor_parallel="
                f"{pool.tensor_parallel}: experts are split over the TP group's devices; "
                "set data_parallel to split them over several attention ranks (docs/models.md)"
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


def sliding_kv(cfg: SimConfig, model: ModelSpec, pim: bool, draft_kv: bool) -> bool:
    """Whether ``model``'s sliding-window layers keep only their window's KV blocks
    (serving/memory.py ``sliding_kv_layout``). Where that is not yet modelled (prefix caching,
    whose cached blocks hold every layer; a speculative draft's KV; a KV cache in PIM memory)
    their KV is sized for the whole context, as for full attention, and a warning says so."""
    if not model.has_sliding_layers:
        return False
    blockers = {
        "scheduler.enable_prefix_caching": cfg.scheduler.enable_prefix_caching,
        "a speculative draft's KV cache": draft_kv,
        "pim.enabled": pim,
        # the layout counts blocks per full-attention group (serving/memory.py)
        "no full-attention layer": model.num_sliding_layers >= model.num_layers,
    }
    blocker = next((what for what, on in blockers.items() if on), None)
    if blocker is None:
        return True
    warnings.warn(
        f"model {model.name}: with {blocker}, the KV cache of its {model.num_sliding_layers} of "
        f"{model.num_layers} sliding-window layers ({model.sliding_window}-token window) is "
        "sized for the whole context, as for full attention (engines keep only the window's "
        "blocks: KV capacity understated; keeping only the window with it is not yet supported)",
        InputWarning,
        stacklevel=2,
    )
    return False


def plan_pool_memory(
    cfg: SimConfig,
    model: ModelSpec,
    pool: PoolConfig,
    device: DeviceSpec,
    pim: DeviceSpec | None,
    draft: ModelSpec | None,
) -> MemoryPlan:
    """Memory of one device of an instance of ``pool``; DoesNotFitError when the weights
    leave no KV block per pipeline stage."""
    hardware = pool.hardware or cfg.hardware
    tp, pp = pool.tensor_parallel, pool.pipeline_parallel
    draft_weights, draft_kv = proposer_memory(
        cfg.speculative, model, draft, cfg.dtype, cfg.resolved_kv_dtype, tp
    )
    lora_bytes = reserved_lora_bytes(cfg.lora, model, cfg.dtype, tp) if uses_lora(cfg) else 0.0
    plan = plan_memory(
        model,
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
        dp=pool.data_parallel,
        pim=None if pim is None else PimMemory(pim, cfg.pim.count),
        draft_weight_bytes=draft_weights,
        draft_kv_bytes_per_token=draft_kv,
        lora_bytes=lora_bytes,
        sliding_kv=sliding_kv(cfg, model, pim is not None, draft_kv > 0),
        fraction_of=cfg.scheduler.memory_fraction_of,
    )
    if plan.num_blocks < pp:
        shape = f"{tp}× {hardware}" if pp == 1 else f"{tp}×{pp} (TP×PP) {hardware}"
        if pool.data_parallel > 1:
            shape = f"{pool.data_parallel}×{tp} (DP×TP) {hardware}"
        raise DoesNotFitError(
            f"{cfg.model} ({cfg.dtype}) does not fit {shape}: {plan.describe()}. "
            "Raise tensor_parallel or pipeline_parallel, use a smaller dtype (fp8/int8/int4) "
            "or a device with more memory."
        )
    override = cfg.scheduler.num_gpu_blocks_override
    if override is not None:
        plan = replace(plan, num_blocks=override)
    return plan
