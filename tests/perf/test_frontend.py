"""Engine presets (engine: NAME[@VERSION]), the serving frontend (perf/frontend.py) and the
knobs max_model_len / scheduler.num_gpu_blocks_override."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.perf.frontend import Frontend
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def cfg_of(*sets: str) -> Any:
    return load_config(None, list(sets))


# ----------------------------------------------------------------------------- presets


def test_trtllm_preset_sets_guaranteed_no_evict_and_its_budgets() -> None:
    cfg = cfg_of("engine=trtllm")
    assert cfg.engine == "trtllm@1.0"
    s = cfg.scheduler
    assert (s.policy, s.max_num_seqs, s.max_num_batched_tokens, s.block_size) == (
        "no_evict",
        2048,
        8192,
        32,
    )
    # the overlap scheduler: host work behind the GPU, one extra step before the first token;
    # no measured per-request costs (request, tokenization, streaming) for TensorRT-LLM
    assert cfg.perf.host_overlap is True
    fe = cfg.frontend
    assert fe.enabled and fe.async_scheduling
    assert (fe.request_overhead_us, fe.per_prompt_token_us, fe.token_out_us) == (0, 0, 0)
    assert cfg.engine_name_version == ("trtllm", "1.0")


def test_host_overlap_hides_host_time_behind_the_gpu() -> None:
    """perf.host_overlap: a step takes max(GPU, host), not their sum; host time beyond the GPU
    time still shows (a huge per-step host cost then sets the step)."""
    base = ("workload.num_requests=50", "workload.arrival.rate=.inf", "frontend.enabled=true")
    host = ("frontend.step_overhead_us=2000", "frontend.per_seq_overhead_us=0")
    no_host = ("frontend.step_overhead_us=0", "frontend.per_seq_overhead_us=0")
    gpu_only = simulate(cfg_of(*base, *no_host)).summary["benchmark_duration_s"]
    added = simulate(cfg_of(*base, *host)).summary["benchmark_duration_s"]
    hidden = simulate(cfg_of(*base, *host, "perf.host_overlap=true")).summary
    assert added > gpu_only * 1.05
    # steps of 50 decoding sequences of an 8B model take longer than 2 ms: all hidden, except
    # the few steps (the last decoders) shorter than the host time
    assert gpu_only <= hidden["benchmark_duration_s"] < gpu_only + 0.1 * (added - gpu_only)
    slow = ("frontend.step_overhead_us=1000000", "frontend.per_seq_overhead_us=0")
    bound = simulate(cfg_of(*base, *slow, "perf.host_overlap=true")).summary
    # every step is then the host's 1 s (the duration also counts the time to the first step)
    assert bound["benchmark_duration_s"] == pytest.approx(bound["iterations"] * 1.0, rel=1e-3)


def test_user_settings_win_over_the_preset() -> None:
    cfg = cfg_of("engine=trtllm", "scheduler.block_size=16", "scheduler.policy=vllm")
    assert (cfg.scheduler.block_size, cfg.scheduler.policy) == (16, "vllm")
    assert cfg.scheduler.max_num_seqs == 2048  # not set by the user: the preset's
    record = cfg.engine_preset
    assert record is not None
    assert "scheduler.block_size" in record["user_overrides"]
    assert "scheduler.block_size" not in record["applied"]
    assert record["applied"]["scheduler.max_num_seqs"] == 2048


def test_vllm_budgets_follow_the_device() -> None:
    big = cfg_of("engine=vllm", "hardware=h100-sxm").scheduler
    assert (big.max_num_seqs, big.max_num_batched_tokens) == (1024, 8192)
    a100 = cfg_of("engine=vllm", "hardware=a100-80gb").scheduler  # vLLM excludes A100
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)
    small = cfg_of("engine=vllm", "hardware=l4").scheduler
    assert (small.max_num_seqs, small.max_num_batched_tokens) == (256, 2048)
    assert cfg_of("engine=vllm").scheduler.enable_prefix_caching is True


def test_vllm_0_6_chunks_only_long_context_models() -> None:
    long = cfg_of("engine=vllm-0.6", "model=llama-3.1-8b").scheduler  # 128K context
    assert (long.policy, long.max_num_batched_tokens) == ("vllm", 512)
    short = cfg_of("engine=vllm-0.6", "model=llama-2-7b").scheduler  # 4K context
    assert (short.policy, short.max_num_batched_tokens) == ("orca", 4096)


def test_vllm_versions_take_their_own_frontend_fit() -> None:
    fits = yaml.safe_load((ROOT / "src/llmservingsim/data/engines/fits/vllm.yaml").read_text())
    for version in ("0.15", "0.19"):
        fe = cfg_of(f"engine=vllm@{version}").frontend
        params = fits["versions"][version]["params"]
        assert fe.enabled and fe.step_overhead_us == params["step_overhead_us"]
        assert fe.per_prompt_token_us == params["per_prompt_token_us"]
    assert cfg_of("engine=vllm").engine == "vllm@0.19"


def test_vllm_0_6_preset_sets_the_v0_host_model() -> None:
    """vllm-0.6: 4 ms of host time per step (the vLLM team's V0 trace, RFC #6854) and async
    output processing; no per-request cost (nothing measures it for V0)."""
    fe = cfg_of("engine=vllm-0.6").frontend
    assert fe.enabled and fe.step_overhead_us == 4000 and fe.async_output_processing
    assert fe.per_seq_overhead_us is None  # the device's constant
    assert (fe.request_overhead_us, fe.per_prompt_token_us, fe.token_out_us) == (0, 0, 0)
    assert not fe.async_scheduling
    user = cfg_of("engine=vllm-0.6", "frontend.step_overhead_us=900").frontend
    assert user.step_overhead_us == 900 and user.async_output_processing
    assert not cfg_of("engine=vllm").frontend.async_output_processing


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vlm", "unknown engine 'vlm'; did you mean 'vllm'?"),
        ("vllm@0.6", "engine 'vllm-0.6' is a preset of its own"),
        ("vllm@0.20", "valid: 0.15, 0.19"),
        ("trtllm@9", "unknown version '9'"),
    ],
)
def test_unknown_engine_or_version_is_one_error_line(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg_of(f"engine={value}")
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_the_old_engine_section_points_to_simulator() -> None:
    with pytest.raises(ConfigError, match="moved to simulator:"):
        cfg_of("engine={fast_forward: false}")


def test_summary_records_the_resolved_preset() -> None:
    cfg = cfg_of("engine=sglang", "workload.num_requests=5")
    summary = simulate(cfg).summary
    assert summary["engine_preset"]["engine"] == "sglang"
    assert summary["engine_preset"]["applied"]["scheduler.max_num_batched_tokens"] == 8192
    assert summary["config"]["engine"] == "sglang@0.5"


# ----------------------------------------------------------------------------- frontend


def one_request(*sets: str, prompt: int = 500, output: int = 20) -> Any:
    cfg = cfg_of(*sets)
    return simulate(cfg, requests=[RequestSpec(0, 1.0, prompt, output)], check_invariants=False)


def test_frontend_adds_its_delays_to_one_request() -> None:
    """One request on an idle engine: TTFT = arrival delay + prefill + out delay, E2E too."""
    base = one_request()
    fe = one_request(
        "frontend.enabled=true",
        "frontend.request_overhead_us=2000",
        "frontend.per_prompt_token_us=10",
        "frontend.token_out_us=500",
        "frontend.async_scheduling=true",  # the engine was idle: no step to wait for
    )
    row, row_fe = base.metrics.records[0], fe.metrics.records[0]
    delay = 2000e-6 + 10e-6 * 500 + 500e-6
    assert row_fe.arrival_s == row.arrival_s == 1.0
    assert row_fe.ttft == pytest.approx(row.ttft + delay, abs=1e-12)
    assert row_fe.e2e == pytest.approx(row.e2e + delay, abs=1e-12)
    assert row_fe.tpot == pytest.approx(row.tpot, abs=1e-12)


def test_async_scheduling_costs_one_step_when_the_engine_is_busy() -> None:
    specs = [RequestSpec(0, 0.0, 2000, 50), RequestSpec(1, 0.001, 100, 30)]
    cfg = cfg_of("frontend.enabled=true")
    sync = simulate(cfg, requests=specs).metrics.records
    cfg = cfg_of("frontend.enabled=true", "frontend.async_scheduling=true")
    lag = simulate(cfg, requests=specs).metrics.records
    by_id = {r.id: r for r in sync}
    for r in lag:
        s = by_id[r.id]
        if r.id == 0:  # found the engine idle
            assert r.ttft == s.ttft
        else:  # arrived mid-step: one (its own mean decode) step later
            assert s.tpot is not None
            assert r.ttft == pytest.approx(s.ttft + s.tpot, rel=1e-9)
            assert r.e2e == pytest.approx(s.e2e + s.tpot, rel=1e-9)


def test_frontend_step_overhead_replaces_the_device_constants() -> None:
    base = one_request("frontend.enabled=true").metrics.records[0]
    slow = one_request(
        "frontend.enabled=true",
        "frontend.step_overhead_us=1500",
        "frontend.per_seq_overhead_us=25",
    ).metrics.records[0]
    # h100-sxm's constants are 500 µs + 5 µs per sequence; one sequence decodes alone.
    assert base.tpot is not None and slow.tpot is not None
    assert slow.tpot - base.tpot == pytest.approx(1000e-6 + 20e-6, rel=1e-6)


def test_v0_step_takes_gpu_plus_host_time_and_tokens_come_one_host_step_later() -> None:
    """One request alone on vllm-0.6: every step is its GPU time + 4 ms of host work (the
    device's 500 µs replaced), and async output processing emits each token after the next
    step's host work, so TTFT and E2E move by that 4 ms too and TPOT does not."""
    model = ("model=llama-3.1-8b", "max_model_len=4096")
    off = one_request("engine=vllm-0.6", *model, "frontend.enabled=false").metrics.records[0]
    v0 = one_request("engine=vllm-0.6", *model).metrics.records[0]
    host_more = 4000e-6 - 500e-6  # h100-sxm's constant is 500 µs (+ 5 µs per sequence, both)
    assert off.tpot is not None and v0.tpot is not None
    assert v0.tpot - off.tpot == pytest.approx(host_more, rel=1e-6)
    # The prefill step pays the extra host time, and its token is emitted 4 ms later.
    assert v0.ttft - off.ttft == pytest.approx(host_more + 4000e-6, rel=1e-6)
    assert v0.e2e - off.e2e == pytest.approx(20 * host_more + 4000e-6, rel=1e-6)


def test_v0_multi_step_pays_the_host_time_once_per_group() -> None:
    """With --num-scheduler-steps 10 the 4 ms is paid by the first step of each group of 10
    decode steps: a 21-token request's 20 decode steps pay it twice instead of 20 times."""
    model = ("model=llama-3.1-8b", "max_model_len=4096")
    single = one_request("engine=vllm-0.6", *model, output=21).metrics.records[0]
    multi = one_request(
        "engine=vllm-0.6", *model, "scheduler.num_scheduler_steps=10", output=21
    ).metrics.records[0]
    assert single.tpot is not None and multi.tpot is not None
    assert single.ttft == pytest.approx(multi.ttft, rel=1e-9)  # the prefill: a single step
    assert (single.tpot - multi.tpot) * 20 == pytest.approx(18 * 4005e-6, rel=1e-6)


@pytest.mark.parametrize(
    "setting",
    ["perf.cuda_graphs.mode=eager", "cluster.pipeline_parallel=2", "speculative.method=ngram"],
)
def test_async_output_processing_is_off_where_vllm_0_6_turns_it_off(setting: str) -> None:
    """vLLM 0.6 ModelConfig.verify_async_output_proc: no async output processing with
    --enforce-eager, pipeline parallelism or speculative decoding."""
    from llmservingsim.scenario import frontend_model

    on = frontend_model(cfg_of("engine=vllm-0.6"))
    assert on is not None and on.async_output and on.output_delay_s(4000e-6) == 4000e-6
    off = frontend_model(cfg_of("engine=vllm-0.6", setting))
    assert off is not None and not off.async_output and off.output_delay_s(4000e-6) == 0.0
    assert off.step_s == 4000e-6  # the host time per step stays


def test_frontend_arithmetic() -> None:
    fe = Frontend(request_s=1e-3, per_prompt_token_s=2e-6, token_out_s=3e-4, async_scheduling=True)
    assert fe.arrival_delay_s(1000) == pytest.approx(3e-3)
    assert fe.async_step_delay_s(True, 0.02) == 0.02
    assert fe.async_step_delay_s(False, 0.02) == 0.0
    assert fe.step_overhead_s(10, 5e-4, 5e-6) == pytest.approx(5.5e-4)
    assert Frontend(step_s=1e-3, per_seq_s=0.0).step_overhead_s(10, 5e-4, 5e-6) == 1e-3
    assert Frontend(step_s=4e-3, async_output=True).output_delay_s(4e-3) == 4e-3
    assert Frontend(step_s=4e-3).output_delay_s(4e-3) == 0.0


def test_async_output_waits_for_the_device_host_step_when_the_frontend_sets_none() -> None:
    """frontend.async_output_processing with no frontend.step_overhead_us: each step pays the
    device's iteration_overhead_us (h100-sxm: 500 µs), and every token waits for that same
    host time, so TTFT and E2E move by 500 µs and TPOT does not."""
    sync = one_request("frontend.enabled=true").metrics.records[0]
    out = one_request("frontend.enabled=true", "frontend.async_output_processing=true")
    row = out.metrics.records[0]
    assert row.ttft == pytest.approx(sync.ttft + 500e-6, abs=1e-12)
    assert row.e2e == pytest.approx(sync.e2e + 500e-6, abs=1e-12)
    assert row.tpot == pytest.approx(sync.tpot, abs=1e-12)


def test_frontend_step_overhead_is_paid_with_pim_attention_offload() -> None:
    """The frontend's host time per step replaces the device constant on a PIM instance too
    (one rule for every step timer), so the async output delay is the host time its steps pay."""
    pim = ("pim.enabled=true",)
    base = one_request(*pim, "frontend.enabled=true").metrics.records[0]
    slow = one_request(*pim, "frontend.enabled=true", "frontend.step_overhead_us=1500")
    row = slow.metrics.records[0]
    assert base.tpot is not None and row.tpot is not None
    assert row.tpot - base.tpot == pytest.approx(1000e-6, rel=1e-6)


# ----------------------------------------------------------------------------- knobs


def test_max_model_len_rejects_longer_requests() -> None:
    specs = [RequestSpec(0, 0.0, 100, 50), RequestSpec(1, 0.1, 3000, 200)]
    result = simulate(cfg_of("max_model_len=2048"), requests=specs)
    assert result.summary["requests_rejected"] == 1
    assert result.summary["requests_completed"] == 1
    rejected = [r for r in result.metrics.records if r.status == "rejected"]
    assert [r.id for r in rejected] == [1] and "max_model_len 2048" in rejected[0].fail_reason


def test_max_model_len_beyond_the_model_context_is_an_error() -> None:
    with pytest.raises(ConfigError, match="exceeds llama-2-7b's context of 4096"):
        simulate(cfg_of("model=llama-2-7b", "max_model_len=8192", "workload.num_requests=2"))


def test_num_gpu_blocks_override_sets_the_kv_cache() -> None:
    summary = simulate(cfg_of("scheduler.num_gpu_blocks_override=100", "workload.num_requests=3"))
    assert summary.summary["kv_cache_capacity_tokens"] == 100 * 16


# ----------------------------------------------------------------------------- the fit


def _fit_script() -> Any:
    spec = importlib.util.spec_from_file_location("fit_frontend", ROOT / "scripts/fit_frontend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fit_frontend"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    importlib.util.find_spec("aiconfigurator_core") is None, reason="needs aiconfigurator-core"
)
def test_vllm_0_15_per_sequence_host_time_stays_under_its_measured_bound() -> None:
    """The shipped per-sequence host time of vllm@0.15 is at most what a further sequence
    adds to vLLM 0.15.1's measured TPOT (AIConfigurator's silicon sample), as the fit bounds
    it; the 64.7 µs of the earlier, unbounded fit was twice that."""
    module = _fit_script()
    bound, data = module.per_seq_bound()
    assert 5e-6 < bound < 64e-6 and "silicon_sample.csv" in data
    shipped = yaml.safe_load(module.FITS.read_text())["versions"]["0.15"]["params"]
    assert shipped["per_seq_overhead_us"] <= round(bound * 1e6, 2) + 0.01


@pytest.mark.skipif(not (DATA / "reference").is_dir(), reason="needs ../shared/data")
def test_vllm_0_19_fit_reproduces_from_the_script() -> None:
    module = _fit_script()
    fitted = {"0.19": module.fit_vllm019(DATA)}
    shipped = yaml.safe_load(module.FITS.read_text())["versions"]
    assert module.differs(fitted, shipped) == []


def test_the_fit_runs_each_blis_experiment_with_validates_fp8_scaling() -> None:
    """The frontend is fitted on the same simulated GPU time validate compares: an
    FP8-dynamic checkpoint per tensor in both, a bf16 one without the key."""
    from llmservingsim.validate.scenario import published_fp8_scaling

    module = _fit_script()
    scout = {
        "model": "RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic",
        "precision": "FP8",
        "max_num_seqs": "128",
        "max_num_batched_tokens": "2048",
        "total_kv_blocks_gpu": "",
        "tp": "2",
    }
    assert published_fp8_scaling(scout["model"])[0] == "tensor"
    cfg = module.blis_config(scout, {})
    assert cfg.fp8_scaling == "tensor" and cfg.dtype == "fp8"
    bf16 = {**scout, "model": "meta-llama/Llama-2-7b-hf", "precision": "FP16", "tp": "1"}
    assert module.blis_config(bf16, {}).fp8_scaling == "auto"


@pytest.mark.skipif(not (DATA / "reference").is_dir(), reason="needs ../shared/data")
def test_the_fit_simulates_the_blis_runs_validate_compares(tmp_path: Path) -> None:
    """scripts/fit_frontend.py builds its own blis configs; for every experiment they resolve
    to what validate runs for the same rows (engine, model, precision, fp8 kernels, layout,
    batch limits), so the frontend is fitted on the GPU time validate then checks."""
    from llmservingsim.scenario import resolve
    from llmservingsim.validate.scenario import scenario_for
    from llmservingsim.validate.sources import blis_rows

    module = _fit_script()
    path = DATA / "reference" / "blis_trainval" / "groundtruth.csv"
    rows = blis_rows(path, tmp_path)
    stages = module.blis_stages(DATA)
    assert stages
    for exp in stages:
        fitted = module.blis_config(exp, {})
        row = next(r for r in rows if r["id"].startswith(f"blis_{exp['exp_id']}-"))
        scenario = scenario_for(row, DATA, rows)
        assert not isinstance(scenario, str), scenario
        checked = load_config(None, list(scenario.overrides))
        for key in ("model", "dtype", "hardware", "engine_name_version"):
            assert getattr(fitted, key) == getattr(checked, key), (exp["exp_id"], key)
        assert fitted.cluster.tensor_parallel == checked.cluster.tensor_parallel
        assert fitted.scheduler.max_num_seqs == checked.scheduler.max_num_seqs
        assert fitted.scheduler.max_num_batched_tokens == checked.scheduler.max_num_batched_tokens
        fit_setup, check_setup = resolve(fitted).perf, resolve(checked).perf
        assert fit_setup.fp8_scaling == check_setup.fp8_scaling, exp["exp_id"]
        assert fit_setup.kv_dtype == check_setup.kv_dtype, exp["exp_id"]
