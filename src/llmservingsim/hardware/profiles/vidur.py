"""Vidur's operator profiles (``mlp.csv`` and ``attention.csv``), times in milliseconds.

``mlp.csv``: one row per (model shape, num_tokens, TP degree) with ``time_stats.<op>.median``
for the per-layer operators. Each row is turned into the simulator's own ops for that shape
(:meth:`OpGraph.dense_layer_ops`), and :data:`MLP_COLUMNS` names the profiled column each op
is read from.

``attention.csv``: one row per (batch, chunk, kv_cache_size, phase). How its ``kv_cache_size``
is read (calibration.md §6: the only table we have is consistent with this reading and not
with the other):

* prefill rows: batch 1, ``prefill_chunk_size`` new tokens, ``kv_cache_size`` = tokens in the
  KV cache *including* the chunk, so the simulator's cached context is the difference;
* decode rows: ``kv_cache_size`` = KV tokens read by the whole batch (the simulator's
  summed decode context).

Vidur profiles are measured in fp16 with an fp16 KV cache.
"""

from __future__ import annotations

import csv
from pathlib import Path

from llmservingsim.errors import ConfigError
from llmservingsim.hardware.profiles.points import ProfilePoint
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.model.spec import ModelSpec

DTYPE = "fp16"

# simulator op name -> Vidur mlp.csv column (time_stats.<column>.median)
MLP_COLUMNS: dict[str, str] = {
    "embedding": "emb",
    "input_layernorm": "input_layernorm",
    "qkv_proj": "attn_pre_proj",
    "rope": "attn_rope",
    "o_proj": "attn_post_proj",
    "post_attention_layernorm": "post_attention_layernorm",
    "mlp_up_proj": "mlp_up_proj",
    "mlp_act": "mlp_act",
    "mlp_down_proj": "mlp_down_proj",
    "residual_add": "add",
}

_MLP_SHAPE = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
_ATTN_SHAPE = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers")


def is_mlp_header(header: list[str]) -> bool:
    return "num_tokens" in header and all(c in header for c in _MLP_SHAPE)


def is_attention_header(header: list[str]) -> bool:
    return "is_prefill" in header and all(c in header for c in _ATTN_SHAPE)


def model_label(path: Path) -> str:
    """The profiled model's folder name (``.../Llama-2-7b-hf/mlp.csv``, ``.../Llama-3.1-70B/tp4/
    attention.csv``)."""
    parent = path.parent
    if parent.name.startswith("tp") and parent.name[2:].isdigit():
        parent = parent.parent
    return parent.name or str(path)


def _shape_spec(
    hidden: int, heads: int, kv_heads: int, intermediate: int, vocab: int, gated: bool
) -> ModelSpec:
    # Only the layer shapes matter for the ops built here; the rest is not in the table.
    return ModelSpec(
        name="profiled",
        model_type="profiled",
        hidden_size=hidden,
        num_layers=1,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_context=1,
        gated_mlp=gated,
    )


def _milliseconds(row: dict[str, str], column: str) -> float | None:
    text = (row.get(f"time_stats.{column}.median") or "").strip()
    if not text:
        return None
    try:
        value = float(text) * 1e-3
    except ValueError:
        return None
    return value if value > 0 else None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _int(row: dict[str, str], key: str, path: Path, line: int) -> int:
    try:
        return int(float(row[key]))
    except (KeyError, ValueError):
        raise ConfigError(
            f"{path}:{line}: column {key!r}: expected an integer, got {row.get(key)!r}"
        ) from None


def read_mlp(path: Path, header: list[str]) -> list[ProfilePoint]:
    del header
    label = model_label(path)
    graphs: dict[tuple[int, ...], OpGraph] = {}
    points: list[ProfilePoint] = []
    for line, row in enumerate(_rows(path), start=2):
        heads, kv_heads, hidden, inter, vocab = (_int(row, c, path, line) for c in _MLP_SHAPE[:5])
        gated = row["use_gated_mlp"].strip().lower() == "true"
        tp = _int(row, "num_tensor_parallel_workers", path, line)
        tokens = _int(row, "num_tokens", path, line)
        key = (heads, kv_heads, hidden, inter, vocab, int(gated), tp)
        graph = graphs.get(key)
        if graph is None:
            spec = _shape_spec(hidden, heads, kv_heads, inter, vocab, gated)
            graph = graphs[key] = OpGraph(spec, tp, DTYPE, DTYPE)
        ops = [*graph.dense_layer_ops(tokens), *graph.head_ops(tokens, 0)]
        seen: set[str] = set()
        for op in ops:
            column = MLP_COLUMNS.get(op.name)
            if column is None or op.name in seen:  # residual_add appears twice per layer
                continue
            seen.add(op.name)
            seconds = _milliseconds(row, column)
            if seconds is not None:
                points.append(ProfilePoint(op, seconds, DTYPE, label, f"{path}:{line}"))
    return points


def read_attention(path: Path, header: list[str]) -> list[ProfilePoint]:
    del header
    label = model_label(path)
    graphs: dict[tuple[int, ...], OpGraph] = {}
    points: list[ProfilePoint] = []
    for line, row in enumerate(_rows(path), start=2):
        hidden, heads, kv_heads, tp = (_int(row, c, path, line) for c in _ATTN_SHAPE)
        key = (hidden, heads, kv_heads, tp)
        graph = graphs.get(key)
        if graph is None:
            spec = _shape_spec(hidden, heads, kv_heads, 1, 1, True)
            graph = graphs[key] = OpGraph(spec, tp, DTYPE, DTYPE)
        batch = _int(row, "batch_size", path, line)
        kv = _int(row, "kv_cache_size", path, line)
        op: Op
        if row["is_prefill"].strip().lower() == "true":
            chunk = _int(row, "prefill_chunk_size", path, line)
            if batch != 1 or kv < chunk:
                continue  # the simulator times prefill attention one sequence at a time
            op, column = graph.prefill_attention(chunk, kv - chunk), "attn_prefill"
        else:
            op, column = graph.decode_attention(batch, kv), "attn_decode"
        seconds = _milliseconds(row, column)
        if seconds is not None:
            points.append(ProfilePoint(op, seconds, DTYPE, label, f"{path}:{line}"))
    return points
