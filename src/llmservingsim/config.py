"""Simulation config: YAML + ``--set dotted.key=value`` overrides, validated by pydantic.

Unknown keys are reported with the closest valid key (``workload.arival`` → did you mean
``workload.arrival``?) before pydantic sees the document, so every config mistake is one line.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from llmservingsim.errors import ConfigError
from llmservingsim.model.spec import Fp8Scaling, weight_only_quantized
from llmservingsim.ranges import (
    MAX_COUNT,
    MAX_TOKENS,
    Count,
    Exponent,
    FilePath,
    Finite,
    Fraction,
    Gbps,
    GiB,
    Microseconds,
    NotBool,
    PositiveFinite,
    PositiveSeconds,
    Seconds,
    SmallCount,
    TokenCount,
)

WeightDtype = Literal["fp32", "bf16", "fp16", "fp8", "fp4", "mxfp4", "int8", "int4"]
KvDtype = Literal["auto", "fp32", "bf16", "fp16", "fp8"]
Fp8ScalingSetting = Literal["auto", "tensor", "block"]

# Ranges of numbers: ranges.py.


class _Section(BaseModel):
    # Attribute docstrings become field descriptions (docs/config-reference.md is generated).
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


# ----------------------------------------------------------------------------- workload


_Dist = typing.TypeVar("_Dist", bound=BaseModel)


def _check_order(dist: _Dist, low: int, high: int | None) -> _Dist:
    if high is not None and low > high:
        raise ValueError(f"min ({low}) > max ({high})")
    return dist


class FixedLength(_Section):
    """Every request has the same length."""

    dist: Literal["fixed"]
    value: TokenCount


class UniformLength(_Section):
    """Uniform integers on [min, max]."""

    dist: Literal["uniform"]
    min: TokenCount
    max: TokenCount

    @model_validator(mode="after")
    def _ordered(self) -> UniformLength:
        return _check_order(self, self.min, self.max)


class NormalLength(_Section):
    """Normal, rounded and clipped to [min, max]."""

    dist: Literal["normal"]
    mean: float = Field(gt=0, lt=MAX_TOKENS, allow_inf_nan=False)
    std: float = Field(ge=0, lt=MAX_TOKENS, allow_inf_nan=False)
    min: TokenCount = 1
    max: TokenCount | None = None

    @model_validator(mode="after")
    def _ordered(self) -> NormalLength:
        return _check_order(self, self.min, self.max)


class LognormalLength(_Section):
    """Lognormal with the given *mean* (not median) and log-space sigma, like ShareGPT lengths."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0, lt=MAX_TOKENS, allow_inf_nan=False)
    sigma: float = Field(ge=0, le=10, allow_inf_nan=False)
    min: TokenCount = 1
    max: TokenCount | None = None

    @model_validator(mode="after")
    def _ordered(self) -> LognormalLength:
        return _check_order(self, self.min, self.max)


ZIPF_MAX_SUPPORT = 10**7


class ZipfLength(_Section):
    """P(k) ∝ k^-alpha on [min, max]."""

    dist: Literal["zipf"]
    alpha: Exponent
    min: TokenCount = 1
    max: TokenCount

    @model_validator(mode="after")
    def _ordered(self) -> ZipfLength:
        _check_order(self, self.min, self.max)
        if self.max - self.min >= ZIPF_MAX_SUPPORT:
            raise ValueError(
                f"max - min = {self.max - self.min:,}: the sampler tabulates every length, at "
                f"most {ZIPF_MAX_SUPPORT:,} of them (longer requests are clipped to the "
                "model's context anyway)"
            )
        return self


class EmpiricalLength(_Section):
    """Sample uniformly from the listed values."""

    dist: Literal["empirical"]
    values: list[TokenCount] = Field(min_length=1, max_length=MAX_COUNT)


LengthDist = Annotated[
    Union[FixedLength, UniformLength, NormalLength, LognormalLength, ZipfLength, EmpiricalLength],  # noqa: UP007
    Field(discriminator="dist"),
]


class ArrivalConfig(_Section):
    """Request arrival process. ``rate`` is requests per second (``inf``: all at t = 0).

    ``closed``: closed-loop clients instead of a rate: ``concurrency`` clients each send a
    request, wait for it to end (finished, failed, rejected or timed out) and ``think_time_s``
    more, then send the next, until every request of the workload was sent (``vllm bench serve
    --max-concurrency``; docs/workloads.md)."""

    process: Literal["poisson", "gamma", "constant", "burst", "closed"] = "poisson"
    rate: Annotated[float, NotBool] = Field(default=8.0, gt=0, allow_inf_nan=True)
    """Requests per second (``.inf``: every request at t = 0); not used by ``closed``."""
    cv: float = Field(
        default=1.0,
        ge=1e-3,
        le=1e3,
        allow_inf_nan=False,
        description="gamma: coefficient of variation of gaps",
    )
    burst_size: Count = Field(default=10, description="burst: requests arriving together")
    concurrency: Count | None = None
    """closed: clients, each with one request in flight or thinking (required)."""
    think_time_s: Seconds = 0.0
    """closed: seconds a client waits after its request ended before sending the next."""

    @field_validator("rate")
    @classmethod
    def _rate_is_a_number(cls, value: float) -> float:
        if value != value:
            raise ValueError("expected a positive number of requests per second or .inf, not NaN")
        return value

    @model_validator(mode="after")
    def _closed_loop_keys(self) -> ArrivalConfig:
        if self.process == "closed":
            if self.concurrency is None:
                raise ValueError(
                    "process closed needs concurrency: N (clients, each with one request in flight)"
                )
            if "rate" in self.model_fields_set:
                raise ValueError(
                    "process closed has no rate (a client sends its next request when the "
                    "previous one ended): remove rate"
                )
            return self
        given = sorted({"concurrency", "think_time_s"} & self.model_fields_set)
        if given:
            raise ValueError(
                f"{', '.join(given)} only apply to process: closed (got process: {self.process})"
            )
        return self


class TraceConfig(_Section):
    """A recorded request trace to replay."""

    path: FilePath
    """Trace file."""
    format: Literal["azure", "jsonl", "csv", "vidur_csv", "mooncake"] | None = None
    """File layout of the trace (docs/user-guide.md, replaying a trace); null: from the file
    name (.jsonl, .json) and, for .csv files, the header's column names."""
    time_scale: PositiveFinite = Field(default=1.0, description="multiplies inter-arrival gaps")
    max_requests: Count | None = None
    """Replay only the first N requests."""
    hash_block_size: TokenCount = 512
    """Prompt tokens each `hash_ids` entry covers (Mooncake traces: 512; docs/kv_cache.md)."""


class SystemPromptConfig(_Section):
    """Shared system prompts prepended to every synthetic request (``workload.prefix``).

    Each request (each session, with ``sessions``) picks one of ``num_system_prompts`` prompts
    of ``system_prompt_len`` tokens; its own ``input_len`` tokens follow.
    """

    num_system_prompts: SmallCount = 1
    """Distinct system prompts."""
    system_prompt_len: TokenCount
    """Tokens of each system prompt."""
    popularity: Literal["uniform", "zipf"] = "uniform"
    """How requests pick their system prompt."""
    zipf_alpha: Exponent = 1.0
    """Zipf popularity: P(prompt k) ∝ k^-zipf_alpha."""


class SessionConfig(_Section):
    """Multi-turn chat sessions that resend their history (``workload.sessions``).

    ``arrival`` then times the *starts* of sessions. Turn k's prompt is the system prompt (if
    any), every earlier user message and answer, and a new user message of ``input_len``
    tokens; its answer has ``output_len`` tokens. Open loop: turn k+1 arrives a think time
    after turn k *arrived*, without waiting for the answer. A session ends early at the first
    turn that would not fit the model's context. ``num_requests`` counts turns.
    """

    turns: LengthDist = UniformLength(dist="uniform", min=2, max=6)
    """Turns per session (any length distribution)."""
    think_time_s: Seconds = 10.0
    """Mean gap between a turn's arrival and the next turn's arrival, seconds."""
    think_time_dist: Literal["exponential", "fixed"] = "exponential"
    """Distribution of the gaps between turns."""


class WorkloadLoraConfig(_Section):
    """LoRA adapters the synthetic requests name (``workload.lora``; docs/lora.md).

    Each request picks one of ``num_adapters`` adapters of rank ``rank``; absent = every
    request runs on the base model.
    """

    num_adapters: SmallCount
    """Distinct adapters."""
    rank: int = Field(default=16, ge=1, le=2**16, strict=True)
    """LoRA rank of every adapter (at most lora.max_lora_rank)."""
    popularity: Literal["uniform", "zipf"] = "zipf"
    """How requests pick their adapter."""
    alpha: Exponent = 1.0
    """Zipf popularity: P(adapter k) ∝ k^-alpha."""


class SloConfig(_Section):
    """Per-request latency targets; a request meets the SLO when it meets every given target."""

    ttft_s: PositiveSeconds | None = None
    """Time to first token, seconds."""
    tpot_s: PositiveSeconds | None = None
    """Time per output token, seconds."""
    e2e_s: PositiveSeconds | None = None
    """End-to-end latency, seconds."""

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.ttft_s, self.tpot_s, self.e2e_s))


class StageConfig(_Section):
    """One stage of a staged workload (``workload.stages``): ``rate`` requests per second for
    ``duration_s`` seconds, in ``workload.arrival.process`` (Poisson by default)."""

    duration_s: float = Field(gt=0, allow_inf_nan=False)
    """Length of the stage, seconds."""
    rate: float = Field(ge=0, allow_inf_nan=False)
    """Requests per second during the stage (0: an idle pause)."""


class PromptPoolConfig(_Section):
    """A fixed pool of whole prompts reused as a benchmark client does (``prompt_pool``).

    ``size`` prompts (prompt and output lengths drawn once from the length distributions) are
    sent over and over: ``cycle`` sends prompt ``i mod size`` as request i (a client walking a
    dataset), ``random`` picks one uniformly per request. Equal prompts are equal tokens, so the
    prefix cache sees them as a real server would. After a shared system prompt
    (``workload.prefix``) when one is given; with ``sessions`` the pool supplies each turn's user
    message.
    """

    size: SmallCount
    """Distinct prompts in the pool (each costs memory up front: fewer than a million)."""
    order: Literal["cycle", "random"] = "cycle"
    """cycle: request i sends prompt i mod size; random: a uniform pick per request."""


class ClientConfig(_Section):
    """One traffic class of a multi-client workload (``workload.clients``).

    Each client is its own arrival stream: a ``share`` of ``workload.num_requests`` and of the
    workload's rate (or of each stage's rate), or its own ``rate``. Keys left out are taken from
    the workload section (its system prompts and prompt pool are then shared by the clients that
    take them). docs/workloads.md.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Label in requests.parquet (column client) and summary.json (clients.<name>)."""
    share: float | None = Field(default=None, gt=0, le=1)
    """Fraction of the requests and of the arrival rate (the shares sum to 1)."""
    rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Requests per second of this client's own stream (instead of a share)."""
    priority: int = 0
    """Scheduling priority, lower first (vLLM --scheduling-policy priority); stored per request.
    A value other than 0 needs ``scheduler.policy: priority``, the policy that reads it."""
    slo: SloConfig | None = None
    """This client's latency targets for its goodput (default: the top-level slo)."""
    input_len: LengthDist | None = None
    """Prompt length distribution (default: workload.input_len)."""
    output_len: LengthDist | None = None
    """Output length distribution (default: workload.output_len)."""
    prefix: SystemPromptConfig | None = None
    """This client's own system prompts (default: the workload's, shared)."""
    sessions: SessionConfig | None = None
    """This client's multi-turn sessions (default: workload.sessions)."""
    prompt_pool: PromptPoolConfig | None = None
    """This client's own prompt pool (default: the workload's, shared)."""
    lora: str | None = Field(default=None, min_length=1)
    """The LoRA adapter every request of this client runs (needs lora.enabled: true)."""
    timeout_s: PositiveSeconds | None = None
    """This client's request timeout (default: workload.timeout_s)."""


class WorkloadConfig(_Section):
    """The requests to serve: generated from distributions, or replayed from a trace."""

    kind: Literal["synthetic", "trace"] = "synthetic"
    """synthetic: arrival process + length distributions; trace: workload.trace."""
    num_requests: Count = 1000
    """Requests generated (synthetic workloads)."""
    arrival: ArrivalConfig = ArrivalConfig()
    # ShareGPT-like: means and log-spread of the ShareGPT request lengths in shared/data traces.
    input_len: LengthDist = LognormalLength(dist="lognormal", mean=230, sigma=1.2, max=4096)
    """Prompt length distribution, tokens."""
    output_len: LengthDist = LognormalLength(dist="lognormal", mean=280, sigma=1.0, max=2048)
    """Output length distribution, tokens."""
    trace: TraceConfig | None = None
    prefix: SystemPromptConfig | None = None
    """Shared system prompts prepended to synthetic prompts (docs/kv_cache.md)."""
    sessions: SessionConfig | None = None
    """Multi-turn sessions that resend their history (docs/kv_cache.md)."""
    lora: WorkloadLoraConfig | None = None
    """LoRA adapters the requests name (docs/lora.md); absent = base model only."""
    stages: list[StageConfig] | None = None
    """Arrival stages run one after another, each at its own rate for its duration (the request
    count is what the stages produce: leave num_requests out); docs/workloads.md."""
    prompt_pool: PromptPoolConfig | None = None
    """A fixed pool of whole prompts sent over and over (docs/workloads.md)."""
    clients: list[ClientConfig] | None = None
    """Traffic classes sharing the run, each with its own rate, lengths, priority and SLO
    (docs/workloads.md); a trace names each row's client in its ``client`` field."""
    duration_s: PositiveSeconds | None = None
    """Closed loop: clients send no request at or after this time (those in flight finish);
    num_requests is then the most requests sent. None: until num_requests were sent."""
    timeout_s: PositiveSeconds | None = None
    """Client timeout: a client gives up on a request this many seconds after it sent it,
    queued or running; a running request is ended there and keeps the tokens it generated
    (status ``timed_out``). None: clients wait forever. docs/workloads.md."""

    @model_validator(mode="after")
    def _trace_given(self) -> WorkloadConfig:
        if self.kind == "trace" and self.trace is None:
            raise ValueError("kind 'trace' needs a workload.trace section with a path")
        if self.kind == "trace" and (self.prefix is not None or self.sessions is not None):
            raise ValueError(
                "prefix and sessions shape synthetic workloads; a trace brings its own"
            )
        if self.kind == "synthetic" and self.trace is not None:
            raise ValueError(
                f"a trace section (path {str(self.trace.path)!r}) is given but kind is "
                "'synthetic': set workload.kind: trace to replay it, or remove workload.trace"
            )
        if self.kind == "trace" and "num_requests" in self.model_fields_set:
            raise ValueError(
                f"num_requests={self.num_requests} counts synthetic requests; a trace replays "
                "its rows (replay fewer with workload.trace.max_requests)"
            )
        if self.kind == "trace" and (self.stages is not None or self.prompt_pool is not None):
            raise ValueError(
                "stages and prompt_pool shape synthetic workloads; a trace brings its own"
            )
        return self

    @model_validator(mode="after")
    def _closed_loop_alone(self) -> WorkloadConfig:
        if self.arrival.process != "closed":
            if self.duration_s is not None:
                raise ValueError(
                    f"duration_s={self.duration_s:g} bounds a closed loop (arrival.process: "
                    f"closed); with process {self.arrival.process} the run is num_requests "
                    "long, or set stages"
                )
            return self
        clashes = {
            "stages": self.stages is not None,
            "sessions": self.sessions is not None
            or any(c.sessions is not None for c in self.clients or ()),
            "clients with a rate": any(c.rate is not None for c in self.clients or ()),
        }
        for what, used in clashes.items():
            if used:
                raise ValueError(
                    f"arrival.process closed with {what} is not yet supported (closed-loop "
                    "clients send the workload's requests in order; give clients a share)"
                )
        return self

    @model_validator(mode="after")
    def _stages_set_the_count(self) -> WorkloadConfig:
        if self.stages is None:
            return self
        if not self.stages:
            raise ValueError("stages is empty: list at least one {duration_s, rate}")
        if "num_requests" in self.model_fields_set:
            raise ValueError(
                "stages set the request count (rate × duration_s per stage); remove num_requests"
            )
        if sum(stage.rate for stage in self.stages) == 0:
            raise ValueError("every stage has rate 0: no request would arrive")
        return self

    @model_validator(mode="after")
    def _clients_consistent(self) -> WorkloadConfig:
        clients = self.clients
        if clients is None:
            return self
        if not clients:
            raise ValueError("clients is empty: list at least one client")
        names = [c.name for c in clients]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"client name {repeated[0]!r} is used twice")
        if self.kind == "trace":
            for i, c in enumerate(clients):
                shaped = sorted(
                    key
                    for key in c.model_fields_set
                    if key not in ("name", "priority", "slo", "lora", "timeout_s")
                )
                if shaped:
                    raise ValueError(
                        f"clients[{i}] ({c.name}): {', '.join(shaped)} shape synthetic "
                        "traffic; a trace brings its own (its rows name their client)"
                    )
            return self
        with_share = [c for c in clients if c.share is not None]
        with_rate = [c for c in clients if c.rate is not None]
        for i, c in enumerate(clients):
            if c.share is not None and c.rate is not None:
                raise ValueError(f"clients[{i}] ({c.name}): give a share or a rate, not both")
            if c.share is None and c.rate is None and len(clients) > 1:
                raise ValueError(f"clients[{i}] ({c.name}): give a share or a rate")
        if with_share and with_rate:
            raise ValueError("give every client a share, or every client a rate, not a mix")
        if with_share:
            total = sum(c.share for c in clients if c.share is not None)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(
                    f"client shares sum to {total:g}, expected 1 (each share is a fraction "
                    "of num_requests and of the arrival rate)"
                )
        if with_rate and self.stages is not None:
            raise ValueError(
                "stages set the total rate of each stage: give the clients shares, not rates"
            )
        for i, c in enumerate(clients):
            pool_from_workload = c.prompt_pool is None and self.prompt_pool is not None
            own_lengths = sorted({"input_len", "output_len"} & c.model_fields_set)
            if pool_from_workload and own_lengths:
                raise ValueError(
                    f"clients[{i}] ({c.name}): {', '.join(own_lengths)} would not apply: the "
                    "client sends the prompts of workload.prompt_pool (drawn from workload "
                    "lengths); give the client its own prompt_pool"
                )
        return self

    def client_timeouts(self) -> list[float | None]:
        """Each client's timeout (its own, else workload.timeout_s); one entry without clients."""
        if not self.clients:
            return [self.timeout_s]
        return [self.timeout_s if c.timeout_s is None else c.timeout_s for c in self.clients]

    def client_rates(self) -> list[float]:
        """Each client's share of the arrival rate, or its own rate (synthetic clients)."""
        assert self.clients is not None
        if len(self.clients) == 1 and self.clients[0].rate is None:
            return [1.0]
        return [c.share if c.share is not None else float(c.rate or 0.0) for c in self.clients]


# ----------------------------------------------------------------------------- serving


class LinkOverride(_Section):
    """Replaces some alpha-beta parameters of one link level of the device YAML."""

    bandwidth_gbps: Gbps | None = None
    """Datasheet GB/s per direction per device."""
    latency_us: Microseconds | None = None
    """Per-hop latency (alpha) of a collective step, µs."""
    call_latency_us: Microseconds | None = None
    """Cap on one collective call's latency (NCCL bulk protocol), µs."""
    efficiency: Fraction | None = None
    """Achieved / datasheet bandwidth for large messages."""
    links_per_node: SmallCount | None = None
    """NICs a node drives in parallel for one collective (inter-node level)."""


class NetworkConfig(_Section):
    """Topology: devices in nodes, nodes in racks, racks behind a (maybe oversubscribed) spine."""

    devices_per_node: SmallCount | None = Field(default=None, description="default: device YAML")
    nodes_per_rack: SmallCount = 32
    """Nodes behind one leaf switch; beyond a rack the spine's bandwidth is divided by
    ``oversubscription``."""
    oversubscription: float = Field(
        default=1.0, ge=1, le=1e6, allow_inf_nan=False, description="spine vs rack bandwidth"
    )
    intra_node: LinkOverride = LinkOverride()
    inter_node: LinkOverride = LinkOverride()
    custom_allreduce: bool = Field(
        default=True, description="engine's one-kernel all-reduce inside a node (vLLM default)"
    )


class PoolConfig(_Section):
    """A group of identical instances; prefill + decode pools = P/D disaggregation."""

    name: str | None = None
    """Label in summary.json and the report (default: the role, numbered if repeated)."""
    role: Literal["mixed", "prefill", "decode"] = "mixed"
    """mixed: serves requests end to end; prefill/decode: P/D disaggregation."""
    count: SmallCount = 1
    """Instances in the pool."""
    hardware: str | None = Field(default=None, description="default: the top-level hardware")
    tensor_parallel: SmallCount = 1
    """Devices sharding every layer of one instance (2 all-reduces per layer)."""
    pipeline_parallel: SmallCount = 1
    """Stages of contiguous layers; this many micro-batches in flight (vLLM virtual engines)."""
    expert_parallel: SmallCount = 1
    """MoE: devices the experts are split over (1, tensor_parallel, or with data_parallel
    D > 1: D × tensor_parallel)."""
    data_parallel: SmallCount = 1
    """MoE: attention data-parallel ranks of one instance (vLLM --data-parallel-size with
    --enable-expert-parallel, SGLang --enable-dp-attention): each rank has its own scheduler,
    KV cache and batch over tensor_parallel devices; the experts are split over all D ×
    tensor_parallel devices and every rank steps in lockstep (docs/models.md)."""


class AutoscaleConfig(_Section):
    """Autoscaling of the cluster's instances (``cluster.autoscale``; docs/user-guide.md).

    Every ``interval_s`` the autoscaler reads ``metric`` over the instances that take requests
    and, as Kubernetes' Horizontal Pod Autoscaler does, wants ceil(instances × metric /
    target) of them, within [min_instances, max_instances]; no decision is taken within
    ``cooldown_s`` of the last one. A new instance is billed from the decision and takes
    requests ``scale_up_s`` later; one scaled down is drained (no new requests, its own finish)
    and released when it has none left."""

    min_instances: SmallCount = 1
    """Fewest instances provisioned."""
    max_instances: SmallCount
    """Most instances provisioned (all are built, and checked to fit, before the run)."""
    metric: Literal["queue", "kv", "ttft"]
    """queue: waiting requests per instance; kv: fraction of KV blocks in use; ttft: mean
    time to first token (seconds) of the first tokens of the last interval, at least the age of
    the oldest request still waiting for its first one."""
    target: PositiveFinite
    """Value of ``metric`` the autoscaler keeps each instance at (kv: at most 1)."""
    scale_up_s: Seconds | None = None
    """From the scale-up decision to the instance taking requests; None: loading the weights of
    one device over its host link (device YAML links.host)."""
    cooldown_s: Seconds = 300.0
    """No scale decision within this long after the last one (default: Kubernetes HPA's
    5-minute scale-down stabilization window)."""
    interval_s: PositiveSeconds = 15.0
    """Seconds between two evaluations (default: Kubernetes HPA's 15 s sync period)."""

    @model_validator(mode="after")
    def _check_range(self) -> AutoscaleConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) > max_instances ({self.max_instances})"
            )
        if self.metric == "kv" and self.target > 1:
            raise ValueError(
                f"target={self.target} with metric kv: expected a fraction of KV blocks in (0, 1]"
            )
        return self


class ClusterConfig(_Section):
    instances: SmallCount = 1
    """Identical replicas (data parallel serving) behind the router."""
    tensor_parallel: SmallCount = 1
    """Devices sharding every layer of one instance (2 all-reduces per layer)."""
    pipeline_parallel: SmallCount = 1
    """Stages of contiguous layers; this many micro-batches in flight (vLLM virtual engines)."""
    expert_parallel: SmallCount = 1
    """MoE: devices the experts are split over (1, tensor_parallel, or with data_parallel
    D > 1: D × tensor_parallel)."""
    data_parallel: SmallCount = 1
    """MoE: attention data-parallel ranks of one instance, in lockstep (see the pool key)."""
    pools: list[PoolConfig] | None = Field(
        default=None, description="heterogeneous instance groups; replaces the keys above"
    )
    router: str = "round_robin"
    """round_robin, random, least_outstanding, least_kv, power_of_two_choices or
    prefix_aware (`llmservingsim catalog routers`)."""
    decode_router: str | None = Field(
        default=None, description="P/D: picks the decode instance (default: same as router)"
    )
    network: NetworkConfig = NetworkConfig()
    """Topology and link overrides (defaults from the device YAML)."""
    autoscale: AutoscaleConfig | None = None
    """Scale the instances with the load (one mixed pool); the pool's count (``instances``)
    is the count at t = 0 (default: min_instances)."""

    @model_validator(mode="after")
    def _autoscale_one_pool(self) -> ClusterConfig:
        scale = self.autoscale
        if scale is None or self.pools == []:
            return self  # an empty pools list is reported below
        if self.pools is not None and len(self.pools) > 1:
            raise ValueError(
                "autoscale with several pools (or P/D disaggregation) is not yet supported: "
                "give one pool"
            )
        if self.pools is not None and self.pools[0].role != "mixed":
            raise ValueError(
                f"autoscale with a {self.pools[0].role} pool is not yet supported: "
                "autoscale scales one mixed pool"
            )
        initial = self.initial_instances
        if not scale.min_instances <= initial <= scale.max_instances:
            key = "instances" if self.pools is None else "pools[0].count"
            raise ValueError(
                f"{key}={initial} is the count at t = 0 and must lie within autoscale "
                f"min_instances={scale.min_instances} .. max_instances={scale.max_instances}"
            )
        return self

    @property
    def initial_instances(self) -> int:
        """Instances taking requests at t = 0 (with autoscale: the count given, or
        min_instances)."""
        given = self.pools[0].count if self.pools is not None else self.instances
        explicit = (
            "count" in self.pools[0].model_fields_set
            if self.pools is not None
            else "instances" in self.model_fields_set
        )
        scale = self.autoscale
        if scale is None or explicit:
            return given
        return scale.min_instances

    @model_validator(mode="after")
    def _pools_replace_flat_keys(self) -> ClusterConfig:
        if self.pools is None:
            return self
        flat = {
            "instances",
            "tensor_parallel",
            "pipeline_parallel",
            "expert_parallel",
            "data_parallel",
        }
        both = sorted(flat & self.model_fields_set)
        if both:
            raise ValueError(
                f"'pools' replaces {', '.join(both)}: set them per pool (count, tensor_parallel…)"
            )
        if not self.pools:
            raise ValueError("'pools' is empty: list at least one pool")
        roles = {pool.role for pool in self.pools}
        if roles & {"prefill", "decode"}:
            if "mixed" in roles:
                raise ValueError("mix either 'mixed' pools or prefill + decode pools, not both")
            if "decode" not in roles:
                raise ValueError("a disaggregated config (role: prefill) needs a decode pool")
            if "prefill" not in roles:
                raise ValueError("a decode pool needs a prefill pool to receive requests from")
        return self

    def resolved_pools(self, hardware: str) -> list[PoolConfig]:
        """The pools to build: the flat keys become one mixed pool. With autoscale the pool
        has max_instances instances (built before the run; initial_instances take requests)."""
        pools = self._resolved_pools(hardware)
        if self.autoscale is not None:  # one pool (checked above)
            return [pools[0].model_copy(update={"count": self.autoscale.max_instances})]
        return pools

    def _resolved_pools(self, hardware: str) -> list[PoolConfig]:
        if self.pools is None:
            return [
                PoolConfig(
                    name="default",
                    count=self.instances,
                    hardware=hardware,
                    tensor_parallel=self.tensor_parallel,
                    pipeline_parallel=self.pipeline_parallel,
                    expert_parallel=self.expert_parallel,
                    data_parallel=self.data_parallel,
                )
            ]
        roles: list[str] = [pool.role for pool in self.pools]

        def default_name(i: int, role: str) -> str:
            return role if roles.count(role) == 1 else f"{role}{roles[:i].count(role)}"

        return [
            pool.model_copy(
                update={
                    "name": pool.name or default_name(i, pool.role),
                    "hardware": pool.hardware or hardware,
                }
            )
            for i, pool in enumerate(self.pools)
        ]


class KvOffloadConfig(_Section):
    """A host/CXL tier for prefix blocks the GPU cache evicts (LMCache-like).

    ``capacity_gib`` is per device; the link defaults to the device's ``links.host`` (PCIe),
    override it for a CXL memory expander.
    """

    capacity_gib: GiB = Field(gt=0)
    """Host/CXL memory per device for offloaded prefix blocks, GiB."""
    bandwidth_gbps: Gbps | None = None
    """Link bandwidth per device, GB/s (default: the device's links.host)."""
    latency_us: Microseconds | None = None
    """Link latency per transfer, µs (default: the device's links.host)."""


class AttentionDpBalanceConfig(_Section):
    """TensorRT-LLM's ``attention_dp_config`` (``enable_balance: true``): how attention
    data-parallel ranks hold context requests back so that all ranks run one together."""

    timeout_iters: int = Field(default=50, ge=0, le=10**6, strict=True)
    """Steps a context request waits for every rank to have one before it starts anyway
    (TensorRT-LLM's default 50)."""
    batching_wait_iters: int = Field(default=10, ge=0, le=10**6, strict=True)
    """Once every rank has a context request (and every rank generates), steps still waited
    to gather more (TensorRT-LLM's default 10)."""


class SchedulerConfig(_Section):
    """The engine's batching policy and KV-cache settings (vLLM's names)."""

    policy: str = "vllm"
    """Scheduler policy (llmservingsim catalog schedulers)."""
    max_num_seqs: TokenCount = 256
    """Most sequences in one step."""
    max_num_batched_tokens: TokenCount = 8192
    """Token budget of one step (chunked prefill splits longer prompts)."""
    block_size: int = Field(default=16, ge=1, le=2**16, strict=True)
    """Tokens per KV-cache block."""
    gpu_memory_utilization: Fraction = 0.9
    """Share of device memory for weights, activations and KV cache (with
    ``memory_fraction_of: free``, the share of the memory weights and activations leave free
    that the KV cache takes)."""
    enable_chunked_prefill: bool | None = None
    """Whether a prompt may be split over steps. None: the policy's own (``orca`` and
    ``static`` run whole prompts, the others chunk); false: a waiting request starts only when
    its whole prompt fits what is left of the step's token budget (or the step is otherwise
    empty), TensorRT-LLM's default (``enable_chunked_prefill`` False); docs/engines.md. Read by
    the policies built on VllmScheduler; set with another (a plugin's), it is an error."""
    memory_fraction_of: Literal["total", "free"] = "total"
    """What ``gpu_memory_utilization`` is a fraction of: the device's memory (vLLM's
    ``gpu_memory_utilization``, SGLang's ``mem_fraction_static``) or the memory still free after
    weights, the activation peak and the reserved memory (TensorRT-LLM's KvCacheConfig
    ``free_gpu_memory_fraction``); docs/engines.md. ``free`` is refused with ``pim.enabled``,
    whose KV cache is the PIM devices' memory × ``gpu_memory_utilization``."""
    enable_prefix_caching: bool = False
    """Reuse KV blocks of shared prompt prefixes."""
    preemption: Literal["recompute", "swap"] = "recompute"
    """What happens to a preempted request's KV: dropped and recomputed, or swapped to host."""
    swap_space_gib: GiB = 4.0
    """Host memory per device for the KV of swapped-out requests, GiB (vLLM's --swap-space)."""
    kv_offload: KvOffloadConfig | None = None
    """Optional host/CXL tier for evicted prefix blocks (LMCache-like; docs/kv_cache.md)."""
    max_queue: Count | None = None
    """Admission control: most requests waiting per scheduler; arrivals beyond it are rejected
    (status ``rejected``). None: the queue is unbounded."""
    request_timeout_s: PositiveSeconds | None = None
    """Admission control: a request still waiting to start this many seconds after it arrived
    is dropped (status ``timed_out``) at the next step. None: requests wait forever."""
    num_gpu_blocks_override: Count | None = None
    """KV-cache blocks per instance (below 2^31) instead of the number the memory plan gives
    (vLLM's --num-gpu-blocks-override); None: from memory."""
    num_scheduler_steps: int = Field(default=1, ge=1, le=1024, strict=True)
    """Multi-step scheduling (vLLM 0.6's --num-scheduler-steps): a step that only decodes
    starts a group of this many GPU steps on the same batch, scheduled (and its host
    overhead paid) once; requests arriving meanwhile start at the group's end. Needs
    whole prompts: ``policy: orca``, or ``vllm`` / ``sarathi`` with
    ``enable_chunked_prefill: false`` (docs/engines.md). 1: every step is scheduled."""
    batch_wait_timeout_iters: int = Field(default=0, ge=0, le=10**6, strict=True)
    """Batch waiting (TensorRT-LLM's ``batch_wait_timeout_iters``): a step that would run
    context (prefill) requests beside generation requests holds the context requests back
    for up to this many such steps, until the step's tokens reach
    ``batch_wait_max_tokens_ratio`` of ``max_num_batched_tokens`` (docs/engines.md). Needs a
    chunked-prefill policy (vllm, sarathi, no_evict, priority) and no attention data
    parallelism. Set both this and the ratio (either limit releases the held requests, so a 0
    releases them at once); 0 with ratio 0: off."""
    batch_wait_max_tokens_ratio: Annotated[
        float, NotBool, Field(ge=0.0, le=1.0, allow_inf_nan=False)
    ] = 0.0
    """Batch waiting (TensorRT-LLM's ``batch_wait_max_tokens_ratio``): the held context
    requests start once the step's tokens (their whole prompts plus one per generation
    request) reach this share of ``max_num_batched_tokens``, or after
    ``batch_wait_timeout_iters`` steps; set both (0 with timeout 0: off)."""
    recv_interval: int = Field(default=1, ge=1, le=10**6, strict=True)
    """How often the scheduler takes in new requests (SGLang's ``--scheduler-recv-interval``):
    each scheduling pass adds 1 after a decode-only step and 1000 after a step with context
    (prefill) requests, and arrivals are taken in once the count reaches this (then it starts
    again); after a pass that ran nothing they are taken in at once (docs/engines.md). Needs
    a chunked-prefill policy other than priority and no attention data parallelism. 1: every
    pass."""
    mixed_prefill: bool = True
    """Whether a step runs prompt (prefill) chunks beside the running requests' decodes
    (vLLM, TensorRT-LLM; SGLang with ``--enable-mixed-chunk``). false: SGLang's default, a
    step with prompt work to do (a partly computed prompt, or a waiting request that can
    start) runs only prompts, prefill first, and the decodes wait for the next step
    (docs/engines.md); a waiting request that resumes with one token to compute (KV handed
    over, swapped in) decodes. Needs a policy of the vllm family (vllm, sarathi, orca,
    no_evict, priority, a plugin subclassing it), one engine step per schedule, no attention
    data parallelism and no batch waiting; where the ``sglang`` preset set it and these do
    not hold, the run uses true, with a warning."""
    attention_dp_balance: AttentionDpBalanceConfig | None = None
    """Context balancing across attention data-parallel ranks (TensorRT-LLM's
    ``attention_dp_config`` with ``enable_balance: true``): context requests start only in a
    step where every rank has one, or after ``timeout_iters`` steps of waiting, or at once
    while some rank has no generation request (docs/engines.md). Needs
    ``cluster.data_parallel`` > 1. None: every rank starts its context requests at once."""

    @model_validator(mode="after")
    def _offload_needs_prefix_caching(self) -> SchedulerConfig:
        if self.kv_offload is not None and not self.enable_prefix_caching:
            raise ValueError(
                "kv_offload keeps prefix-cache blocks: set enable_prefix_caching: true"
            )
        return self


class TokenBucketConfig(_Section):
    """A token bucket in front of the cluster's router: a request takes as many tokens as its
    prompt has tokens, and is rejected when the bucket holds fewer (docs/workloads.md)."""

    tokens_per_s: PositiveFinite
    """Refill rate: prompt tokens per second the cluster admits in the long run."""
    burst: PositiveFinite
    """Bucket size, prompt tokens (full at t = 0): the most admitted at one instant."""


class AdmissionConfig(_Section):
    """Cluster admission control, decided when a request reaches the router; a refused request
    ends at once with status ``rejected`` and a reason (docs/workloads.md). The per-instance
    ``scheduler.max_queue`` and ``scheduler.request_timeout_s`` are separate, applied after."""

    token_bucket: TokenBucketConfig | None = None
    """Rate limit on prompt tokens, one bucket for the whole cluster; None: no limit."""
    max_queue: dict[str, Count] | None = None
    """Per client (by workload.clients name): most of its requests waiting to start anywhere in
    the cluster; its arrivals beyond it are rejected."""


class KernelDbConfig(_Section):
    """Which measured kernel tables ``perf.backend: kernel_db`` reads (docs/kernel-db.md)."""

    engine: str = "vllm"
    """Serving engine the tables were measured under: vllm, sglang or trtllm."""
    version: str | None = None
    """Engine version (e.g. 0.19.0; a unique prefix such as 0.19 works); default: the version
    nearest to ``nearest_to`` when that is set, else the newest installed for the device."""
    nearest_to: str | None = Field(default=None, pattern=r"^\d+(\.\d+)*$")
    """When ``version`` is not set: read the installed tables nearest to this engine version
    (those of its release line, e.g. 0.5 → the newest 0.5.x; else the newest older one; else
    the oldest newer one). ``engine:`` presets set it to their version and ``engine`` to their
    engine's tables."""
    system: str | None = None
    """Table system name (e.g. h100_sxm); default: the one mapped to the hardware."""
    path: Path | None = None
    """Folder of the tables (a ``systems`` tree); default: the installed aiconfigurator-core."""

    @field_validator("version", "nearest_to", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # ``--set perf.kernel_db.version=0.19`` arrives as a YAML number.
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )

    fallback: Literal["error", "roofline"] = "error"
    """A device the tables do not cover: refuse (error) or time every op with the roofline."""
    fp4: Literal["nvfp4", "mxfp4"] = "nvfp4"
    """Table mode for dtype fp4 MoE experts: NVFP4 or MXFP4 (w4a16) weights."""
    cuda_graphs: bool = True
    """Time the engine's custom all-reduce as captured in CUDA graphs (else eager)."""


class FusionConfig(_Section):
    """Which kernels the serving engine fuses (model/fusion.py; the engine presets set them,
    docs/engines.md). The defaults: the elementwise kernels the roofline was calibrated on,
    each its own, and fp8 activations quantized by their producer."""

    rope_in_attention: bool = False
    """Rotary embedding applied inside the attention kernel (TensorRT-LLM): no rope kernel."""
    residual_into_norm: bool = False
    """Residual add fused into the next RMSNorm (vLLM fused_add_rms_norm, SGLang, TensorRT-LLM):
    no residual_add kernel; the norm reads and writes the residual too."""
    quant_into_producer: bool = True
    """dtype fp8 (W8A8): the norm / activation writes the GEMM input in fp8 (TensorRT-LLM, vLLM V1
    fusion passes); off: a separate quantization kernel before every fp8 GEMM (vLLM 0.6,
    SGLang)."""
    norm_into_allreduce: bool = False
    """Under tensor parallelism the all-reduces after attention and after the MLP / MoE block
    also add the residual and apply the next RMSNorm (TensorRT-LLM's default RESIDUAL_RMS_NORM
    all-reduce fusion; vLLM's and SGLang's FlashInfer all-reduce fusion when enabled): the two
    residual norms of a layer launch no kernel of their own. No effect at tensor_parallel 1."""


CudaGraphMode = Literal["off", "eager", "decode", "piecewise"]


class CudaGraphsConfig(_Section):
    """CUDA-graph capture of the engine's forward pass (docs/engines.md, "CUDA graphs"). A step
    run under a captured graph has its batch padded up to the next capture size (GEMMs and
    elementwise kernels timed at the padded token count, attention at the real sequences) and
    pays no per-kernel launch; a step run eagerly takes at least its kernel count × launch_us
    (the host enqueues kernels ahead of the GPU, so the step is bound by the larger of the two
    sums)."""

    mode: CudaGraphMode = "off"
    """off: not modelled (kernels take their GPU time, no padding); eager: no graphs, every
    step pays the launch floor (vLLM --enforce-eager); decode: pure-decode steps of up to
    max_capture_size sequences replay a graph, steps with a prefill run eagerly (vLLM 0.6);
    piecewise: every step of up to max_capture_size tokens replays graphs, attention outside
    them (vLLM V1)."""
    max_capture_size: int = Field(default=256, ge=1, le=65536, strict=True)
    """Largest captured batch (decode: sequences; piecewise: tokens)."""
    capture_sizes: list[Annotated[int, Field(ge=1, le=65536, strict=True)]] | None = None
    """Captured batch sizes, each <= max_capture_size; default: 1, 2, 4, then multiples of 8
    up to 256, then multiples of 16 (vLLM's list) up to max_capture_size."""
    padding: bool = True
    """Pad a batch up to the next capture size; false: only batches of exactly a captured
    size replay a graph, the others run eagerly."""
    launch_us: Microseconds = 35.0
    """Host time per kernel of an eager step, µs: what the engine's Python host takes to
    dispatch one kernel outside a graph (docs/engines.md, "CUDA graphs": ~35 µs measured for an
    eager model in TensorRT-LLM's PyTorch flow, the same order in vLLM and SGLang eager runs);
    0 turns the launch floor off."""

    @model_validator(mode="after")
    def _sizes_fit(self) -> CudaGraphsConfig:
        sizes = self.capture_sizes
        if sizes is not None:
            if not sizes:
                raise ValueError("capture_sizes: expected a non-empty list (or leave it unset)")
            if max(sizes) > self.max_capture_size:
                raise ValueError(
                    f"capture_sizes: {max(sizes)} is above max_capture_size {self.max_capture_size}"
                )
        return self

    def sizes(self) -> tuple[int, ...]:
        """The captured batch sizes, ascending."""
        if self.capture_sizes is not None:
            return tuple(sorted(set(self.capture_sizes)))
        top = self.max_capture_size
        default = [1, 2, 4, *range(8, 257, 8), *range(272, top + 1, 16)]
        return tuple(size for size in default if size <= top) or (top,)


class PerfConfig(_Section):
    """Which perf backend times the ops, and the settings of the non-default ones. ``auto``
    picks per device type: ``systolic`` for an NPU whose YAML describes its arrays, ``roofline``
    otherwise."""

    backend: str = "auto"
    """Perf backend (llmservingsim catalog backends), or auto."""
    profile_dir: FilePath | None = Field(
        default=None, description="profile: folder or CSV of measured op tables"
    )
    command: list[str] | str | None = Field(
        default=None, description="external: the simulator to run (argv list or shell-like string)"
    )
    cache_dir: FilePath | None = Field(
        default=None,
        description="external / scalesim: result cache folder (default "
        "~/.cache/llmservingsim/external or ~/.cache/llmservingsim/scalesim)",
    )
    timeout_s: float = Field(
        default=60.0, gt=0, le=1e6, allow_inf_nan=False, description="external: seconds per answer"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="free-form settings for plugin backends; scalesim: scalesim_stream_tile",
    )
    kernel_db: KernelDbConfig = KernelDbConfig()
    """kernel_db: the engine, version and device of the measured kernel tables."""
    host_overlap: bool = False
    """The engine's host work of a step (scheduling, input preparation, output processing) runs
    while the GPU runs the step before (TensorRT-LLM's overlap scheduler, SGLang's overlap
    scheduler): a step takes max(GPU, host) instead of their sum (docs/engines.md)."""
    fusion: FusionConfig = FusionConfig()
    """Kernel fusion of the serving engine: which elementwise kernels run inside others."""
    cuda_graphs: CudaGraphsConfig = CudaGraphsConfig()
    """cuda_graphs: which steps replay captured CUDA graphs (padding) and which run eagerly
    (kernel-launch floor)."""


class MoeConfig(_Section):
    """Mixture-of-experts routing. ``imbalance``: the busiest expert's tokens over the mean
    (1.0 = uniform routing); it loads the critical rank under expert parallelism."""

    imbalance: float = Field(default=1.0, ge=1.0, le=1e3, allow_inf_nan=False)


class PimConfig(_Section):
    """Processing-in-memory devices attached to every instance (the NPU+PIM system of the
    reference): they hold the KV cache and run decode attention on their internal bandwidth
    while the instance's devices run everything else (perf/pim.py)."""

    enabled: bool = False
    device: str = Field(default="pim", description="catalog name or device YAML of type pim")
    count: SmallCount = Field(default=4, description="PIM devices per instance")
    sub_batch_interleaving: bool = Field(
        default=False,
        description="split decode into two sub-batches so device and PIM work overlap",
    )


LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]
ALL_LORA_TARGETS: list[LoraTarget] = ["q", "k", "v", "o", "gate", "up", "down"]


class LoraConfig(_Section):
    """Multi-LoRA serving (vLLM's --max-loras family; docs/lora.md). On with ``workload.lora``,
    or with ``enabled`` for a trace whose ``lora`` column names the adapters."""

    enabled: bool = False
    """Serve the adapters a trace names (vLLM --enable-lora); workload.lora turns it on too."""

    max_loras: SmallCount = 4
    """Adapters resident on the device at once (slots reserved up front)."""
    max_lora_rank: int = Field(default=16, ge=1, le=2**16, strict=True)
    """Rank each slot is sized for; an adapter of higher rank is an error."""
    max_cpu_loras: SmallCount = 64
    """Adapters kept in host memory (LRU); the rest load from disk."""
    target_modules: list[LoraTarget] = Field(
        default_factory=lambda: list(ALL_LORA_TARGETS), min_length=1
    )
    """Linear layers every adapter adapts, in each decoder layer."""
    disk_bandwidth_gbps: Gbps = 2.0
    """Disk read bandwidth for adapters not in the host cache, GB/s (NVMe-class)."""


class SpeculativeConfig(_Section):
    """Speculative decoding (docs/speculative.md): propose k tokens, verify them in one target
    pass, keep the accepted ones."""

    method: Literal["none", "draft", "eagle", "ngram", "mtp"] = "none"
    """none | draft (a small draft model) | eagle / mtp (one-layer head) | ngram (prompt lookup)."""
    num_speculative_tokens: int = Field(default=4, ge=1, le=1024, strict=True)
    """Tokens proposed per step (k)."""
    draft_model: str = "llama-3.2-1b"
    """method=draft: catalog name or Hugging Face config.json of the draft model."""
    acceptance_rate: Finite | list[Finite] = Field(default=0.7, union_mode="left_to_right")
    """Per-token acceptance α in [0, 1], or a list with one α per position (length k)."""
    disable_by_batch_size: TokenCount | None = None
    """Switch speculation off for a step when more requests than this are running."""

    @field_validator("acceptance_rate")
    @classmethod
    def _rates_in_range(cls, value: float | list[float]) -> float | list[float]:
        rates = value if isinstance(value, list) else [value]
        if not rates:
            raise ValueError("expected a number in [0, 1] or a non-empty list of them")
        for rate in rates:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"acceptance rate {rate} is outside [0, 1]")
        return value

    @model_validator(mode="after")
    def _one_rate_per_position(self) -> SpeculativeConfig:
        rates = self.acceptance_rate
        if isinstance(rates, list) and len(rates) != self.num_speculative_tokens:
            raise ValueError(
                f"acceptance_rate lists {len(rates)} rates; num_speculative_tokens is "
                f"{self.num_speculative_tokens} (one rate per position)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def rates(self) -> tuple[float, ...]:
        """α of each draft position."""
        rates = self.acceptance_rate
        if isinstance(rates, list):
            return tuple(rates)
        return (rates,) * self.num_speculative_tokens


class FrontendConfig(_Section):
    """Latency outside the GPU: API server, tokenization, engine-core IPC, async scheduling,
    detokenize and stream (perf/frontend.py, docs/engines.md). Off unless an ``engine:`` preset
    or the user turns it on; the presets carry values fitted on measured per-request data."""

    enabled: bool = False
    """Apply the frontend model (TTFT/E2E are then what the client sees)."""
    request_overhead_us: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    """Fixed cost per request before the scheduler has it (API server + IPC), µs."""
    per_prompt_token_us: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    """Tokenization / input processing per prompt token, µs."""
    token_out_us: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    """Engine core → client per emitted token (IPC, detokenize, stream), µs."""
    async_scheduling: bool = False
    """vLLM V1 async scheduling: a request arriving while a step runs starts one step later."""
    async_output_processing: bool = False
    """vLLM 0.6 (V0) async output processing: a step's outputs are processed during the next
    step, after its host work, so every token is emitted one step's host time later
    (step_overhead_us, or the device's iteration_overhead_us when it is None). Off, as in
    vLLM, with pipeline parallelism, perf.cuda_graphs.mode eager, or speculative decoding."""
    step_overhead_us: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    """CPU time per engine step not overlapped with the GPU, µs (None: the device YAML's
    efficiency.iteration_overhead_us)."""
    per_seq_overhead_us: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    """Same, per sequence of the step, µs (None: the device YAML's per_seq_overhead_us)."""


class SimulatorConfig(_Section):
    """How the simulator itself runs; never changes a simulated number."""

    fast_forward: bool = True
    """Keep requests that decode every step as one group of sums, so a step costs O(changes)
    instead of O(batch), and lay out runs of identical pure-decode steps in one go
    (docs/performance.md). The results equal step-by-step simulation; false steps one
    iteration and one request at a time (for checking)."""


class OutputsConfig(_Section):
    """What ``run`` writes besides summary.json (docs/outputs.md); never changes a simulated number.

    The bounds keep huge runs' files small: the time series switches from one row per engine step
    to time buckets, and the trace keeps a sample of requests and steps.
    """

    format: Literal["parquet", "csv"] = "parquet"
    """File format of the requests and timeseries tables."""
    timeseries_max_rows: Count = 100_000
    """Most timeseries rows; past it, steps are summed into time buckets whose width doubles as
    needed."""
    timeseries_bucket_s: Seconds = 0.0
    """Sum steps into buckets of this many seconds from the start (0: one row per step while
    timeseries_max_rows allows)."""
    trace: bool = True
    """Write trace.json (Chrome trace events, for Perfetto)."""
    trace_request_every: int = Field(default=0, ge=0, lt=MAX_TOKENS, strict=True)
    """Keep the trace slices of every k-th request (0: the smallest k that keeps at most
    trace_max_requests)."""
    trace_max_requests: Count = 10_000
    """Bound on traced requests when trace_request_every is 0."""
    trace_max_steps: Count = 100_000
    """Most step slices in the trace; past it every 2nd, then 4th, ... step is kept."""
    report: bool = True
    """Write report.html."""
    decisions: bool = False
    """Write decisions.parquet: every routing, admission and preemption decision with its
    candidates, their scores and the choice (docs/outputs.md). Parquet only."""


class SimConfig(_Section):
    engine: str | None = None
    """Serving engine preset: vllm, vllm-0.6, sglang or trtllm, optionally @version (e.g.
    vllm@0.19); sets the defaults a user of that engine gets (docs/engines.md). Keys set
    explicitly win. None: the simulator's generic defaults, no frontend."""
    model: str = "llama-3.1-8b"
    """Catalog name (llmservingsim catalog models) or path to a Hugging Face config.json."""
    dtype: WeightDtype = "bf16"
    """Weights and math; int8/int4 are weight-only (math in bf16); fp4 is NVFP4 (FP4 tensor
    cores: Blackwell) with an fp8 KV cache; mxfp4 is OCP MXFP4 weights (4.25 bits, gpt-oss)
    computed with MXFP8 activations at the fp8 rate on devices with FP4 tensor cores and
    weight-only in bf16 elsewhere, with 16-bit embeddings, LM head and KV cache."""
    kv_dtype: KvDtype = "auto"
    """KV-cache dtype; auto = dtype (bf16 for int8/int4/mxfp4 weights, fp8 for fp4 weights)."""
    fp8_scaling: Fp8ScalingSetting = "auto"
    """dtype fp8: how the checkpoint scales its fp8 weights, which picks the kernels that time
    them (the fused-MoE efficiency entry, the kernel tables' fp8 mode): tensor (one scale per
    tensor: NVIDIA ModelOpt FP8 checkpoints such as Llama-3.1 and Mixtral FP8) or block (one
    per 128x128 block: DeepSeek-V3/R1, Qwen3 FP8); auto: what the model's config.json says
    (its quantization_config, or the catalog's llmservingsim.fp8_checkpoint note), else block
    for mixture-of-experts models and tensor for dense ones. Only with dtype fp8."""
    hardware: str = "h100-sxm"
    """Catalog name (llmservingsim catalog hardware) or path to a device YAML."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Longest prompt + output a request may ask for (vLLM's --max-model-len); longer requests
    are rejected (status ``rejected``), not clipped. None: the model's context."""
    cluster: ClusterConfig = ClusterConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    workload: WorkloadConfig = WorkloadConfig()
    perf: PerfConfig = PerfConfig()
    moe: MoeConfig = MoeConfig()
    pim: PimConfig = PimConfig()
    lora: LoraConfig = LoraConfig()
    speculative: SpeculativeConfig = SpeculativeConfig()
    slo: SloConfig = SloConfig()
    outputs: OutputsConfig = OutputsConfig()
    frontend: FrontendConfig = FrontendConfig()
    admission: AdmissionConfig = AdmissionConfig()
    """Cluster admission control: a token bucket and per-client queue caps."""
    simulator: SimulatorConfig = SimulatorConfig()
    seed: Annotated[int, NotBool] = Field(default=0, ge=0, lt=2**63)
    """Random seed (a non-negative integer below 2^63): a run is fully reproducible from it."""
    plugins: list[str] = []
    """Python files (``path/to/policy.py``) or importable modules loaded before the run, so the
    schedulers, routers and perf backends they register can be named here (docs/extending.md).
    They run inside the compiled engine."""

    _engine_preset: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def engine_preset(self) -> dict[str, Any] | None:
        """The resolved engine preset (name, version, the keys it set and the ones the user's
        settings overrode), recorded in summary.json; None without ``engine:``."""
        return self._engine_preset

    @property
    def engine_name_version(self) -> tuple[str, str] | None:
        """(engine, version) of the resolved preset, for backends keyed by engine."""
        preset = self._engine_preset
        return None if preset is None else (preset["engine"], preset["version"])

    @model_validator(mode="after")
    def _clients_need_engine_support(self) -> SimConfig:
        for i, client in enumerate(self.workload.clients or []):
            where = f"workload.clients[{i}] ({client.name})"
            if client.priority != 0 and self.scheduler.policy != "priority":
                raise ValueError(
                    f"{where}: priority={client.priority}, but scheduler.policy "
                    f"'{self.scheduler.policy}' ignores priorities; set scheduler.policy: "
                    "priority, or leave priority at 0"
                )
            if client.lora is not None and not (
                self.lora.enabled or self.workload.lora is not None
            ):
                raise ValueError(
                    f"{where}: lora={client.lora!r} names an adapter; set lora.enabled: true "
                    "to serve adapters"
                )
        return self

    @model_validator(mode="after")
    def _fp8_scaling_needs_fp8(self) -> SimConfig:
        if self.fp8_scaling != "auto" and self.dtype != "fp8":
            raise ValueError(
                f"fp8_scaling: {self.fp8_scaling} describes fp8 weights, but dtype is "
                f"{self.dtype}; set dtype: fp8 or leave fp8_scaling at auto"
            )
        return self

    def resolved_fp8_scaling(self, is_moe: bool, checkpoint: str = "") -> Fp8Scaling:
        """``fp8_scaling`` with auto resolved for a model: what its config.json says
        (``checkpoint``, ModelSpec.fp8_checkpoint), else block for MoE and tensor for dense
        models; "none" when the weights are not fp8."""
        if self.dtype != "fp8":
            return "none"
        if self.fp8_scaling != "auto":
            return self.fp8_scaling
        if checkpoint == "block" or (not checkpoint and is_moe):
            return "block"
        return "tensor"

    @model_validator(mode="after")
    def _admission_names_clients(self) -> SimConfig:
        caps = self.admission.max_queue
        if caps is None:
            return self
        names = [c.name for c in self.workload.clients or []]
        for name in caps:
            if name not in names:
                known = ", ".join(names) if names else "none: workload.clients is not set"
                raise ValueError(
                    f"admission.max_queue names client {name!r}, which workload.clients does "
                    f"not list (clients: {known})"
                )
        return self

    @property
    def compute_dtype(self) -> str:
        """Math dtype: int8/int4 are weight-only quantization, computed in bf16; mxfp4's
        depends on the device (DeviceSpec.gemm_dtype), so it stays mxfp4 here."""
        return "bf16" if self.dtype in ("int8", "int4") else self.dtype

    @property
    def resolved_kv_dtype(self) -> str:
        if self.kv_dtype != "auto":
            return self.kv_dtype
        # Weight-only quantized models keep a 16-bit KV cache; FP4 checkpoints an FP8 one.
        if self.dtype == "fp4":
            return "fp8"
        return "bf16" if weight_only_quantized(self.dtype) else self.dtype


# ----------------------------------------------------------------------------- loading


def _section_fields(annotation: Any) -> dict[str, Any] | None:
    """Fields of the BaseModel(s) behind an annotation (None when it is not a section)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _section_fields(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        merged: dict[str, Any] = {}
        for arg in typing.get_args(annotation):
            fields = _section_fields(arg)
            if fields:
                merged.update(fields)
        return merged or None
    if origin is list:
        return _section_fields(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: f.annotation for name, f in annotation.model_fields.items()}
    return None


# Keys that moved: where they went (a one-line error instead of "unknown key").
MOVED_KEYS = {
    "perf.kernel_db.fp8_gemm": "fp8_scaling (tensor | block | auto), which picks the fp8 "
    "kernels for the roofline and the kernel tables alike",
}


def check_unknown_keys(raw: dict[str, Any], fields: dict[str, Any], prefix: str = "") -> None:
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if path in MOVED_KEYS:
            raise ConfigError(f"config key '{path}' moved to the top-level key {MOVED_KEYS[path]}")
        if key not in fields:
            valid = sorted(fields)
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint} (valid here: {', '.join(valid)})")
        sub = _section_fields(fields[key])
        if sub is not None and isinstance(value, dict):
            check_unknown_keys(value, sub, prefix=f"{path}.")
        elif sub is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    check_unknown_keys(item, sub, prefix=f"{path}[{i}].")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (['a','b','c'], value parsed as YAML so 8 is an int, true a bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty key in dotted path")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        # Not YAML (or an integer of more digits than Python converts): the text itself.
        value = value_text
    return parts, value


def apply_override(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {'.'.join(parts)}: '{'.'.join(parts[: i + 1])}' is not a section"
            )
        node = child
    node[parts[-1]] = value


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _fill_length_defaults(raw: dict[str, Any]) -> None:
    """``--set workload.input_len.mean=512`` keeps the default distribution's other keys."""
    workload = raw.get("workload")
    if not isinstance(workload, dict):
        return
    defaults = WorkloadConfig()
    for key in ("input_len", "output_len"):
        section = workload.get(key)
        if isinstance(section, dict) and "dist" not in section:
            workload[key] = {**getattr(defaults, key).model_dump(), **section}


MAX_DEPTH = 16
"""Deepest nesting a config may have (the schema itself needs 5 levels)."""


def check_depth(node: Any, path: str = "", depth: int = 0) -> None:
    """Refuse mappings and lists nested deeper than :data:`MAX_DEPTH` (no recursion limit,
    no quadratic error messages, whatever a free-form key like perf.options holds)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{path or 'config'}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, dict):
        for key, value in node.items():
            check_depth(value, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_depth(value, f"{path}[{i}]", depth + 1)


def _shown(value: object) -> str:
    """A rejected value as the error quotes it: repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def build_config(raw: dict[str, Any], source: str = "config") -> SimConfig:
    fields = {name: f.annotation for name, f in SimConfig.model_fields.items()}
    try:
        check_depth(raw)
        check_unknown_keys(raw, fields)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _fill_length_defaults(raw)
    preset = None
    if raw.get("engine") is not None:
        from llmservingsim.engine_presets import apply_preset

        raw, preset = apply_preset(raw, source)
    try:
        cfg = SimConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {_shown(got)})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = f"{loc}: " if loc else ""
        raise ConfigError(f"{source}: {where}{msg}{shown}") from None
    cfg._engine_preset = preset
    return cfg


def _is_union_tag(part: object) -> bool:
    return part in ("fixed", "uniform", "normal", "lognormal", "zipf", "empirical")


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> SimConfig:
    """The built-in default scenario, or a YAML file, with ``--set`` overrides applied."""
    raw: dict[str, Any] = load_yaml_mapping(path) if path is not None else {}
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
    return build_config(raw, source=str(path) if path else "config")
