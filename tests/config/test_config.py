"""Config loading: defaults, YAML files, --set overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError


def test_default_scenario_matches_the_documented_one() -> None:
    cfg = load_config()
    assert (cfg.model, cfg.dtype, cfg.hardware) == ("llama-3.1-8b", "bf16", "h100-sxm")
    assert cfg.cluster.tensor_parallel == 1
    assert cfg.workload.num_requests == 1000
    assert cfg.workload.arrival.process == "poisson"
    assert cfg.workload.arrival.rate == 8.0
    assert cfg.workload.input_len.dist == "lognormal"


def test_yaml_file_and_overrides_compose(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text("model: llama-2-7b\nworkload:\n  num_requests: 50\n  arrival: {rate: 2}\n")
    cfg = load_config(path, ["workload.arrival.rate=4.5", "scheduler.max_num_seqs=64"])
    assert cfg.model == "llama-2-7b"
    assert cfg.workload.num_requests == 50
    assert cfg.workload.arrival.rate == 4.5
    assert cfg.scheduler.max_num_seqs == 64


def test_override_of_one_length_parameter_keeps_the_distribution() -> None:
    cfg = load_config(None, ["workload.input_len.mean=512"])
    assert cfg.workload.input_len.dist == "lognormal"
    assert cfg.workload.input_len.mean == 512  # type: ignore[union-attr]


def test_switching_distribution_by_override() -> None:
    cfg = load_config(None, ["workload.output_len={dist: fixed, value: 7}"])
    assert cfg.workload.output_len.dist == "fixed"


def test_infinite_rate_is_accepted() -> None:
    assert load_config(None, ["workload.arrival.rate=.inf"]).workload.arrival.rate == float("inf")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("workload.arival.rate=3", "did you mean 'workload.arrival'"),
        ("schedular.policy=vllm", "did you mean 'scheduler'"),
        ("scheduler.max_num_seq=3", "did you mean 'scheduler.max_num_seqs'"),
        ("workload.input_len.sigmaa=1", "did you mean 'workload.input_len.sigma'"),
    ],
)
def test_unknown_key_names_the_closest_valid_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("scheduler.max_num_seqs=0", "scheduler.max_num_seqs"),
        ("dtype=bf17", "dtype"),
        ("workload.arrival.rate=-1", "workload.arrival.rate"),
        ("workload.input_len={dist: uniform, min: 9, max: 3}", "min (9) > max (3)"),
        ("workload.kind=trace", "workload.trace"),
    ],
)
def test_bad_values_are_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_override_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        load_config(None, ["seed"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_fp8_scaling_resolves_per_model_and_needs_fp8_weights() -> None:
    assert load_config(None, ["dtype=fp8"]).resolved_fp8_scaling(is_moe=False) == "tensor"
    assert load_config(None, ["dtype=fp8"]).resolved_fp8_scaling(is_moe=True) == "block"
    chosen = load_config(None, ["dtype=fp8", "fp8_scaling=tensor"])
    assert chosen.resolved_fp8_scaling(is_moe=True) == "tensor"
    assert load_config(None, []).resolved_fp8_scaling(is_moe=True) == "none"
    with pytest.raises(ConfigError, match=r"fp8_scaling: block describes fp8 weights.*bf16"):
        load_config(None, ["fp8_scaling=block"])
    with pytest.raises(ConfigError, match="fp8_scaling"):
        load_config(None, ["dtype=fp8", "fp8_scaling=rows"])


def test_the_moved_kernel_db_fp8_key_says_where_it_went() -> None:
    with pytest.raises(
        ConfigError, match=r"perf\.kernel_db\.fp8_gemm' moved to the top-level key fp8_scaling"
    ):
        load_config(None, ["perf.kernel_db.fp8_gemm=fp8_block"])
