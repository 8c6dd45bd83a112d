"""Multi-LoRA serving: adapter memory, slots and loads, TTFT cost of many adapters, the base
run unchanged without adapters, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import assert_one_line_error
from llmservingsim.catalog import load_device, load_model
from llmservingsim.cli import app
from llmservingsim.config import LoraConfig, WorkloadLoraConfig, load_config
from llmservingsim.errors import ConfigError, TraceError
from llmservingsim.model.lora import adapter_bytes_per_device
from llmservingsim.perf.lora import adapter_load_seconds, disk_read_seconds
from llmservingsim.scenario import resolve
from llmservingsim.serving.lora import AdapterSlots
from llmservingsim.simulation import load_requests, simulate
from llmservingsim.workload.adapters import adapter_popularity

TRAFFIC = ["workload.num_requests=300", "workload.arrival.rate=6"]


def run(extra: list[str]) -> dict[str, Any]:
    return simulate(load_config(None, TRAFFIC + extra)).summary


def test_no_adapters_gives_the_base_summary() -> None:
    base = run([])
    # LoRA engine settings without adapters in the workload change nothing simulated.
    tuned = run(["lora.max_loras=2", "lora.max_cpu_loras=8", "lora.max_lora_rank=64"])
    for summary in (base, tuned):
        summary.pop("config")
        summary.pop("sim_wall_s")
    assert tuned == base
    assert not any(key.startswith("lora_") for key in base)


def test_many_adapters_load_and_raise_ttft() -> None:
    few = run(["workload.lora={num_adapters: 4}"])
    many = run(["workload.lora={num_adapters: 100, popularity: zipf, alpha: 1.0}"])
    assert few["lora_adapter_loads"] == 4  # loaded once, never evicted
    assert many["lora_adapter_loads"] > 4
    assert many["lora_load_stall_s"] > few["lora_load_stall_s"]
    assert many["ttft_s"]["mean"] > few["ttft_s"]["mean"]
    assert few["requests_completed"] == many["requests_completed"] == 300


def test_lora_gemms_slow_decode_down() -> None:
    base = run([])
    lora = run(["workload.lora={num_adapters: 4}"])
    assert lora["tpot_s"]["mean"] > base["tpot_s"]["mean"]
    assert lora["lora_compute_s"] > 0


def test_kv_capacity_drops_by_exactly_the_reserved_slots() -> None:
    base = resolve(load_config(None, [])).memory
    cfg = load_config(None, ["workload.lora={num_adapters: 10}", "lora.max_loras=8"])
    lora = resolve(cfg).memory
    spec = load_model("llama-3.1-8b")
    one = adapter_bytes_per_device(spec, cfg.lora.target_modules, 16, "bf16", 1, 32)
    # rank · (d_in + d_out) per linear and layer, bf16: q, o: 4096+4096; k, v: 4096+1024;
    # gate, up, down: 4096+14336.
    per_layer = 16 * (2 * 8192 + 2 * 5120 + 3 * 18432)
    assert one == per_layer * 32 * 2
    assert lora.lora_gib * 2**30 == pytest.approx(8 * one)
    assert lora.kv_cache_gib == pytest.approx(base.kv_cache_gib - lora.lora_gib, abs=1e-12)
    assert lora.num_blocks < base.num_blocks


def test_tp_shards_adapters() -> None:
    spec = load_model("llama-3.1-70b")
    targets = LoraConfig().target_modules
    whole = adapter_bytes_per_device(spec, targets, 16, "bf16", 1, spec.num_layers)
    split = adapter_bytes_per_device(spec, targets, 16, "bf16", 4, spec.num_layers)
    assert whole / 4 < split < whole  # one side of each linear stays whole


def test_slots_evict_unused_lru_and_wait_when_pinned() -> None:
    h100 = load_device("h100-sxm")
    load_s, disk_s = adapter_load_seconds(h100, 1e6), disk_read_seconds(1e6, 2.0)
    slots = AdapterSlots(LoraConfig(max_loras=2, max_cpu_loras=2), load_s, disk_s)
    assert slots.ready("a", set()) and slots.ready("b", set())
    assert not slots.ready("c", {"a", "b"})  # both slots used by running requests
    assert slots.ready("c", {"b"})  # evicts a
    assert list(slots.resident) == ["b", "c"]
    assert slots.ready("a", set())  # evicts b; a left the 2-adapter host cache when c came
    assert slots.stats.loads == 4
    assert slots.stats.disk_loads == 4
    assert slots.ready("c", set())  # still resident: no load
    assert slots.stats.loads == 4
    roomy = AdapterSlots(LoraConfig(max_loras=1), load_s, disk_s)
    for name in ("a", "b", "a"):
        assert roomy.ready(name, set())
    assert (roomy.stats.loads, roomy.stats.disk_loads) == (3, 2)  # a came back from host memory
    assert slots.take_seconds() > 0
    assert slots.take_seconds() == 0.0


def test_zipf_popularity() -> None:
    p = adapter_popularity(WorkloadLoraConfig(num_adapters=100, alpha=1.0))
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(2.0)
    assert np.all(np.diff(p) < 0)


def test_requests_table_names_the_adapter(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    args = ["run", "--out", str(tmp_path), "--quiet", "--set", "workload.num_requests=20"]
    args += ["--set", "workload.lora={num_adapters: 3, popularity: uniform}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    names = set(pq.read_table(tmp_path / "requests.parquet").column("lora").to_pylist())
    assert names <= {"lora-0", "lora-1", "lora-2"} and names


BAD = [
    (["workload.lora={num_adapters: 10, rank: 32}"], "exceeds lora.max_lora_rank=16"),
    (["workload.lora={num_adapters: 0}"], "workload.lora.num_adapters"),
    (["lora.max_loras=0"], "lora.max_loras"),
    (["lora.target_modules=[qkv]"], "lora.target_modules"),
    (["workload.lora={num_adapters: 4}", "cluster.pipeline_parallel=2"], "not yet supported"),
]


@pytest.mark.parametrize(("sets", "message"), BAD)
def test_bad_lora_settings_are_one_line_errors(
    sets: list[str], message: str, tmp_path: Path
) -> None:
    assert_one_line_error(sets, message, tmp_path)


def test_cli_shows_lora_and_speculation_lines(tmp_path: Path) -> None:
    args = ["run", "--out", str(tmp_path), "--set", "workload.num_requests=10"]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0
    assert "LoRA adapters" not in plain.output and "speculation" not in plain.output
    args += ["--set", "workload.lora={num_adapters: 3}", "--set", "speculative.method=ngram"]
    both = CliRunner().invoke(app, args)
    assert both.exit_code == 0, both.output
    assert "LoRA adapters" in both.output and "tokens/step" in both.output


def write_trace(tmp_path: Path, kind: str) -> Path:
    if kind == "csv":
        path = tmp_path / "t.csv"
        rows = ["arrival_s,input_tokens,output_tokens,lora"]
        rows += [
            f"{i * 0.1},{100 + i},{20},{'' if i % 3 == 0 else f'ad-{i % 2}'}" for i in range(12)
        ]
        path.write_text("\n".join(rows) + "\n")
        return path
    path = tmp_path / "t.jsonl"
    lines = []
    for i in range(12):
        lora = None if i % 3 == 0 else f"ad-{i % 2}"
        record = {"arrival_time_ns": i * 100_000_000, "input_toks": 100 + i, "output_toks": 20}
        lines.append(json.dumps({**record, "lora": lora}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_trace_lora_column(tmp_path: Path, kind: str) -> None:
    path = write_trace(tmp_path, kind)
    sets = ["workload.kind=trace", f"workload.trace.path={path}", f"workload.trace.format={kind}"]
    requests = load_requests(load_config(None, sets))
    assert [r.lora for r in requests[:3]] == [None, "ad-1", "ad-0"]
    with pytest.raises(ConfigError, match=r"lora\.enabled: true"):
        simulate(load_config(None, sets))
    summary = simulate(load_config(None, [*sets, "lora.enabled=true", "lora.max_loras=1"])).summary
    assert summary["requests_completed"] == 12
    assert summary["lora_adapter_loads"] >= 2
    assert summary["memory"]["lora_gib"] > 0


def test_trace_lora_must_be_a_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"arrival_time_ns": 0, "input_toks": 5, "output_toks": 2, "lora": 3})
    )
    sets = ["workload.kind=trace", f"workload.trace.path={path}"]
    with pytest.raises(
        TraceError, match=r"bad\.jsonl:1: key 'lora' is 3, expected an adapter name"
    ):
        load_requests(load_config(None, sets))


def test_adapter_copies_follow_the_host_link_and_the_disk() -> None:
    h100 = load_device("h100-sxm")
    host = h100.links.host
    one_gb = adapter_load_seconds(h100, 1e9) - host.latency_us * 1e-6
    assert one_gb == pytest.approx(1.0 / host.bandwidth_gbps)
    assert disk_read_seconds(4e9, 2.0) == pytest.approx(2.0)


def test_adapters_stay_16_bit_under_fp8_weights() -> None:
    """An fp8 model's LoRA adapters are 16-bit (what memory counts, model/lora.py): their
    shrink/expand GEMMs read 16-bit weights on the bf16 curve, as in the bf16 model."""
    from llmservingsim.build import build_timer
    from llmservingsim.perf.lora import LoraCompute

    costs = []
    for dtype in ("bf16", "fp8"):
        cfg = load_config(
            None, [f"dtype={dtype}", "kv_dtype=bf16", "workload.lora={num_adapters: 4}"]
        )
        scenario = resolve(cfg)
        timer = build_timer(scenario, scenario.pools[0], 0)
        lora = LoraCompute(scenario.model, cfg.lora.target_modules, scenario.adapter_rank, timer)
        costs.append(lora.cost((3, 1)))
    bf16, fp8 = costs
    assert (fp8.seconds, fp8.flops, fp8.bytes) == pytest.approx(
        (bf16.seconds, bf16.flops, bf16.bytes)
    )
