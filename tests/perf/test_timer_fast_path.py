"""The per-step fast path of the iteration timer (decode attention timed from its work, no Op
built) gives the op-by-op loop's numbers bit for bit, for every model family and timer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmservingsim.catalog import load_device, load_model
from llmservingsim.hardware.backends import PerfBackend, make_backend
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.backends.systolic import SystolicBackend
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer
from llmservingsim.perf.pim import PimIterationTimer


class OpByOpRoofline(RooflineBackend):
    """The roofline counting its calls (``stats``): the timer must then build and time every
    op as it always did, memoizing nothing beyond its counted memos."""

    def __init__(self, device: DeviceSpec, dtype: str) -> None:
        super().__init__(device, dtype)
        self.calls = 0

    def time(self, op: Op) -> float:
        self.calls += 1
        return super().time(op)

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls}


class Retimed(RooflineBackend):
    """A plugin that re-times ops but inherits the roofline's decode-attention formulas."""

    def time(self, op: Op) -> float:
        return 2 * super().time(op)


Backend = Callable[[DeviceSpec, str], PerfBackend]
TimerFactory = Callable[[Backend], IterationTimer]


def _timer(model: str, hardware: str, *, tp: int = 1, pp: int = 1, ep: int = 1,
           dtype: str = "bf16", kv_dtype: str = "bf16") -> TimerFactory:  # fmt: skip
    def build(backend: Backend) -> IterationTimer:
        device = load_device(hardware)
        return IterationTimer(
            load_model(model),
            device,
            backend(device, dtype),
            Topology.build(device),
            tensor_parallel=tp,
            pipeline_parallel=pp,
            dtype=dtype,
            kv_dtype=kv_dtype,
            expert_parallel=ep,
            moe_imbalance=1.3 if ep > 1 else 1.0,
        )

    return build


def _pim_timer(model: str, *, interleave: bool, tp: int = 1) -> TimerFactory:
    def build(backend: Backend) -> IterationTimer:
        device = load_device("h100-sxm")
        # The PIM side has its own roofline: the loop variant gets the op-by-op one there too.
        return _build_pim(model, device, backend, interleave, tp)

    return build


def _build_pim(
    model: str, device: DeviceSpec, backend: Backend, interleave: bool, tp: int
) -> PimIterationTimer:
    pim = load_device("pim")
    pim_backend = backend(pim, "bf16")
    assert isinstance(pim_backend, RooflineBackend)
    return PimIterationTimer(
        load_model(model),
        device,
        backend(device, "bf16"),
        Topology.build(device),
        pim=pim,
        pim_backend=pim_backend,
        pim_count=4,
        sub_batch_interleaving=interleave,
        tensor_parallel=tp,
        dtype="bf16",
        kv_dtype="bf16",
    )


TIMERS: dict[str, TimerFactory] = {
    "dense MHA": _timer("llama-2-7b", "a100-80gb"),
    "dense GQA TP4": _timer("llama-2-70b", "a100-80gb", tp=4),
    "GQA fp8 PP2": _timer("llama-3.1-70b", "h100-sxm", tp=2, pp=2, dtype="fp8", kv_dtype="fp8"),
    "MoE": _timer("mixtral-8x7b", "h100-sxm", tp=2),
    "MoE EP PP2": _timer("mixtral-8x7b", "h100-sxm", tp=2, pp=2, ep=2),
    "MLA MoE": _timer("deepseek-v3", "h200", tp=8, ep=8),
    "MLA MoE PP3": _timer("deepseek-v3", "h200", tp=8, pp=3),
    "PIM": _pim_timer("llama-3.1-8b", interleave=False),
    "PIM interleaved": _pim_timer("llama-3.1-8b", interleave=True),
    "PIM MLA": _pim_timer("deepseek-v3", interleave=True, tp=8),
}

chunks = st.tuples(st.integers(1, 4096), st.integers(0, 16_384))


@st.composite
def batches(draw: st.DrawFn) -> BatchShape:
    """A step: 0-3 prefill chunks and 0-512 decode sequences (context 0 included: the kernel
    then has no FLOPs, the case the fast path hands back to the loop)."""
    prefill = draw(st.lists(chunks, max_size=3))
    num_decode = draw(st.integers(0, 512))
    context = draw(st.integers(0, 20_000)) * num_decode if num_decode else 0
    sampled = draw(st.integers(0, len(prefill))) + num_decode
    return BatchShape(prefill, num_decode, context, sampled)


@pytest.mark.parametrize("name", list(TIMERS))
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(batches(), min_size=1, max_size=6))
def test_fast_path_equals_the_op_by_op_loop(name: str, steps: list[BatchShape]) -> None:
    fast, loop = TIMERS[name](RooflineBackend), TIMERS[name](OpByOpRoofline)
    assert fast._scalar is not None and loop._scalar is None and loop._vector is None
    for batch in steps:
        assert fast.step(batch) == loop.step(batch), batch
    assert (fast.cache_lookups, fast.cache_hits) == (loop.cache_lookups, loop.cache_hits)
    if isinstance(fast, PimIterationTimer) and isinstance(loop, PimIterationTimer):
        assert fast._pim_fast and not loop._pim_fast
        assert fast.pim_busy_s == loop.pim_busy_s


@pytest.mark.parametrize("name", ["dense GQA TP4", "MoE", "MLA MoE"])
def test_decode_runs_timed_ahead_equal_the_op_by_op_loop(name: str) -> None:
    """repeat_decode_costs (array path or fast steps) against stepping the loop timer."""
    fast, loop = TIMERS[name](RooflineBackend), TIMERS[name](OpByOpRoofline)
    first = BatchShape(num_decode=29, decode_context=29 * 733, num_sampled=29)
    assert fast.step(first) == loop.step(first)
    costs, lookups, hits = fast.repeat_decode_costs(first, 40)
    want = [loop.step(BatchShape([], 29, 29 * 733 + j * 29, 29)) for j in range(1, 40)]
    assert costs.seconds.tolist() == [c.seconds for c in want]
    assert costs.flops.tolist() == [c.flops for c in want]
    assert costs.bytes.tolist() == [c.bytes for c in want]
    assert lookups == hits > 0


def test_backends_without_a_work_formula_keep_the_op_loop() -> None:
    """The systolic array times attention from its shape, not its work: no fast path."""
    timer = _timer("llama-3.1-8b", "npu")(make_backend)
    assert isinstance(timer.backend, SystolicBackend)
    assert timer._scalar is None and timer._vector is None
    assert timer.step(BatchShape(num_decode=4, decode_context=4000, num_sampled=4)).seconds > 0


def test_a_backend_that_retimes_ops_loses_the_fast_paths() -> None:
    timer = TIMERS["dense GQA TP4"](Retimed)
    assert timer._scalar is None and timer._vector is None
    plain = TIMERS["dense GQA TP4"](RooflineBackend)
    attention = timer._add_decode_attention(0.0, 0.0, 0.0, 8, 8000)
    assert attention[0] == 2 * plain._add_decode_attention(0.0, 0.0, 0.0, 8, 8000)[0]
