"""The runtime invariant checker catches broken bookkeeping, and stays silent on correct runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz_harness import quick_run_args, run_cli
from llmservingsim.config import load_config
from llmservingsim.invariants import InvariantError, check_records
from llmservingsim.metrics.collector import RequestRecord
from llmservingsim.serving.block_manager import BlockManager
from llmservingsim.serving.prefix_cache import PrefixCachingBlockManager
from llmservingsim.simulation import simulate
from llmservingsim.workload.request_spec import RequestSpec

SMALL = ["model=llama-3.2-1b", "workload.num_requests=40", "workload.arrival.rate=50"]


def leak_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make request 7 keep one KV block when it is freed (it never comes back)."""
    free = BlockManager.free

    def leaky_free(self: BlockManager, seq: object) -> None:
        if getattr(seq, "id", 0) == 7:
            seq.blocks.pop()  # type: ignore[attr-defined]
        free(self, seq)  # type: ignore[arg-type]

    monkeypatch.setattr(BlockManager, "free", leaky_free)


def test_a_correct_run_passes_every_check() -> None:
    for extra in ([], ["scheduler.enable_prefix_caching=true"], ["scheduler.policy=orca"]):
        result = simulate(load_config(None, [*SMALL, *extra]), check_invariants=True)
        assert result.summary["requests_completed"] == 40


def test_a_leaked_block_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    leak_a_block(monkeypatch)
    with pytest.raises(InvariantError, match=r"invariant I[35] violated on instance 0 at t="):
        simulate(load_config(None, SMALL), check_invariants=True)


def test_a_wrong_reference_count_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    free = PrefixCachingBlockManager.free

    def miscounting_free(self: PrefixCachingBlockManager, seq: object) -> None:
        blocks = list(seq.blocks)  # type: ignore[attr-defined]
        free(self, seq)  # type: ignore[arg-type]
        if blocks and getattr(seq, "id", 0) == 3:
            self.ref_count[blocks[0]] += 1

    monkeypatch.setattr(PrefixCachingBlockManager, "free", miscounting_free)
    cfg = load_config(None, [*SMALL, "scheduler.enable_prefix_caching=true"])
    with pytest.raises(InvariantError, match=r"invariant (K1|I5) violated"):
        simulate(cfg, check_invariants=True)


def test_without_the_flag_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMSERVINGSIM_CHECK_INVARIANTS", raising=False)
    leak_a_block(monkeypatch)
    result = simulate(load_config(None, SMALL))
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
    leak_a_block(monkeypatch)
    bad = run_cli(["run", *(f"--set={s}" for s in SMALL), *quick_run_args(tmp_path / "bad")])
    assert bad.exit_code == 0  # unchecked: the leak goes unnoticed
    bad = run_cli(
        [
            "run",
            *(f"--set={s}" for s in SMALL),
            *quick_run_args(tmp_path / "bad2"),
            "--check-invariants",
        ]
    )
    assert bad.exit_code == 70
    assert "invariant" in bad.output and "Traceback" not in bad.output
