"""Published row → simulator settings: :func:`scenario_for` is the one mapping.

Everything here is a rule about a *kind* of row (a model name pattern, an engine and its
documented defaults, a setting stated in the row's notes), never a value for one row: a new
row of the same kinds needs no code. Rows the simulator cannot run yet (more instances,
pipeline parallelism, MoE, ...) still get settings; the simulator's own "not yet supported"
error then marks them skipped, so they start running when the feature lands.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmservingsim.catalog import device_names, load_model
from llmservingsim.validate.reference import METRICS, is_verified, number
from llmservingsim.validate.sources import NODE_GPUS

# Requests of a synthetic run at most (max-throughput runs reach steady state long before).
MAX_REQUESTS = 30000
DEFAULT_REQUESTS = 1000


@dataclass(frozen=True)
class ModelRule:
    pattern: str  # regex on the lower-cased published model name
    catalog: str
    published_context: int | None = None  # when the published model's context differs
    note: str = ""


MODELS = (
    ModelRule(r"mixtral-8x7b", "mixtral-8x7b"),
    ModelRule(r"mixtral-8x22b", "mixtral-8x22b"),
    ModelRule(r"mistral-large(-instruct)?-2407", "mistral-large-2407"),
    ModelRule(r"llama-3\.1-8b", "llama-3.1-8b"),
    ModelRule(r"llama-3\.1-70b", "llama-3.1-70b"),
    ModelRule(r"llama-3\.1-405b", "llama-3.1-405b"),
    ModelRule(
        r"(meta-)?llama-3-8b",
        "llama-3.1-8b",
        8192,
        "Llama-3-8B simulated as llama-3.1-8b (same layer shapes; 8K instead of 128K context)",
    ),
    ModelRule(
        r"(meta-)?llama-3-70b",
        "llama-3.1-70b",
        8192,
        "Llama-3-70B simulated as llama-3.1-70b (same layer shapes; 8K instead of 128K context)",
    ),
    ModelRule(r"qwen2\.5-7b", "qwen2.5-7b"),
    ModelRule(r"qwen2\.5-72b", "qwen2.5-72b"),
    ModelRule(r"qwen3-235b-a22b", "qwen3-235b-a22b"),
    ModelRule(r"qwen3-30b-a3b", "qwen3-30b-a3b"),
    ModelRule(r"qwen3-32b", "qwen3-32b"),
    ModelRule(r"qwen3-14b", "qwen3-14b"),
    ModelRule(
        r"deepseek-(v3(\.1)?|r1)(-0528)?(-nvfp4)?$",
        "deepseek-v3",
        note="DeepSeek-R1 / V3.1 simulated as deepseek-v3 (the same architecture)",
    ),
    ModelRule(r"yi-34b", "yi-34b"),
    ModelRule(r"mistral-nemo", "mistral-nemo-12b"),
    ModelRule(
        r"llama-4-scout-17b-16e",
        "llama-4-scout",
        note="Llama-4-Scout: chunked attention simulated as full attention (docs/models.md)",
    ),
    ModelRule(r"llama-2-70b", "llama-2-70b"),
    ModelRule(r"llama-2-13b", "llama-2-13b"),
    ModelRule(r"llama-2-7b", "llama-2-7b"),
    ModelRule(r"gpt-oss-120b", "gpt-oss-120b"),
    ModelRule(r"gpt-oss-20b", "gpt-oss-20b"),
)

# Models published with MXFP4 experts (gpt-oss: ``quantization_config.quant_method`` mxfp4,
# attention, router, embeddings and LM head left in bf16). Their rows say "fp4": they run as
# dtype mxfp4 (MXFP8 activations on Blackwell, weight-only elsewhere) with a 16-bit KV cache
# (docs/models.md), not NVFP4 compute.
MXFP4_MODELS = re.compile(r"gpt-oss")

# Published hardware names, lower-cased, vendor and brand words dropped, '-' / '_' as spaces
# (hardware_for) -> catalog device. A row naming a catalog device itself maps to it too.
HARDWARE = (
    (r"^h100( sxm5?)?( 80gb)?( hbm3)?$", "h100-sxm"),
    (r"^h100 pcie", "h100-pcie"),
    (r"^h200( sxm)?( 141gb)?$", "h200"),
    (r"^a100( sxm4?)? 40gb$", "a100-40gb"),  # SXM4 cards: a PCIe A100 has no catalog device
    (r"^a100( sxm4?)?( 80gb)?$", "a100-80gb"),
    (r"^rtx pro 6000", "rtx-pro-6000"),
    (r"^rtx 3090( 24gb)?$", "rtx-3090"),
    (r"^rtx 4090( 24gb)?$", "rtx-4090"),
    (r"^rtx 5090( 32gb)?$", "rtx-5090"),
    (r"^(rtx )?a6000( 48gb)?$", "a6000"),
    (r"^a40( 48gb)?$", "a40"),
    (r"^l40s( 48gb)?$", "l40s"),
    (r"^l4( 24gb)?$", "l4"),
    (r"^b200", "b200"),
    (r"^gb200", "gb200"),
    (r"^(instinct )?mi300x", "mi300x"),
    (r"^(instinct )?mi325x", "mi325x"),
    (r"^(tpu )?v5e|^tpu v5 lite", "tpu-v5e"),
    (r"^(tpu )?v6e|^trillium", "tpu-v6e"),
    (r"^gaudi ?3", "gaudi3"),
)
VENDOR_WORDS = re.compile(r"\b(nvidia|geforce|amd|google|cloud|intel|habana)\b")


def hardware_for(text: str) -> str | None:
    """The catalog device a row's ``hardware`` names, or None."""
    low = text.strip().lower()
    if low in device_names():
        return low
    name = " ".join(VENDOR_WORDS.sub(" ", low.replace("-", " ").replace("_", " ")).split())
    return next((device for pattern, device in HARDWARE if re.search(pattern, name)), None)


@dataclass(frozen=True)
class ClientProtocol:
    """How a kind of fixed-concurrency point's benchmark client ran: ``concurrency`` clients
    from t = 0, each sending its next request when its previous one ended (the engine's own
    closed loop, ``workload.arrival.process: closed``)."""

    name: str
    requests_per_client: int
    """The client's request count over its concurrency."""
    range_ratio: float | None
    """Lengths (input and output) uniform on the integers [int(L · ratio), L] around the row's
    length L; None: every request exactly L."""
    source: str
    """Where the protocol is documented."""


# Kinds of benchmark client (a row's ``client`` key, validate/sources.py) → their protocol.
CLIENTS = {
    "inferencex": ClientProtocol(
        "InferenceX",
        10,
        0.8,
        # benchmarks/benchmark_lib.sh run_benchmark_serving (earlier: each recipe and the
        # README's "Benchmark Client Configuration"): benchmark_serving.py --dataset-name
        # random --random-range-ratio 0.8 --num-prompts CONC*10 --max-concurrency CONC
        # --request-rate inf --ignore-eos; its sample_random_requests draws input and output
        # lengths with np.random.randint(int(L * ratio), L + 1). The warm-up requests
        # (--num-warmups 2*CONC in later versions) all end before the measured ones start,
        # with prefix caching off in the recipes, so the measured clients meet an idle server.
        "SemiAnalysisAI/InferenceX benchmark client (benchmark_serving.py random dataset)",
    ),
}
# A client not recorded (NVIDIA's gap-analysis files name none): fixed lengths, a few requests
# per client, no stagger invented. (AIConfigurator's own `aiconfigurator eval` runners send
# fixed lengths, 10 × concurrency requests after 2 × concurrency warm-ups, but nothing ties
# those files to that tool.)
UNRECORDED_CLIENT = ClientProtocol("client not recorded", 5, None, "")


@dataclass(frozen=True)
class RecipeRule:
    """An engine setting the server launch recipe of a kind of benchmark run sets: rows of
    that client, engine and model family (as the recipe's file names them), in the recipe's
    branch (lengths, TP, attention DP), run with ``settings`` on top of the engine's preset."""

    client: str
    """The kind of benchmark client (a key of :data:`CLIENTS`)."""
    engine: str
    """vllm | sglang | trtllm (:attr:`Scenario.engine_name`)."""
    model: str
    """Regex on the catalog model: the family the recipe files name."""
    settings: tuple[str, ...]
    """``scheduler.*`` settings, ``key=value`` without the ``scheduler.`` prefix."""
    source: str
    """The recipe files and the branch of theirs that sets it."""
    hardware: str | None = None
    """Regex on the catalog device where the recipe file is per GPU; None: every GPU."""
    dtype: str | None = None
    """The simulated weight dtype where the recipe file is per precision; None: every one."""
    lengths: tuple[int, int] | None = None
    """(ISL, OSL) of the recipe's branch; None: every length."""
    tp: tuple[int, int] | None = None
    """The TP range (inclusive) of the recipe's branch; None: every TP."""
    concurrency: tuple[int, int] | None = None
    """The client-count range (inclusive) of the recipe's branch; None: every count."""
    attention_dp: bool | None = None
    """The branch applies with (True) or without (False) attention data parallelism."""
    graph_max_bs: int | None = None
    """SGLang's ``--cuda-graph-max-bs`` in the branch: decode batches up to it replay CUDA
    graphs, padded to SGLang's capture sizes (:func:`sglang_graph_sizes`)."""


# The server launch recipes of SemiAnalysisAI/InferenceX (benchmarks/ folder), per kind of row
# (docs/accuracy.md, "Recipe settings"). Knobs a recipe sets that the engine already has at
# the preset's value, or that only change timing the simulator does not model, are not listed.
RECIPES = (
    RecipeRule(
        "inferencex",
        "trtllm",
        r"^llama-3\.1-70b$",
        ("batch_wait_timeout_iters=20", "batch_wait_max_tokens_ratio=0.9"),
        "benchmarks/70b_fp8_h200_trt_slurm.sh, 70b_fp8_b200_trt_slurm.sh, "
        "70b_fp4_b200_trt_slurm.sh: batch_wait_max_tokens_ratio 0.9, batch_wait_timeout_iters "
        "20 when ISL = OSL = 1024 and TP < 8",
        lengths=(1024, 1024),
        tp=(1, 7),
    ),
    RecipeRule(
        "inferencex",
        "trtllm",
        r"^deepseek-v3$",
        ("attention_dp_balance={timeout_iters: 60, batching_wait_iters: 0}",),
        "benchmarks/dsr1_fp4_b200_trt.sh, dsr1_fp8_b200_trt.sh, dsr1_fp8_h200_trt.sh: "
        "attention_dp_config {batching_wait_iters: 0, enable_balance: true, timeout_iters: 60} "
        "with attention DP",
        attention_dp=True,
    ),
    RecipeRule(
        "inferencex",
        "trtllm",
        r"^gpt-oss-",
        ("attention_dp_balance={timeout_iters: 50, batching_wait_iters: 10}",),
        "benchmarks/gptoss_fp4_b200_trt.sh: attention_dp_config {enable_balance: true} "
        "(TensorRT-LLM's defaults timeout_iters 50, batching_wait_iters 10) with attention DP",
        hardware=r"^b200$",
        attention_dp=True,
    ),
    # SGLang DeepSeek-R1 on B200: --scheduler-recv-interval 30 from 16 clients, 10 below.
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("recv_interval=30",),
        "benchmarks/dsr1_fp4_b200.sh: --scheduler-recv-interval 30 when CONC >= 16",
        hardware=r"^b200$",
        dtype="fp4",
        concurrency=(16, MAX_REQUESTS),
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("recv_interval=10",),
        "benchmarks/dsr1_fp4_b200.sh: --scheduler-recv-interval 10 when CONC < 16",
        hardware=r"^b200$",
        dtype="fp4",
        concurrency=(1, 15),
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("recv_interval=30",),
        "benchmarks/dsr1_fp8_b200.sh: --scheduler-recv-interval 30 at TP8 when CONC >= 16",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(8, 8),
        concurrency=(16, MAX_REQUESTS),
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("recv_interval=10",),
        "benchmarks/dsr1_fp8_b200.sh: --scheduler-recv-interval 10 at TP8 when CONC < 16",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(8, 8),
        concurrency=(1, 15),
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("recv_interval=10",),
        "benchmarks/dsr1_fp8_b200.sh: --scheduler-recv-interval 10 at TP4",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(4, 4),
    ),
    # The same recipes' memory and batch settings: --mem-fraction-static (here
    # gpu_memory_utilization; SGLang's fraction covers weights + KV pool, the simulator's also
    # the activation peak: docs/accuracy.md), --max-running-requests (max_num_seqs) and the
    # prefill budget, the smaller of --chunked-prefill-size and --max-prefill-tokens
    # (max_num_batched_tokens: SGLang's PrefillAdder spends both per prefill batch).
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("gpu_memory_utilization=0.85", "max_num_seqs=256", "max_num_batched_tokens=16384"),
        "benchmarks/dsr1_fp4_b200.sh: --mem-fraction-static 0.85, --max-running-requests 256, "
        "--chunked-prefill-size 16384 (max_prefill_tokens at its default 16384), "
        "--cuda-graph-max-bs 256",
        hardware=r"^b200$",
        dtype="fp4",
        graph_max_bs=256,
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("gpu_memory_utilization=0.82", "max_num_batched_tokens=32768"),
        "benchmarks/dsr1_fp8_b200.sh: --mem-fraction-static 0.82, "
        "--chunked-prefill-size 32768 --max-prefill-tokens 32768, --cuda-graph-max-bs 128 at TP8",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(8, 8),
        graph_max_bs=128,
    ),
    # The same file's --max-running-requests is "the maximum concurrency" (its comment: 128
    # at TP8, 32 at TP4), so it holds for the client counts it was sized for. The points with
    # 256 and 512 clients at TP8 did not run under a 128 cap: at 1024/1024 and 256 clients
    # they measured a 2.1 s mean TTFT (3.1 s at 512) where a cap of 128 queues every client
    # for about one request's decode (~39 s at their measured 42.6 ms TPOT), and their TPOT
    # grows from 256 to 512 clients (42.6 → 68.8 ms), a batch beyond 128.
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("max_num_seqs=128",),
        "benchmarks/dsr1_fp8_b200.sh: --max-running-requests 128 at TP8 (up to 128 clients)",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(8, 8),
        concurrency=(1, 128),
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("gpu_memory_utilization=0.95", "max_num_batched_tokens=8192"),
        "benchmarks/dsr1_fp8_b200.sh: --mem-fraction-static 0.95, "
        "--chunked-prefill-size 8192 --max-prefill-tokens 8192, --cuda-graph-max-bs 32 at TP4",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(4, 4),
        graph_max_bs=32,
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("max_num_seqs=32",),
        "benchmarks/dsr1_fp8_b200.sh: --max-running-requests 32 at TP4 (up to 32 clients)",
        hardware=r"^b200$",
        dtype="fp8",
        tp=(4, 4),
        concurrency=(1, 32),
    ),
    RecipeRule(
        "inferencex",
        "sglang",
        r"^deepseek-v3$",
        ("gpu_memory_utilization=0.82", "max_num_batched_tokens=32768"),
        "benchmarks/dsr1_fp8_h200.sh: --mem-fraction-static 0.82, --chunked-prefill-size 32768 "
        "--max-prefill-tokens 32768",
        hardware=r"^h200$",
        dtype="fp8",
    ),
    *(
        RecipeRule(
            "inferencex",
            "sglang",
            r"^deepseek-v3$",
            (f"max_num_seqs={seqs}",),
            f"benchmarks/dsr1_fp8_h200.sh: --max-running-requests {seqs}, --cuda-graph-max-bs "
            f"{seqs} at {isl}/{osl}",
            hardware=r"^h200$",
            dtype="fp8",
            lengths=(isl, osl),
            graph_max_bs=seqs,
        )
        for isl, osl, seqs in ((1024, 1024, 512), (1024, 8192, 256), (8192, 1024, 256))
    ),
)


def recipe_settings(
    row: dict[str, str], engine: str, catalog: str, hardware: str, dtype: str, tp: int, dp: int
) -> list[RecipeRule]:
    """The :data:`RECIPES` that apply to ``row`` (served by ``engine`` as ``catalog`` in
    ``dtype`` on ``hardware`` at TP ``tp`` × attention DP ``dp``)."""
    client = row.get("client", "")
    lengths = (number(row["input_len"]), number(row["output_len"]))
    clients = int(row["concurrency"]) if row.get("concurrency") else None
    found = []
    for rule in RECIPES:
        if (
            rule.client == client
            and rule.engine == engine
            and re.search(rule.model, catalog)
            and (rule.hardware is None or re.search(rule.hardware, hardware))
            and (rule.dtype is None or rule.dtype == dtype)
            and (rule.lengths is None or lengths == rule.lengths)
            and (rule.tp is None or rule.tp[0] <= tp <= rule.tp[1])
            and (
                rule.concurrency is None
                or (clients is not None and rule.concurrency[0] <= clients <= rule.concurrency[1])
            )
            and (rule.attention_dp is None or rule.attention_dp == (dp > 1))
        ):
            found.append(rule)
    return found


# Engine settings stated in a row's notes override the engine defaults below.
NOTE_SETTINGS = (
    (r"max_num_seqs\s*=\s*(\d+)", "scheduler.max_num_seqs"),
    (r"max_num_batched_tokens\s*=\s*(\d+)", "scheduler.max_num_batched_tokens"),
    # "gpu_mem_util 0.97", "gpu_memory_utilization=0.9", vLLM's "--gpu-memory-utilization 0.85"
    (r"gpu[-_]mem(?:ory)?[-_]util(?:ization)?[\s=]*(0?\.\d+)", "scheduler.gpu_memory_utilization"),
)
PREFIX_CACHING_ON = re.compile(r"prefix caching on", re.IGNORECASE)
# The vLLM command line of the run's launch script, when a row's notes quote it
# ("launch flags: --max-model-len 24272 --disable-custom-all-reduce ..."; the apexplus set):
# flags that only a quoted command line sets (NOTE_SETTINGS reads its memory share).
LAUNCH_FLAGS = re.compile(r"launch flags: ([^;(]*)")
FLAG_MAX_MODEL_LEN = re.compile(r"--max-model-len[ =]+(\d+)\b")
FLAG_NO_CUSTOM_ALLREDUCE = re.compile(r"--disable-custom-all-reduce\b")
# vLLM 0.6's multi-step scheduling, stated in a row's engine_version or notes.
MULTI_STEP = re.compile(r"--num-scheduler-steps[ =]+(\d+)")


@dataclass
class Scenario:
    """One simulation; several published rows (metrics of the same run) share it."""

    overrides: list[str]  # --set key=value
    optional: list[str]  # settings the run had; dropped (and noted) if not yet supported
    label: str
    engine: str
    notes: list[str] = field(default_factory=list)
    engine_name: str = "vllm"  # vllm | sglang | trtllm (the kernel tables' engine)
    concurrency: int | None = None
    """Closed-loop clients (a fixed number of requests in flight); None: the workload sets."""

    @property
    def key(self) -> tuple[str, ...]:
        return (*self.overrides, "|", *self.optional, "|", str(self.concurrency))


def _version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"~?(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2])) if match else None


# InferenceX's vLLM points whose database dump records no release (the Llama-3.1-70B and
# gpt-oss-120b exports, measured October–November 2025): every InferenceX vLLM launch recipe
# (benchmarks/70b_fp8_b200_docker.sh, 70b_fp8_h100_slurm.sh, 70b_fp8_h200_slurm.sh,
# gptoss_fp4_b200_docker.sh) starts `vllm serve` with `async-scheduling: true`, an option of
# the V1 engine (vLLM 0.10 and later), so they ran V1; the release itself is unknown.
INFERENCEX_VLLM_FLOOR = (0, 10)
# InferenceX's TensorRT-LLM points whose dump records no release (or a tag such as
# `gpt-oss-dev`): every InferenceX TensorRT-LLM launch recipe (benchmarks/*_trt*.sh) starts
# `trtllm-serve` with LLM-API options only the PyTorch backend has (`cuda_graph_config`,
# `batch_wait_timeout_iters`, `attention_dp_config`, `moe_config`; TorchLlmArgs), so they ran
# the PyTorch backend of the 1.x releases (every recorded InferenceX release is 1.1 or later).
INFERENCEX_TRTLLM_FLOOR = (1, 0)


def row_version(row: dict[str, str]) -> tuple[int, ...] | None:
    """The (major, minor) engine release a row ran, as far as the row tells it."""
    version = _version(row["engine_version"])
    if version is None and row.get("client") == "inferencex":
        engine = row["engine"].lower()
        if "vllm" in engine:
            return INFERENCEX_VLLM_FLOOR
        if "tensorrt-llm" in engine:
            return INFERENCEX_TRTLLM_FLOOR
    return version


def engine_settings(row: dict[str, str], max_model_len: int) -> tuple[dict[str, str], str]:
    """Scheduler settings that mimic the row's engine at its documented defaults, and their
    description: a :meth:`str.format` template over the settings the run ends up with
    (``{max_num_seqs}``, ``{max_num_batched_tokens}``, ``{prompts}``: chunked or whole
    prompts), which :func:`scenario_for` fills in after the notes, recipes and clients."""
    engine = row["engine"].lower()
    version = row_version(row)
    if "sglang" in engine:
        # SGLang: chunked prefill, big running batch; the prefill budget is the preset's
        # chunked_prefill_size for the GPU's memory (data/engines/sglang.yaml).
        settings = {"policy": "vllm", "max_num_seqs": "1024"}
        return settings, "SGLang: chunked prefill, {max_num_seqs} seqs, {max_num_batched_tokens}"
    if "tensorrt-llm" in engine:
        # TensorRT-LLM's defaults: the GUARANTEED_NO_EVICT capacity policy (= no_evict), whole
        # prompts (enable_chunked_prefill False), max_batch_size 2048, max_num_tokens 8192
        # (trtllm-bench rows: its own, scenario_for); KV from 0.9 of the free memory (preset).
        settings = {"policy": "no_evict", "max_num_seqs": "2048", "block_size": "32"}
        settings["max_num_batched_tokens"] = "8192"
        settings["enable_chunked_prefill"] = "false"
        settings["memory_fraction_of"] = "free"  # every release: a fraction of the free memory
        text = "TensorRT-LLM: no_evict, {prompts}, {max_num_seqs} seqs, {max_num_batched_tokens}"
        return settings, text
    if version is not None and version >= (0, 8):
        # vLLM V1: chunked prefill always on.
        settings = {"policy": "vllm", "max_num_seqs": "256", "max_num_batched_tokens": "8192"}
        return settings, "vLLM V1: chunked prefill"
    # vLLM V0 (0.6 and the older stacks of papers): chunked prefill turns itself on with a
    # 512-token budget only when max_model_len > 32K; otherwise whole prompts with a budget of
    # max(max_model_len, 2048).
    if max_model_len > 32768:
        settings = {"policy": "vllm", "max_num_seqs": "256", "max_num_batched_tokens": "512"}
        return settings, "vLLM V0, context > 32K: chunked prefill, {max_num_batched_tokens}"
    budget = str(max(max_model_len, 2048))
    settings = {"policy": "orca", "max_num_seqs": "256", "max_num_batched_tokens": budget}
    return settings, "vLLM V0, context ≤ 32K: whole prompts (orca), {max_num_batched_tokens}"


# trtllm-bench's byte sizes by quantization (bench/build/tuning.py BYTES_PER_ELEM).
_BENCH_BYTES = {"fp8": 1.0, "fp4": 0.5}
# The batch sizes the perf overview's llm_options.yml captures CUDA graphs for, padded.
BENCH_GRAPH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096, 8192)


def trtllm_bench_limits(
    catalog: str,
    hardware: str,
    dtype: str,
    kv_dtype: str,
    tp: int,
    pp: int,
    isl: int,
    osl: int,
    fraction: float = 0.9,
) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) that ``trtllm-bench throughput`` sets when the user
    gives neither: ``calc_engine_setting`` estimates how many requests of ISL + OSL tokens
    the KV cache holds (``fraction`` of all the GPUs' memory less the checkpoint's weights,
    every KV head counted at least once per TP rank) and ``finetune_setting`` rounds it up
    (bench/build/tuning.py); without chunked prefill (trtllm-bench's default)
    ``get_settings`` raises max_num_tokens to at least max ISL + max_batch_size
    (bench/benchmark/utils/general.py)."""
    from llmservingsim.catalog import load_device

    spec = load_model(catalog)
    device = load_device(hardware)
    gib = 1024.0**3
    byte_per_elem = _BENCH_BYTES.get(dtype, 2.0)
    byte_per_kv_elem = 1.0 if kv_dtype == "fp8" else 2.0
    kv_heads = max(tp, spec.num_kv_heads)
    byte_per_token = 2 * spec.num_layers * kv_heads * spec.head_dim * byte_per_kv_elem / gib
    engine_size = spec.num_params() * byte_per_elem / gib
    available = device.memory_gib * tp * pp - engine_size
    max_requests = available * fraction / (byte_per_token * (isl + osl))
    # finetune_setting (optimistic tuning)
    raw_bs = min(max_requests, 4096) / pp
    raw_token = min(raw_bs * (1 + isl / osl), 32768)
    if raw_bs < 256:
        max_bs = max(64, 32 * math.ceil(raw_bs / 32))
    elif raw_bs < 1024:
        max_bs = 128 * math.ceil(raw_bs / 128)
    else:
        max_bs = 256 * math.ceil(raw_bs / 256)
    if raw_token < 4096:
        max_tokens = max(2048, 256 * math.ceil(raw_token / 256))
    elif raw_token < 8192:
        max_tokens = 512 * math.ceil(raw_token / 512)
    else:
        max_tokens = 1024 * math.ceil(raw_token / 1024)
    return max_bs, max(max_tokens, isl + max_bs)


def bench_graph_sizes(max_batch_size: int, max_num_tokens: int) -> list[int]:
    """The decode batch sizes TensorRT-LLM's PyTorch backend captures from the perf overview's
    ``cuda_graph_config`` (``enable_padding: true``, :data:`BENCH_GRAPH_SIZES`): those up to
    min(max_batch_size, max_num_tokens), and that bound itself when a listed size was above
    it (model_engine.py ``_filter_cuda_graph_batch_sizes``)."""
    top = min(max_batch_size, max_num_tokens)
    sizes = [size for size in BENCH_GRAPH_SIZES if size <= top]
    if len(sizes) < len(BENCH_GRAPH_SIZES) and (not sizes or sizes[-1] != top):
        sizes.append(top)
    return sizes


def padded_decode_graphs(sizes: list[int]) -> list[str]:
    """``perf.cuda_graphs`` settings for decode-only graphs of ``sizes``, batches padded."""
    listed = ", ".join(map(str, sizes))
    return [
        "perf.cuda_graphs.mode=decode",
        "perf.cuda_graphs.padding=true",
        f"perf.cuda_graphs.max_capture_size={sizes[-1]}",
        f"perf.cuda_graphs.capture_sizes=[{listed}]",
    ]


def trtllm_graph_sizes(max_batch_size: int) -> list[int]:
    """The decode batch sizes TensorRT-LLM's PyTorch backend captures for ``cuda_graph_config``
    ``{enable_padding: true, max_batch_size: N}`` (llm_args.py
    ``CudaGraphConfig._generate_cuda_graph_batch_sizes``): 1, 2, 4, the multiples of 8 to 128,
    the powers of two from 256 below N, and N itself."""
    top = max(1, max_batch_size)
    sizes = [1, 2, 4, *range(8, 129, 8)]
    sizes += [2**i for i in range(8, math.ceil(math.log2(top)))] if top > 256 else []
    sizes = sorted(size for size in sizes if size <= top)
    if sizes[-1] != top:
        sizes.append(top)
    return sizes


def sglang_graph_sizes(max_bs: int) -> list[int]:
    """The decode batch sizes SGLang captures up to ``--cuda-graph-max-bs`` (server_args.py
    ``_generate_cuda_graph_batch_sizes``, no speculative decoding, padding on): 1, 2, 4, 8,
    12, multiples of 8 to 256, of 16 to 496, of 32 from 512."""
    sizes = [1, 2, 4, 8, 12, *range(16, 257, 8), *range(272, 512, 16), *range(512, max_bs + 1, 32)]
    return [size for size in sizes if size <= max_bs] or [max_bs]


def aic_generator_graph_sizes(max_batch_size: int) -> list[int]:
    """The decode CUDA-graph batch sizes AIConfigurator's generator writes for an aggregated
    TensorRT-LLM worker serving ``max_batch_size`` sequences (generator/rule_plugin/trtllm.rule
    ``agg_decode cuda_graph_batch_sizes``, with ``cuda_graph_enable_padding = true``)."""
    top = max(1, max_batch_size)
    sizes = {*range(1, 17), *range(16, 33, 4), *range(32, 65, 8), *range(64, 129, 16)}
    sizes |= {*range(128, 257, 32), *range(256, 513, 64)}
    sizes |= set(range(1 if top <= 8 else top - 8, top + 9))
    return sorted(sizes)


def aic_generator_trtllm_limits(max_batch_size: int, isl: int) -> tuple[int, int]:
    """``max_batch_size`` and ``max_num_tokens`` AIConfigurator's generator writes for an
    aggregated TensorRT-LLM worker whose configuration batches ``max_batch_size`` sequences of
    ``isl``-token prompts (generator/rule_plugin/trtllm.rule, in its order: ``agg_decode
    max_batch_size`` = 512 below 512, else twice the batch; ``agg max_num_tokens`` = that
    + ISL + 1500, rounded up to the 32-token KV block; the extra_engine_args templates pass
    both, with ``enable_chunked_prefill`` false)."""
    seqs = 512 if max_batch_size < 512 else 2 * max_batch_size
    return seqs, -(-(seqs + isl + 1500) // 32) * 32


def aic_generated(row: dict[str, str]) -> bool:
    """A point of NVIDIA's ``aic-auto-gap-analysis`` files: a deployment AIConfigurator's
    generator wrote (docs/accuracy.md, "Fixed-concurrency points"; no client recorded)."""
    return not row.get("client") and "aic-auto-gap-analysis" in row.get("source", "")


def engine_preset(row: dict[str, str]) -> str | None:
    """The ``engine:`` preset of the row's engine (its frontend and host model; the scheduler
    settings above still win): vLLM V1 at the preset version nearest below the row's,
    vLLM 0.6 and 0.7 (V0, the ``vllm-0.6`` preset: its CUDA graphs), TensorRT-LLM 1.x (the
    PyTorch backend the preset describes), SGLang; None otherwise (older stacks, TensorRT-LLM's
    pre-1.0 C++ runtime: nothing of theirs is measured)."""
    from llmservingsim.engine_presets import load_preset

    engine = row["engine"].lower()
    version = row_version(row)
    if "tensorrt-llm" in engine:
        return "trtllm" if version is not None and version >= (1, 0) else None
    if "sglang" in engine:
        return "sglang"
    if "vllm" not in engine or version is None or version < (0, 6):
        return None
    if version < (0, 8):
        return "vllm-0.6"
    known = sorted(_version(str(v)) or (0,) for v in load_preset("vllm")["versions"])
    below = [v for v in known if v <= version] or known[:1]
    return "vllm@" + ".".join(str(part) for part in below[-1])


def kernel_fusion(row: dict[str, str]) -> list[str]:
    """``perf.fusion`` settings for a row that takes no preset (:func:`engine_preset`) but whose
    engine launches the same kernels as one: TensorRT-LLM's pre-1.0 C++ runtime and rows of no
    stated version (its GPT attention plugin / op applies RoPE; the fp8 quantization and the
    residual add run inside the norm and activation) fuse what the ``trtllm`` preset fuses,
    the vLLM V0 releases before 0.6 (the same fused_add_rms_norm / scaled_fp8_quant layers)
    what ``vllm-0.6`` does (docs/engines.md, "Kernel fusion")."""
    from llmservingsim.engine_presets import load_preset

    if engine_preset(row) is not None:
        return []  # the preset sets it
    engine = row["engine"].lower()
    version = row_version(row)
    if "tensorrt-llm" in engine:  # every release: RoPE in the attention plugin / op
        preset = "trtllm"
    elif "vllm" in engine and version is not None and version < (0, 8):
        preset = "vllm-0.6"
    else:
        return []
    fusion: dict[str, bool] = load_preset(preset)["defaults"]["perf"]["fusion"]
    return [f"perf.fusion.{key}={str(value).lower()}" for key, value in sorted(fusion.items())]


def _dtype(text: str) -> tuple[str, str]:
    low = text.lower()
    if "fp8" in low:
        # FP8 checkpoints (NVIDIA's, APEX+'s "fp8 weights + fp8 KV") quantize the KV cache too.
        return "fp8", "fp8"
    if "fp4" in low:
        # NVFP4 checkpoints keep an fp8 KV cache.
        return "fp4", "fp8"
    for dtype in ("bf16", "fp16", "fp32", "int8", "int4"):
        if dtype in low:
            return dtype, "auto"
    return "bf16", "auto"


def _requests(row: dict[str, str], rows: list[dict[str, str]]) -> tuple[int, str]:
    """The row's count; when blank, the count a verified row of the same benchmark (same
    lengths and rate) used."""
    count = number(row["num_requests"])
    if count is not None:
        return int(count), ""
    for other in rows:
        same = all(other[k] == row[k] for k in ("input_len", "output_len", "request_rate_rps"))
        if same and other["num_requests"] and is_verified(other):
            return int(float(other["num_requests"])), f"num_requests blank: {other['id']}'s used"
    return DEFAULT_REQUESTS, f"num_requests blank: {DEFAULT_REQUESTS} used"


def _length(length: int, protocol: ClientProtocol) -> tuple[str, str]:
    """The ``workload.*_len`` distribution of a row's length under ``protocol``, and its text."""
    if protocol.range_ratio is None:
        return f"{{dist: fixed, value: {length}}}", str(length)
    low = max(1, int(length * protocol.range_ratio))
    return f"{{dist: uniform, min: {low}, max: {length}}}", f"{low}–{length}"


def _closed_loop(
    clients: int, isl: int, osl: int, kind: str
) -> tuple[list[str], str, list[str]] | str:
    """A fixed-concurrency point: its client's closed loop, as its kind of client ran it."""
    if kind and kind not in CLIENTS:
        return f"benchmark client '{kind}' has no protocol (known: {', '.join(sorted(CLIENTS))})"
    protocol = CLIENTS[kind] if kind else UNRECORDED_CLIENT
    count = clients * protocol.requests_per_client
    input_len, input_text = _length(isl, protocol)
    output_len, output_text = _length(osl, protocol)
    sets = [
        "workload.kind=synthetic",
        f"workload.num_requests={count}",
        f"workload.arrival={{process: closed, concurrency: {clients}}}",
        f"workload.input_len={input_len}",
        f"workload.output_len={output_len}",
    ]
    lengths = "fixed" if protocol.range_ratio is None else "uniform"
    text = (
        f"{lengths} {input_text}/{output_text}, {clients} clients × "
        f"{protocol.requests_per_client} (closed loop, {protocol.name})"
    )
    if protocol is UNRECORDED_CLIENT:
        note = (
            f"benchmark client not recorded: fixed lengths, {protocol.requests_per_client} "
            "requests per client, all clients from t = 0 (no stagger invented)"
        )
    else:
        note = f"client protocol: {protocol.source}"
    return sets, text, [note]


def _workload(
    row: dict[str, str], data_dir: Path, rows: list[dict[str, str]]
) -> tuple[list[str], str, list[str]] | str:
    wfile = row.get("workload_file", "")
    if wfile:
        for base in (data_dir, data_dir.parent):
            path = base / wfile
            if path.is_file():
                fmt = "csv" if path.suffix == ".csv" else "jsonl"
                sets = ["workload.kind=trace", f"workload.trace={{path: '{path}', format: {fmt}}}"]
                return sets, f"replay {path.name}", []
        return f"workload file {wfile} not found under {data_dir}"
    isl, osl = number(row["input_len"]), number(row["output_len"])
    if isl is None or osl is None:
        return "no input/output length and no workload file"
    if row.get("concurrency"):
        return _closed_loop(int(row["concurrency"]), int(isl), int(osl), row.get("client", ""))
    count, note = _requests(row, rows)
    notes = [note] if note else []
    if count > MAX_REQUESTS:
        notes.append(f"num_requests capped {count} → {MAX_REQUESTS}")
        count = MAX_REQUESTS
    rate = number(row["request_rate_rps"])
    if rate is None or math.isinf(rate):
        arrival, rate_text = ["workload.arrival.rate=.inf"], "all at t=0"
    else:
        arrival = ["workload.arrival.process=poisson", f"workload.arrival.rate={rate:g}"]
        rate_text = f"Poisson {rate:g}/s"
        notes.append("fixed lengths stand in for the source's length distribution")
    sets = [
        "workload.kind=synthetic",
        f"workload.num_requests={count}",
        *arrival,
        f"workload.input_len={{dist: fixed, value: {int(isl)}}}",
        f"workload.output_len={{dist: fixed, value: {int(osl)}}}",
    ]
    return sets, f"fixed {int(isl)}/{int(osl)} ×{count} {rate_text}", notes


# llm-compressor's FP8_DYNAMIC scheme (Red Hat / Neural Magic "-FP8-dynamic" checkpoints):
# per-channel fp8 weight scales and per-token dynamic activation scales, the per-tensor kernels.
FP8_DYNAMIC = re.compile(r"fp8[-_]dynamic", re.IGNORECASE)


def published_fp8_scaling(model: str) -> tuple[str, str]:
    """``fp8_scaling`` of a run whose published model name is ``model``, and why: tensor for
    an FP8_DYNAMIC checkpoint, else auto (the catalog model's published FP8 checkpoints: its
    config's ``llmservingsim.fp8_checkpoint``, else block for MoE models, docs/models.md)."""
    if FP8_DYNAMIC.search(model):
        return "tensor", "a compressed-tensors FP8_DYNAMIC checkpoint (per-channel weight scales)"
    return "auto", ""


def scenario_for(row: dict[str, str], data_dir: Path, rows: list[dict[str, str]]) -> Scenario | str:
    """The simulation that reproduces ``row``, or why none can be built from it."""
    if row["metric"] not in METRICS:
        return f"unknown metric '{row['metric']}'"
    low = row["model"].lower()
    rule = next((r for r in MODELS if re.search(r.pattern, low)), None)
    if rule is None:
        return f"model '{row['model']}' is not mapped to a catalog model"
    hardware = hardware_for(row["hardware"])
    if hardware is None:
        return f"hardware '{row['hardware']}' is not mapped to a catalog device"
    gpus, tp = number(row["num_gpus"]), number(row["tensor_parallel"])
    pp = number(row["pipeline_parallel"]) or 1
    if tp is None:
        return f"tensor_parallel not given for {int(gpus or 0)} GPUs: instance layout unknown"
    dp_match = re.search(r"attention_dp=(\d+)", row["notes"])
    dp = int(dp_match[1]) if dp_match else 1  # attention data-parallel ranks (MoE, lockstep)
    if row.get("client") == "inferencex" and tp * pp * dp > NODE_GPUS:
        # InferenceX's aggregated launch scripts are single-node; its multi-node runs (GB200
        # NVL72, 12-72 GPUs) are Dynamo disaggregated deployments, which the database dump
        # records as agg with every GPU in tp_size (TP 12, 20, 28, 36 ... : no TP a
        # 128-head model can have).
        return (
            f"an InferenceX point recorded as aggregated serving on {int(tp * pp * dp)} GPUs: "
            f"its aggregated launch scripts run on one {NODE_GPUS}-GPU node, its multi-node "
            "runs are disaggregated deployments whose layout the dump does not record"
        )
    instances = int(gpus // (tp * pp * dp)) if gpus else 1
    workload = _workload(row, data_dir, rows)
    if isinstance(workload, str):
        return workload
    work_sets, work_text, notes = workload
    dtype, kv_dtype = _dtype(row["dtype"])
    if dtype == "fp4" and MXFP4_MODELS.search(low):
        dtype, kv_dtype = "mxfp4", "auto"
        notes.append(
            "MXFP4 experts: dtype mxfp4 (MXFP8 activations with FP4 tensor cores, else "
            "weight-only), bf16 KV cache (docs/models.md)"
        )
    ep_match = re.search(r"moe_ep=(\d+)", row["notes"])
    ep = int(ep_match[1]) if ep_match else 1
    context = rule.published_context or load_model(rule.catalog).max_context
    launch = LAUNCH_FLAGS.search(row["notes"])
    flags = launch[1] if launch else ""
    launch_sets: list[str] = []
    max_len = FLAG_MAX_MODEL_LEN.search(flags)
    if max_len:
        # vLLM rejects longer requests and (V0) decides chunked prefill from this length.
        context = int(max_len[1])
        launch_sets.append(f"max_model_len={context}")
    if FLAG_NO_CUSTOM_ALLREDUCE.search(flags):
        launch_sets.append("cluster.network.custom_allreduce=false")
    settings, engine_text = engine_settings(row, context)
    from_notes: list[str] = []
    for pattern, key in NOTE_SETTINGS:
        match = re.search(pattern, row["notes"])
        if match:
            settings[key.split(".")[1]] = match[1]
            from_notes.append(f"{key.split('.')[1]} {match[1]}")
    if launch_sets:
        notes.append("launch script: " + ", ".join(launch_sets))
    steps = MULTI_STEP.search(f"{row['engine_version']} {row['notes']}")
    if steps:
        settings["num_scheduler_steps"] = steps[1]
    low_engine = row["engine"].lower()
    engine_name = (
        "trtllm" if "tensorrt" in low_engine else "sglang" if "sglang" in low_engine else "vllm"
    )
    recipes = recipe_settings(row, engine_name, rule.catalog, hardware, dtype, int(tp), dp)
    from_recipes: set[str] = set()  # the settings a launch recipe states: the run's own
    for recipe in recipes:
        for setting in recipe.settings:
            key, value = setting.split("=", 1)
            settings[key] = value
            from_recipes.add(key)
        notes.append(f"recipe: {recipe.source}")
    concurrency = int(row["concurrency"]) if row.get("concurrency") else None
    graphs: list[str] = []
    graph_max_bs = [recipe.graph_max_bs for recipe in recipes if recipe.graph_max_bs]
    if engine_name == "sglang" and graph_max_bs:
        sizes = sglang_graph_sizes(graph_max_bs[-1])
        graphs = padded_decode_graphs(sizes)
        notes.append(f"SGLang recipe: decode graphs up to --cuda-graph-max-bs {sizes[-1]}")
    isl, osl, rate = number(row["input_len"]), number(row["output_len"]), row["request_rate_rps"]
    preset = engine_preset(row)
    # A fixed-concurrency point under TensorRT-LLM's PyTorch backend (the trtllm preset), and
    # the clients one attention rank of it serves.
    served = engine_name == "trtllm" and preset == "trtllm" and concurrency is not None
    per_rank = -(-(concurrency or 0) // max(dp, 1))
    if served and isl and aic_generated(row):
        max_bs, max_tokens = aic_generator_trtllm_limits(per_rank, int(isl))
        settings["max_num_seqs"], settings["max_num_batched_tokens"] = str(max_bs), str(max_tokens)
        from_recipes.add("max_num_seqs")  # the deployment's own per-rank cap: kept as written
        notes.append(
            "AIConfigurator-generated TensorRT-LLM deployment: max_batch_size "
            f"{max_bs}, max_num_tokens {max_tokens} (its trtllm.rule)"
        )
    bench = engine_name == "trtllm" and concurrency is None and not row.get("workload_file")
    if bench and isl and osl and math.isinf(number(rate) or math.inf):
        # trtllm-bench throughput (the perf overview's max-throughput rows): its own
        # max_batch_size / max_num_tokens from the lengths and the KV memory it estimates.
        max_bs, max_tokens = trtllm_bench_limits(
            rule.catalog, hardware, dtype, kv_dtype, int(tp), int(pp), int(isl), int(osl)
        )
        settings["max_num_seqs"], settings["max_num_batched_tokens"] = str(max_bs), str(max_tokens)
        engine_text = (
            "TensorRT-LLM (trtllm-bench): no_evict, {prompts}, {max_num_seqs} seqs, "
            "{max_num_batched_tokens}"
        )
        notes.append(
            "trtllm-bench's max_batch_size / max_num_tokens heuristic (bench/build/tuning.py, "
            "bench/benchmark/utils/general.py)"
        )
        if preset == "trtllm":  # the PyTorch backend: the overview's llm_options
            sizes = bench_graph_sizes(max_bs, max_tokens)
            graphs = padded_decode_graphs(sizes)
    elif engine_name == "trtllm" and isl and isl >= int(settings["max_num_batched_tokens"]):
        # Without chunked prefill TensorRT-LLM refuses a prompt above max_num_tokens (and runs
        # one of exactly that size only beside no generation request): a served run with such
        # prompts had chunking on (or a budget its row does not record).
        settings["enable_chunked_prefill"] = "true"
        notes.append(
            f"chunked prefill: prompts of {int(isl)} tokens reach max_num_tokens "
            f"{settings['max_num_batched_tokens']}, which TensorRT-LLM only runs chunked"
        )
    if served:
        if row.get("client") == "inferencex":
            # Every InferenceX TensorRT-LLM recipe sets cuda_graph_config enable_padding: true
            # with max_batch_size at or above per_rank ($CONC, $CONC / 8 under attention DP,
            # 128, 512, 1024): captured up to that count, a batch pads as it would under the
            # recipe's larger bound wherever both lists agree (the multiples of 8 to 128, the
            # powers of two above).
            sizes = trtllm_graph_sizes(per_rank)
            graphs = padded_decode_graphs(sizes)
            notes.append(
                "InferenceX TensorRT-LLM recipes: cuda_graph_config enable_padding true, "
                f"decode graphs up to {sizes[-1]} sequences"
            )
        elif aic_generated(row):
            # NVIDIA's aic-auto-gap-analysis files measure AIConfigurator-generated
            # deployments, whose TensorRT-LLM rule pads decode graphs (docs/accuracy.md,
            # "Fixed-concurrency points").
            graphs = padded_decode_graphs(aic_generator_graph_sizes(per_rank))
            notes.append("AIConfigurator-generated TensorRT-LLM deployment: padded decode graphs")
    if (
        concurrency is not None
        and concurrency > int(settings["max_num_seqs"])
        and "max_num_seqs" not in from_recipes  # a recipe's cap queues the other clients
    ):
        settings["max_num_seqs"] = str(concurrency)  # the server admits every client
    settings.setdefault("block_size", "16")
    settings.setdefault("gpu_memory_utilization", "0.9")
    if rule.note:
        notes.append(rule.note)
    scaling: list[str] = []
    fp8_scaling, why = published_fp8_scaling(row["model"])
    if dtype == "fp8" and fp8_scaling != "auto":
        scaling.append(f"fp8_scaling={fp8_scaling}")
        notes.append(f"fp8 weights scaled per {fp8_scaling}: {why}")
    if preset:
        notes.append(f"engine {preset}: its preset's frontend and host model (docs/engines.md)")
        # Prefix caching only where the row says the run had it (an optional setting below).
        settings.setdefault("enable_prefix_caching", "false")
    overrides = [
        *([f"engine={preset}"] if preset else []),
        f"model={rule.catalog}",
        f"hardware={hardware}",
        f"dtype={dtype}",
        f"kv_dtype={kv_dtype}",
        *scaling,
        f"cluster.tensor_parallel={int(tp)}",
        *([f"cluster.pipeline_parallel={int(pp)}"] if pp > 1 else []),
        *([f"cluster.instances={instances}"] if instances > 1 else []),
        *([f"cluster.expert_parallel={ep}"] if ep > 1 else []),
        *([f"cluster.data_parallel={dp}"] if dp > 1 else []),
        *(f"scheduler.{k}={v}" for k, v in sorted(settings.items())),
        *kernel_fusion(row),
        *graphs,
        *launch_sets,
        *work_sets,
    ]
    optional = []
    if PREFIX_CACHING_ON.search(row["notes"]):
        optional.append("scheduler.enable_prefix_caching=true")
    layout = (f"{instances}×" if instances > 1 else "") + (f"DP{dp}·" if dp > 1 else "")
    label = (
        f"{rule.catalog} · {hardware} · {layout}TP{int(tp)}{f'·PP{int(pp)}' if pp > 1 else ''}"
        f" · {dtype}{'' if kv_dtype in ('auto', dtype) else '/kv ' + kv_dtype} · {work_text}"
    )
    budget = settings.get("max_num_batched_tokens")
    engine_text = engine_text.format(
        max_num_seqs=settings["max_num_seqs"],
        max_num_batched_tokens=f"{budget} tok/step"
        if budget
        else "the preset's chunked_prefill_size",
        prompts="chunked" if settings.get("enable_chunked_prefill") == "true" else "whole prompts",
    )
    engine = f"{engine_text}; block {settings['block_size']}, util "
    engine += settings["gpu_memory_utilization"]
    if settings.get("memory_fraction_of") == "free":
        engine += " of the free memory"
    if from_notes:
        engine += f"; from the row's notes: {', '.join(from_notes)}"
    if steps:
        engine += f"; multi-step: --num-scheduler-steps {steps[1]}"
    if recipes:
        engine += "; recipe: " + ", ".join(s for r in recipes for s in r.settings)
    return Scenario(overrides, optional, label, engine, notes, engine_name, concurrency)
