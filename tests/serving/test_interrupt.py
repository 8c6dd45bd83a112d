"""SIGINT / SIGTERM during ``run`` and ``sweep``, sent to a real subprocess.

The child is the real CLI; a few lines before it add engine hooks that append to a marker file
when a simulation's first request reaches an instance, so the signal lands inside the
simulation, not during start-up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

CHILD = """
import sys
from pathlib import Path
from llmservingsim import engine, simulation
marker = Path(sys.argv[1])
class Marker(engine.EngineHooks):
    seen = False
    def before_add(self, instance, now):
        if not self.seen:
            self.seen = True
            with marker.open("a") as fh:
                fh.write("loop\\n")
chain = simulation.chain
simulation.chain = lambda hooks: chain([*hooks, Marker()])
from llmservingsim.cli import app
app(sys.argv[2:])
"""

LONG_RUN = ["--set", "model=llama-3.2-1b", "--set", "workload.arrival.rate=200"]


def start(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen[str], Path]:
    marker = tmp_path / "loops"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, marker


def signal_after_loops(
    proc: subprocess.Popen[str], marker: Path, loops: int, signum: int
) -> tuple[int, str]:
    deadline = time.monotonic() + 60
    while not (marker.exists() and len(marker.read_text().split()) >= loops):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the simulation loop never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def no_temporary_files(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_run_writes_a_partial_summary_and_whole_files(
    tmp_path: Path, signum: int, code: int
) -> None:
    out = tmp_path / "out"
    args = ["run", *LONG_RUN, "--set", "workload.num_requests=1000000", "--out", str(out), "-q"]
    args += ["--set", "outputs.decisions=true"]
    proc, marker = start(tmp_path, args)
    returncode, err = signal_after_loops(proc, marker, 1, signum)
    assert returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True
    assert summary["requests_completed"] < 1000000
    table = pq.read_table(out / "requests.parquet")
    assert table.num_rows == summary["requests_completed"] + summary["requests_failed"]
    assert pq.read_table(out / "timeseries.parquet").num_rows > 0
    # Every request that ended was routed first; the routes logged up to the stop are kept.
    decisions = pq.read_table(out / "decisions.parquet").to_pydict()
    pairs = zip(decisions["request_id"], decisions["kind"], strict=True)
    routed = {i for i, kind in pairs if kind == "route"}
    assert set(table.column("id").to_pylist()) <= routed
    json.loads((out / "trace.json").read_text())
    assert (out / "report.html").read_text().rstrip().endswith("</html>")
    no_temporary_files(out)


def test_sigterm_during_sweep_keeps_finished_points(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", *LONG_RUN, "--grid", "workload.num_requests=5,1000000"]
    args += ["--workers", "1", "--out", str(out), "-q"]
    proc, marker = start(tmp_path, args)
    returncode, err = signal_after_loops(proc, marker, 2, signal.SIGTERM)
    assert returncode == 143, err
    assert "--resume" in err and "Traceback" not in err
    rows = pq.read_table(out / "sweep.parquet").to_pylist()
    assert [row["workload.num_requests"] for row in rows] == [5]
    no_temporary_files(out)


def test_a_signal_held_by_the_loop_reaches_the_previous_handler_afterwards() -> None:
    """Inside ``signals_held`` a stop signal is only noted; leaving hands it to the handler
    installed before (here: one that records it), so a loop can stop at a clean point."""
    from llmservingsim.interrupt import signals_held

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with signals_held() as held:
            signal.raise_signal(signal.SIGTERM)
            assert held.signum == signal.SIGTERM and seen == []  # noted, not acted on
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_whose_handler_returns_does_not_end_the_run() -> None:
    """A host program's SIGTERM handler that only logs gets the signal (at an event boundary)
    and the simulation goes on to serve every request."""
    import os

    from llmservingsim.config import load_config
    from llmservingsim.engine import EngineHooks
    from llmservingsim.serving.instance import Instance
    from llmservingsim.simulation import simulate
    from llmservingsim.workload.request_spec import RequestSpec

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))

    class SignalAtStep100(EngineHooks):
        every_step = True
        steps = 0

        def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
            self.steps += 1
            if self.steps == 100:
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        specs = [RequestSpec(i, 0.01 * i, 100, 200) for i in range(50)]
        cfg = load_config(None, ["model=llama-3.2-1b"])
        result = simulate(cfg, requests=specs, hooks=[SignalAtStep100()])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]
    assert result.summary["interrupted"] is False
    assert result.summary["requests_completed"] == 50
