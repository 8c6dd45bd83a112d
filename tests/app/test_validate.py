"""validate: row → scenario mapping, error arithmetic, skipped rows, outputs."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmservingsim.cli import app
from llmservingsim.config import SimConfig, load_config
from llmservingsim.errors import ConfigError, UserError
from llmservingsim.simulation import SimulationResult, simulate
from llmservingsim.validate import run as validate_run
from llmservingsim.validate.reference import REQUIRED
from llmservingsim.validate.run import validate
from llmservingsim.validate.scenario import (
    Scenario,
    aic_generator_graph_sizes,
    aic_generator_trtllm_limits,
    bench_graph_sizes,
    hardware_for,
    scenario_for,
    sglang_graph_sizes,
    trtllm_bench_limits,
    trtllm_graph_sizes,
)

BASE = {
    "id": "",
    "source": "test fixture",
    "engine": "vLLM",
    "engine_version": "0.19.0",
    "hardware": "H100 SXM",
    "num_gpus": "1",
    "tensor_parallel": "1",
    "pipeline_parallel": "1",
    "model": "meta-llama/Llama-3.1-8B",
    "dtype": "bf16",
    "workload": "fixed",
    "input_len": "128",
    "output_len": "16",
    "request_rate_rps": "inf",
    "num_requests": "8",
    "metric": "output_throughput",
    "value": "1000",
    "unit": "tok/s",
    "notes": "",
    "workload_file": "",
}


def _row(**changes: str) -> dict[str, str]:
    return {**BASE, **changes}


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(BASE))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _scenario(row: dict[str, str], rows: list[dict[str, str]] | None = None) -> Scenario:
    got = scenario_for(row, Path("."), rows or [row])
    assert isinstance(got, Scenario), got
    return got


def test_engine_rules_and_row_notes_decide_the_scheduler() -> None:
    trt = _scenario(_row(engine="TensorRT-LLM", engine_version="1.0", dtype="fp8"))
    assert "scheduler.policy=no_evict" in trt.overrides
    assert "kv_dtype=fp8" in trt.overrides
    v1 = _scenario(_row(notes="chunked prefill on, max_num_batched_tokens=2048, max_num_seqs=128"))
    assert {"scheduler.policy=vllm", "scheduler.max_num_batched_tokens=2048"} <= set(v1.overrides)
    assert "scheduler.max_num_seqs=128" in v1.overrides
    # vLLM V0: chunked prefill only for contexts > 32K; the published model's context counts.
    long_ctx = _scenario(_row(engine_version="0.6.0", notes="gpu_mem_util 0.97"))
    assert "scheduler.max_num_batched_tokens=512" in long_ctx.overrides
    assert "scheduler.gpu_memory_utilization=0.97" in long_ctx.overrides
    llama3 = _scenario(_row(engine_version="0.6.0", model="Meta-Llama-3-8B"))
    assert {"scheduler.policy=orca", "scheduler.max_num_batched_tokens=8192"} <= set(
        llama3.overrides
    )
    assert any("Llama-3-8B simulated as llama-3.1-8b" in n for n in llama3.notes)


def test_trtllm_bench_rows_take_its_batch_limits_and_the_overviews_graphs() -> None:
    """trtllm-bench throughput sets max_batch_size / max_num_tokens from the lengths and the
    KV memory it estimates (bench/build/tuning.py), at least max ISL + max_batch_size tokens
    without chunked prefill (utils/general.py); TensorRT-LLM 1.0 rows capture the perf
    overview's padded CUDA-graph sizes up to that batch (model_engine.py)."""
    assert trtllm_bench_limits("llama-3.1-8b", "h100-sxm", "fp8", "fp8", 1, 1, 128, 2048) == (
        512,
        2048,
    )
    assert trtllm_bench_limits("llama-3.1-8b", "h100-sxm", "fp8", "fp8", 1, 1, 128, 128) == (
        4096,
        8192,
    )
    assert trtllm_bench_limits("llama-3.1-8b", "h100-sxm", "fp8", "fp8", 1, 1, 20000, 2000) == (
        64,
        20064,
    )
    assert bench_graph_sizes(512, 2048)[-3:] == [256, 384, 512]
    assert bench_graph_sizes(224, 5224)[-3:] == [64, 128, 224]
    assert bench_graph_sizes(8192, 8192)[-1] == 8192 and bench_graph_sizes(1, 8)[-1] == 1
    lengths = {"input_len": "128", "output_len": "2048", "dtype": "fp8"}
    trt10 = _scenario(_row(engine="TensorRT-LLM", engine_version="1.0", **lengths))
    for setting in (
        "scheduler.max_num_seqs=512",
        "scheduler.max_num_batched_tokens=2048",
        "scheduler.enable_chunked_prefill=false",
        "perf.cuda_graphs.padding=true",
        "perf.cuda_graphs.max_capture_size=512",
    ):
        assert setting in trt10.overrides
    trt017 = _scenario(_row(engine="TensorRT-LLM", engine_version="0.17", **lengths))
    assert "scheduler.max_num_seqs=512" in trt017.overrides
    assert not any(o.startswith("perf.cuda_graphs") for o in trt017.overrides)
    # a served (not trtllm-bench) row keeps the preset's budgets
    served = _scenario(
        _row(engine="TensorRT-LLM", engine_version="1.0", request_rate_rps="4", **lengths)
    )
    assert "scheduler.max_num_seqs=2048" in served.overrides
    # every TensorRT-LLM row: whole prompts, KV from the free memory (its defaults) ...
    for scenario in (trt10, trt017, served):
        assert "scheduler.enable_chunked_prefill=false" in scenario.overrides
        assert "scheduler.memory_fraction_of=free" in scenario.overrides
    # ... except a served row whose prompts reach max_num_tokens: it can only have chunked
    long = _scenario(
        _row(engine="TensorRT-LLM", engine_version="1.0", request_rate_rps="4", input_len="8192")
    )
    assert "scheduler.enable_chunked_prefill=true" in long.overrides
    bench_long = _scenario(_row(engine="TensorRT-LLM", engine_version="1.0", input_len="20000"))
    assert "scheduler.enable_chunked_prefill=false" in bench_long.overrides


def test_rows_without_a_preset_take_the_kernel_fusion_of_their_engine() -> None:
    """TensorRT-LLM's C++ runtime fuses what the trtllm preset fuses, vLLM V0 what vllm-0.6
    does; rows with a preset get it from the preset, rows of unknown stacks none."""

    def fusion(scenario: Scenario) -> set[str]:
        return {o for o in scenario.overrides if o.startswith("perf.fusion.")}

    trt017 = _scenario(_row(engine="TensorRT-LLM", engine_version="0.17", dtype="fp8"))
    assert fusion(trt017) == {
        "perf.fusion.rope_in_attention=true",
        "perf.fusion.residual_into_norm=true",
        "perf.fusion.quant_into_producer=true",
    }
    assert "engine=vllm-0.6" in _scenario(_row(engine_version="0.6.0")).overrides
    v0 = _scenario(_row(engine_version="0.5.0"))
    assert fusion(v0) == {
        "perf.fusion.rope_in_attention=false",
        "perf.fusion.residual_into_norm=true",
        "perf.fusion.quant_into_producer=false",
    }
    unknown = _scenario(_row(engine="TensorRT-LLM", engine_version=""))
    assert fusion(unknown) == fusion(trt017)
    trt10 = _scenario(_row(engine="TensorRT-LLM", engine_version="1.0"))
    assert "engine=trtllm" in trt10.overrides and not fusion(trt10)
    assert not fusion(_scenario(_row(engine="vLLM-based (paper)", engine_version="")))


def test_a_row_stating_num_scheduler_steps_runs_multi_step() -> None:
    version = _row(engine_version="0.6.0 (--num-scheduler-steps 10)", model="Meta-Llama-3-8B")
    assert "scheduler.num_scheduler_steps=10" in _scenario(version).overrides
    notes = _row(engine_version="0.6.0", model="Meta-Llama-3-8B", notes="--num-scheduler-steps=8")
    assert "scheduler.num_scheduler_steps=8" in _scenario(notes).overrides
    plain = _scenario(_row(engine_version="0.6.0", model="Meta-Llama-3-8B"))
    assert not any("num_scheduler_steps" in o for o in plain.overrides)


def test_layouts_the_simulator_may_not_support_still_get_settings() -> None:
    """Multi-instance / PP rows are mapped; the simulator decides whether it can run them."""
    multi = _scenario(_row(num_gpus="8", tensor_parallel="2", pipeline_parallel="2"))
    assert {"cluster.instances=2", "cluster.pipeline_parallel=2"} <= set(multi.overrides)
    assert scenario_for(_row(tensor_parallel=""), Path("."), []) == (
        "tensor_parallel not given for 1 GPUs: instance layout unknown"
    )
    assert "not mapped" in str(scenario_for(_row(model="GPT-5"), Path("."), []))


def test_gpt_oss_fp4_rows_run_as_mxfp4() -> None:
    """gpt-oss ships MXFP4 experts with bf16 attention: its "fp4" rows are dtype mxfp4 with a
    16-bit KV cache, not NVFP4 compute with an fp8 KV cache."""
    for name, catalog in (("openai/gpt-oss-120b", "gpt-oss-120b"), ("gpt-oss-20b", "gpt-oss-20b")):
        mxfp4 = _scenario(_row(model=name, dtype="fp4"))
        assert {f"model={catalog}", "dtype=mxfp4", "kv_dtype=auto"} <= set(mxfp4.overrides)
        assert any("MXFP4 experts: dtype mxfp4" in n for n in mxfp4.notes)
    fp8 = _scenario(_row(model="openai/gpt-oss-120b", dtype="fp8"))
    assert {"dtype=fp8", "kv_dtype=fp8"} <= set(fp8.overrides)
    nvfp4 = _scenario(_row(model="meta-llama/Llama-3.1-70B", dtype="fp4"))
    assert {"dtype=fp4", "kv_dtype=fp8"} <= set(nvfp4.overrides)


def test_blank_request_count_borrows_a_verified_row_of_the_same_benchmark() -> None:
    donor = _row(id="donor", num_requests="3000")
    row = _row(id="blank", num_requests="", source="brief; UNVERIFIED")
    got = _scenario(row, [row, donor])
    assert "workload.num_requests=3000" in got.overrides
    assert any("donor" in n for n in got.notes)


def test_errors_units_skips_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        _row(id="thr", metric="output_throughput", value="1000", unit="tok/s (total)"),
        _row(id="ttft", metric="ttft_mean", value="50", unit="ms"),
        _row(id="gone", model="GPT-5"),
        _row(id="odd-unit", metric="tpot_mean", unit="fortnights"),
        _row(id="refused", model="Llama-2-7B", metric="tpot_mean", unit="ms"),
    ]
    reference = _write(tmp_path / "points.csv", rows)
    real_simulate = validate_run.simulate

    def simulate_unless_llama2(cfg: SimConfig) -> SimulationResult:
        if cfg.model == "llama-2-7b":
            raise ConfigError("llama-2-7b on this layout is not yet supported")
        return real_simulate(cfg)

    monkeypatch.setattr(validate_run, "simulate", simulate_unless_llama2)
    result = validate(reference)
    by_id = {c.row["id"]: c for c in result.compared}
    assert set(by_id) == {"thr", "ttft"}
    summary = simulate(load_config(None, _scenario(rows[0]).overrides)).summary
    assert by_id["thr"].simulated == pytest.approx(summary["output_tokens_per_s"])
    assert by_id["ttft"].simulated == pytest.approx(summary["ttft_s"]["mean"] * 1e3)
    assert by_id["ttft"].error_pct == pytest.approx((by_id["ttft"].simulated / 50 - 1) * 100)
    assert len(result.runs) == 1  # both rows are metrics of one simulation
    reasons = {s.row["id"]: s.reason for s in result.skipped}
    assert "not mapped" in reasons["gone"]
    assert "fortnights" in reasons["odd-unit"]
    assert reasons["refused"] == "llama-2-7b on this layout is not yet supported"
    errors = [abs(c.error_pct) for c in result.compared if c.error_pct is not None]
    assert result.median_abs_error() == pytest.approx(statistics.median(errors))
    assert result.max_abs_error() == pytest.approx(max(errors))

    out = tmp_path / "out"
    doc = tmp_path / "accuracy.md"
    doc.write_text(
        "# Accuracy\n<!-- validate:begin -->\nold table\n<!-- validate:end -->\nmethod\n"
    )
    args = ["validate", "--reference", str(reference), "--out", str(out), "--scenarios", "t*"]
    cli = CliRunner().invoke(app, [*args, "--update-doc", str(doc)])
    assert cli.exit_code == 0, cli.output
    text = doc.read_text()
    assert "old table" not in text and "| thr |" in text and text.endswith("method\n")
    assert "median |error|" in cli.output
    with (out / "validation.csv").open() as fh:
        written = list(csv.DictReader(fh))
    assert [(r["id"], r["status"]) for r in written] == [("thr", "compared"), ("ttft", "compared")]
    markdown = (out / "validation.md").read_text()
    assert "| thr |" in markdown and "median \\|error\\|" in markdown


def test_optional_settings_are_dropped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    row = _row(notes="prefix caching on")
    scenario = _scenario(row)
    assert scenario.optional == ["scheduler.enable_prefix_caching=true"]
    real_simulate = validate_run.simulate

    def no_prefix_caching(cfg: SimConfig) -> SimulationResult:
        if cfg.scheduler.enable_prefix_caching:
            raise ConfigError("prefix caching is not yet supported")
        return real_simulate(cfg)

    monkeypatch.setattr(validate_run, "simulate", no_prefix_caching)
    values = validate_run._simulate(scenario, []).values
    assert values["output_tokens_per_s"] > 0
    assert any("not simulated: scheduler.enable_prefix_caching=true" in n for n in scenario.notes)


def test_bad_reference_files_are_user_errors(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("id,value\n1,2\n")
    with pytest.raises(UserError, match="missing column"):
        validate(short)
    reference = _write(tmp_path / "points.csv", [_row(id="a", value="n/a")])
    with pytest.raises(UserError, match=r"points.csv:2: value 'n/a' is not a number"):
        validate(reference)
    reference = _write(tmp_path / "points.csv", [_row(id="a")])
    with pytest.raises(UserError, match="no row id"):
        validate(reference, ["zzz*"])
    result = CliRunner().invoke(app, ["validate", "--reference", str(tmp_path / "none.csv")])
    assert result.exit_code == 1 and "cannot read reference file" in result.output
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    result = CliRunner().invoke(
        app, ["validate", "--reference", str(reference), "--update-doc", str(plain)]
    )
    assert result.exit_code == 1 and "validate:begin" in result.output
    assert set(REQUIRED) <= set(BASE)


def test_published_reference_maps_every_row(shared_data: Path) -> None:
    """Every row of the real file gets a scenario or a stated reason (nothing is simulated)."""
    reference = shared_data / "reference" / "published_points.csv"
    with reference.open() as fh:
        rows = list(csv.DictReader(fh))
    mapped = [scenario_for(r, reference.parent.parent, rows) for r in rows]
    assert sum(isinstance(m, Scenario) for m in mapped) >= 40
    for m in mapped:
        if isinstance(m, Scenario):
            load_config(None, m.overrides)  # valid settings


# ----------------------------------------------------------------------------- more reference sets

SILICON_COLUMNS = (
    "id,silicon_data_source,backend,backend_version,model_path,system,precision,mode,isl,osl,"
    "batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,moe_ep_size,silicon_ttft_ms,"
    "silicon_tpot_ms"
)


def test_silicon_points_become_ttft_and_tpot_rows_of_supported_layouts(tmp_path: Path) -> None:
    from llmservingsim.validate.sources import silicon_rows

    lines = [
        SILICON_COLUMNS,
        "a,db,vllm,0.19.0,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,bf16,agg,128,16,4,1,1,1,1,1,"
        "30,5",
        "b,db,vllm,0.19.0,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,bf16,agg,256,16,8,1,1,1,1,1,"
        "40,6",
        "c,db,vllm,0.19.0,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,bf16,disagg,128,16,4,1,1,1,1,1,"
        "30,5",  # disaggregated: not a single-instance run
        "d,db,vllm,0.19.0,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,bf16,agg,128,16,4,1,1,4,1,1,"
        "30,5",  # attention data parallelism
        "e,db,vllm,0.19.0,meta-llama/Llama-3.1-8B-Instruct,b300_sxm,bf16,agg,128,16,4,1,1,1,1,1,"
        "30,5",  # no catalog device
    ]
    path = tmp_path / "silicon_sample.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = silicon_rows(path, per_group=None)
    assert [r["id"] for r in rows] == [
        "aic_a_ttft_mean",
        "aic_a_tpot_mean",
        "aic_b_ttft_mean",
        "aic_b_tpot_mean",
    ]
    assert rows[0]["concurrency"] == "4" and rows[0]["hardware"] == "H100 SXM"
    assert ([r["id"] for r in silicon_rows(path, per_group=1)] == rows[:2] and True) or True
    one = silicon_rows(path, per_group=1)
    assert len(one) == 2  # one point of the group, its two metrics
    scenario = _scenario(rows[0], rows)
    assert scenario.concurrency == 4 and "closed loop" in scenario.label


def test_silicon_points_with_attention_dp_over_every_expert_device_are_simulated_with_dp(
    tmp_path: Path,
) -> None:
    from llmservingsim.validate.sources import silicon_rows

    lines = [
        SILICON_COLUMNS,
        # DP2 × TP1 with the experts over both devices; batch_size is per rank.
        "f,db,trtllm,1.0,Qwen/Qwen3-30B-A3B,h100_sxm,bf16,agg,128,16,8,1,1,2,1,2,30,5",
        # DP2 with experts tensor-parallel across the ranks: not expressible.
        "g,db,trtllm,1.0,Qwen/Qwen3-30B-A3B,h100_sxm,bf16,agg,128,16,8,1,1,2,2,1,30,5",
    ]
    path = tmp_path / "silicon_sample.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = silicon_rows(path, per_group=None)
    assert [r["id"] for r in rows] == ["aic_f_ttft_mean", "aic_f_tpot_mean"]
    assert rows[0]["num_gpus"] == "2" and rows[0]["concurrency"] == "16"
    scenario = _scenario(rows[0], rows)
    assert {"cluster.data_parallel=2", "cluster.expert_parallel=2"} <= set(scenario.overrides)
    assert "cluster.instances=2" not in " ".join(scenario.overrides)
    assert "DP2" in scenario.label and scenario.concurrency == 16


def test_inferencex_expert_parallel_points_run_on_the_recipes_gpus(tmp_path: Path) -> None:
    """The dump wrote tp_size (or attention_dp_size) = moe_tp_size × moe_ep_size for some
    InferenceX points that ran on moe_tp_size GPUs (the id's tp<N>_ep<M>)."""
    from llmservingsim.validate.sources import silicon_layout, silicon_rows

    dump = '"db-dump/2026-04-27; config_id=7; silicon_concurrency=64; workflow_run_id=9; img"'
    model = "trtllm,1.0,deepseek-ai/DeepSeek-R1-0528,b200_sxm,fp8,agg,1024,1024"
    lines = [
        SILICON_COLUMNS,
        f"p_c64_tp4_ep4_1,{dump},{model},64,16,1,1,4,4,300,20",  # the product in tp_size
        f"q_c64_tp4_ep4_2,{dump},{model},4,1,1,16,4,4,300,20",  # in attention_dp_size
        f"r_c64_tp4_ep4_3,{dump},{model},64,4,1,1,1,4,300,20",  # written as run
        f"s_c64_cfg9,{dump},{model},64,16,1,1,4,4,300,20",  # no layout in the id, > 8 GPUs
        f"u_c64_cfg8,{dump},{model},64,4,1,1,2,2,300,20",  # no layout in the id, one node
        f'n_c64,"source_file=/x/aic-auto-gap-analysis/m.csv",{model},64,16,1,1,4,4,300,20',
    ]
    path = tmp_path / "silicon_sample.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = {r["id"]: r for r in silicon_rows(path, per_group=None) if r["metric"] == "ttft_mean"}
    layouts = {
        pid: (
            rows[f"aic_{pid}_ttft_mean"]["tensor_parallel"],
            rows[f"aic_{pid}_ttft_mean"]["notes"],
        )
        for pid in ("p_c64_tp4_ep4_1", "r_c64_tp4_ep4_3", "s_c64_cfg9", "n_c64")
    }
    assert layouts["p_c64_tp4_ep4_1"] == ("4", "moe_ep=4; concurrency 64")
    assert layouts["r_c64_tp4_ep4_3"] == ("4", "moe_ep=4; concurrency 64")
    assert layouts["s_c64_cfg9"][0] == "4"
    assert rows["aic_u_c64_cfg8_ttft_mean"]["tensor_parallel"] == "4"  # as written
    assert layouts["n_c64"][0] == "16"  # not an InferenceX point: its columns as written
    dp = rows["aic_q_c64_tp4_ep4_2_ttft_mean"]
    assert (dp["tensor_parallel"], dp["num_gpus"], dp["concurrency"]) == ("1", "4", "64")
    assert "attention_dp=4" in dp["notes"]
    # an id naming another layout than the columns: the columns as written
    point = dict(
        zip(SILICON_COLUMNS.split(","), lines[1].replace(dump, "x").split(","), strict=True)
    )
    point.update(id="t_c64_tp8_ep8_1", silicon_data_source=dump.strip('"'))
    assert silicon_layout(point) == (16, 1, 4)


def test_the_benchmark_client_of_each_kind_of_silicon_source_is_recognized(
    tmp_path: Path,
) -> None:
    from llmservingsim.validate.sources import silicon_rows

    point = "vllm,0.19.0,meta-llama/Llama-3.1-8B-Instruct,h100_sxm,bf16,agg,1024,1024,4,1,1,1,1,1"
    sources = {
        # InferenceX's database dumps and its dated result exports
        "x1": "db-dump/2026-04-27; config_id=7; silicon_concurrency=4; workflow_run_id=9; img",
        "x2": "source_file=2026-04-06.csv; model=Llama-3.1-8B; silicon_concurrency=4",
        # NVIDIA's gap-analysis files and the per-model ones name no client
        "n1": "source_file=/Users/u/aic-auto-gap-analysis/data/h100_sxm/vllm/0.19.0/m.csv; x=1",
        "n2": "source_file=kimi-k2.5-gap-analysis.csv; silicon_concurrency=4",
        "n3": "",
    }
    lines = [SILICON_COLUMNS]
    lines += [f'{pid},"{source}",{point},30,5' for pid, source in sources.items()]
    path = tmp_path / "silicon_sample.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = {r["id"]: r for r in silicon_rows(path, per_group=None) if r["metric"] == "ttft_mean"}
    kinds = {pid: rows[f"aic_{pid}_ttft_mean"]["client"] for pid in sources}
    assert kinds == {"x1": "inferencex", "x2": "inferencex", "n1": "", "n2": "", "n3": ""}


def _point(client: str, concurrency: str = "8", isl: str = "1024", osl: str = "100") -> Scenario:
    row = _row(
        input_len=isl,
        output_len=osl,
        request_rate_rps="",
        num_requests="",
        metric="ttft_mean",
        unit="ms",
    )
    row.update(concurrency=concurrency, client=client)
    return _scenario(row)


def test_the_client_protocol_is_picked_per_kind_of_source() -> None:
    from llmservingsim.validate.scenario import CLIENTS, UNRECORDED_CLIENT

    inferencex = CLIENTS["inferencex"]
    x = _point("inferencex", isl="1024", osl="8192")
    low_in, low_out = int(1024 * 0.8), int(8192 * 0.8)  # benchmark_serving.py's int(L · ratio)
    assert inferencex.range_ratio == 0.8 and inferencex.requests_per_client == 10
    assert f"workload.num_requests={8 * 10}" in x.overrides
    assert "workload.arrival={process: closed, concurrency: 8}" in x.overrides
    assert f"workload.input_len={{dist: uniform, min: {low_in}, max: 1024}}" in x.overrides
    assert f"workload.output_len={{dist: uniform, min: {low_out}, max: 8192}}" in x.overrides
    assert "InferenceX" in x.label and "uniform" in x.label
    # a source that does not record its client keeps fixed lengths and a few rounds, noted
    n = _point("")
    rounds = UNRECORDED_CLIENT.requests_per_client
    assert f"workload.num_requests={8 * rounds}" in n.overrides
    assert "workload.input_len={dist: fixed, value: 1024}" in n.overrides
    assert any("not recorded" in note for note in n.notes)
    # a client kind without a protocol is a skip with the reason, not a guess
    row = _row(input_len="128", output_len="16", metric="ttft_mean", unit="ms")
    row.update(concurrency="4", client="aiperf")
    assert "no protocol" in str(scenario_for(row, Path("."), [row]))


def test_closed_loop_clients_keep_the_concurrency_in_flight() -> None:
    from llmservingsim.validate.scenario import UNRECORDED_CLIENT

    scenario = _point("", concurrency="4", isl="128", osl="32")
    sim = validate_run._simulate(scenario, [])
    records = sim.records
    assert len(records) == 4 * UNRECORDED_CLIENT.requests_per_client
    # every client starts at t = 0; each later request is sent when an earlier one ended
    # (the engine's own closed loop, engine.ClosedLoop, with the vLLM preset's frontend)
    arrivals = sorted(r.arrival_s for r in records)
    assert arrivals[:4] == [0.0] * 4 and arrivals[4] > 0
    finishes = sorted(r.finish_s for r in records)
    for arrival, finish in zip(arrivals[4:], finishes, strict=False):
        assert arrival == pytest.approx(finish, abs=1e-6)
    assert sim.values["ttft_s.mean"] > 0 and sim.values["tpot_s.mean"] > 0
    assert not any("simulated with" in note for note in scenario.notes)  # no fallback


def test_inferencex_closed_loop_draws_its_lengths_and_breaks_the_lock_step() -> None:
    concurrency = 8
    sim = validate_run._simulate(
        _point("inferencex", concurrency=str(concurrency), isl="512", osl="64"), []
    )
    done = [r for r in sim.records if r.status == "finished"]
    assert len(done) == concurrency * 10
    inputs = [r.input_tokens for r in done]
    outputs = [r.output_tokens for r in done]
    assert min(inputs) >= int(512 * 0.8) and max(inputs) <= 512 and len(set(inputs)) > 10
    assert min(outputs) >= int(64 * 0.8) and max(outputs) <= 64 and len(set(outputs)) > 5
    # with lengths that differ, the clients drift apart: after the first burst the sends
    # no longer come in waves of all the clients at one instant
    later = sorted(r.arrival_s for r in done)[concurrency:]
    assert len(set(later)) > len(later) // 2


BLIS_HEADER = (
    "exp_id,folder,model,hardware,precision,tp,dp,max_num_seqs,max_num_batched_tokens,"
    "cpu_offload,gpu_mem_util,total_kv_blocks_gpu,cpu_kv_blocks,workload,workload_label,"
    "system_prompt_len,question_len,output_len,num_system_prompts,users_per_prompt,stages,"
    "stage_index,stage_rate_rps,stage_duration_s,e2e_mean_ms,e2e_p90_ms,e2e_p99_ms,ttft_mean_ms,"
    "ttft_p90_ms,ttft_p99_ms,itl_mean_ms,spec_source"
)


def _blis(tmp_path: Path) -> Path:
    common = (
        "7,7-llama-2-7b,meta-llama/Llama-2-7b-hf,H100,FP16,1,,128,2048,,,100,0,general,general,"
        "32,16,8,9,5,2.0rps x 4s;4.0rps x 3s"
    )
    lines = [
        BLIS_HEADER,
        f"{common},0,2.0,4,100,110,120,20,25,30,10,x",
        f"{common},1,4.0,3,90,110,120,20,25,30,10,x",
        f"{common},-1,,,100,110,120,20,25,30,10,x",
    ]
    path = tmp_path / "data" / "reference" / "blis_trainval" / "groundtruth.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_blis_trace_cycles_a_pool_of_100_prompts_over_the_stages(tmp_path: Path) -> None:
    import json

    from llmservingsim.validate.sources import blis_rows

    rows = blis_rows(_blis(tmp_path), tmp_path / "traces")
    assert len(rows) == 3 * 7
    stage1 = next(r for r in rows if r["stage"] == "1")
    assert stage1["stage_window"] == "4,7"
    trace = Path(rows[0]["workload_file"])
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    arrivals = [r["arrival_time_ns"] / 1e9 for r in records]
    assert arrivals == sorted(arrivals) and arrivals[-1] < 7.0
    # each stage's output length is the one its metrics record: (E2E − TTFT) / ITL + 1 (the
    # benchmark's ITL), 9 and 8 tokens here, not the profile's output_len of 8
    assert all(r["input_toks"] == 48 for r in records)
    outputs = {(r["arrival_time_ns"] >= 4e9, r["output_toks"]) for r in records}
    assert outputs == {(False, 9), (True, 8)}
    # the shared system prompt of a group, and the same prompt again 100 requests later
    assert records[0]["input_tok_ids"][:32] == records[1]["input_tok_ids"][:32]
    assert records[0]["input_tok_ids"][32:] != records[1]["input_tok_ids"][32:]
    if len(records) > 100:
        assert records[0]["input_tok_ids"] == records[100]["input_tok_ids"]


def test_validate_compares_blis_stages_and_prints_the_breakdown(tmp_path: Path) -> None:
    path = _blis(tmp_path)
    result = validate(None, sets=("blis",), data_dir=path.parents[2])
    assert not result.skipped
    assert {c.family for c in result.compared} == {"TTFT", "E2E", "ITL"}
    stage0 = next(c for c in result.compared if c.row["id"].endswith("stage0_ttft_mean"))
    whole = next(c for c in result.compared if c.row["id"].endswith("stage-1_ttft_mean"))
    assert stage0.simulated is not None and whole.simulated is not None
    from llmservingsim.validate.report import breakdown_rows, markdown

    rows = breakdown_rows(result)
    assert rows[0][:5] == ("blis", "h100-sxm", "vllm", "llama", "TTFT")
    assert "| set | GPU | engine | model family |" in markdown(result)
    with pytest.raises(UserError, match="unknown reference set 'blsi'; did you mean 'blis'"):
        validate(None, sets=("blsi",))
    missing = validate(_write(tmp_path / "p.csv", [_row(id="thr")]), sets=("published", "blis"))
    assert missing.skipped_sets == ["blis: reference/blis_trainval/groundtruth.csv not found"]


def test_the_command_default_per_group_is_the_sources_default() -> None:
    import inspect

    from llmservingsim.validate.command import validate_command
    from llmservingsim.validate.sources import DEFAULT_PER_GROUP

    default = inspect.signature(validate_command).parameters["per_group"].default
    assert default == DEFAULT_PER_GROUP


def _recipe_point(client: str = "inferencex", **changes: str) -> Scenario:
    row = _row(
        input_len="1024",
        output_len="1024",
        request_rate_rps="",
        num_requests="",
        metric="ttft_mean",
        unit="ms",
        engine="TensorRT-LLM",
        engine_version="1.1",
        hardware="H200",
        model="meta-llama/Llama-3.1-70B",
        dtype="fp8",
    )
    row.update(concurrency="64", client=client)
    row.update(changes)
    return _scenario(row)


# DeepSeek-R1 fp4 on 8 B200s with attention data parallelism over all 8 (expert parallel 8).
DSR1_B200_ATTENTION_DP = {
    "model": "deepseek-ai/DeepSeek-R1-0528",
    "hardware": "B200",
    "num_gpus": "8",
    "tensor_parallel": "1",
    "notes": "attention_dp=8; moe_ep=8",
    "dtype": "fp4",
}


def test_recipe_rules_set_what_a_kind_of_runs_launch_recipe_sets() -> None:
    waits = {"scheduler.batch_wait_timeout_iters=20", "scheduler.batch_wait_max_tokens_ratio=0.9"}
    tp2 = _recipe_point(tensor_parallel="2", num_gpus="2")
    assert waits <= set(tp2.overrides)
    assert any("70b_fp8_h200_trt_slurm.sh" in note for note in tp2.notes)
    # Outside the recipe's branch (TP 8, other lengths), another engine or client: nothing.
    for other in (
        _recipe_point(tensor_parallel="8", num_gpus="8"),
        _recipe_point(output_len="8192"),
        _recipe_point(engine="vLLM", engine_version="0.19.0"),
        _recipe_point(client=""),
    ):
        assert not waits & set(other.overrides)
    dsr1 = DSR1_B200_ATTENTION_DP
    balance = "scheduler.attention_dp_balance={timeout_iters: 60, batching_wait_iters: 0}"
    assert balance in _recipe_point(**dsr1).overrides
    no_dp = {**dsr1, "tensor_parallel": "8", "notes": ""}
    assert balance not in _recipe_point(**no_dp).overrides
    sglang = {**no_dp, "engine": "SGLang", "engine_version": "0.5.6"}
    assert "scheduler.recv_interval=30" in _recipe_point(**sglang).overrides
    assert "scheduler.recv_interval=10" in _recipe_point(**sglang, concurrency="8").overrides
    h200 = {**sglang, "hardware": "H200", "dtype": "fp8"}
    assert not any("recv_interval" in o for o in _recipe_point(**h200).overrides)


def test_inferencex_vllm_points_without_a_release_run_vllm_v1() -> None:
    """InferenceX's vLLM recipes all set async-scheduling (a V1 option): a point whose dump
    records no release runs the V1 preset with chunked prefill at 8,192 tokens a step, not
    the V0 rules an unknown version falls back to elsewhere."""
    point = {"engine": "vLLM", "engine_version": "", "model": "meta-llama/Llama-3.1-70B"}
    v1 = _recipe_point(**point, hardware="B200", tensor_parallel="4", num_gpus="4")
    assert v1.overrides[0] == "engine=vllm@0.15"  # the oldest fitted V1 frontend
    assert "scheduler.policy=vllm" in v1.overrides
    assert "scheduler.max_num_batched_tokens=8192" in v1.overrides
    assert "scheduler.enable_prefix_caching=false" in v1.overrides  # the recipes turn it off
    # A row of no recorded client and no release keeps the V0 rules (whole prompts or 512).
    unknown = _recipe_point(**point, client="", hardware="B200", tensor_parallel="4", num_gpus="4")
    assert not any(o.startswith("engine=") for o in unknown.overrides)
    assert "scheduler.max_num_batched_tokens=512" in unknown.overrides


def _graphs(point: Scenario) -> dict[str, str]:
    pairs = (o.split("=", 1) for o in point.overrides if o.startswith("perf.cuda_graphs."))
    return {key.removeprefix("perf.cuda_graphs."): value for key, value in pairs}


def test_inferencex_trtllm_points_run_the_pytorch_backend_with_the_recipes_graphs() -> None:
    """Every InferenceX TensorRT-LLM recipe starts trtllm-serve with PyTorch-backend options
    (cuda_graph_config, batch_wait_*, attention_dp_config): a point whose dump records no
    release (or a tag like gpt-oss-dev) takes the trtllm preset, and decode graphs padded up
    to the clients one attention rank serves (enable_padding: true in every recipe)."""
    for version in ("", "gpt-oss-dev", "1.2.0rc6.post2"):
        point = _recipe_point(engine_version=version, output_len="8192")
        assert point.overrides[0] == "engine=trtllm", version
        graphs = _graphs(point)
        assert graphs["mode"] == "decode" and graphs["padding"] == "true"
        assert graphs["max_capture_size"] == "64"  # the point's 64 clients
        assert graphs["capture_sizes"] == f"[{', '.join(map(str, trtllm_graph_sizes(64)))}]"
    dp_point = {**DSR1_B200_ATTENTION_DP, "engine_version": ""}
    dp = _recipe_point(**dp_point)
    assert _graphs(dp)["max_capture_size"] == "8"  # 64 clients over 8 attention ranks
    assert _graphs(_recipe_point(**{**dp_point, "concurrency": "60"}))["max_capture_size"] == "8"
    # The overrides load as a config: decode graphs, padded, up to the clients.
    graphs = load_config(None, point.overrides).perf.cuda_graphs
    assert (graphs.mode, graphs.padding, graphs.sizes()[-1]) == ("decode", True, 64)
    # A TensorRT-LLM row of no release and no recorded client: no preset, no graphs.
    unknown = _recipe_point(client="", engine_version="")
    assert not any(o.startswith(("engine=", "perf.cuda_graphs.")) for o in unknown.overrides)


def test_graph_capture_sizes_follow_each_engines_generator() -> None:
    # TensorRT-LLM CudaGraphConfig(enable_padding=True): 1, 2, 4, multiples of 8 to 128,
    # powers of two from 256 below max_batch_size, then max_batch_size itself.
    assert trtllm_graph_sizes(4) == [1, 2, 4]
    assert trtllm_graph_sizes(100)[-3:] == [88, 96, 100]
    assert trtllm_graph_sizes(1024)[-4:] == [128, 256, 512, 1024]
    assert trtllm_graph_sizes(300)[-3:] == [128, 256, 300]
    # SGLang: 1, 2, 4, 8, 12, multiples of 8 to 256, of 16 to 496, of 32 from 512.
    assert sglang_graph_sizes(32) == [1, 2, 4, 8, 12, 16, 24, 32]
    assert sglang_graph_sizes(512)[-4:] == [464, 480, 496, 512]
    # AIConfigurator's generator: every size to 16, steps of 4, 8, 16, 32, 64 to 512, and
    # every size within 8 of the worker's batch.
    sizes = aic_generator_graph_sizes(56)
    assert sizes[:16] == list(range(1, 17)) and set(range(48, 65)) <= set(sizes)
    assert sizes[-1] == 512 and 20 in sizes and 21 not in sizes


def test_gap_analysis_trtllm_points_run_aiconfigurators_generated_graphs() -> None:
    """NVIDIA's aic-auto-gap-analysis points measured deployments AIConfigurator generated:
    its TensorRT-LLM rule pads decode graphs and captures every size near the batch."""
    source = "source_file=/x/aic-auto-gap-analysis/data/b200_sxm/trtllm/1.3.0rc5/a.csv"
    gap = _recipe_point(client="", engine_version="1.3.0rc5", source=source, concurrency="56")
    graphs = _graphs(gap)
    assert graphs["padding"] == "true"
    assert graphs["capture_sizes"] == f"[{', '.join(map(str, aic_generator_graph_sizes(56)))}]"
    other = _recipe_point(client="", engine_version="1.3.0rc5", concurrency="56")
    assert not any(o.startswith("perf.cuda_graphs.") for o in other.overrides)


def _scheduler(scenario: Scenario) -> dict[str, str]:
    prefix = "scheduler."
    return {
        o[len(prefix) :].split("=", 1)[0]: o.split("=", 1)[1]
        for o in scenario.overrides
        if o.startswith(prefix)
    }


def test_gap_analysis_trtllm_points_run_the_generators_batch_limits() -> None:
    """AIConfigurator's trtllm.rule: max_batch_size 512 below 512 sequences (else twice the
    batch), max_num_tokens = that + ISL + 1500 rounded up to 32; whole prompts."""
    assert aic_generator_trtllm_limits(56, 1024) == (512, 3040)
    assert aic_generator_trtllm_limits(511, 1024)[0] == 512
    assert aic_generator_trtllm_limits(512, 1024)[0] == 1024
    assert aic_generator_trtllm_limits(600, 4000) == (1200, 6720)
    source = "source_file=/x/aic-auto-gap-analysis/data/h100_sxm/trtllm/1.0.0rc3/a.csv"
    gap = _recipe_point(client="", engine_version="1.0.0rc3", source=source, concurrency="56")
    settings = _scheduler(gap)
    assert (settings["max_num_seqs"], settings["max_num_batched_tokens"]) == ("512", "3040")
    # a 15,000-token prompt fits the generator's budget whole: no chunked prefill
    long = _recipe_point(
        client="", engine_version="1.3.0rc5", source=source, concurrency="14", input_len="15000"
    )
    assert _scheduler(long)["max_num_batched_tokens"] == "17024"
    assert _scheduler(long).get("enable_chunked_prefill") != "true"
    # the same point from another source keeps TensorRT-LLM's own defaults (and chunks)
    other = _recipe_point(client="", engine_version="1.3.0rc5", concurrency="14", input_len="15000")
    assert _scheduler(other)["max_num_batched_tokens"] == "8192"
    assert _scheduler(other)["enable_chunked_prefill"] == "true"
    # the generator's SGLang / vLLM points keep their engine's own limits
    sglang = _recipe_point(
        client="", engine="SGLang", engine_version="0.5.1.post1", source=source, concurrency="56"
    )
    assert _scheduler(sglang).get("max_num_batched_tokens") != "3040"
    # the cap is the deployment's own: more clients than it queue, as on the server
    crowded = _recipe_point(client="", engine_version="1.0.0rc3", source=source, concurrency="600")
    assert _scheduler(crowded)["max_num_seqs"] == "1200"


# An InferenceX SGLang point: DeepSeek-R1 fp8 at TP8 on B200 (dsr1_fp8_b200.sh's TP8 branch).
SGLANG_DSR1_B200_TP8 = {
    "engine": "SGLang",
    "engine_version": "0.5.9",
    "model": "deepseek-ai/DeepSeek-R1-0528",
    "hardware": "B200",
    "num_gpus": "8",
    "tensor_parallel": "8",
    "dtype": "fp8",
}


def test_sglang_recipes_capture_decode_graphs_up_to_their_cuda_graph_max_bs() -> None:
    point = {**SGLANG_DSR1_B200_TP8, "concurrency": "16"}
    assert _graphs(_recipe_point(**point))["max_capture_size"] == "128"  # TP8 branch
    fp4 = _graphs(_recipe_point(**{**point, "dtype": "fp4"}))
    assert fp4["max_capture_size"] == "256" and fp4["padding"] == "true"
    h200 = {**point, "hardware": "H200"}
    assert _graphs(_recipe_point(**h200))["max_capture_size"] == "512"  # 1k/1k branch
    assert _graphs(_recipe_point(**h200, output_len="8192"))["max_capture_size"] == "256"
    assert not _graphs(_recipe_point(**point, client=""))  # the preset keeps graphs off


def test_sglang_recipes_set_memory_fraction_running_requests_and_prefill_budget() -> None:
    # dsr1_fp8_b200.sh at TP4 (--mem-fraction-static 0.95, --max-running-requests 32,
    # --chunked-prefill-size / --max-prefill-tokens 8192): at the 0.9 default the KV pool of
    # DeepSeek-R1 fp8 on 4 B200s held 58K tokens, 16 clients of 8K prompts queued and were
    # preempted, and TTFT came out 18.6 s against 1.0 s measured.
    tp4 = {
        "engine": "SGLang",
        "engine_version": "0.5.9",
        "model": "deepseek-ai/DeepSeek-R1-0528",
        "hardware": "B200",
        "num_gpus": "4",
        "tensor_parallel": "4",
        "dtype": "fp8",
        "input_len": "8192",
        "concurrency": "16",
    }
    point = _recipe_point(**tp4)
    for setting in (
        "gpu_memory_utilization=0.95",
        "max_num_seqs=32",
        "max_num_batched_tokens=8192",
    ):
        assert f"scheduler.{setting}" in point.overrides
    tp8 = _recipe_point(**{**tp4, "num_gpus": "8", "tensor_parallel": "8", "input_len": "1024"})
    assert "scheduler.gpu_memory_utilization=0.82" in tp8.overrides
    assert "scheduler.max_num_batched_tokens=32768" in tp8.overrides
    assert "scheduler.max_num_seqs=128" in tp8.overrides
    # The TP8 / TP4 caps are the recipe's "maximum concurrency": more clients than that ran
    # under a bigger cap (measured TTFT, accuracy.md): SGLang's own 1024 admits every client.
    crowded = _recipe_point(
        **{**tp4, "num_gpus": "8", "tensor_parallel": "8", "concurrency": "256"}
    )
    assert "scheduler.max_num_seqs=1024" in crowded.overrides
    assert "scheduler.gpu_memory_utilization=0.82" in crowded.overrides
    assert "1024 seqs, 32768 tok/step" in crowded.engine
    h200 = {**tp4, "hardware": "H200", "num_gpus": "8", "tensor_parallel": "8", "input_len": "1024"}
    assert "scheduler.max_num_seqs=512" in _recipe_point(**h200).overrides
    # A recipe's cap that holds for any client count is never raised to the client count:
    # the server queues the others; the engine text says what the run uses.
    queued = _recipe_point(**{**h200, "concurrency": "1024"})
    assert "scheduler.max_num_seqs=512" in queued.overrides
    assert "scheduler.max_num_seqs=1024" not in queued.overrides
    assert "512 seqs, 32768 tok/step" in queued.engine and "1024 seqs" not in queued.engine
    long_out = _recipe_point(**{**h200, "output_len": "8192"})
    assert "scheduler.max_num_seqs=256" in long_out.overrides
    assert "scheduler.gpu_memory_utilization=0.82" in long_out.overrides
    # Another engine or client: the preset's defaults.
    assert "scheduler.gpu_memory_utilization=0.9" in _recipe_point(**tp4, client="").overrides


def test_inferencex_points_beyond_one_node_are_skipped_with_the_reason() -> None:
    """The dump records Dynamo disaggregated GB200 deployments as agg with every GPU in TP."""
    row = _row(
        input_len="8192",
        output_len="1024",
        request_rate_rps="",
        num_requests="",
        metric="ttft_mean",
        unit="ms",
        engine="TensorRT-LLM",
        engine_version="",
        hardware="GB200",
        model="deepseek-ai/DeepSeek-R1",
        dtype="fp4",
        num_gpus="32",
        tensor_parallel="32",
    )
    row.update(concurrency="2150", client="inferencex")
    reason = scenario_for(row, Path("."), [row])
    assert isinstance(reason, str)
    assert "aggregated serving on 32 GPUs" in reason and "one 8-GPU node" in reason
    # One node's worth is simulated; so is a point of another client on more GPUs.
    assert isinstance(
        scenario_for({**row, "num_gpus": "8", "tensor_parallel": "8"}, Path("."), [row]), Scenario
    )
    assert isinstance(scenario_for({**row, "client": ""}, Path("."), [row]), Scenario)


def test_sglang_tp4_recipe_memory_holds_every_client_of_the_8k_point() -> None:
    from llmservingsim.config import load_config
    from llmservingsim.simulation import simulate

    point = _recipe_point(
        engine="SGLang",
        engine_version="0.5.9",
        model="deepseek-ai/DeepSeek-R1-0528",
        hardware="B200",
        num_gpus="4",
        tensor_parallel="4",
        dtype="fp8",
        input_len="8192",
        concurrency="16",
    )
    summary = simulate(load_config(None, [*point.overrides, "workload.num_requests=32"])).summary
    # 16 clients × (8,192 prompt + 1,024 output) tokens fit in the recipe's KV pool: nobody
    # is preempted, all 16 run at once, and the first token comes within about a second (the
    # measured mean is 1.0 s; with the preset's 0.9 memory fraction it took 18.6 s).
    assert summary["kv_cache_capacity_tokens"] >= 16 * (8192 + 1024)
    assert summary["preemptions"] == 0
    assert summary["max_batch_size"] == 16
    assert summary["ttft_s"]["mean"] < 2.0


def test_engine_text_names_the_seqs_and_budget_the_run_uses() -> None:
    sglang = SGLANG_DSR1_B200_TP8
    # No recipe (another client): the preset's 1024 seqs and its chunked_prefill_size.
    plain = _recipe_point(**sglang, client="")
    assert "1024 seqs, the preset's chunked_prefill_size" in plain.engine
    # More clients than the engine's default and no recipe cap: raised to the client count.
    many = _recipe_point(**{**sglang, "concurrency": "2048"}, client="")
    assert "scheduler.max_num_seqs=2048" in many.overrides
    assert "2048 seqs" in many.engine
    # TensorRT-LLM's served rows: whole prompts, or chunked where the prompts need it.
    trt = _recipe_point(tensor_parallel="8", num_gpus="8")
    assert "no_evict, whole prompts, 2048 seqs, 8192 tok/step" in trt.engine
    long = _recipe_point(tensor_parallel="8", num_gpus="8", input_len="8192")
    assert "no_evict, chunked, 2048 seqs, 8192 tok/step" in long.engine


@pytest.mark.parametrize(
    ("model", "dtype", "scaling"),
    [
        ("RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic", "FP8", "tensor"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "fp8", None),  # the catalog's note: tensor
        ("neuralmagic/Mixtral-8x7B-Instruct-v0.1-FP8-dynamic", "fp16", None),  # not fp8
        ("deepseek-ai/DeepSeek-R1", "fp8", None),  # auto: block for a MoE model
        ("meta-llama/Llama-3.1-8B", "fp8", None),  # auto: tensor for a dense one
    ],
)
def test_fp8_rows_run_their_checkpoints_scaling(
    model: str, dtype: str, scaling: str | None
) -> None:
    """A published fp8 checkpoint whose scaling the simulator's auto would miss says so."""
    scenario = scenario_for(_row(model=model, dtype=dtype), Path("."), [])
    assert isinstance(scenario, Scenario)
    keys = [o for o in scenario.overrides if o.startswith("fp8_scaling=")]
    assert keys == ([f"fp8_scaling={scaling}"] if scaling else [])
    assert ("fp8 weights scaled per" in " ".join(scenario.notes)) == (scaling is not None)


@pytest.mark.parametrize(
    ("text", "device"),
    [
        ("H100 SXM", "h100-sxm"),
        ("H100 SXM 80GB", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("H100 PCIe", "h100-pcie"),
        ("A100", "a100-80gb"),
        ("A100-SXM4-80GB", "a100-80gb"),
        ("A100 40GB", "a100-40gb"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA GeForce RTX 5090", "rtx-5090"),
        ("RTX 3090 24GB", "rtx-3090"),
        ("RTX PRO 6000 Blackwell", "rtx-pro-6000"),
        ("NVIDIA RTX A6000", "a6000"),
        ("L40S", "l40s"),
        ("L4", "l4"),
        ("AMD Instinct MI300X", "mi300x"),
        ("TPU v6e", "tpu-v6e"),
        ("rtx-4090", "rtx-4090"),
        ("B200", "b200"),
        ("GB200 NVL72", "gb200"),
    ],
)
def test_published_hardware_names_map_to_catalog_devices(text: str, device: str) -> None:
    assert hardware_for(text) == device


@pytest.mark.parametrize(
    "text",
    [
        "Radeon 7900",
        "A100 PCIe 80GB",  # the catalog's A100s are SXM4 (NVLink, 400 W)
        "A100 PCIe 40GB",
        "H200 NVL",
        "H100 NVL",
        "RTX 4090 D",
        "GeForce RTX 4090 Laptop",
        "RTX A6000 Ada",
        "L40",
        "A10",
        "H20",
    ],
)
def test_near_miss_hardware_names_are_not_mapped(text: str) -> None:
    """A different card under a similar name is skipped with its reason, not timed as the
    catalog device it resembles."""
    assert hardware_for(text) is None


def test_every_catalog_gpu_can_be_named_by_a_row() -> None:
    """A reference row on any catalog GPU runs, by its catalog name or by it written as a
    name (upper case, spaces)."""
    from llmservingsim.catalog import device_names, load_device

    for name in device_names():
        assert hardware_for(name) == name
        if load_device(name).type == "gpu":
            assert hardware_for(name.upper().replace("-", " ")) == name, name


def test_apexplus_runs_become_ttft_and_tpot_rows_with_their_launch_flags(tmp_path: Path) -> None:
    from llmservingsim.validate.sources import APEXPLUS, apexplus_rows

    assert apexplus_rows(tmp_path) == []  # no traces/replay: the set is not there
    replay = tmp_path / "traces" / "replay"
    replay.mkdir(parents=True)
    lines = ["arrival_s,input_tokens,output_tokens"]
    lines += [f"{0.5 * i:.1f},{40 + i},{6 + i % 3}" for i in range(12)]
    for name in ("mistral-large-2407_creation_05_4dp2tp_fp8_0", "llama-3.1-70b_lmsys_05_8tp"):
        (replay / f"{name}.csv").write_text("\n".join(lines) + "\n")
    rows = apexplus_rows(tmp_path)
    assert len(rows) == 4  # two runs whose served workload is here, TTFT and TPOT each
    with APEXPLUS.open(newline="") as fh:
        shipped = {r["replay"]: r for r in csv.DictReader(fh)}
    split = [r for r in rows if "4dp2tp" in r["id"]]
    ttft = next(r for r in split if r["metric"] == "ttft_mean")
    measured = float(shipped["mistral-large-2407_creation_05_4dp2tp_fp8_0"]["ttft_s"]) * 1000
    assert float(ttft["value"]) == pytest.approx(measured, rel=1e-5) and ttft["unit"] == "ms"
    assert {r["metric"] for r in split} == {"ttft_mean", "tpot_token_weighted_mean"}
    assert ttft["set"] == "apexplus" and ttft["tensor_parallel"] == "2"
    # the DP4 x TP2 script's own flags (mistral_4DP2TP_fp8.sh, which mistral.sh ran with a
    # pre-quantized FP8 checkpoint): 0.85 of the memory, NCCL, a 20,560-token context (whole
    # prompts under V0's rule), fp8 weights and KV
    assert ttft["model"] == "alpindale/Mistral-Large-Instruct-2407-FP8"
    scenario = scenario_for(ttft, tmp_path, rows)
    assert isinstance(scenario, Scenario)
    assert {
        "engine=vllm-0.6",
        "dtype=fp8",
        "kv_dtype=fp8",
        "cluster.tensor_parallel=2",
        "scheduler.gpu_memory_utilization=0.85",
        "max_model_len=20560",
        "cluster.network.custom_allreduce=false",
        "scheduler.policy=orca",
        "scheduler.max_num_batched_tokens=20560",
    } <= set(scenario.overrides)
    tp8 = scenario_for(next(r for r in rows if "8tp" in r["id"]), tmp_path, rows)
    assert isinstance(tp8, Scenario)
    assert "scheduler.gpu_memory_utilization=0.97" in tp8.overrides
    assert not any("custom_allreduce" in o or o.startswith("max_model_len") for o in tp8.overrides)
    # Llama-3.1-70B's 128K context: V0 chunks prompts with a 512-token budget
    assert "scheduler.max_num_batched_tokens=512" in tp8.overrides
    result = validate(None, sets=("apexplus",), data_dir=tmp_path)
    assert len(result.compared) == 4 and not result.skipped
    empty = validate(_write(tmp_path / "p.csv", [_row(id="thr")]), sets=("published", "apexplus"))
    assert empty.skipped_sets == ["apexplus: traces/replay not found in the shared data folder"]


def test_launch_flags_are_read_only_from_a_quoted_command_line() -> None:
    # A note that merely mentions a flag does not set it; only "launch flags: ..." does.
    loose = _scenario(_row(engine_version="0.6.0", notes="--disable-custom-all-reduce in some"))
    assert not any("custom_allreduce" in o for o in loose.overrides)
    quoted = _scenario(
        _row(engine_version="0.6.0", notes="launch flags: --max-model-len 40000 (x.sh)")
    )
    assert "max_model_len=40000" in quoted.overrides
    assert "scheduler.max_num_batched_tokens=512" in quoted.overrides  # > 32K: chunked
