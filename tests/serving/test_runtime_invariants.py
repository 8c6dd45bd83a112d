"""The runtime invariant checker catches broken bookkeeping, and stays silent on correct runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz_harness import quick_run_args, run_cli
from llmservingsim import simulation
from llmservingsim.config import load_config
from llmservingsim.engine import EngineHooks
from llmservingsim.invariants import InvariantError, check_records
from llmservingsim.metrics.collector import RequestRecord
from llmservingsim.serving.instance import Instance
from llmservingsim.serving.prefix_cache import PrefixCachingBlockManager
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

SMALL = ["model=llama-3.2-1b", "workload.num_requests=40", "workload.arrival.rate=50"]


class LeakABlock(EngineHooks):
    """Once request 7 runs, take one KV block off the free list for nobody (a leak)."""

    def __init__(self) -> None:
        self.done = False

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if self.done or started is None:
            return
        if any(seq.id == 7 for seq, _ in instance.virtual_engines[started[1]].in_flight):
            instance.virtual_engines[started[1]].scheduler.blocks.free_blocks.take(1)
            self.done = True


class MiscountAReference(EngineHooks):
    """Once request 3 has left, count one more reference to the first block it held."""

    def __init__(self) -> None:
        self.block = -1
        self.done = False

    def after_start(
        self, instance: Instance, now: float, started: tuple[float, int] | None
    ) -> None:
        if started is not None and self.block < 0:
            for seq, _ in instance.virtual_engines[started[1]].in_flight:
                if seq.id == 3 and seq.blocks:
                    self.block = seq.blocks[0]

    def after_end(self, instance: Instance, engine_index: int, now: float) -> None:
        scheduler = instance.virtual_engines[engine_index].scheduler
        if self.block < 0 or self.done or any(s.id == 3 for s in scheduler.running):
            return
        blocks = scheduler.blocks
        assert isinstance(blocks, PrefixCachingBlockManager)
        blocks.ref_count[self.block] += 1
        self.done = True


def test_a_correct_run_passes_every_check() -> None:
    for extra in ([], ["scheduler.enable_prefix_caching=true"], ["scheduler.policy=orca"]):
        result = simulate(load_config(None, [*SMALL, *extra]), check_invariants=True)
        assert result.summary["requests_completed"] == 40


def test_a_leaked_block_is_caught() -> None:
    with pytest.raises(InvariantError, match=r"invariant I[35] violated on instance 0 at t="):
        simulate(load_config(None, SMALL), check_invariants=True, hooks=[LeakABlock()])


def test_a_wrong_reference_count_is_caught() -> None:
    cfg = load_config(None, [*SMALL, "scheduler.enable_prefix_caching=true"])
    with pytest.raises(InvariantError, match=r"invariant (K1|I5) violated"):
        simulate(cfg, check_invariants=True, hooks=[MiscountAReference()])


def test_without_the_flag_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSERVINGSIM_CHECK_INVARIANTS", raising=False)
    result = simulate(load_config(None, SMALL), hooks=[LeakABlock()])
    assert result.summary["requests_completed"] == 40


def record(rid: int, status: str = "finished", output: int = 4, reason: str = "") -> RequestRecord:
    return RequestRecord(rid, 0, 0.0, 0.1, 0.2, 10, output, 0, 0, status, reason)


def test_records_must_cover_every_request_once_with_full_output() -> None:
    specs = [RequestSpec(i, 0.0, 10, 4) for i in range(3)]
    check_records(specs, [record(0), record(1), record(2, "failed", 0, "too long")], 1.0)
    with pytest.raises(InvariantError, match=r"I4.*neither finished nor failed"):
        check_records(specs, [record(0), record(1)], 1.0)
    with pytest.raises(InvariantError, match=r"I4.*twice"):
        check_records(specs, [record(0), record(0), record(1), record(2)], 1.0)
    with pytest.raises(InvariantError, match=r"I4.*3 of 4 output tokens"):
        check_records(specs, [record(0), record(1, output=3), record(2)], 1.0)
    with pytest.raises(InvariantError, match=r"I4.*without a reason"):
        check_records(specs, [record(0), record(1), record(2, "failed", 0)], 1.0)


def test_cli_flag_checks_and_reports_a_violation_as_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMSERVINGSIM_CHECK_INVARIANTS", raising=False)
    args = ["run", *(f"--set={s}" for s in SMALL), *quick_run_args(tmp_path / "ok")]
    ok = run_cli([*args, "--check-invariants"])
    assert ok.exit_code == 0, ok.output
    with simulation.observing(LeakABlock()):
        bad = run_cli(["run", *(f"--set={s}" for s in SMALL), *quick_run_args(tmp_path / "bad")])
    assert bad.exit_code == 0  # unchecked: the leak goes unnoticed
    args = ["run", *(f"--set={s}" for s in SMALL), *quick_run_args(tmp_path / "bad2")]
    with simulation.observing(LeakABlock()):
        bad = run_cli([*args, "--check-invariants"])
    assert bad.exit_code == 70
    assert "invariant" in bad.output and "Traceback" not in bad.output
