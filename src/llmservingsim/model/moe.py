"""Expert routing statistics: how many experts a batch touches and how many rows each rank gets.

A mixture-of-experts layer sends each of ``T`` tokens to ``k`` of ``E`` experts. Only the
experts that receive at least one token have their weights read, so at small batch a MoE
layer streams a fraction of its experts, and at large batch all of them. Under uniform routing
an expert is missed by one token with probability 1 − k/E, so the expected number of distinct
experts touched is

    D(T) = E · (1 − (1 − k/E)^T)

Real routers are not uniform: ``imbalance`` ≥ 1 says the busiest expert receives that many
times the mean rows of a touched expert (capped at T, since a token picks an expert once). On
one device that does not change the work — every expert's rows are computed there anyway — but
with expert parallelism the rank holding the hot expert is the critical path.
"""

from __future__ import annotations

from llmservingsim.model.fusion import fuse_ops
from llmservingsim.model.op import Dims, Op, OpBuilder

MOE_GATE_UP = "moe_gate_up_proj"
MOE_DOWN = "moe_down_proj"
MOE_GEMMS = frozenset((MOE_GATE_UP, MOE_DOWN))
"""The grouped expert GEMMs of a fused-MoE kernel (their own efficiency: device.MoeGemm)."""


def routed_expert_ops(
    rows: float,
    experts: float,
    hidden: int,
    inter: int,
    weight_bytes: float,
    act_bytes: float,
    block: Dims = (),
) -> list[Op]:
    """The fused-MoE kernel's work on one device: ``rows`` (token, expert) pairs over
    ``experts`` touched experts, each expert's intermediate ``inter`` (its slice under TP):
    gate/up grouped GEMM, activation, down grouped GEMM. Weights are read once per touched
    expert, M is the mean rows per expert; under the roofline's η(M) = M/(M+M½) the compute
    time of the per-expert GEMMs summed equals one GEMM of the summed rows at the mean M.
    ``block`` names the whole MoE block's shape for backends that time the fused kernel as
    one measured op (kernel_db). The calibration of the MoE efficiency (calibrate/
    moe_tables.py) times the measured kernels' shapes with this same function."""
    m = max(1, round(rows / experts)) if experts > 0 else 1
    act_rows = max(1, round(rows))
    sizes = (rows, experts, m, weight_bytes, act_bytes)
    return [
        _grouped(MOE_GATE_UP, 2 * inter, hidden, sizes, block),
        Op(
            "moe_act",
            "memory",
            0.0,
            rows * 3 * inter * act_bytes,
            act_rows,
            (("m", act_rows), ("read", 2 * inter), ("write", inter), *block),
        ),
        _grouped(MOE_DOWN, hidden, inter, sizes, block),
    ]


def _grouped(
    name: str, n: int, k: int, sizes: tuple[float, float, int, float, float], block: Dims
) -> Op:
    rows, experts, m, weight_bytes, act_bytes = sizes
    flops = 2.0 * rows * n * k
    traffic = experts * k * n * weight_bytes + rows * (k + n) * act_bytes
    # One expert's matrix, bytes (``moe_*``: not part of a profile table's op shape).
    expert_weight = round(k * n * weight_bytes)
    dims = (("m", m), ("n", n), ("k", k), ("moe_expert_weight", expert_weight), *block)
    return Op(name, "gemm", flops, traffic, m, dims)


def expected_experts_touched(num_experts: int, top_k: int, num_tokens: int) -> float:
    """Expected distinct experts that receive ≥ 1 of ``num_tokens`` tokens (uniform routing)."""
    if num_tokens <= 0 or num_experts <= 0:
        return 0.0
    miss = 1.0 - min(top_k, num_experts) / num_experts
    return num_experts * (1.0 - miss**num_tokens)


class RankLoad:
    """What the busiest expert-parallel rank does in one MoE layer.

    ``experts`` local experts are touched (their weights are read), ``rows`` (token, expert)
    pairs are computed there, and ``load_factor`` is rows over the mean rank's rows (the
    all-to-all to and from that rank is that much bigger than average).
    """

    experts: float
    rows: float
    load_factor: float

    def __init__(
        self,
        experts: float,
        rows: float,
        load_factor: float,
    ) -> None:
        self.experts = experts
        self.rows = rows
        self.load_factor = load_factor

    def __repr__(self) -> str:
        return (
            f"RankLoad("
            f"experts={self.experts!r}, "
            f"rows={self.rows!r}, "
            f"load_factor={self.load_factor!r}"
            ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RankLoad):
            return NotImplemented
        return (self.experts, self.rows, self.load_factor) == (
            other.experts,
            other.rows,
            other.load_factor,
        )

    @property
    def rows_per_expert(self) -> float:
        """Mean rows of a touched local expert: the M of its expert GEMM."""
        return self.rows / self.experts if self.experts > 0 else 0.0


def busiest_rank_load(
    num_experts: int, top_k: int, num_tokens: int, ranks: int = 1, imbalance: float = 1.0
) -> RankLoad:
    """Load of the rank holding the busiest expert when experts are split over ``ranks``.

    With one rank every (token, expert) pair is computed there: rows = T·k, whatever the skew.
    With several, the hot rank holds the busiest expert (imbalance × the mean rows of a touched
    expert, at most T) and its other touched experts get the mean.
    """
    touched = expected_experts_touched(num_experts, top_k, num_tokens)
    total_rows = float(num_tokens * min(top_k, num_experts))
    if ranks == 1 or touched <= 0:
        return RankLoad(touched, total_rows, 1.0)
    mean_rows = total_rows / touched
    hottest = min(float(num_tokens), imbalance * mean_rows)
    # The busiest rank holds at least the hot expert, plus its share of the others.
    experts = max(1.0, touched / ranks)
    rows = (experts - 1.0) * mean_rows + hottest
    # A rank cannot get more rows than every token routing all it can to its experts.
    local_experts = num_experts // ranks
    rows = min(rows, float(num_tokens * min(top_k, local_experts)))
    fair = total_rows / ranks
    return RankLoad(experts, rows, rows / fair)


class MoeOps:
    """The MLP of a MoE layer on one rank: router, top-k, the touched experts, shared experts.

    Layouts (``expert_parallel`` = EP, the instance's tensor parallelism = TP):

    * EP = 1: every rank holds every expert with its intermediate dimension split over the TP
      ranks (vLLM's default fused-MoE sharding); each rank computes all T·k (token, expert)
      rows on its slice, and the usual TP all-reduce sums the slices.
    * EP = TP: the experts are split over the TP group's ranks, whole (no intermediate split).
      Attention stays tensor-parallel and all-reduced as usual; each rank then routes its
      1/EP slice of the tokens, an all-to-all dispatches them to the ranks owning their
      experts, the local experts run, an all-to-all brings the results back, and an
      all-gather restores the full hidden state on every rank. Shared experts stay TP-sharded
      over all tokens, their partial sums reduce-scattered onto the slices. The collectives are
      timed in perf/iteration.py from :meth:`dispatch_bytes`.
    * Attention data parallelism (``data_parallel`` = D ranks of TP devices, EP = D × TP):
      each rank attends its own batch; the experts are split over all D × TP devices and every
      MoE layer's all-to-all spans them, so the routed experts compute the union of the ranks'
      tokens (:meth:`expert_ops` on the summed count) while the norm, shared experts and
      residual run per rank on its own tokens (:meth:`rank_ops`).
    """

    def __init__(
        self, graph: OpBuilder, expert_parallel: int, imbalance: float, data_parallel: int = 1
    ) -> None:
        spec = graph.spec
        self.graph = graph
        self.ep = expert_parallel
        self.dp = data_parallel
        self.imbalance = imbalance
        self.hidden = spec.hidden_size
        self.num_experts = spec.num_experts
        self.top_k = spec.experts_per_token
        # Each expert's intermediate is split over the devices of the expert group (the TP
        # ranks of every DP rank) that share it.
        self.expert_tp = max(1, graph.tp * data_parallel // self.ep)
        self.expert_intermediate = max(1, spec.moe_intermediate_size // self.expert_tp)
        self.shared_intermediate = (
            max(1, spec.shared_intermediate_size // graph.tp)
            if spec.shared_intermediate_size
            else 0
        )

    def local_tokens(self, num_tokens: int) -> int:
        """Tokens this rank routes: all of them, or its 1/EP slice under expert parallelism."""
        return -(-num_tokens // self.ep)

    def load(self, num_tokens: int) -> RankLoad:
        return busiest_rank_load(self.num_experts, self.top_k, num_tokens, self.ep, self.imbalance)

    def dispatch_bytes(self, num_tokens: int) -> float:
        """Bytes the busiest rank exchanges in one all-to-all (dispatch; combine is the same):
        its token slice's hidden states, once per chosen expert, scaled by its load."""
        load = self.load(num_tokens)
        tokens = self.local_tokens(num_tokens)
        return tokens * self.top_k * self.hidden * self.graph.act_bytes * load.load_factor

    def ffn_ops(self, num_tokens: int) -> list[Op]:
        """The whole MLP of one rank whose batch alone feeds the experts (no DP ranks)."""
        before, after = self.rank_ops(num_tokens)
        return before + self.expert_ops(num_tokens) + after

    def rank_ops(self, num_tokens: int) -> tuple[list[Op], list[Op]]:
        """The ops of one attention rank's own ``num_tokens`` around the routed experts: the
        norm before them; the shared experts (TP-sharded inside the rank) and the residual add
        after them."""
        g, h, m = self.graph, self.hidden, num_tokens
        after = []
        if self.shared_intermediate:
            shared = self.shared_intermediate
            after += [
                g.gemm("shared_up_proj", m, 2 * shared, h),
                g.elementwise("shared_act", m, 2 * shared, shared),
                g.gemm("shared_down_proj", m, h, shared),
            ]
        after.append(g.elementwise("residual_add", m, 2 * h, h))
        before = [g.elementwise("post_attention_layernorm", m, h, h)]
        return fuse_ops(before, g.fusion, g.act_bytes, g.quant_bytes, g.tp), fuse_ops(
            after, g.fusion, g.act_bytes, g.quant_bytes, g.tp
        )

    def expert_ops(self, num_tokens: int) -> list[Op]:
        """Router, top-k and the routed experts of one device for ``num_tokens`` tokens of the
        whole expert group (with DP ranks: the sum of their batches)."""
        g, h, m = self.graph, self.hidden, num_tokens
        local = self.local_tokens(m)
        load = self.load(m)
        inter = self.expert_intermediate
        act = g.act_bytes
        # The whole MoE block's shape, for backends that time the fused-MoE kernel as one
        # measured op (kernel_db); ``moe_*`` dims are not part of a profile table's op shape.
        block = (
            ("moe_tokens", m),
            ("moe_hidden", h),
            ("moe_inter", self.graph.spec.moe_intermediate_size),
            ("moe_experts", self.num_experts),
            ("moe_topk", self.top_k),
            ("moe_tp", self.expert_tp),
            ("moe_ep", self.ep),
        )
        topk_bytes = local * (4.0 * self.num_experts + 8.0 * self.top_k)  # fp32 logits, ids+w
        return [
            g.gemm("moe_router", local, self.num_experts, h),
            Op(
                "moe_topk",
                "memory",
                0.0,
                topk_bytes,
                local,
                (("m", local), ("experts", self.num_experts)),
            ),
            *routed_expert_ops(load.rows, load.experts, h, inter, g.weight_bytes, act, block),
            Op(
                "moe_combine",
                "memory",
                0.0,
                (load.rows + local) * h * act,
                local,
                (("m", local), ("read", h), ("write", h)),
            ),
        ]
