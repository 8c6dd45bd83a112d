"""The compiled event loop (loop.c) behind the surface of :class:`~llmservingsim.engine.Engine`.

The loop covers the common configuration (loop.c's header says which); :func:`refusal` says
why a configuration is not covered, and the Python engine then runs it. Results are the same
numbers either way (tests/test_compiled_loop.py).

The loop runs a bounded number of steps per call; in between, the rows it wrote (ended
requests, steps, inter-token gaps) go to the metrics collector and its output sinks, progress
is reported, and a held stop signal is handed over, as the Python engine does between events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Sequence as SequenceOf
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from llmservingsim.cluster.cluster import Cluster
from llmservingsim.cluster.prefix_router import PrefixAwareRouter
from llmservingsim.cluster.routers import (
    LeastKvRouter,
    LeastOutstandingRouter,
    PowerOfTwoRouter,
    RandomRouter,
    RoundRobinRouter,
    Router,
)
from llmservingsim.config import SimConfig
from llmservingsim.interrupt import signals_held
from llmservingsim.metrics.collector import MetricsCollector
from llmservingsim.metrics.request_log import ROW_DTYPE as REQUEST_ROW_DTYPE
from llmservingsim.metrics.request_log import STATUS_CODE
from llmservingsim.metrics.steps import ROW_SIZE as STEP_ROW_SIZE
from llmservingsim.native import load_kernel
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.instance import (
    Instance,
    never_fits_reason,
    queue_full_reason,
    timed_out_reason,
)
from llmservingsim.serving.prefix_cache import (
    BlockKey,
    PrefixCachingBlockManager,
    WholeBlocks,
    block_key_parts,
)
from llmservingsim.serving.schedulers.base import Scheduler
from llmservingsim.serving.schedulers.no_evict import NoEvictScheduler
from llmservingsim.serving.schedulers.orca import OrcaScheduler
from llmservingsim.serving.schedulers.static import StaticScheduler
from llmservingsim.serving.schedulers.vllm import VllmScheduler
from llmservingsim.serving.sequence import Sequence
from llmservingsim.workload.request_spec import RequestSpec, TokenContent
from llmservingsim.workload.request_table import RequestTable

ROUTER_CODES: dict[type[Router], int] = {
    RoundRobinRouter: 0,
    LeastOutstandingRouter: 1,
    LeastKvRouter: 2,
    RandomRouter: 3,
    PowerOfTwoRouter: 4,
    PrefixAwareRouter: 5,  # asked in Python per request: it keeps its own memory of prompts
}
"""Routers the loop implements, by their code in loop.c."""

POLICY_CODES: dict[type[Scheduler], int] = {
    VllmScheduler: 0,
    OrcaScheduler: 1,
    NoEvictScheduler: 2,
    StaticScheduler: 3,
}
"""Scheduler policies the loop implements (exactly these classes), by their code in loop.c."""

BLOCK_MANAGERS = (BlockManager, PrefixCachingBlockManager)
"""KV caches the loop implements (exactly these classes; prefix caching without offload)."""

ROLE_CODES = {"mixed": 0, "prefill": 1, "decode": 2}
"""Instance roles by their code in loop.c."""

ATTENTION_GQA, ATTENTION_MLA, ATTENTION_OPS = 0, 1, 2
"""Decode attention in loop.c: the roofline's formula for grouped-query (OpGraph) or latent
(MlaOps) attention, or the timer's kernels asked every step (any other backend)."""

STEPS_PER_CALL = 8192
"""Engine steps the loop runs before it hands rows over and checks for a stop signal."""

# loop.c's EndedRow.
ENDED_DTYPE = np.dtype(
    [
        ("request", np.int64),
        ("first_scheduled_s", np.float64),
        ("first_token_s", np.float64),
        ("finish_s", np.float64),
        ("kv_transfer_s", np.float64),
        ("generated", np.int64),
        ("cached_tokens", np.int64),
        ("instance", np.int32),
        ("status", np.int32),
        ("preemptions", np.int32),
        ("prefill_instance", np.int32),
    ]
)
# loop.c's GapRun.
GAP_DTYPE = np.dtype([("gap", np.float64), ("count", np.int64)])

ProgressHook = Callable[[float], None]


def refusal(cfg: SimConfig, cluster: Cluster, checking_invariants: bool) -> str | None:
    """Why this run cannot use the compiled loop (None: it can)."""
    if not cfg.simulator.compiled:
        return "simulator.compiled is false"
    if not cfg.simulator.fast_forward:
        return "simulator.fast_forward is false (the one-step-at-a-time reference)"
    if load_kernel() is None:
        return "the compiled loop is not built (no C compiler when the package was installed?)"
    if checking_invariants:
        return "runtime invariant checks"
    if cfg.frontend.enabled:
        return "the serving frontend (frontend.enabled; perf/frontend.py)"
    if type(cluster.router) not in ROUTER_CODES:
        return f"router {cfg.cluster.router}"
    if cluster.decode_router is not None and type(cluster.decode_router) not in ROUTER_CODES:
        return f"decode router {cfg.cluster.decode_router or cfg.cluster.router}"
    scfg = cfg.scheduler
    if scfg.kv_offload is not None:
        return "a KV offload tier"
    if cfg.speculative.enabled:
        return "speculative decoding"
    for pool in cluster.pools:
        first = pool.instances[0]
        if first.num_blocks < 1:
            return "an instance without KV blocks"
        for inst in pool.instances:
            if inst.speculator is not None or inst.lora is not None:
                return "speculative decoding or LoRA adapters"
            if inst.attached_devices:
                return "devices attached to an instance (PIM)"
            if inst.timer is not first.timer or inst.num_blocks != first.num_blocks:
                return "instances of a pool that differ"
            engine_blocks = {ve.scheduler.blocks.num_blocks for ve in inst.engines}
            if len(inst.engines) != inst.pp or len(engine_blocks) != 1:
                return "virtual engines that differ"
            for ve in inst.engines:
                scheduler = ve.scheduler
                if type(scheduler) not in POLICY_CODES:
                    return f"scheduler policy {scfg.policy}"
                if type(scheduler.blocks) not in BLOCK_MANAGERS or scheduler.adapters is not None:
                    return "a KV cache with an offload tier or LoRA adapters"
        not_timed = first.timer.compiled_refusal()
        if not_timed is not None:
            return not_timed
    return None


class CompiledEngine:
    """Serves the requests in loop.c; the same surface as ``Engine`` (``run``, ``interrupted``)."""

    def __init__(
        self,
        cluster: Cluster,
        metrics: MetricsCollector,
        progress: ProgressHook | None = None,
    ) -> None:
        kernel = load_kernel()
        assert kernel is not None, "refusal() said the loop is built"
        layouts = (ENDED_DTYPE.itemsize, GAP_DTYPE.itemsize, STEP_ROW_SIZE)
        kernel_layouts = (kernel.ENDED_ROW_SIZE, kernel.GAP_RUN_SIZE, kernel.STEP_ROW_SIZE)
        assert layouts == kernel_layouts, "loop.c's row layouts differ from the metrics'"
        self.kernel: ModuleType = kernel
        self.cluster = cluster
        self.metrics = metrics
        self.progress = progress
        self.interrupted = False
        self.now = 0.0

    def run(self, requests: Iterable[RequestSpec]) -> float:
        """Serve every request; returns the simulated time of the last event. A stop signal
        (Ctrl-C, SIGTERM) ends the run between two calls of the loop, keeping what ended."""
        columns = _Columns(requests)
        loop = self._build_loop(columns)
        try:
            with signals_held() as held:
                while True:
                    done = loop.run(STEPS_PER_CALL)
                    self._hand_over(loop, columns)
                    self.now = loop.now
                    if done:
                        break
                    if self.progress is not None:
                        self.progress(self.now)
                    if held.signum is not None:
                        held.deliver()  # raises KeyboardInterrupt under the CLI
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            # What ended before a stop or an error (a failing backend) is kept, as the Python
            # engine keeps it.
            self._hand_over(loop, columns)
            self.now = loop.now
            self._write_back(loop)
        return self.now

    def _build_loop(self, columns: _Columns) -> Any:
        cluster = self.cluster
        scfg = cluster.instances[0].scheduler.cfg
        decode = cluster.decode_router
        prefix_caching = scfg.enable_prefix_caching
        loop = self.kernel.Loop(
            policy=POLICY_CODES[type(cluster.instances[0].scheduler)],
            prefix_caching=prefix_caching,
            swap=scfg.preemption == "swap",
            block_keys=_BlockKeys(columns, scfg.block_size) if prefix_caching else None,
            router=ROUTER_CODES[type(cluster.router)],
            decode_router=0 if decode is None else ROUTER_CODES[type(decode)],
            load_board=cluster.instances[0].load_board,
            router_draw=_draws(cluster.router, columns),
            decode_router_draw=None if decode is None else _draws(decode, columns),
            block_size=scfg.block_size,
            max_num_seqs=scfg.max_num_seqs,
            max_num_batched_tokens=scfg.max_num_batched_tokens,
            max_queue=-1 if scfg.max_queue is None else scfg.max_queue,
            request_timeout_s=-1.0 if scfg.request_timeout_s is None else scfg.request_timeout_s,
            record_steps=bool(self.metrics.step_sinks),
            kv_transfer=self._kv_transfer_time,
            ids=columns.ids,
            arrival_s=columns.arrival_s,
            input_len=columns.input_len,
            output_len=columns.output_len,
        )
        for pool in cluster.pools:
            self._add_pool(loop, pool.role, pool.instances)
        return loop

    def _add_pool(self, loop: Any, role: str, instances: list[Instance]) -> None:
        first = instances[0]
        terms = first.timer.compiled_terms()
        q_size, kv_size, kv_bytes, act_bytes = terms.decode_attention
        decode_flops, bandwidth, launch = terms.decode_rates or (1.0, 1.0, 0.0)
        if terms.decode_rates is None:
            attention = ATTENTION_OPS
        else:
            attention = ATTENTION_GQA if terms.mla is None else ATTENTION_MLA
        heads, latent, kv_lora = (0, 0, 0) if terms.mla is None else terms.mla
        power = first.device.power
        swap = first.scheduler.swap
        link = None if swap is None else swap.ledger.link
        loop.add_pool(
            role=ROLE_CODES[role],
            count=len(instances),
            pipeline_parallel=first.pp,
            engine_blocks=first.scheduler.blocks.num_blocks,
            stage_layers=terms.stage_layers,
            stage_moe_layers=terms.stage_moe_layers,
            stage_sends=terms.stage_sends,
            num_layers=float(terms.num_layers),
            step_overhead=terms.step_overhead,
            seq_overhead=terms.seq_overhead,
            q_size=q_size,
            kv_size=kv_size,
            kv_bytes=kv_bytes,
            act_bytes=act_bytes,
            decode_flops=decode_flops,
            bandwidth=bandwidth,
            launch=launch,
            layer_cost=terms.layer_cost,
            prefill_cost=terms.prefill_cost,
            head_cost=terms.head_cost,
            attention=attention,
            decode_attention=terms.decode_attention_each,
            mla_heads=heads,
            mla_latent=latent,
            mla_kv_lora=kv_lora,
            around_decode=terms.around_decode,
            num_moe_layers=terms.num_moe_layers,
            moe_layer_cost=terms.moe_layer_cost,
            tp=float(first.tp),
            peak_flops=first.peak_flops,
            memory_bandwidth=first.device.memory_bandwidth,
            idle_w=power.idle_w,
            dynamic_w=power.max_w - power.idle_w,
            swap_blocks=0 if swap is None else swap.capacity_blocks,
            link_bandwidth=0.0 if link is None else link.bandwidth,
            link_latency_s=0.0 if link is None else link.latency_s,
            block_bytes=0.0 if link is None else link.block_bytes,
        )

    def _kv_transfer_time(self, source: int, target: int, num_tokens: int) -> float:
        """Cluster.kv_transfer_time between two instances (the loop's hand-offs)."""
        instances = self.cluster.instances
        return self.cluster.kv_transfer_time(instances[source], instances[target], num_tokens)

    def _hand_over(self, loop: Any, columns: _Columns) -> None:
        """Rows the loop wrote since the last call, into the metrics and their sinks."""
        gaps = np.frombuffer(loop.take_gaps(), dtype=GAP_DTYPE)
        if len(gaps):
            self.metrics.itl.add_runs(gaps["gap"], gaps["count"])
        steps = loop.take_steps()
        if steps:
            self.metrics.on_packed_steps(steps)
        ended = np.frombuffer(loop.take_ended(), dtype=ENDED_DTYPE)
        if len(ended):
            self.metrics.on_ended(self._request_rows(ended, columns))

    def _request_rows(self, ended: npt.NDArray[Any], columns: _Columns) -> npt.NDArray[Any]:
        """Ended requests as request-log rows (what ``RequestLog.append`` writes per request)."""
        request = ended["request"]
        rows = np.zeros(len(ended), dtype=REQUEST_ROW_DTYPE)
        rows["id"] = columns.ids[request]
        rows["instance"] = ended["instance"]
        rows["status"] = ended["status"]
        rows["arrival_s"] = columns.arrival_s[request]
        rows["first_scheduled_s"] = ended["first_scheduled_s"]
        rows["first_token_s"] = ended["first_token_s"]
        rows["finish_s"] = ended["finish_s"]
        rows["input_tokens"] = columns.input_len[request]
        rows["output_tokens"] = ended["generated"]
        rows["cached_tokens"] = ended["cached_tokens"]
        rows["preemptions"] = ended["preemptions"]
        rows["prefill_instance"] = ended["prefill_instance"]
        rows["kv_transfer_s"] = ended["kv_transfer_s"]
        rows["fail_reason"] = -1
        rows["lora"] = -1
        for i in np.flatnonzero(ended["status"] != STATUS_CODE["finished"]).tolist():
            spec = columns.spec(int(request[i]))
            reason = self._end_reason(int(ended["instance"][i]), int(ended["status"][i]), spec)
            rows["fail_reason"][i] = self.metrics.requests.reason_code(reason)
        return rows

    def _end_reason(self, instance: int, status: int, spec: RequestSpec) -> str:
        """Instance.add's (or the timeout's) reason for a request that was not served."""
        scheduler = self.cluster.instances[instance].scheduler
        if status == STATUS_CODE["rejected"]:
            return queue_full_reason(scheduler.cfg.max_queue)
        if status == STATUS_CODE["timed_out"]:
            return timed_out_reason(scheduler.cfg.request_timeout_s)
        needed = scheduler.max_blocks_needed(Sequence(spec))
        return never_fits_reason(
            needed, spec.input_len, spec.output_len, scheduler.blocks.num_blocks
        )

    def _write_back(self, loop: Any) -> None:
        """The loop's counters into the objects the summary reads (they start at zero)."""
        for inst in self.cluster.instances:
            counts = loop.instance_totals(inst.index)
            totals = inst.totals
            totals.iterations += counts["iterations"]
            totals.busy_s += counts["busy_s"]
            totals.busy_device_s += counts["busy_device_s"]
            totals.energy_busy_j += counts["energy_busy_j"]
            totals.prefill_tokens += counts["prefill_tokens"]
            totals.decode_tokens += counts["decode_tokens"]
            totals.kv_peak_blocks = max(totals.kv_peak_blocks, counts["kv_peak_blocks"])
            totals.max_batch_size = max(totals.max_batch_size, counts["max_batch_size"])
            for k, ve in enumerate(inst.engines):
                _write_back_engine(ve.scheduler, loop.engine_counters(inst.index, k))
        for index, pool in enumerate(self.cluster.pools):
            lookups, hits = loop.memo_counts(index)  # (the loop's own memo answers)
            timer = pool.instances[0].timer
            timer.cache_lookups += lookups
            timer.cache_hits += hits


def _write_back_engine(scheduler: Scheduler, counts: dict[str, Any]) -> None:
    """A virtual engine's counters from the loop into its scheduler, KV cache and swap space."""
    scheduler.preemptions += counts["preemptions"]
    scheduler.recomputed_tokens += counts["recomputed_tokens"]
    scheduler.swap_fallbacks += counts["swap_fallbacks"]
    if isinstance(scheduler.blocks, PrefixCachingBlockManager):
        scheduler.blocks.evicted_blocks += counts["evicted_blocks"]
    swap = scheduler.swap
    if swap is not None:
        swap.used_blocks += counts["swap_used"]
        swap.peak_blocks = max(swap.peak_blocks, counts["swap_peak"])
        ledger = swap.ledger
        ledger.blocks_to_device += counts["to_device"]
        ledger.blocks_to_host += counts["to_host"]
        ledger.seconds += counts["transfer_s"]


class _Columns:
    """The requests in arrival order (ties keep their order) as the loop's input columns."""

    def __init__(self, requests: Iterable[RequestSpec]) -> None:
        if isinstance(requests, RequestTable):
            self.arrival_s = requests.arrival_s
            self.input_len = requests.input_len
            self.output_len = requests.output_len
            self.ids = np.arange(len(requests), dtype=np.int64)
            self.contents: SequenceOf[TokenContent | None] | None = requests.contents
            return
        specs = sorted(requests, key=lambda r: r.arrival_s)
        contents = [r.content for r in specs]
        self.contents = contents if any(c is not None for c in contents) else None
        self.arrival_s = np.array([r.arrival_s for r in specs], dtype=np.float64)
        self.input_len = np.array([r.input_len for r in specs], dtype=np.int64)
        self.output_len = np.array([r.output_len for r in specs], dtype=np.int64)
        self.ids = np.array([r.id for r in specs], dtype=np.int64)

    def spec(self, row: int) -> RequestSpec:
        """Row ``row`` as the request the Python side sees (a router written in Python)."""
        return RequestSpec(
            int(self.ids[row]),
            float(self.arrival_s[row]),
            int(self.input_len[row]),
            int(self.output_len[row]),
            None if self.contents is None else self.contents[row],
        )


def _draws(router: Router, columns: _Columns) -> Callable[..., Any] | None:
    """What a random router draws from its generator per request, exactly as its ``route``
    does (the loop compares the loads itself); for a router the loop leaves to Python, the
    router itself on the request of a row; None for the routers in C."""
    if isinstance(router, PrefixAwareRouter):
        return lambda row: router.route(columns.spec(row)).index
    n, rng = len(router.instances), router.rng
    if isinstance(router, RandomRouter):
        return lambda: int(rng.integers(n))
    if isinstance(router, PowerOfTwoRouter):
        return lambda: tuple(int(i) for i in rng.choice(n, size=2, replace=False))
    return None


_CID_BITS, _START_BITS = 40, 23
"""A one-piece block key (cid, start, start + block_size) is packed as cid << 23 | start when
both fit; any other key is numbered (negative) in order of first sight."""


class _BlockKeys:
    """What each full block of a request holds (prefix_cache.py ``block_keys``), for the loop:
    each distinct block content as a number, and the request's namespace as the (negative)
    root its first block hangs from. Two blocks get the same number exactly when their keys
    are equal, so the loop shares a node exactly when the Python cache would."""

    def __init__(self, columns: _Columns, block_size: int) -> None:
        self.contents = columns.contents
        self.block_size = block_size
        self.numbered: dict[BlockKey, int] = {}
        self.roots: dict[str, int] = {}

    def __call__(self, request: int) -> tuple[int, bytes] | None:
        content = None if self.contents is None else self.contents[request]
        if content is None:
            return None
        root = self.roots.setdefault(content.namespace, -2 - len(self.roots))
        bs = self.block_size
        parts: list[npt.NDArray[np.int64]] = []
        for part in block_key_parts(content, bs):
            if not isinstance(part, WholeBlocks):
                parts.append(np.array([self._number(part)], dtype=np.int64))
            elif 0 <= part.cid < 1 << _CID_BITS and part.count <= 1 << _START_BITS:
                starts = np.arange(0, part.count, bs, dtype=np.int64)
                parts.append((part.cid << _START_BITS) | starts)
            else:
                whole = [(part.cid, s, s + bs) for s in range(0, part.count, bs)]
                parts.append(np.array([self._number(k) for k in whole], dtype=np.int64))
        numbers = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return root, numbers.tobytes()

    def _number(self, key: BlockKey) -> int:
        cid, start = key[0], key[1]
        if len(key) == 3 and 0 <= cid < 1 << _CID_BITS and 0 <= start < 1 << _START_BITS:
            return (cid << _START_BITS) | start
        numbered = self.numbered
        return numbered.setdefault(key, -1 - len(numbered))
