"""Every input issue 22 (items 1-6) and issue 23 found at the edges: refused in one line (exit
2, or 3 for does-not-fit), or accepted with one ``warning:`` line — never a traceback, never a
silently wrong run. One test per reported item; each ran against the code before the fix and
ended in a traceback or a wrong exit 0 there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fuzz_harness import assert_clean_outcome, quick_run_args, run_cli
from llmservingsim.catalog import _names
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError

SMALL = ["--set", "model=llama-3.2-1b", "--set", "workload.num_requests=4"]
BIG = 2**63


def run(tmp_path: Path, *sets: str, config: Path | None = None, small: bool = True) -> Any:
    args = ["run"] + ([str(config)] if config else [])
    args += SMALL if small else []
    for item in sets:
        args += ["--set", item]
    return run_cli([*args, *quick_run_args(tmp_path / "out")])


def refused(result: Any, *names: str, code: int = 2) -> str:
    """The one error line of a refused run (exit ``code``), naming each of ``names``."""
    assert_clean_outcome(result)
    assert result.exit_code == code, result.output
    line: str = result.output.strip()
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


def warned(result: Any, *names: str) -> str:
    """The ``warning:`` line of a run that succeeded."""
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, result.output
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    return lines[0]


# ----------------------------------------------------------------------------- issue 23


@pytest.mark.parametrize(
    "key",
    [
        "workload.input_len={dist: fixed, value: %d}",
        "workload.input_len={dist: uniform, min: 1, max: %d}",
        "workload.input_len={dist: empirical, values: [5, %d]}",
        "workload.prefix={system_prompt_len: %d}",
        "scheduler.max_queue=%d",
        "workload.num_requests=%d",
    ],
)
def test_integers_of_2_63_are_range_errors(tmp_path: Path, key: str) -> None:
    line = refused(run(tmp_path, key % BIG), "less than 2147483648", str(BIG))
    assert "config:" in line


def test_a_5000_digit_seed_is_an_error(tmp_path: Path) -> None:
    digits = "9" * 5000
    refused(run(tmp_path, f"seed={digits}"), "seed")
    path = tmp_path / "c.yaml"
    path.write_text(f"seed: {digits}\n")
    refused(run(tmp_path, config=path), str(path))
    refused(run_cli(["run", "--seed", digits, *quick_run_args(tmp_path)]), "--seed")


def test_non_utf8_and_deeply_nested_yaml_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model: llama-3.2-1b\nseed: \xff\xfe\n")
    refused(run(tmp_path, config=path), str(path), "UTF-8")
    path.write_text("perf:\n  options: " + "[" * 5000 + "]" * 5000 + "\n")
    refused(run(tmp_path, config=path), str(path))
    path.write_text("perf:\n  options: " + "{a: " * 60 + "1" + "}" * 60 + "\n")
    refused(run(tmp_path, config=path), "nested more than")


def test_huge_capacities_and_extreme_gamma_cv_are_range_errors(tmp_path: Path) -> None:
    refused(run(tmp_path, "scheduler.swap_space_gib=1e308"), "swap_space_gib", "1048576")
    offload = "scheduler.kv_offload={capacity_gib: 1e308}"
    refused(run(tmp_path, "scheduler.enable_prefix_caching=true", offload), "capacity_gib")
    for cv in ("1e-300", "1e300"):
        refused(run(tmp_path, "workload.arrival.process=gamma", f"workload.arrival.cv={cv}"), "cv")


@pytest.fixture
def csv_trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,20,5\n1.0,30,5\n")
    return path


def trace_run(tmp_path: Path, path: Path, *sets: str) -> Any:
    args = ["--set", "model=llama-3.2-1b", "--set", "workload.kind=trace"]
    args += ["--set", f"workload.trace.path={path}"]
    for item in sets:
        args += ["--set", item]
    return run_cli(["run", *args, *quick_run_args(tmp_path / "out")])


def test_trace_time_scale_must_be_finite_and_keep_time_finite(
    tmp_path: Path, csv_trace: Path
) -> None:
    refused(trace_run(tmp_path, csv_trace, "workload.trace.time_scale=.inf"), "time_scale")
    refused(trace_run(tmp_path, csv_trace, "workload.trace.time_scale=1e300"), "1e+300 s")


def _model_file(tmp_path: Path, **changes: Any) -> Path:
    spec = json.loads(_names("models", ".json")["llama-3.2-1b"].read_text())
    spec.update(changes)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hidden_size", -2048),
        ("hidden_size", 0),
        ("hidden_size", float("nan")),
        ("num_attention_heads", 0),
        ("num_hidden_layers", 1.5),
        ("max_position_embeddings", 0),
        ("intermediate_size", True),
        ("vocab_size", BIG),
        ("num_key_value_heads", 5),
    ],
)
def test_model_files_with_impossible_sizes_are_refused(
    tmp_path: Path, key: str, value: Any
) -> None:
    path = _model_file(tmp_path, **{key: value})
    refused(run_cli(["run", "--set", f"model={path}", *quick_run_args(tmp_path)]), str(path))


def _device_file(tmp_path: Path, **changes: Any) -> Path:
    device = yaml.safe_load(_names("hardware", ".yaml")["h100-sxm"].read_text())
    for dotted, value in changes.items():
        node = device
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(device))
    return path


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("peak_tflops__bf16", 0),
        ("peak_tflops__bf16", -1.0),
        ("peak_tflops__bf16", float("nan")),
        ("memory_bandwidth_gbps", 0),
        ("memory_bandwidth_gbps", float("inf")),
        ("memory_gib", float("nan")),
        ("memory_gib", -80),
        ("links__intra_node__bandwidth_gbps", 0),
        ("devices_per_node", True),
        # Denormal peaks, bandwidths and efficiencies made every time infinite (exit 0).
        ("peak_tflops__bf16", 1e-320),
        ("memory_bandwidth_gbps", 1e-320),
        ("efficiency__memory", 1e-320),
        ("efficiency__compute_max", 1e-320),
    ],
)
def test_device_files_with_impossible_values_are_refused(
    tmp_path: Path, key: str, value: Any
) -> None:
    path = _device_file(tmp_path, **{key: value})
    args = ["run", *SMALL, "--set", f"hardware={path}", *quick_run_args(tmp_path)]
    refused(run_cli(args), str(path), key.split("__")[-1])


@pytest.mark.parametrize(
    "setting",
    [
        "workload.input_len={dist: zipf, alpha: 1.1, max: 1000000000000}",
        "workload.input_len={dist: zipf, alpha: 1.1, max: 2000000000}",
        "workload.arrival={process: burst, burst_size: 1000000000000}",
        "workload.lora={num_adapters: 1000000000}",
        "cluster.instances=1000000000",
        "workload.prefix={system_prompt_len: 10, num_system_prompts: 1000000000}",
    ],
)
def test_numbers_that_would_allocate_terabytes_are_refused(tmp_path: Path, setting: str) -> None:
    refused(run(tmp_path, setting))


def test_a_large_burst_size_allocates_only_the_requests(tmp_path: Path) -> None:
    result = run(tmp_path, "workload.arrival={process: burst, burst_size: 2000000000}")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "setting",
    [
        "workload.arrival.rate=1e-320",
        "workload.sessions={think_time_s: 1e308}",
        "workload.sessions={think_time_s: 6e8, think_time_dist: fixed, turns: {dist: fixed, "
        "value: 3}}",
    ],
)
def test_runs_whose_simulated_time_would_not_be_finite_are_refused(
    tmp_path: Path, setting: str
) -> None:
    refused(run(tmp_path, setting))


@pytest.mark.parametrize(
    "setting",
    [
        "workload.input_len={dist: normal, mean: 100, std: 10, min: 50, max: 20}",
        "workload.input_len={dist: lognormal, mean: 100, sigma: 1, min: 50, max: 20}",
        "workload.input_len={dist: lognormal, mean: 100, sigma: .inf}",
        "workload.input_len={dist: empirical, values: [10, -5]}",
        "workload.output_len={dist: empirical, values: [0]}",
    ],
)
def test_length_settings_are_checked_not_clamped(tmp_path: Path, setting: str) -> None:
    refused(run(tmp_path, setting), "workload.")


@pytest.mark.parametrize(
    "setting",
    ["workload.num_requests=true", "scheduler.max_num_seqs=false", "seed=true", "pim.count=true"],
)
def test_booleans_are_not_integers(tmp_path: Path, setting: str) -> None:
    refused(run(tmp_path, setting), setting.partition("=")[0].rpartition(".")[2], "boolean")


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in (["run", "--seed", "abc"], ["run", "--bogus"], ["nope"], ["run", "a", "b"]):
        result = run_cli(args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "--seed" in run_cli(["run", "--seed", "abc"]).output


# ----------------------------------------------------------------------------- issue 22, 1-6


def test_a_trace_section_needs_kind_trace(tmp_path: Path, csv_trace: Path) -> None:
    result = run(tmp_path, f"workload.trace.path={csv_trace}")
    refused(result, "workload.kind: trace", str(csv_trace))


def test_arrival_and_num_requests_are_not_silently_ignored_with_a_trace(
    tmp_path: Path, csv_trace: Path
) -> None:
    refused(trace_run(tmp_path, csv_trace, "workload.arrival.rate=20"), "arrival.rate")
    refused(trace_run(tmp_path, csv_trace, "workload.num_requests=2"), "max_requests")
    result = trace_run(tmp_path, csv_trace, "workload.trace.max_requests=2")
    assert result.exit_code == 0, result.output


def test_a_lengths_only_trace_says_where_its_arrivals_come_from(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,5\n20,5\n")
    warned(trace_run(tmp_path, path), "no arrival times", "8 req/s")
    result = trace_run(tmp_path, path, "workload.arrival.rate=2")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_out_pointing_at_a_file_is_refused_before_simulating(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("")
    sweep = ["sweep", "--grid", "seed=1,2", *SMALL]
    plan = ["plan", "--slo", "ttft_p99=1", *SMALL]
    for command in (["run", *SMALL], sweep, plan):
        for out in (file, file / "below"):
            result = run_cli([*command, "--out", str(out)])
            refused(result, "--out", str(file))


def test_a_kv_cache_too_small_for_every_request_is_refused(tmp_path: Path) -> None:
    big = "workload.input_len={dist: fixed, value: 100000}"
    sets = ("model=llama-3.1-8b", "scheduler.gpu_memory_utilization=0.21", big)
    line = refused(run(tmp_path, *sets, small=False), "KV cache", "no request", code=3)
    assert "100,000 in" in line
    some = "workload.input_len={dist: uniform, min: 10, max: 100000}"
    sets = ("model=llama-3.1-8b", "scheduler.gpu_memory_utilization=0.21", some)
    result = run(tmp_path, *sets, "workload.num_requests=20", small=False)
    warned(result, "will be reported as failed")


@pytest.mark.parametrize("tp", [7, 14])
def test_tensor_parallel_must_split_the_kv_heads(tmp_path: Path, tp: int) -> None:
    result = run(tmp_path, "model=qwen2.5-7b", f"cluster.tensor_parallel={tp}")
    refused(result, f"tensor_parallel={tp}", "4 KV heads")


def test_prompts_beyond_the_context_are_clipped_with_a_warning(tmp_path: Path) -> None:
    result = run(tmp_path, "workload.input_len={dist: fixed, value: 10000000}")
    warned(result, "131,072-token context", "10,000,000", "workload.input_len")


def test_a_billion_requests_is_refused_with_a_memory_estimate(tmp_path: Path) -> None:
    line = refused(run(tmp_path, "workload.num_requests=1000000000", small=False), "GB")
    assert "256.0 GB" in line


def test_csv_traces_are_read_without_trace_format(tmp_path: Path, csv_trace: Path) -> None:
    result = trace_run(tmp_path, csv_trace)
    assert result.exit_code == 0, result.output
    azure = tmp_path / "a.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,3,4\n")
    assert trace_run(tmp_path, azure).exit_code == 0


def test_unknown_catalog_section_exits_2() -> None:
    refused(run_cli(["catalog", "nope"]), "unknown section")


def test_a_prompt_pool_too_large_to_hold_is_refused_before_running() -> None:
    with pytest.raises(ConfigError, match=r"workload\.prompt_pool\.size"):
        load_config(None, ["workload.prompt_pool={size: 2147483647}"])


def test_a_kv_block_override_beyond_int32_is_refused_before_running(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.num_gpu_blocks_override"):
        load_config(None, ["scheduler.num_gpu_blocks_override=9223372036854775808"])
    load_config(None, ["scheduler.num_gpu_blocks_override=2147483647"])  # the largest allowed
