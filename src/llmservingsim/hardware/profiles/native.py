"""The project's own profile format (docs/profiles.md): one measured kernel per CSV row.

    op,dims,dtype,seconds,model
    qkv_proj,m=16 n=6144 k=4096,bf16,2.13e-05,llama-3.1-8b
    attention_decode,batch=8 context=8192 q_heads=32 kv_heads=8 head_dim=128,bf16,6.1e-05,

``op`` is the simulator's op name, ``dims`` its shape as ``name=value`` pairs (the ``dims`` of
:class:`~llmservingsim.model.ops.Op`), ``dtype`` the weight dtype, ``seconds`` the median kernel
time, ``model`` an optional label. The set of dim names says how FLOPs and bytes follow from the
shape (:data:`BUILDERS`), using the same formulas as the simulator's op graph.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

from llmservingsim.errors import ConfigError
from llmservingsim.hardware.profiles.points import ProfilePoint
from llmservingsim.model.op import SIXTEEN_BIT_DIM
from llmservingsim.model.ops import Dims, Op, OpGraph
from llmservingsim.model.spec import DTYPE_BYTES, ModelSpec, weight_only_quantized

COLUMNS = ("op", "dims", "dtype", "seconds", "model")
STEP_CPU = "step_cpu"  # host time of one engine step with `seqs` sequences (calibration only)

Builder = Callable[[str, dict[str, int], str], Op]


def _graph(dtype: str, heads: int = 1, kv_heads: int = 1, head_dim: int = 1) -> OpGraph:
    spec = ModelSpec(
        name="profiled",
        model_type="profiled",
        hidden_size=heads * head_dim,
        num_layers=1,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=1,
        vocab_size=1,
        max_context=1,
    )
    kv_dtype = "fp16" if weight_only_quantized(dtype) else dtype
    return OpGraph(spec, 1, dtype, kv_dtype)


def _gemm(name: str, d: dict[str, int], dtype: str) -> Op:
    # weights_16bit=1 (model/op.py SIXTEEN_BIT_DIM): a GEMM the checkpoint keeps in 16 bits;
    # without it, the LM head and router of a quantized dtype are (spec.sixteen_bit_groups)
    sixteen = None if SIXTEEN_BIT_DIM not in d else d[SIXTEEN_BIT_DIM] == 1
    return _graph(dtype).gemm(name, d["m"], d["n"], d["k"], sixteen)


def _elementwise(name: str, d: dict[str, int], dtype: str) -> Op:
    return _graph(dtype).elementwise(name, d["m"], d["read"], d["write"])


def _prefill(name: str, d: dict[str, int], dtype: str) -> Op:
    graph = _graph(dtype, d["q_heads"], d["kv_heads"], d["head_dim"])
    return graph.prefill_attention(d["new"], d["ctx"], d.get("window", 0))


def _decode(name: str, d: dict[str, int], dtype: str) -> Op:
    graph = _graph(dtype, d["q_heads"], d["kv_heads"], d["head_dim"])
    return graph.decode_attention(d["batch"], d["context"])


def _sampling(name: str, d: dict[str, int], dtype: str) -> Op:
    dims = (("m", d["m"]), ("vocab", d["vocab"]))
    return Op(name, "memory", 0.0, 8.0 * d["m"] * d["vocab"], d["m"], dims)


def _step_cpu(name: str, d: dict[str, int], dtype: str) -> Op:
    return Op(name, "cpu", 0.0, 0.0, d["seqs"], (("seqs", d["seqs"]),))


HEADS = ("q_heads", "kv_heads", "head_dim")
BUILDERS: dict[frozenset[str], Builder] = {
    frozenset(("m", "n", "k")): _gemm,
    frozenset(("m", "n", "k", SIXTEEN_BIT_DIM)): _gemm,
    frozenset(("m", "read", "write")): _elementwise,
    frozenset(("new", "ctx", *HEADS)): _prefill,
    frozenset(("new", "ctx", "window", *HEADS)): _prefill,
    frozenset(("batch", "context", *HEADS)): _decode,
    frozenset(("m", "vocab")): _sampling,
    frozenset(("seqs",)): _step_cpu,
}


def is_native_header(header: list[str]) -> bool:
    return all(c in header for c in COLUMNS[:4])


def parse_dims(text: str) -> Dims:
    dims: list[tuple[str, int]] = []
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep or not key or not value.lstrip("-").isdigit():
            raise ValueError(f"expected name=integer pairs separated by spaces, got {part!r}")
        dims.append((key, int(value)))
    return tuple(dims)


def format_dims(dims: Dims) -> str:
    return " ".join(f"{k}={v}" for k, v in dims)


def build_op(name: str, dims: Dims, dtype: str) -> Op:
    """The simulator's op for a shape written as dims (the inverse of ``Op.dims``)."""
    builder = BUILDERS.get(frozenset(k for k, _ in dims))
    if builder is None:
        known = "; ".join(" ".join(sorted(s)) for s in BUILDERS)
        raise ValueError(f"dims {format_dims(dims)!r} match no op shape (known: {known})")
    return builder(name, dict(dims), dtype).replaced(name=name)


def read_native(path: Path, header: list[str]) -> list[ProfilePoint]:
    del header
    points: list[ProfilePoint] = []
    with path.open(newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                dtype = row["dtype"].strip()
                if dtype not in DTYPE_BYTES:
                    raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
                seconds = float(row["seconds"])
                if not seconds > 0:
                    raise ValueError(f"seconds must be > 0, got {row['seconds']!r}")
                op = build_op(row["op"].strip(), parse_dims(row["dims"]), dtype)
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"{path}:{line}: {exc}") from None
            label = (row.get("model") or "").strip() or path.stem
            points.append(ProfilePoint(op, seconds, dtype, label, f"{path}:{line}"))
    return points


def write_native(path: Path, points: Iterable[ProfilePoint]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for p in points:
            writer.writerow([p.op.name, format_dims(p.op.dims), p.dtype, repr(p.seconds), p.model])
