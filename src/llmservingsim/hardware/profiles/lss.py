"""LLMServingSim's profiler bundles: a served model's kernels timed one layer at a time in vLLM.

casys-kaist/LLMServingSim's ``profiler/perf`` folder holds, per GPU, model and weight variant,
one bundle::

    <HARDWARE>/<org>/<model>/<variant>/meta.yaml      model: <org>/<model>, variant: bf16, ...
    <HARDWARE>/<org>/<model>/<variant>/tp<N>/dense.csv         layer,tokens,time_us
    <HARDWARE>/<org>/<model>/<variant>/tp<N>/per_sequence.csv  layer,sequences,time_us
    <HARDWARE>/<org>/<model>/<variant>/tp<N>/attention.csv
        prefill_chunk,kv_prefill,n_decode,kv_decode,time_us

measured with vLLM's own model code (eager mode, one decoder layer), times in microseconds.
Each row becomes the simulator's op for that shape (:class:`OpGraph` of the catalog model
whose config.json ``_name_or_path`` is the bundle's ``model``, or of a ``config.json`` beside
``meta.yaml``; TP degree from the ``tp<N>`` folder). :data:`DENSE_LAYERS` and
:data:`PER_SEQUENCE_LAYERS` name the layers read. ``attention.csv`` times one attention call
of a batch: a row with no decodes is the prefill attention of ``prefill_chunk`` new tokens
after ``kv_prefill`` cached ones (rows with ``kv_prefill`` below the chunk exist, so it is the
prefix, not the key count); a row with no prefill is the decode attention of ``n_decode``
sequences of ``kv_decode`` tokens each (per sequence: the time grows with ``n_decode`` at a
fixed ``kv_decode``, and 256 × 16,384 tokens stream at 0.95 of the RTX 4090's DRAM bandwidth;
read as the batch's total they would stream at 0.4 %). Not read, on purpose:

* ``layernorm`` / ``final_layernorm``: vLLM's fused residual-add + RMSNorm, one kernel where
  the op list without an engine has two (the fused kernel is modelled by ``perf.fusion``);
* ``sampler``: vLLM's sampler chain (penalties, top-k/top-p sort), not the one-pass op;
* attention rows with both a prefill and decodes: vLLM runs them as one varlen kernel whose
  time is not the sum of the two (docs/calibration.md §4b), and no op of the simulator is that
  kernel; attention grids of another header (the profiler's later ``layer,prefill_chunk,
  prefill_key,...`` files, whose ``prefill_key`` is not documented);
* ``skew*.csv``, ``step.csv``, ``moe.csv``, ``mtp.csv``: other grids.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from llmservingsim.catalog import load_model, model_names, model_path
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.profiles.points import ProfilePoint
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import ModelSpec, load_hf_config_file

# bundle layer name -> simulator op name
DENSE_LAYERS: dict[str, str] = {
    "embedding": "embedding",
    "qkv_proj": "qkv_proj",
    "rotary_emb": "rope",
    "o_proj": "o_proj",
    "gate_up_proj": "mlp_up_proj",
    "act_fn": "mlp_act",
    "down_proj": "mlp_down_proj",
}
PER_SEQUENCE_LAYERS: dict[str, str] = {"lm_head": "lm_head"}

DENSE_HEADER = ["layer", "tokens", "time_us"]
ATTENTION_HEADER = ["prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us"]
PER_SEQUENCE_HEADER = ["layer", "sequences", "time_us"]
# variant folder -> the weight dtype the ops are built with
VARIANT_DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}


def is_dense_header(header: list[str]) -> bool:
    return [h.strip() for h in header] == DENSE_HEADER


def is_per_sequence_header(header: list[str]) -> bool:
    return [h.strip() for h in header] == PER_SEQUENCE_HEADER


def is_attention_header(header: list[str]) -> bool:
    return [h.strip() for h in header] == ATTENTION_HEADER


@cache
def _catalog_by_hf_id() -> dict[str, str]:
    """Catalog model name per Hugging Face id (config.json ``_name_or_path``), lower-cased."""
    found: dict[str, str] = {}
    for name in model_names():
        config = json.loads(model_path(name).read_text())
        hf_id = config.get("_name_or_path")
        if isinstance(hf_id, str) and hf_id:
            found.setdefault(hf_id.lower(), name)
    return found


@dataclass(frozen=True)
class _Bundle:
    spec: ModelSpec
    dtype: str  # weight dtype
    kv_dtype: str  # meta.yaml's engine_effective.kv_cache_dtype; auto: 16-bit
    tp: int
    label: str


_TP_FOLDER = re.compile(r"tp([1-9][0-9]*)", re.ASCII)


def _bundle(path: Path) -> _Bundle:
    """The bundle a ``tp<N>/*.csv`` belongs to: its model, dtypes, TP degree and label."""
    tp_dir = path.parent
    match = _TP_FOLDER.fullmatch(tp_dir.name)
    if match is None:
        raise ConfigError(
            f"{path}: an LLMServingSim profile table must sit in a 'tp<N>' folder (N >= 1) "
            f"of its bundle"
        )
    tp = int(match.group(1))
    bundle = tp_dir.parent
    meta_path = bundle / "meta.yaml"
    if not meta_path.is_file():
        raise ConfigError(f"{path}: no meta.yaml in {bundle} (the bundle names its model there)")
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{meta_path}: cannot read: {exc}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{meta_path}: expected a mapping with 'model' and 'variant'")
    hf_id, variant = meta.get("model"), str(meta.get("variant", bundle.name))
    dtype = VARIANT_DTYPES.get(variant)
    if dtype is None:
        raise ConfigError(
            f"{meta_path}: variant {variant!r} is not yet supported "
            f"(expected one of {', '.join(VARIANT_DTYPES)})"
        )
    engine = meta.get("engine_effective")
    kv_setting = str(engine.get("kv_cache_dtype", "auto")) if isinstance(engine, dict) else "auto"
    # vLLM's auto KV cache is the model's activation dtype: 16-bit for an fp8 checkpoint too.
    kv_dtype = "fp8" if kv_setting.startswith("fp8") else ("fp16" if dtype == "fp16" else "bf16")
    local = bundle / "config.json"
    if local.is_file():
        spec = load_hf_config_file(local, name=bundle.parent.name)
    else:
        name = _catalog_by_hf_id().get(str(hf_id).lower()) if hf_id else None
        if name is None:
            raise ConfigError(
                f"{meta_path}: model {hf_id!r} is not in the catalog (no catalog config.json "
                f"has that _name_or_path); put the model's config.json beside meta.yaml"
            )
        spec = load_model(name)
    if spec.num_heads % tp or (spec.num_kv_heads % tp and tp % spec.num_kv_heads):
        raise ConfigError(
            f"{path}: TP {tp} does not split {spec.name}'s {spec.num_heads} query / "
            f"{spec.num_kv_heads} KV heads evenly"
        )
    return _Bundle(spec, dtype, kv_dtype, tp, bundle.parent.name)


def _layer_ops(graph: OpGraph, spec: ModelSpec, count: int, per_sequence: bool) -> list[Op]:
    """The ops a row can be: the LM head side per sequence, else one layer's (no MLP for MoE)."""
    if per_sequence:
        return graph.output_ops(count)
    ops = graph.attention_block_ops(count) + graph.embedding_ops(count)
    return ops if spec.is_moe else ops + graph.mlp_ops(count)


def _csv_rows(path: Path, columns: int) -> list[tuple[int, list[str]]]:
    """(line, cells) of every data row, each with ``columns`` cells."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    found: list[tuple[int, list[str]]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        if len(row) != columns:
            raise ConfigError(f"{path}:{line}: expected {columns} columns, got {len(row)}")
        found.append((line, row))
    return found


def _read(path: Path, layers: dict[str, str], per_sequence: bool) -> list[ProfilePoint]:
    info = _bundle(path)
    spec = info.spec
    graph = OpGraph(spec, info.tp, info.dtype, info.kv_dtype)
    points: list[ProfilePoint] = []
    for line, row in _csv_rows(path, 3):
        layer = row[0].strip()
        op_name = layers.get(layer)
        if op_name is None:
            continue
        try:
            count, micros = int(row[1]), float(row[2])
        except ValueError:
            raise ConfigError(
                f"{path}:{line}: expected an integer count and a time in µs, got {row[1:]!r}"
            ) from None
        if count < 1 or not (math.isfinite(micros) and micros > 0):
            raise ConfigError(
                f"{path}:{line}: count and time must be positive and finite, got {row[1:]!r}"
            )
        ops = _layer_ops(graph, spec, count, per_sequence)
        op = next((o for o in ops if o.name == op_name), None)
        if op is not None:  # a layer this model's op list does not have (e.g. MLA) is skipped
            points.append(ProfilePoint(op, micros * 1e-6, info.dtype, info.label, f"{path}:{line}"))
    return points


def read_dense(path: Path, header: list[str]) -> list[ProfilePoint]:
    del header
    return _read(path, DENSE_LAYERS, per_sequence=False)


def read_per_sequence(path: Path, header: list[str]) -> list[ProfilePoint]:
    del header
    return _read(path, PER_SEQUENCE_LAYERS, per_sequence=True)


def read_attention(path: Path, header: list[str]) -> list[ProfilePoint]:
    """Prefill-only and decode-only rows of an attention grid (mixed rows are left out)."""
    del header
    info = _bundle(path)
    if info.spec.has_sliding_layers or info.spec.has_chunked_layers:
        raise ConfigError(
            f"{path}: attention grids of models with sliding-window or chunked attention "
            f"layers ({info.spec.name}) are not yet supported (the grid does not say which "
            f"layer it timed)"
        )
    graph = OpGraph(info.spec, info.tp, info.dtype, info.kv_dtype)
    points: list[ProfilePoint] = []
    for line, row in _csv_rows(path, 5):
        try:
            chunk, ctx, seqs, kv = (int(cell) for cell in row[:4])
            micros = float(row[4])
        except ValueError:
            raise ConfigError(
                f"{path}:{line}: expected four integers and a time in µs, got {row!r}"
            ) from None
        if min(chunk, ctx, seqs, kv) < 0 or not (math.isfinite(micros) and micros > 0):
            raise ConfigError(
                f"{path}:{line}: counts must be >= 0 and the time positive and finite: {row!r}"
            )
        if chunk > 0 and seqs == 0:
            op = graph.prefill_attention(chunk, ctx)
        elif chunk == 0 and seqs > 0 and kv > 0:
            op = graph.decode_attention(seqs, seqs * kv)
        else:
            continue  # a mixed batch (or an empty one): not one op of the simulator
        points.append(ProfilePoint(op, micros * 1e-6, info.dtype, info.label, f"{path}:{line}"))
    return points
