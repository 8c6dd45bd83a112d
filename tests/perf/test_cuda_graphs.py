"""perf.cuda_graphs: padded graph replays, the kernel-launch floor of eager steps, which steps
run which way, the config errors and the engine presets that set it."""

from __future__ import annotations

import pytest

from llmservingsim.build import cuda_graph_policy
from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import CudaGraphsConfig, load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, CudaGraphPolicy, IterationTimer
from llmservingsim.scenario import check_supported

DEVICE = load_device("h100-sxm")


def _timer(policy: CudaGraphPolicy | None = None, tp: int = 1, pp: int = 1) -> IterationTimer:
    return IterationTimer(
        load_model("llama-3.1-8b"),
        DEVICE,
        RooflineBackend(DEVICE, "bf16"),
        Topology.build(DEVICE),
        tensor_parallel=tp,
        pipeline_parallel=pp,
        dtype="bf16",
        kv_dtype="bf16",
        cuda_graphs=policy,
    )


def _policy(mode: str, launch_us: float = 0.0, **settings: object) -> CudaGraphPolicy:
    cfg = CudaGraphsConfig.model_validate({"mode": mode, "launch_us": launch_us, **settings})
    return cuda_graph_policy(cfg)


def _decode(n: int, context: int = 1000) -> BatchShape:
    return BatchShape([], n, n * context, n)


def test_default_capture_sizes_are_vllms() -> None:
    sizes = CudaGraphsConfig(mode="decode", max_capture_size=512).sizes()
    assert sizes[:5] == (1, 2, 4, 8, 16)
    assert 256 in sizes and 264 not in sizes and 272 in sizes and sizes[-1] == 512
    assert CudaGraphsConfig(max_capture_size=256).sizes()[-1] == 256


def test_graphed_decode_runs_its_gemms_at_the_padded_batch() -> None:
    """9 decoding sequences replay the graph of 16: every token-count kernel is timed at 16,
    attention at the 9 real sequences; a batch of exactly 16 is not padded at all."""
    off, graphed = _timer(), _timer(_policy("decode"))
    n = off.num_layers
    padded = (
        n * (off._layer_cost(16)[0] - off._layer_cost(9)[0])
        + off._head_cost(16, 9)[0]
        - off._head_cost(9, 9)[0]
    )
    assert padded > 0
    gap = graphed.step(_decode(9)).seconds - off.step(_decode(9)).seconds
    assert gap == pytest.approx(padded, rel=1e-9)
    assert graphed.step(_decode(16)).seconds == off.step(_decode(16)).seconds
    # the fast path and the general path agree (MoE-free one-stage model takes the fast one)
    assert graphed._plain_decode


def test_eager_step_is_bound_by_its_kernel_launches() -> None:
    """With a launch cost far above any kernel, an eager step takes its host overhead plus
    kernels × launch cost: the op graph's kernels per layer, attention, the head."""
    launch_us = 1000.0
    timer = _timer(_policy("eager", launch_us))
    graph = timer.graph
    per_layer = len(graph.dense_layer_ops(1)) + 1  # + decode attention; TP1: no all-reduce
    head = len(graph.embedding_ops(1)) + len(graph.output_ops(1))
    kernels = timer.num_layers * per_layer + head
    cpu = timer.step_overhead + timer.seq_overhead * 4
    assert timer.step(_decode(4)).seconds == pytest.approx(cpu + kernels * launch_us * 1e-6)
    # with TP the two all-reduces of each layer are launches too
    tp2 = _timer(_policy("eager", launch_us), tp=2)
    assert tp2.step(_decode(4)).seconds == pytest.approx(
        cpu + (kernels + 2 * tp2.num_layers) * launch_us * 1e-6
    )


def test_short_launches_hide_behind_long_kernels() -> None:
    """The host enqueues ahead of the GPU: a launch cost below the kernels' mean time adds
    nothing to a compute-bound prefill step (sum against sum, not kernel by kernel)."""
    prefill = BatchShape([(2048, 0)], 0, 0, 1)
    off = _timer().step(prefill).seconds
    assert _timer(_policy("eager", 3.0)).step(prefill).seconds == off
    # ...while the device's fitted per-kernel cost, per kernel, would have added to it
    assert _timer(_policy("eager", 1e5)).step(prefill).seconds > off


def test_decode_mode_graphs_pure_decode_only() -> None:
    """vLLM 0.6: decode batches up to the largest size replay graphs (no launch floor);
    a step with a prefill, or a larger decode batch, runs eagerly."""
    big = 1e4  # µs: any eager step is launch bound
    decode, off = _timer(_policy("decode", big)), _timer()
    assert decode.step(_decode(8)).seconds == off.step(_decode(8)).seconds
    mixed = BatchShape([(64, 0)], 8, 8000, 9)
    assert decode.step(mixed).seconds > 2 * off.step(mixed).seconds
    assert decode.step(_decode(300)).seconds > 2 * off.step(_decode(300)).seconds


def test_piecewise_mode_pads_mixed_steps_by_tokens() -> None:
    """vLLM V1: a mixed step of 9 + 8 = 17 tokens runs at the 24-token graph; one above the
    largest size runs uncaptured."""
    piecewise, off = _timer(_policy("piecewise", max_capture_size=512)), _timer()
    mixed = BatchShape([(9, 0)], 8, 8000, 9)
    n = off.num_layers
    padded = n * (off._layer_cost(24)[0] - off._layer_cost(17)[0])
    padded += off._head_cost(24, 9)[0] - off._head_cost(17, 9)[0]
    gap = piecewise.step(mixed).seconds - off.step(mixed).seconds
    assert gap == pytest.approx(padded, rel=1e-9)
    large = BatchShape([(1000, 0)], 0, 0, 1)
    assert piecewise.step(large).seconds == off.step(large).seconds


def test_without_padding_only_captured_sizes_replay() -> None:
    graphs = _timer(_policy("decode", 1e4, padding=False))
    off = _timer()
    assert graphs.step(_decode(8)).seconds == off.step(_decode(8)).seconds
    assert graphs.step(_decode(9)).seconds > 2 * off.step(_decode(9)).seconds


def test_pipeline_stages_each_pay_their_launches() -> None:
    launch_us = 1000.0
    timer = _timer(_policy("eager", launch_us), pp=2)
    cost = timer.step(_decode(4))
    per_layer = len(timer.graph.dense_layer_ops(1)) + 1
    head = len(timer.graph.embedding_ops(1)) + len(timer.graph.output_ops(1))
    first, last = timer.stage_layers
    sends = timer._stage_sends(4)
    cpu = timer.step_overhead + timer.seq_overhead * 4
    assert cost.stages[0] == pytest.approx(cpu + first * per_layer * 1e-3 + sends[0])
    assert cost.stages[1] == pytest.approx((last * per_layer + head) * 1e-3)


def test_repeated_decode_steps_match_stepping_one_by_one() -> None:
    """The arrays of a decode run (serving/decode_run.py) time graphs and floors as step does."""
    for policy in (_policy("decode"), _policy("eager", 50.0), _policy("decode", 50.0)):
        timer = _timer(policy)
        first = _decode(9)
        costs, _, _ = timer.repeat_decode_costs(first, 5)
        each = [
            timer.step(BatchShape([], 9, first.decode_context + 9 * k, 9)).seconds
            for k in range(1, 5)
        ]
        assert costs.seconds.tolist() == pytest.approx(each, rel=1e-12)


def test_off_is_the_unmodelled_timing() -> None:
    assert _timer(_policy("off", 1e4)).step(_decode(9)) == _timer().step(_decode(9))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("perf.cuda_graphs.mode=full", "perf.cuda_graphs.mode"),
        ("perf.cuda_graphs.max_capture_size=0", "perf.cuda_graphs.max_capture_size"),
        ("perf.cuda_graphs.launch_us=-1", "perf.cuda_graphs.launch_us"),
        ("perf.cuda_graphs.capture_sizes=[1, 0]", "perf.cuda_graphs.capture_sizes"),
        ("perf.cuda_graphs.capture_sizes=[]", "non-empty"),
        ("perf.cuda_graphs.capture_sizes=[8, 300]", "300 is above max_capture_size 256"),
    ],
)
def test_bad_settings_are_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_features_the_graphs_do_not_reach_yet_are_refused() -> None:
    cfg = load_config(None, ["perf.cuda_graphs.mode=decode", "pim.enabled=true"])
    with pytest.raises(ConfigError, match="not yet supported"):
        check_supported(cfg)


def test_engine_presets_set_their_engines_graphs() -> None:
    v0 = load_config(None, ["engine=vllm-0.6"]).perf.cuda_graphs
    assert (v0.mode, v0.sizes()[-1], v0.launch_us) == ("decode", 256, 35.0)
    trt = load_config(None, ["engine=trtllm"]).perf.cuda_graphs
    assert (trt.mode, trt.sizes()[-3:], trt.padding) == ("decode", (32, 64, 128), False)
    # V1: FULL_AND_PIECEWISE up to 512 tokens; its frontend is fitted with them (engines.md)
    v1 = load_config(None, ["engine=vllm"]).perf.cuda_graphs
    assert (v1.mode, v1.sizes()[-1], v1.padding) == ("piecewise", 512, True)
    user = load_config(None, ["engine=vllm-0.6", "perf.cuda_graphs.mode=eager"])
    assert user.perf.cuda_graphs.mode == "eager"
    assert load_config(None, []).perf.cuda_graphs.mode == "off"


def _ranks_timer(policy: CudaGraphPolicy | None = None) -> IterationTimer:
    return IterationTimer(
        load_model("qwen3-30b-a3b"),
        DEVICE,
        RooflineBackend(DEVICE, "bf16"),
        Topology.build(DEVICE),
        tensor_parallel=1,
        dtype="bf16",
        kv_dtype="bf16",
        expert_parallel=2,
        data_parallel=2,
        cuda_graphs=policy,
    )


def test_attention_dp_ranks_replay_one_graph_size_together() -> None:
    """DP ranks of 9 and 3 decoding sequences both run the 16-sequence graph: their own parts
    at 16 tokens, the experts on 2 × 16; ranks already at a captured size are not padded."""
    off, graphed = _ranks_timer(), _ranks_timer(_policy("decode"))
    same = [_decode(16), _decode(16)]
    assert graphed.step_ranks(same).seconds == off.step_ranks(same).seconds
    uneven = [_decode(9), _decode(3)]
    gap = graphed.step_ranks(uneven).seconds - off.step_ranks(uneven).seconds
    experts = off._moe_experts_cost(32)[0] - off._moe_experts_cost(12)[0]
    rank = off._moe_rank_cost(16)[0] - off._moe_rank_cost(9)[0]
    assert gap > off.num_moe_layers * (experts + rank) * 0.999


def test_attention_dp_step_runs_eagerly_when_one_rank_prefills() -> None:
    launch_us = 1000.0
    timer = _ranks_timer(_policy("decode", launch_us))
    ranks = [_decode(4), BatchShape([(32, 0)], 0, 0, 1)]
    cost = timer.step_ranks(ranks).seconds
    layers = timer.num_moe_layers
    per_layer = timer.moe_kernels + timer.prefill_attn_kernels
    floor = (layers * per_layer + timer.head_kernels) * launch_us * 1e-6
    decode_floor = (layers * (timer.moe_kernels + 1) + timer.head_kernels) * launch_us * 1e-6
    host = timer.step_overhead + timer.seq_overhead
    # the slowest rank sets the pace: the prefilling one (one sequence of host work)
    assert cost == pytest.approx(host + floor) or cost == pytest.approx(
        timer.step_overhead + 4 * timer.seq_overhead + decode_floor
    )
    assert cost > 2 * _ranks_timer().step_ranks(ranks).seconds


def test_the_launch_floor_numbers_in_the_accuracy_doc() -> None:
    """docs/accuracy.md (known error 3) quotes scripts/cuda_graph_floor.py's numbers: the
    74-token TP8 prefill step of Llama-3.1-70B on H100, its kernels and its launch floor."""
    from pathlib import Path

    device = load_device("h100-sxm")
    timer = IterationTimer(
        load_model("llama-3.1-70b"),
        device,
        RooflineBackend(device, "bf16"),
        Topology.build(device),
        tensor_parallel=8,
        dtype="bf16",
        kv_dtype="bf16",
    )
    step = timer.step(BatchShape([(74, 0)], 0, 0, 1)).seconds
    gpu = step - timer.step_overhead - timer.seq_overhead
    kernels = timer.num_layers * (timer.dense_kernels + timer.prefill_attn_kernels)
    kernels += timer.head_kernels
    launch = CudaGraphsConfig().launch_us
    doc = (Path(__file__).resolve().parents[2] / "docs" / "accuracy.md").read_text()
    doc = " ".join(doc.split())
    assert f"launches {kernels:,} kernels over {gpu * 1e3:.1f} ms of GPU time" in doc
    assert f"the launches bind above {gpu / kernels * 1e6:.1f} µs per kernel" in doc
    assert f"At the {launch:.0f} µs now the default the same step's launches take" in doc
    assert f"take {kernels * launch / 1e3:.1f} ms, host-bound" in doc


def test_sliding_window_models_take_the_graphs_too() -> None:
    """gpt-oss (sliding-window layers, MoE) steps pad under a graph and pay the launch floor
    when eager, like every other model."""

    def timer(policy: CudaGraphPolicy | None) -> IterationTimer:
        return IterationTimer(
            load_model("gpt-oss-20b"),
            DEVICE,
            RooflineBackend(DEVICE, "bf16"),
            Topology.build(DEVICE),
            tensor_parallel=1,
            dtype="bf16",
            kv_dtype="bf16",
            cuda_graphs=policy,
        )

    off = timer(None)
    assert off.window
    assert timer(_policy("decode")).step(_decode(9)).seconds > off.step(_decode(9)).seconds
    assert timer(_policy("decode")).step(_decode(16)).seconds == off.step(_decode(16)).seconds
    eager = timer(_policy("eager", 1000.0))
    kernels = eager.num_layers * (eager.moe_kernels + 1) + eager.head_kernels
    host = eager.step_overhead + 4 * eager.seq_overhead
    assert eager.step(_decode(4)).seconds == pytest.approx(host + kernels * 1e-3)


def test_an_eager_step_is_paced_by_the_hosts_dispatch_per_kernel_by_default() -> None:
    """Without a launch cost set, an eager step takes at least its kernels × 35 µs: the Python
    host's dispatch interval per kernel, not the GPU's few-µs launch (docs/engines.md)."""
    assert CudaGraphsConfig().launch_us == 35.0
    timer = _timer(cuda_graph_policy(CudaGraphsConfig(mode="eager")))
    step = timer.step(_decode(1))
    kernels = timer.num_layers * (timer.dense_kernels + timer.decode_attn_kernels)
    kernels += timer.head_kernels
    cpu = timer.step_overhead + timer.seq_overhead
    assert step.seconds == pytest.approx(cpu + kernels * 35e-6)
    # The same batch under a graph pays no dispatch: its GPU time is below the floor.
    graphed = _timer(cuda_graph_policy(CudaGraphsConfig(mode="decode"))).step(_decode(1))
    assert cpu < graphed.seconds < step.seconds
