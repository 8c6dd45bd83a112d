"""External perf backend: JSON-lines protocol with examples/npu_sim, errors, result cache."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from llmservingsim.catalog import load_device, load_model
from llmservingsim.cli import app
from llmservingsim.config import load_config
from llmservingsim.errors import BackendError, ConfigError
from llmservingsim.hardware.backends.external import ExternalBackend
from llmservingsim.model.ops import Op, OpGraph
from llmservingsim.simulation import simulate

NPU_SIM = Path(__file__).resolve().parents[2] / "examples" / "npu_sim" / "npu_sim.py"
SMALL = ["model=llama-3.2-1b", "hardware=npu", "workload.num_requests=20"]


def _npu_module() -> ModuleType:
    """The example tool imported in-process (it is a standalone script, not a package)."""
    if "npu_sim" not in sys.modules:
        spec = importlib.util.spec_from_file_location("npu_sim", NPU_SIM)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["npu_sim"] = module
        spec.loader.exec_module(module)
    return sys.modules["npu_sim"]


def _tool(tmp_path: Path, body: str) -> list[str]:
    """A tiny misbehaving tool: answers hello, then runs ``body`` on the first time request."""
    script = tmp_path / "tool.py"
    script.write_text(
        "import json, sys, time\n"
        "print(json.dumps({'name': 'tool', 'version': '0'}), flush=True)\n"
        "sys.stdin.readline()\n"
        "sys.stdin.readline()\n" + body + "\n"
    )
    return [sys.executable, str(script)]


def _backend(command: list[str], cache: Path, timeout_s: float = 30.0) -> ExternalBackend:
    return ExternalBackend(load_device("npu"), "bf16", command, cache, timeout_s)


def _gemm() -> Op:
    graph = OpGraph(load_model("llama-3.2-1b"), 1, "bf16", "bf16")
    return next(op for op in graph.dense_layer_ops(8) if op.kind == "gemm")


def test_round_trip_matches_the_tool_run_in_process(tmp_path: Path) -> None:
    graph = OpGraph(load_model("llama-3.2-1b"), 1, "bf16", "bf16")
    ops = [*graph.dense_layer_ops(8), graph.prefill_attention(64, 128)]
    ops.append(graph.decode_attention(4, 2048))
    backend = _backend([sys.executable, str(NPU_SIM)], tmp_path)
    device = load_device("npu")
    npu = _npu_module().Npu(128, 128, 8, 1e9, 32 * 2**20, 512, device.memory_bandwidth)
    for op in ops:
        request = {"kind": op.kind, "dims": dict(op.dims), "bytes": op.bytes, "dtype": "bf16"}
        assert backend.time(op) == pytest.approx(npu.seconds(request), rel=1e-12)
    distinct = len({(op.name, op.dims) for op in ops})  # residual_add twice: asked once
    assert backend.stats() == {
        "external_requests": distinct,
        "external_cache_hits": len(ops) - distinct,
    }
    backend.close()


def test_skinny_gemms_underfill_the_array() -> None:
    npu = _npu_module().Npu(128, 128, 8, 1e9, 32 * 2**20, 512, 1e15)  # memory never binds
    per_row = [npu.gemm_cycles(m, 4096, 4096, 2.0, 2.0) / m for m in (1, 16, 256, 4096)]
    assert per_row == sorted(per_row, reverse=True)
    assert per_row[0] > 50 * per_row[-1]


def test_second_run_is_served_from_the_cache(tmp_path: Path) -> None:
    sets = [
        *SMALL,
        "perf.backend=external",
        f"perf.command=[{sys.executable}, {NPU_SIM}]",
        f"perf.cache_dir={tmp_path / 'cache'}",
    ]
    first = simulate(load_config(None, sets)).summary
    second = simulate(load_config(None, sets)).summary
    assert first["external_requests"] > 0
    assert second["external_requests"] == 0
    assert (
        second["external_cache_hits"] == first["external_requests"] + first["external_cache_hits"]
    )
    assert second["tpot_s"] == first["tpot_s"] and second["ttft_s"] == first["ttft_s"]
    # A different device is a different cache namespace: simulated afresh.
    other = simulate(load_config(None, [*sets, "hardware=h100-sxm"])).summary
    assert other["external_requests"] > 0


def test_crashing_tool_reports_its_stderr(tmp_path: Path) -> None:
    command = _tool(tmp_path, "print('npu model: unsupported op', file=sys.stderr); sys.exit(3)")
    backend = _backend(command, tmp_path)
    with pytest.raises(BackendError, match=r"exited \(code 3\).*unsupported op"):
        backend.time(_gemm())


def test_tool_dying_at_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="exited"):
        _backend([sys.executable, "-c", "import sys; sys.exit(5)"], tmp_path)
    with pytest.raises(BackendError, match="cannot start"):
        _backend([str(tmp_path / "no-such-program")], tmp_path)


def test_hanging_tool_times_out(tmp_path: Path) -> None:
    backend = _backend(_tool(tmp_path, "time.sleep(600)"), tmp_path, timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer within perf.timeout_s = 0.5 s"):
        backend.time(_gemm())
    assert time.monotonic() - start < 10
    assert backend.tool.process.poll() is not None  # killed, not left behind


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("print('not json', flush=True)", "not JSON"),
        ("print(json.dumps({'error': 'no model for gemm'}), flush=True)", "no model for gemm"),
        ("print(json.dumps({'seconds': -1}), flush=True)", "expected"),
    ],
)
def test_bad_answers_are_errors(tmp_path: Path, body: str, message: str) -> None:
    backend = _backend(_tool(tmp_path, body + "\ntime.sleep(5)"), tmp_path)
    with pytest.raises(BackendError, match=message):
        backend.time(_gemm())


def test_cli_prints_one_line_for_a_failing_tool(tmp_path: Path) -> None:
    command = _tool(tmp_path, "print('segfault in tile loop', file=sys.stderr); sys.exit(1)")
    result = CliRunner().invoke(
        app,
        [
            "run",
            *[a for s in SMALL for a in ("--set", s)],
            "--set",
            "perf.backend=external",
            "--set",
            f"perf.command=[{', '.join(command)}]",
            "--set",
            f"perf.cache_dir={tmp_path}",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "last stderr line: 'segfault in tile loop'" in lines[0]
    assert "Traceback" not in result.output


def test_external_needs_a_command() -> None:
    with pytest.raises(ConfigError, match=r"perf\.command"):
        simulate(load_config(None, [*SMALL, "perf.backend=external"]))


def test_gemms_kept_in_16_bits_are_asked_in_bf16(tmp_path: Path) -> None:
    """A GEMM the checkpoint leaves in 16 bits (gpt-oss's attention under mxfp4) goes to the
    tool with dtype bf16 and its ``weights_16bit`` dim; the run's other GEMMs with its dtype."""
    script = tmp_path / "echo.py"
    script.write_text(
        "import json, sys\n"
        "sys.stdin.readline()\n"
        "print(json.dumps({'name': 'echo', 'version': '0'}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    r = json.loads(line)\n"
        "    marked = r['dims'].get('weights_16bit') == 1\n"
        "    s = {'bf16': 2.0, 'mxfp4': 1.0}[r['dtype']] + (0.5 if marked else 0.0)\n"
        "    print(json.dumps({'seconds': s}), flush=True)\n"
    )
    backend = ExternalBackend(
        load_device("b200"), "mxfp4", [sys.executable, str(script)], tmp_path, 30.0
    )
    graph = OpGraph(load_model("gpt-oss-20b"), 1, "mxfp4", "bf16", fp4_tensor_cores=True)
    qkv = next(op for op in graph.dense_layer_ops(8) if op.name == "qkv_proj")
    assert graph.moe is not None
    expert = next(op for op in graph.moe.expert_ops(8) if op.name == "moe_gate_up_proj")
    router = next(op for op in graph.moe.expert_ops(8) if op.name == "moe_router")
    assert backend.time(qkv) == 2.5
    assert backend.time(expert) == 1.0
    assert backend.time(router) == 2.5  # the router too (mlp.router in the list)
    backend.close()
