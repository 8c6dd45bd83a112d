"""SCALE-Sim backend: configuration mapping, errors, tiling against whole-shape runs, caches.

Tests that run SCALE-Sim use an 8 × 8 array (a few hundred simulated cycles per call) and
skip when the optional package is not installed; the error tests run without it.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmservingsim.catalog import load_device, load_model
from llmservingsim.cli import app
from llmservingsim.config import load_config
from llmservingsim.errors import ConfigError
from llmservingsim.hardware.backends import scalesim as scalesim_module
from llmservingsim.hardware.backends.scalesim import ArrayConfig, ScaleSimBackend
from llmservingsim.hardware.backends.systolic import SystolicBackend
from llmservingsim.hardware.device import load_device_file
from llmservingsim.model.ops import OpGraph
from llmservingsim.simulation import simulate

CATALOG_NPU = Path(__file__).resolve().parents[2] / "src/llmservingsim/data/hardware/npu.yaml"


def _has_scalesim() -> bool:
    try:
        metadata.version("scalesim")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_scalesim = pytest.mark.skipif(not _has_scalesim(), reason="scalesim is not installed")


def _tiny_npu(tmp_path: Path, **systolic: object) -> Path:
    """The catalog NPU with a small array (fast SCALE-Sim runs) and ``systolic`` overrides."""
    raw = yaml.safe_load(CATALOG_NPU.read_text())
    raw["systolic"] = {"rows": 8, "cols": 8, "arrays": 2, "clock_ghz": 1.0, "sram_mib": 1}
    raw["systolic"].update(systolic)
    path = tmp_path / "tiny_npu.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(scalesim_module.metadata, "version", absent)
    with pytest.raises(ConfigError) as err:
        ScaleSimBackend(load_device("npu"), "bf16")
    message = str(err.value)
    assert "llmservingsim[scalesim]" in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "key"),
    [({"rows": 0}, "systolic.rows"), ({"dataflow": "rs"}, "systolic.dataflow")],
)
def test_bad_systolic_values_name_the_key(
    tmp_path: Path, override: dict[str, object], key: str
) -> None:
    path = _tiny_npu(tmp_path, **override)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_device_file(path)
    result = CliRunner().invoke(
        app, ["run", "--set", f"hardware={path}", "--set", "perf.backend=scalesim", "--quiet"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0]


def test_too_small_sram_and_bandwidth_are_errors(tmp_path: Path) -> None:
    device = load_device_file(_tiny_npu(tmp_path, sram_mib=0.001))
    with pytest.raises(ConfigError, match=r"systolic\.sram_mib"):
        ArrayConfig.of(device, "bf16")
    device = load_device_file(_tiny_npu(tmp_path, clock_ghz=1000.0))
    with pytest.raises(ConfigError, match="memory_bandwidth_gbps"):
        ArrayConfig.of(device, "bf16")


def test_analytic_backend_refuses_other_dataflows(tmp_path: Path) -> None:
    device = load_device_file(_tiny_npu(tmp_path, dataflow="os"))
    with pytest.raises(ConfigError, match="not yet supported"):
        SystolicBackend(device, "bf16")


def test_configuration_maps_the_yaml(tmp_path: Path) -> None:
    device = load_device_file(_tiny_npu(tmp_path))
    config = ArrayConfig.of(device, "bf16")
    # 1 MiB over 2 arrays of 2-byte words = 262,144 words each, split 2:2:1.
    assert (config.rows, config.cols, config.dataflow) == (8, 8, "ws")
    assert (config.ifmap_kwords, config.filter_kwords, config.ofmap_kwords) == (102, 102, 51)
    bandwidth = 1600e9 * device.efficiency.memory / (1e9 * 2 * 2)
    assert config.bandwidth_words == int(bandwidth)
    assert config.spatial(3, 5, 7) == (7, 5, 3)
    for dataflow in ("ws", "os", "is"):
        other = ArrayConfig(8, 8, dataflow, 1, 1, 1, 1)
        assert other.gemm(*other.spatial(3, 5, 7)) == (3, 5, 7)


@needs_scalesim
@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_one_fold_is_simulated_whole(tmp_path: Path, dataflow: str) -> None:
    """A GEMM that fits one fold of one array is exactly one SCALE-Sim run."""
    device = load_device_file(_tiny_npu(tmp_path, arrays=1, dataflow=dataflow))
    backend = ScaleSimBackend(device, "bf16", tmp_path / "cache")
    m, n, k = backend.array.gemm(6, 8, 5)
    assert backend.gemm_cycles(m, n, k) == backend.runner.cycles(m, n, k)


@needs_scalesim
def test_tiles_track_the_whole_shape(tmp_path: Path) -> None:
    """Several folds and stream chunks: the tiled estimate stays within 10 % of SCALE-Sim run
    on the whole GEMM (benchmarks/scalesim_tiling_error.py measures larger shapes)."""
    device = load_device_file(_tiny_npu(tmp_path, arrays=1))
    backend = ScaleSimBackend(device, "bf16", None, stream_tile=16)
    m, n, k = 40, 24, 16  # 2 × 3 folds streaming 40 rows, extrapolated from 16 and 8
    whole = backend.runner.cycles(m, n, k)
    tiled = backend.gemm_cycles(m, n, k)
    assert tiled == pytest.approx(whole, rel=0.10)


@needs_scalesim
def test_probes_are_cached_in_memory_and_on_disk(tmp_path: Path) -> None:
    device = load_device_file(_tiny_npu(tmp_path))
    graph = OpGraph(load_model("llama-3.2-1b"), 1, "bf16", "bf16")
    ops = graph.dense_layer_ops(12)
    first = ScaleSimBackend(device, "bf16", tmp_path / "cache")
    times = [first.time(op) for op in ops]
    stats = first.stats()
    # All four GEMMs stream 12 rows of full folds: one probe pair serves them all.
    assert stats["accelerator_sim_calls"] == 2
    assert stats["accelerator_sim_cache_hits"] == 6
    second = ScaleSimBackend(device, "bf16", tmp_path / "cache")
    assert [second.time(op) for op in ops] == times
    assert second.stats()["accelerator_sim_calls"] == 0
    assert second.stats()["accelerator_sim_disk_hits"] == 2
    # Another array configuration is another namespace.
    other = load_device_file(_tiny_npu(tmp_path, dataflow="os"))
    assert ScaleSimBackend(other, "bf16", tmp_path / "cache").cache is not None
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 1


@needs_scalesim
def test_gemms_on_the_array_elementwise_on_the_vector_unit(tmp_path: Path) -> None:
    device = load_device_file(_tiny_npu(tmp_path))
    backend = ScaleSimBackend(device, "bf16", None)
    graph = OpGraph(load_model("llama-3.2-1b"), 1, "bf16", "bf16")
    norm = graph.dense_layer_ops(4)[0]
    assert backend.array_seconds(norm) is None
    assert backend.time(norm) == backend._vector.time(norm)
    gemm = graph.gemm("g", 4, 64, 64)
    array_s = backend.array_seconds(gemm)
    assert array_s is not None and array_s > 0
    # Never faster than the peak or than streaming the op's bytes.
    assert backend.time(gemm) >= gemm.flops / device.peak_flops("bf16")
    assert backend.time(gemm) >= gemm.bytes / device.memory_bandwidth


@needs_scalesim
def test_run_reports_accelerator_sim_counters(tmp_path: Path) -> None:
    sets = [
        f"hardware={_tiny_npu(tmp_path)}",
        "model=llama-3.2-1b",
        "perf.backend=scalesim",
        f"perf.cache_dir={tmp_path / 'cache'}",
        "workload.num_requests=4",
        "workload.arrival.rate=.inf",
        "workload.input_len={dist: fixed, value: 16}",
        "workload.output_len={dist: fixed, value: 4}",
    ]
    cold = simulate(load_config(None, sets)).summary
    assert cold["accelerator_sim_calls"] > 0 and cold["accelerator_sim_s"] > 0
    warm = simulate(load_config(None, sets)).summary
    assert warm["accelerator_sim_calls"] == 0
    assert warm["accelerator_sim_disk_hits"] == cold["accelerator_sim_calls"]
    assert warm["output_tokens_per_s"] == cold["output_tokens_per_s"]
    json.dumps(warm)  # plain JSON


@needs_scalesim
def test_npu_pim_example_simulates_gemms_and_puts_decode_attention_on_pim(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "npu_pim_scalesim.yaml"
    sets = [
        f"perf.cache_dir={tmp_path / 'cache'}",
        "workload.num_requests=8",
        "workload.output_len={dist: fixed, value: 8}",
    ]
    summary = simulate(load_config(example, sets)).summary
    assert summary["requests_completed"] == 8
    assert summary["memory"]["kv_cache_on"] == "pim"
    assert summary["accelerator_sim_calls"] > 0


@needs_scalesim
def test_calibrate_fits_the_analytic_backend_on_scalesim(tmp_path: Path) -> None:
    device = _tiny_npu(tmp_path)
    out = tmp_path / "fitted.yaml"
    args = ["calibrate", "--scalesim", "--hardware", str(device), "--models", "llama-3.2-1b"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    fitted = load_device_file(out)
    base = load_device_file(device)
    assert 0 < fitted.efficiency.compute_max <= 1
    assert fitted.efficiency.compute_max != base.efficiency.compute_max
    assert "calibrate --scalesim" in fitted.sources[-1]
    # The fit reads the probes back from the cache: a second fit runs SCALE-Sim no more.
    again = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "again.yaml")])
    assert again.exit_code == 0 and "0 new SCALE-Sim runs" in again.output
    assert (tmp_path / "again.yaml").read_text() == out.read_text()


def test_calibrate_takes_profiles_or_scalesim_not_both(tmp_path: Path) -> None:
    both = ["calibrate", "--scalesim", "--hardware", "npu", "--profiles", str(tmp_path)]
    neither = ["calibrate", "--hardware", "npu"]
    for args in (both, neither):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        assert result.output.strip().startswith("error:") and "--scalesim" in result.output


@needs_scalesim
def test_unwritable_cache_is_one_line_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    device = load_device_file(_tiny_npu(tmp_path))
    backend = ScaleSimBackend(device, "bf16", blocker / "cache")
    graph = OpGraph(load_model("llama-3.2-1b"), 1, "bf16", "bf16")
    with pytest.raises(ConfigError, match=r"perf\.cache_dir"):
        backend.time(graph.gemm("g", 4, 64, 64))
