"""Schema-driven fuzzing: configs generated from the pydantic models themselves, with the
boundary values of each field's type, plus malformed model and device files.

Every field of :class:`~llmservingsim.config.SimConfig` (optional sections, pools and each
length distribution included) is found by walking the models, so a key added later is fuzzed
without editing this file. Each field gets the boundary values of its type — 0, -1, 2^31,
2^63, 1e308, 1e-320, NaN, ±inf, '', a 100,000-character string, NUL, deep nesting, wrong
types — and the run must end in exit 0 with the output invariants holding (request counts,
finite non-negative latencies, TTFT <= E2E, finite simulated time) or in exit 2/3 with one
``error:`` line: never a traceback, never a hang (``fuzz_harness``). `make test` runs a fast
profile, `make fuzz` (HYPOTHESIS_PROFILE=fuzz) the long one (docs/robustness.md).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fuzz_harness import assert_clean_outcome, examples, quick_run_args, run_cli
from llmservingsim.catalog import _names
from llmservingsim.config import SimConfig

# ----------------------------------------------------------------------------- the schema

Leaf = tuple[str, Any]  # dotted path, annotation


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Annotated and None, and whether None was allowed."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return _unwrap(args[0])[0], optional
        return typing.Union[tuple(args)], optional  # noqa: UP007
    return annotation, False


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The sections behind an annotation (each variant of a tagged union; a list's items)."""
    inner, _ = _unwrap(annotation)
    origin = typing.get_origin(inner)
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(inner) for m in _models(arg)]
    if origin is list:
        return _models(typing.get_args(inner)[0])
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return [inner]
    return []


def schema_leaves(model: type[BaseModel], prefix: str = "") -> list[Leaf]:
    """Every scalar field under ``model`` (dotted paths; ``[]`` marks a list of sections)."""
    leaves: list[Leaf] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _models(field.annotation)
        if not nested:
            leaves.append((path, field.annotation))
            continue
        inner, _ = _unwrap(field.annotation)
        if typing.get_origin(inner) is list:
            path += "[]"
        for sub in nested:
            leaves.extend(schema_leaves(sub, f"{path}."))
    return leaves


LEAVES = schema_leaves(SimConfig)

# ----------------------------------------------------------------------------- values

BIG = [2**31 - 1, 2**31, 2**63, -(2**63), 10**6, 10**6 - 1, 10**30]
INTS = [0, -1, 1, 2, 3, *BIG]
FLOATS = [0.0, -1.0, 1e-320, 1e-300, 1e308, -1e308, math.nan, math.inf, -math.inf, 0.5, 1.0]
STRINGS = ["", "x" * 100_000, "ünïcødé 🦙", "a\x00b", "\x1e", "1e999", "None", "-1"]
DEEP: Any = 1
for _ in range(60):
    DEEP = [DEEP]
WRONG = [None, True, False, [], {}, [1, 2], {"a": 1}, DEEP, {"x": {"y": {"z": DEEP}}}]
NAMES = {
    "model": _names("models", ".json"),
    "hardware": _names("hardware", ".yaml"),
    "device": _names("hardware", ".yaml"),
    "draft_model": _names("models", ".json"),
    "policy": ["vllm", "sarathi", "orca", "no_evict", "static", "fcfs"],
    "router": ["round_robin", "random", "least_outstanding", "least_kv", "prefix_aware"],
    "decode_router": ["round_robin", "least_kv"],
    "backend": ["auto", "roofline", "systolic", "profile", "external", "vidur"],
}

# Keys whose large valid values are valid but make a run long (many requests, many
# instances, 10^5-step answers): here they get only small valid values and invalid ones.
COSTLY = (
    "workload.num_requests",
    "cluster.instances",
    "cluster.pools[].count",
    "workload.input_len.",
    "workload.output_len.",
    "workload.sessions.turns.",
    "workload.prefix.system_prompt_len",
    "scheduler.max_num_batched_tokens",
    "scheduler.max_num_seqs",
    "workload.trace.max_requests",
    "speculative.num_speculative_tokens",
)
SMALL_INTS = [0, -1, 1, 2, 3, 8, 2**31, 2**63, 10**30]


def boundary_values(path: str, annotation: Any) -> st.SearchStrategy[Any]:
    """Boundary values of the field's type, the catalog's names for name fields, and values
    of every wrong type."""
    inner, optional = _unwrap(annotation)
    name = path.rpartition(".")[2]
    costly = any(path.startswith(key) for key in COSTLY)
    typed: list[Any] = []
    origin = typing.get_origin(inner)
    if inner is int:
        typed = SMALL_INTS if costly else INTS
    elif inner is float:
        typed = [*FLOATS, *([] if costly else BIG)]
    elif inner is bool:
        typed = [True, False, 0, 1, "yes"]
    elif origin is Literal:
        options = list(typing.get_args(inner))
        typed = [*options, *options, str(options[0]).upper(), f"{options[0]}x"]
    elif inner is str or inner is Path:
        typed = [*NAMES.get(name, []), *STRINGS, "/nonexistent/file.yaml"]
    elif origin is list or origin in (Union, types.UnionType):
        typed = [[0.5], [0.5] * 4, [math.nan], [-1], [], ["a"], 0.5, ["echo"]]
    elif origin is dict:
        typed = [{}, {"a": 1}, {"a": DEEP}]
    values = typed * 3 + WRONG + ([None] if optional else [])
    return st.sampled_from(values)


# ----------------------------------------------------------------------------- configs

BASE: dict[str, Any] = {
    "model": "llama-3.2-1b",
    "cluster": {"instances": 1},
    "scheduler": {"max_num_seqs": 16, "max_num_batched_tokens": 2048},
    "workload": {
        "num_requests": 6,
        "arrival": {"rate": 20.0},
        "input_len": {"dist": "uniform", "min": 8, "max": 256},
        "output_len": {"dist": "fixed", "value": 8},
    },
}
DIST_MINIMAL: dict[str, dict[str, Any]] = {
    "fixed": {"dist": "fixed", "value": 8},
    "uniform": {"dist": "uniform", "min": 1, "max": 16},
    "normal": {"dist": "normal", "mean": 8, "std": 2},
    "lognormal": {"dist": "lognormal", "mean": 8, "sigma": 1},
    "zipf": {"dist": "zipf", "alpha": 1.2, "max": 16},
    "empirical": {"dist": "empirical", "values": [4, 8]},
}
SECTION_MINIMAL: dict[str, Any] = {
    "workload.prefix": {"system_prompt_len": 16},
    "workload.sessions": {"turns": {"dist": "fixed", "value": 2}, "think_time_s": 0.5},
    "workload.lora": {"num_adapters": 2},
    "scheduler.kv_offload": {"capacity_gib": 1},
    "cluster.pools[]": [{"count": 1}],
}


def _fields_of(dist: str) -> set[str]:
    return set(DIST_MINIMAL.get(dist, {})) - {"dist"}


def place(raw: dict[str, Any], path: str, value: Any, trace: Path) -> None:
    """Set ``path`` in ``raw``, first creating any optional section on the way in a minimal
    valid form (a trace section also switches the workload to the trace)."""
    parts = path.split(".")
    node: Any = raw
    walked = ""
    for i, part in enumerate(parts[:-1]):
        walked = f"{walked}.{part}" if walked else part
        key = part.removesuffix("[]")
        child = node.get(key) if isinstance(node, dict) else None
        if walked in ("workload.input_len", "workload.output_len", "workload.sessions.turns"):
            field = parts[i + 1]
            if not isinstance(child, dict) or field not in _fields_of(str(child.get("dist"))):
                dist = next(d for d in DIST_MINIMAL if field in _fields_of(d) or field == "dist")
                child = copy.deepcopy(DIST_MINIMAL[dist])
        elif walked == "workload.trace" and not isinstance(child, dict):
            child = {"path": str(trace)}
            node["kind"] = "trace"
            node.pop("num_requests", None)
            node.pop("arrival", None)
            node.pop("prefix", None)
            node.pop("sessions", None)
        elif not isinstance(child, dict | list):
            child = copy.deepcopy(SECTION_MINIMAL.get(walked, {}))
        if walked == "cluster.pools[]":
            node.pop("instances", None)
        if not isinstance(node, dict):
            return
        node[key] = child
        node = child[0] if isinstance(child, list) and child else child
    if isinstance(node, dict):
        node[parts[-1].removesuffix("[]")] = value


@st.composite
def schema_configs(draw: st.DrawFn, trace: Path) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path, annotation = draw(st.sampled_from(LEAVES))
        place(raw, path, draw(boundary_values(path, annotation)), trace)
    return raw


def assert_output_invariants(out: Path) -> None:
    """What a valid run's summary.json must hold, whatever the input."""
    summary = json.loads((out / "summary.json").read_text())
    ended = sum(summary[f"requests_{k}"] for k in ("completed", "failed", "rejected", "timed_out"))
    assert ended == summary["requests_total"], summary
    assert math.isfinite(summary["simulated_time_s"]) and summary["simulated_time_s"] >= 0
    for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        for stat, value in summary[metric].items():
            assert value is None or (math.isfinite(value) and value >= 0), (metric, stat, value)
    ttft, e2e = summary["ttft_s"]["max"], summary["e2e_s"]["max"]
    if ttft is not None and e2e is not None:
        assert ttft <= e2e + 1e-9, summary
    for key in ("request_throughput", "output_tokens_per_s", "energy_j", "cost_usd"):
        assert math.isfinite(summary[key]) and summary[key] >= 0, (key, summary[key])


def _trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,10,4\n0.5,20,4\n1.0,30,4\n")
    return path


SCHEMA = settings(
    max_examples=examples(ci=120, fuzz=6000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _yaml_text(raw: Any) -> str:
    return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False, width=1 << 20)


@SCHEMA
@given(data=st.data())
def test_schema_configs_run_or_fail_in_one_line(tmp_path: Path, data: st.DataObject) -> None:
    raw = data.draw(schema_configs(_trace(tmp_path)))
    path = tmp_path / "config.yaml"
    path.write_text(_yaml_text(raw), encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli(["run", str(path), *quick_run_args(out)])
    assert_clean_outcome(result)
    if result.exit_code == 0:
        assert_output_invariants(out)


def test_every_section_of_the_schema_is_fuzzed() -> None:
    """The walk reaches optional sections, pools and every length distribution's fields."""
    paths = {path for path, _ in LEAVES}
    for expected in (
        "seed",
        "workload.trace.time_scale",
        "workload.sessions.turns.alpha",
        "workload.input_len.values",
        "cluster.pools[].count",
        "scheduler.kv_offload.capacity_gib",
        "speculative.acceptance_rate",
        "outputs.trace_max_steps",
    ):
        assert expected in paths, expected
    assert len(paths) > 100


# ----------------------------------------------------------------------------- files

_files = itertools.count()


def unique_path(folder: Path, name: str) -> Path:
    """A fresh file name per example: the catalog caches a loaded model or device by its
    path, and hypothesis reuses ``tmp_path`` across the examples of one test."""
    return folder / f"{next(_files)}-{name}"


MODEL_KEYS = [
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "num_local_experts",
    "num_experts_per_tok",
    "model_type",
    "tie_word_embeddings",
]
FILE_VALUES = st.sampled_from([*INTS, *FLOATS, *STRINGS[:4], *WRONG, 4096, 32, 8, 64])


def _catalog_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_names("models", ".json")[name].read_text())
    return data


@settings(
    max_examples=examples(ci=40, fuzz=1500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    base=st.sampled_from(["llama-3.2-1b", "qwen3-30b-a3b", "deepseek-v3", "opt-13b", "gpt3-175b"]),
    changes=st.dictionaries(st.sampled_from(MODEL_KEYS), FILE_VALUES, min_size=1, max_size=3),
    mangle=st.sampled_from(["json", "json", "truncated", "not-utf8", "deep", "list"]),
)
def test_malformed_model_files_fail_in_one_line(
    tmp_path: Path, base: str, changes: dict[str, Any], mangle: str
) -> None:
    if base not in _names("models", ".json"):
        base = "llama-3.2-1b"
    spec = {**_catalog_json(base), **changes}
    text = json.dumps(spec)
    path = unique_path(tmp_path, "m.json")
    if mangle == "truncated":
        path.write_text(text[: len(text) // 2])
    elif mangle == "not-utf8":
        path.write_bytes(text.encode()[:20] + b"\xff\xfe" + text.encode()[20:])
    elif mangle == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif mangle == "list":
        path.write_text(json.dumps([spec]))
    else:
        path.write_text(text)
    args = ["run", "--set", f"model={path}", "--set", "workload.num_requests=4"]
    result = run_cli([*args, *quick_run_args(tmp_path / "out")])
    assert_clean_outcome(result)
    if result.exit_code == 0:
        assert_output_invariants(tmp_path / "out")


def _device_leaves(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    return [
        leaf for key, value in node.items() for leaf in _device_leaves(value, f"{prefix}{key}.")
    ]


H100 = yaml.safe_load(_names("hardware", ".yaml")["h100-sxm"].read_text())
DEVICE_LEAVES = [p for p in _device_leaves(H100) if not p.startswith(("sources", "description"))]


@settings(
    max_examples=examples(ci=40, fuzz=1500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(DEVICE_LEAVES), FILE_VALUES), min_size=1, max_size=3
    ),
    mangle=st.sampled_from(["yaml", "yaml", "yaml", "not-utf8", "deep", "scalar"]),
)
def test_malformed_device_files_fail_in_one_line(
    tmp_path: Path, changes: list[tuple[str, Any]], mangle: str
) -> None:
    device = copy.deepcopy(H100)
    for dotted, value in changes:
        node = device
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = unique_path(tmp_path, "d.yaml")
    text = _yaml_text(device)
    if mangle == "not-utf8":
        path.write_bytes(text.encode()[:30] + b"\xff" + text.encode()[30:])
    elif mangle == "deep":
        path.write_text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    elif mangle == "scalar":
        path.write_text("42\n")
    else:
        path.write_text(text)
    args = ["run", "--set", "model=llama-3.2-1b", "--set", f"hardware={path}"]
    result = run_cli([*args, "--set", "workload.num_requests=4", *quick_run_args(tmp_path / "o")])
    assert_clean_outcome(result)
    if result.exit_code == 0:
        assert_output_invariants(tmp_path / "o")
