"""Reference sets beyond ``published_points.csv``, turned into rows of the same columns.

* ``aiconfigurator``: NVIDIA AIConfigurator's ``systems/silicon_sample.csv`` (measured TTFT and
  TPOT of aggregated serving at a fixed client concurrency, several engines and GPUs), read
  from the installed ``aiconfigurator-core`` package. Each measured point becomes a TTFT and a
  TPOT row; the simulation runs the benchmark client's closed loop (``concurrency`` clients)
  as the kind of source the point names ran it (``client``; validate/scenario.py CLIENTS).
* ``blis``: ``shared/data/reference/blis_trainval/groundtruth.csv``, real vLLM v0.15.1 runs
  measured per stage (data README §10). The workload is rebuilt as the benchmark's client
  generated it: a pool of 100 fixed prompts (10 system prompts × 10 questions) cycled in order,
  Poisson arrivals at each stage's rate for its duration, back to back, each request with the
  output length its stage's metrics record (``blis_stage_outputs``); it is written as a
  JSON-lines trace with token ids so prefix caching sees the shared system prompts and the
  repeating prompts. (A workload-stage feature is being built separately; this trace is the
  same workload from what exists now.)
* ``apexplus``: the vLLM 0.6.0 runs of Microsoft's APEX+ (``microsoft/apex_plus``,
  ``vllm/results/*_validation_*.txt``): Llama-3.1-70B bf16 and Mistral-Large-2407 fp8 on
  8×H100 SXM, LMSYS-chat and creation traces at ~0.25 and ~0.5 req/s, one TP8 instance, TP4
  and TP2 instances, and the requests each instance of a DP2×TP4 or DP4×TP2 split served. The
  measured server-side TTFT and TPOT means ship with the package
  (``data/reference/apexplus_vllm060.csv``, with the launch script and checkpoint that
  ``vllm/llama.sh`` / ``vllm/mistral.sh`` ran for each, and its vLLM flags); the
  served workloads are the shared data folder's ``traces/replay`` files (data README §8), so
  the set is there only with that folder.

Extra row keys (strings, empty when unused): ``set`` (the reference set), ``concurrency``
(closed-loop clients), ``client`` (the kind of benchmark client that measured the row, a key of
validate/scenario.py CLIENTS; empty: not recorded), ``stage`` (blis stage index, −1 = the whole
run) and ``stage_window`` (its arrival window, ``start,end`` seconds).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmservingsim.errors import UserError
from llmservingsim.validate.reference import REQUIRED

SETS = ("published", "aiconfigurator", "blis", "apexplus")
SILICON = Path("systems") / "silicon_sample.csv"
BLIS = Path("reference") / "blis_trainval" / "groundtruth.csv"
APEXPLUS = Path(__file__).resolve().parent.parent / "data" / "reference" / "apexplus_vllm060.csv"
APEXPLUS_REPLAYS = Path("traces") / "replay"
# The checkpoints APEX+ served (its launch scripts' --model) and the precision they ran in; a
# run's own ``checkpoint`` column, where the study's run scripts name one, takes precedence.
APEXPLUS_MODELS = {
    "llama-3.1-70b": ("meta-llama/Meta-Llama-3.1-70B", "bf16"),
    "mistral-large-2407": ("mistralai/Mistral-Large-Instruct-2407 (123B)", "fp8 weights + fp8 KV"),
}
APEXPLUS_LAYOUT = re.compile(r"_(?:(\d)dp)?(\d)tp(?:_fp8)?(?:_\d)?$")

# AIConfigurator system -> the hardware text validate/scenario.py maps to a catalog device.
SILICON_HARDWARE = {
    "h100_sxm": "H100 SXM",
    "h200_sxm": "H200",
    "b200_sxm": "B200",
    "gb200": "GB200",
}
SILICON_ENGINE = {"trtllm": "TensorRT-LLM", "vllm": "vLLM", "sglang": "SGLang"}
# Points per (system, engine, model, precision, layout) group by default: the sample has 5,221
# points; a few per group keep `validate` to minutes while covering every group.
DEFAULT_PER_GROUP = 2
# silicon_data_source kinds whose benchmark client is known. SemiAnalysis InferenceX's nightly
# runs: its database dumps (``db-dump/<date>; config_id=…; workflow_run_id=…; <image>``, the
# GitHub workflow run that measured the point) and its dated result exports
# (``source_file=<YYYY-MM-DD>.csv; model=…``). Both hold exactly InferenceX's length grid
# (1024/1024, 1024/8192, 8192/1024). The other kinds (NVIDIA's gap-analysis files
# ``source_file=/…/aic-auto-gap-analysis/…``, the per-model ``…-gap-analysis.csv`` files) do not
# record their client.
SILICON_CLIENTS = ((re.compile(r"db-dump/|source_file=\d{4}-\d{2}-\d{2}\.csv;"), "inferencex"),)
BLIS_PROMPT_GROUPS = 10  # README §10: the client cycled 10 groups × 10 prompts
BLIS_PROMPTS_PER_GROUP = 10


def silicon_path() -> Path | None:
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SILICON
    return path if path.is_file() else None


def blis_path(data_dir: Path) -> Path | None:
    path = data_dir / BLIS
    return path if path.is_file() else None


def _blank_row() -> dict[str, str]:
    row = dict.fromkeys(REQUIRED, "")
    row.update(set="", concurrency="", client="", stage="", stage_window="", workload_file="")
    return row


def silicon_client(source: str) -> str:
    """The kind of benchmark client a ``silicon_data_source`` names ("" when not recorded)."""
    text = source.strip()
    return next((kind for pattern, kind in SILICON_CLIENTS if pattern.match(text)), "")


def _int(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


# An InferenceX point's id names the recipe's layout: ``…_tp<N>[_0]_ep<M>…`` (``TP`` and
# ``EP_SIZE`` of its launch script, one node of N GPUs).
INFERENCEX_LAYOUT = re.compile(r"_tp(\d+)(?:_0)?_ep(\d+)")
NODE_GPUS = 8  # GPUs of the node InferenceX's single-node launch scripts run on


def silicon_layout(p: dict[str, str]) -> tuple[int, int, int]:
    """(tensor parallel, attention data parallel, expert parallel) of a point as it ran.

    AIConfigurator's columns count GPUs as tp_size × attention_dp_size = moe_tp_size ×
    moe_ep_size. The InferenceX database dump wrote some expert-parallel points with that
    product in tp_size (or attention_dp_size) although the run had moe_tp_size GPUs: the
    recipe's ``TP`` (``--tp``/``--tp_size``, the GPU count of the single-node launch) and
    ``EP_SIZE``. Every InferenceX point whose id names its layout (``…_tp4_ep4…``) and has
    moe_tp_size and moe_ep_size both above 1 has tp_size or attention_dp_size = their product
    and the id's TP = moe_tp_size (194 points in aiconfigurator-core 0.12); such points run on
    moe_tp_size GPUs, the attention tensor-parallel over them, or data-parallel when the dump
    says attention DP (the recipe's ``DP_ATTENTION``), and the experts split EP = moe_ep_size
    ways. A point whose id does not name its layout is read so only where the written count
    exceeds the 8 GPUs of one node (123 points); other points keep their columns."""
    tp = _int(p["tp_size"]) or 1
    dp = _int(p["attention_dp_size"]) or 1
    ep = _int(p["moe_ep_size"]) or 1
    moe_tp = _int(p["moe_tp_size"]) or 1
    if silicon_client(p["silicon_data_source"]) == "inferencex" and moe_tp > 1 and ep > 1:
        named = INFERENCEX_LAYOUT.search(p["id"])
        # An id without a layout: only where the written GPU count exceeds one node of the
        # single-node launch scripts (8 GPUs); below, AIConfigurator's own reading stands.
        if (named is None and tp * dp > NODE_GPUS) or (
            named is not None and (int(named[1]), int(named[2])) == (moe_tp, ep)
        ):
            if tp == moe_tp * ep and dp == 1:
                return moe_tp, 1, ep
            if dp == moe_tp * ep and tp == 1:
                return 1, moe_tp, ep
    return tp, dp, ep


def silicon_rows(path: Path, per_group: int | None = DEFAULT_PER_GROUP) -> list[dict[str, str]]:
    """TTFT and TPOT rows of the aggregated-serving points (``mode == agg``) of one layout
    the simulator can express (no pipeline parallelism; attention data parallelism only with
    the experts split over every device, EP = DP × TP), at most ``per_group`` points per group
    (evenly spaced by id; None: all)."""
    try:
        with path.open(newline="") as fh:
            points = list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    groups: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for p in points:
        if p.get("mode") != "agg" or p.get("system") not in SILICON_HARDWARE:
            continue
        if (_int(p.get("pp_size", "")) or 1) != 1:
            continue
        tp, dp, ep = silicon_layout(p)
        if dp > 1 and ep != dp * tp:
            continue  # experts tensor-parallel across DP ranks: not expressible
        key = (p["system"], p["backend"], p["model_path"], p["precision"], str(tp), str(dp))
        groups[key].append(p)
    rows: list[dict[str, str]] = []
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda p: p["id"])
        if per_group is not None and len(members) > per_group:
            step = len(members) / per_group
            members = [members[int(i * step)] for i in range(per_group)]
        for p in members:
            tp, dp, ep = silicon_layout(p)
            # With attention DP, batch_size is per rank: the clients are batch_size × the
            # written attention_dp_size (also where that is the moe_tp × moe_ep product;
            # the point ids' ``c<N>`` say so for 148 of the 149 DP points run).
            concurrency = (_int(p["batch_size"]) or 1) * (_int(p["attention_dp_size"]) or 1)
            base = _blank_row()
            base.update(
                set="aiconfigurator",
                source="AIConfigurator silicon_sample.csv: " + p["silicon_data_source"],
                engine=SILICON_ENGINE.get(p["backend"], p["backend"]),
                engine_version=p["backend_version"],
                hardware=SILICON_HARDWARE[p["system"]],
                num_gpus=str(tp * dp),
                tensor_parallel=str(tp),
                pipeline_parallel="1",
                model=p["model_path"],
                dtype=p["precision"],
                input_len=p["isl"],
                output_len=p["osl"],
                request_rate_rps="",
                num_requests="",
                concurrency=str(concurrency),
                client=silicon_client(p["silicon_data_source"]),
                notes=f"moe_ep={ep}; "
                + (f"attention_dp={dp}; " if dp > 1 else "")
                + f"concurrency {concurrency}",
            )
            for metric, column in (
                ("ttft_mean", "silicon_ttft_ms"),
                ("tpot_mean", "silicon_tpot_ms"),
            ):
                if not p.get(column):
                    continue
                row = dict(base)
                row.update(id=f"aic_{p['id']}_{metric}", metric=metric, value=p[column], unit="ms")
                rows.append(row)
    return rows


def _stages(text: str) -> list[tuple[float, float]]:
    """``2.5rps x 600s;6.0rps x 600s`` -> [(rate, seconds), ...]."""
    stages = []
    for part in text.split(";"):
        rate, _, duration = part.partition("x")
        stages.append(
            (float(rate.strip().removesuffix("rps")), float(duration.strip().removesuffix("s")))
        )
    return stages


def blis_arrivals(
    exp: dict[str, str], seed: int = 0, stage_seconds: float | None = None
) -> list[tuple[float, int]]:
    """(arrival seconds, stage index) of every request of the experiment: Poisson arrivals
    at each stage's rate, stages back to back, each cut to its first ``stage_seconds``
    when given (the frontend fit simulates that much of every stage)."""
    rng = np.random.default_rng(seed)
    arrivals: list[tuple[float, int]] = []
    start = 0.0
    for index, (rate, duration) in enumerate(_stages(exp["stages"])):
        span = duration if stage_seconds is None else min(duration, stage_seconds)
        t = start
        while True:
            t += float(rng.exponential(1.0 / rate))
            if t >= start + span:
                break
            arrivals.append((t, index))
        start += span
    return arrivals


def blis_stage_outputs(records: list[dict[str, str]]) -> dict[str, list[int]]:
    """Each experiment's output length per stage (by stage index) as its measured metrics
    give it: the benchmark's ITL is (mean E2E − mean TTFT) / (mean output − 1) (data README
    §10), so a stage's mean output is (E2E − TTFT) / ITL + 1, rounded. The profile's
    ``output_len`` is what the client asked for; the runs returned 0.3–2 % fewer tokens on
    average, and the Llama-2-7B runs 23 % (experiment 67) and 21 % (20260217) fewer, which
    only these metrics record. Stages without the three metrics keep ``output_len``."""
    by_exp: dict[str, dict[int, int]] = defaultdict(dict)
    asked: dict[str, int] = {}
    stages: dict[str, int] = {}
    for rec in records:
        exp = rec["exp_id"]
        asked[exp] = int(rec["output_len"])
        stages[exp] = len(_stages(rec["stages"]))
        index = int(rec["stage_index"])
        try:
            e2e, ttft, itl = (float(rec[k]) for k in ("e2e_mean_ms", "ttft_mean_ms", "itl_mean_ms"))
        except (KeyError, ValueError):
            continue
        if index >= 0 and itl > 0 and e2e > ttft:
            by_exp[exp][index] = max(1, round((e2e - ttft) / itl + 1))
    return {exp: [by_exp[exp].get(i, asked[exp]) for i in range(stages[exp])] for exp in asked}


def blis_trace(exp: dict[str, str], outputs: list[int], folder: Path, seed: int = 0) -> Path:
    """The experiment's requests as an LLMServingSim JSON-lines trace (token ids, so prefix
    caching sees what the real server saw; ``outputs``: each stage's output length, from
    :func:`blis_stage_outputs`); written once per experiment."""
    shape = "|".join(exp[k] for k in ("exp_id", "system_prompt_len", "question_len", "stages"))
    digest = hashlib.sha1(f"{shape}|{outputs}|{seed}".encode()).hexdigest()[:12]
    path = folder / f"blis_{exp['exp_id']}_{digest}.jsonl"  # the workload's shape names it
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for i, (arrival, stage) in enumerate(blis_arrivals(exp, seed)):
            ids = blis_prompt_ids(exp, i)
            record = {
                "input_toks": len(ids),
                "output_toks": outputs[stage],
                "arrival_time_ns": round(arrival * 1e9),
                "input_tok_ids": ids,
            }
            fh.write(json.dumps(record) + "\n")
    tmp.replace(path)
    return path


def blis_prompt_ids(exp: dict[str, str], i: int) -> list[int]:
    """Token ids of request ``i``: the pool's prompts cycled in order, the system prompt
    shared by the prompts of a group."""
    system_len, question_len = int(exp["system_prompt_len"]), int(exp["question_len"])
    pool = BLIS_PROMPT_GROUPS * BLIS_PROMPTS_PER_GROUP
    prompt = i % pool
    group = prompt // BLIS_PROMPTS_PER_GROUP
    ids = [1_000_000 * (group + 1) + j for j in range(system_len)]
    return ids + [1_000_000 * (pool + prompt + 1) + j for j in range(question_len)]


BLIS_METRICS = (
    ("ttft_mean", "ttft_mean_ms"),
    ("ttft_p90", "ttft_p90_ms"),
    ("ttft_p99", "ttft_p99_ms"),
    ("e2e_mean", "e2e_mean_ms"),
    ("e2e_p90", "e2e_p90_ms"),
    ("e2e_p99", "e2e_p99_ms"),
    ("itl_mean", "itl_mean_ms"),
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


def blis_rows(path: Path, trace_dir: Path | None = None) -> list[dict[str, str]]:
    """One row per experiment × stage × metric; every experiment replays its generated trace."""
    folder = trace_dir or Path(tempfile.gettempdir()) / "llmservingsim-validate"
    records = _read_csv(path)
    rows: list[dict[str, str]] = []
    traces: dict[str, Path] = {}
    outputs = blis_stage_outputs(records)
    for rec in records:
        tp = rec["tp"] or "1"
        dtype = rec["precision"].lower()
        notes = ["prefix caching on"]
        if rec["max_num_seqs"]:
            notes.append(f"max_num_seqs={rec['max_num_seqs']}")
        if rec["max_num_batched_tokens"]:
            notes.append(f"max_num_batched_tokens={rec['max_num_batched_tokens']}")
        if rec["gpu_mem_util"]:
            notes.append(f"gpu_mem_util {rec['gpu_mem_util']}")
        for metric, column in BLIS_METRICS:
            if not rec.get(column):
                continue
            if rec["exp_id"] not in traces:
                traces[rec["exp_id"]] = blis_trace(rec, outputs[rec["exp_id"]], folder)
            row = _blank_row()
            stage = rec["stage_index"]
            if stage != "-1":
                spans = _stages(rec["stages"])
                start = sum(d for _, d in spans[: int(stage)])
                row["stage_window"] = f"{start:g},{start + spans[int(stage)][1]:g}"
            row.update(
                id=f"blis_{rec['folder']}_stage{stage}_{metric}",
                set="blis",
                source="BLIS sim-to-real trainval (vLLM v0.15.1), data README §10",
                engine="vLLM",
                engine_version="0.15.1",
                hardware=rec["hardware"],
                num_gpus=tp,
                tensor_parallel=tp,
                pipeline_parallel="1",
                model=rec["model"],
                dtype="fp8" if "fp8" in dtype else "fp16" if "16" in dtype else dtype,
                input_len=str(int(rec["system_prompt_len"]) + int(rec["question_len"])),
                output_len=rec["output_len"],
                metric=metric,
                value=rec[column],
                unit="ms",
                stage=stage,
                workload_file=str(traces[rec["exp_id"]]),
                notes="; ".join(notes),
            )
            rows.append(row)
    return rows


def apexplus_rows(data_dir: Path, path: Path = APEXPLUS) -> list[dict[str, str]]:
    """A TTFT and a TPOT row per APEX+ run whose served workload is in ``data_dir``'s
    ``traces/replay`` (none without the shared data folder)."""
    folder = data_dir / APEXPLUS_REPLAYS
    if not folder.is_dir():
        return []
    records = _read_csv(path)
    rows: list[dict[str, str]] = []
    for rec in records:
        replay = folder / f"{rec['replay']}.csv"
        layout = APEXPLUS_LAYOUT.search(rec["replay"])
        model = next((m for m in APEXPLUS_MODELS if rec["replay"].startswith(m + "_")), None)
        if not replay.is_file() or layout is None or model is None:
            continue
        checkpoint, precision = APEXPLUS_MODELS[model]
        checkpoint = rec.get("checkpoint") or checkpoint
        tp = layout[2]
        notes = [f"instance {layout[1]} of a DP{layout[1]} split" if layout[1] else "one instance"]
        if rec["flags"]:
            notes.append(f"launch flags: {rec['flags']} ({rec['script']})")
        else:
            notes.append("launch flags not recorded (no launch script of this run in APEX+)")
        for metric, column in (("ttft_mean", "ttft_s"), ("tpot_token_weighted_mean", "tpot_s")):
            row = _blank_row()
            row.update(
                id=f"apexplus_{rec['replay']}_{metric}",
                set="apexplus",
                source=f"microsoft/apex_plus {rec['results']} (measured, vLLM /metrics)",
                engine="vLLM OpenAI server",
                engine_version="0.6.0",
                hardware="H100 SXM 80GB",
                num_gpus=tp,
                tensor_parallel=tp,
                pipeline_parallel="1",
                model=checkpoint,
                dtype=precision,
                metric=metric,
                value=f"{float(rec[column]) * 1000:.6g}",
                unit="ms",
                workload_file=str(replay),
                notes="; ".join(notes),
            )
            rows.append(row)
    return rows
