"""Fuzzed configs: mutated YAML and ``--set`` values end in a run or one clean error line.

A small valid scenario is mutated: leaves get wrong types, negative/zero/huge numbers, NaN/inf,
unicode and nested garbage; keys are deleted, misspelled or invented; sections are replaced by
scalars; the YAML text itself is cut or corrupted. docs/robustness.md lists what is rejected.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_harness import assert_clean_outcome, examples, quick_run_args, run_cli

BASE: dict[str, Any] = {
    "model": "llama-3.2-1b",
    "hardware": "h100-sxm",
    "cluster": {"instances": 1, "tensor_parallel": 1, "router": "round_robin"},
    "scheduler": {
        "policy": "vllm",
        "max_num_seqs": 16,
        "max_num_batched_tokens": 2048,
        "block_size": 16,
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": False,
        "preemption": "recompute",
    },
    "workload": {
        "kind": "synthetic",
        "num_requests": 6,
        "arrival": {"process": "poisson", "rate": 20.0},
        "input_len": {"dist": "uniform", "min": 8, "max": 256},
        "output_len": {"dist": "fixed", "value": 8},
    },
    "seed": 0,
}

# Keys whose valid values may be huge without being a mistake, and which then cost a long
# run (many requests, many instances, tiny steps): they only get small valid numbers here, and
# garbage of every other kind.
COSTLY = {
    "workload.num_requests",
    "cluster.instances",
    "scheduler.max_num_batched_tokens",
    "workload.input_len.min",
    "workload.input_len.max",
    "workload.output_len.value",
}


def leaf_paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(leaf_paths(value, f"{path}."))
    return paths


PATHS = leaf_paths(BASE)
# An error names the file (parse and schema errors) or the key it is about (checks made once
# the config is valid, e.g. an unknown model or a TP that does not divide the heads).
KEY_NAMES = tuple(sorted({p.rpartition(".")[2] for p in PATHS} | {"cluster", "workload"}))

scalars = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "ünïcødé", "🦙", "1e999", ".inf", "-.inf", ".nan", "0x10", "NaN"]),
)
garbage = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def parent_of(raw: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds ``path``'s last key, and that key (None: a parent is missing)."""
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            return None, last
        node = child
    return node, last


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    node, last = parent_of(raw, path)
    if node is not None:
        node[last] = value


def delete_path(raw: dict[str, Any], path: str) -> None:
    node, last = parent_of(raw, path)
    if node is not None:
        node.pop(last, None)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        action = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "rename"]))
        if action == "set":
            if path in COSTLY:
                value = draw(st.integers(-3, 40) | garbage.filter(lambda v: not isinstance(v, int)))
            else:
                value = draw(garbage)
            set_path(raw, path, value)
        elif action == "delete":
            delete_path(raw, path)
        elif action == "unknown":
            parent = path.rpartition(".")[0]
            key = draw(st.text(min_size=1, max_size=10))
            set_path(raw, f"{parent}.{key}" if parent else key, draw(scalars))
        else:  # a typo of an existing key
            *parents, last = path.split(".")
            typo = last[:-1] if len(last) > 1 else last + "x"
            value = copy.deepcopy(raw)
            node: Any = value
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and last in node:
                node[typo] = node.pop(last)
                raw = value
    return raw


def _yaml_text(raw: Any) -> str:
    return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)


FAST = settings(
    max_examples=examples(ci=50, fuzz=4000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(raw=mutated_configs())
def test_mutated_config_runs_or_fails_cleanly(tmp_path: Path, raw: dict[str, Any]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_yaml_text(raw), encoding="utf-8")
    result = run_cli(["run", str(path), *quick_run_args(tmp_path / "out")])
    assert_clean_outcome(result, names=(str(path), *KEY_NAMES))
    if result.exit_code == 0:
        assert (tmp_path / "out" / "summary.json").is_file()


@settings(
    max_examples=examples(ci=30, fuzz=1500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(max_size=200)
    | st.builds(
        lambda cut, junk: _yaml_text(BASE)[:cut] + junk,
        st.integers(0, 400),
        st.text(max_size=20),
    )
    | st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_corrupted_yaml_text_fails_cleanly(
    tmp_path: Path, text: str, bom: bool, crlf: bool
) -> None:
    if crlf:
        text = text.replace("\n", "\r\n")
    path = tmp_path / "config.yaml"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"))
    # A cut before num_requests leaves a valid config of 1000 requests: keep runs short.
    size = ["--set", "workload.num_requests=6"]
    result = run_cli(["run", str(path), *size, *quick_run_args(tmp_path / "out")])
    assert_clean_outcome(result, names=(str(path), "workload", *KEY_NAMES))


@settings(
    max_examples=examples(ci=30, fuzz=1500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    key=st.sampled_from(PATHS) | st.text(max_size=15),
    value=st.text(max_size=15) | scalars.map(str),
)
def test_fuzzed_set_override_fails_cleanly_or_runs(tmp_path: Path, key: str, value: str) -> None:
    if key in COSTLY:
        value = "3"
    args = ["run", "--set", f"{key}={value}", "--set", "model=llama-3.2-1b"]
    args += ["--set", "workload.num_requests=4", *quick_run_args(tmp_path / "out")]
    result = run_cli(args)
    assert_clean_outcome(result)


def test_config_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    result = run_cli(["run", str(path), *quick_run_args(tmp_path / "out")])
    assert result.exit_code == 2
    assert_clean_outcome(result, names=(str(path),))


def test_negative_seed_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    """Found by the fuzzer: numpy raised ValueError deep inside the workload generator."""
    args = ["run", "--set", "model=llama-3.2-1b", "--seed", "-1", *quick_run_args(tmp_path)]
    result = run_cli(args)
    assert result.exit_code == 2
    assert_clean_outcome(result, names=("seed",))
