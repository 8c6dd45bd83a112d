"""Effect of the serving frontend (perf/frontend.py) on the measured vLLM runs it was fitted on.

    python scripts/frontend_effect.py [--data ../shared/data] [--stage-seconds 300] [--held-out]

Prints, for "before" (the same engine preset with ``frontend.enabled: false``: the device's
host constants, no async scheduling, no frontend delays) and "after" (the preset's fitted
frontend):

* the vLLM 0.19 per-request log (300 requests): TTFT and E2E mean / p50 / p90, measured
  (engine queued → first / last token) and simulated (arrivals at the measured offsets);
* the vLLM 0.15.1 stage rows of blis_trainval whose model is in the catalog: TTFT and ITL,
  measured (client side) and simulated ("async only": async scheduling without host overhead
  or request costs, the first pass of the fit), and the median |error| per metric;
* with --held-out, the same rows predicted by a fit on the other experiments only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_frontend as fit

OFF = {"enabled": False}


def stats(values: np.ndarray) -> str:
    ms = values * 1e3
    return f"{ms.mean():9.1f} {np.percentile(ms, 50):9.1f} {np.percentile(ms, 90):9.1f}"


def vllm019(data: Path) -> None:
    rows = fit.load_vllm019(data)
    queued = np.array([r["queued_ts"] for r in rows])
    ttft = np.array([r["first_token_ts"] for r in rows]) - queued
    e2e = np.array([r["last_token_ts"] for r in rows]) - queued
    print("vLLM 0.19 per-request log (300 requests), ms: mean p50 p90")
    print(f"  {'measured':<8} TTFT {stats(ttft)}   E2E {stats(e2e)}")
    for label, frontend in (("before", OFF), ("after", {})):
        sim = fit.simulate_vllm019(data, rows, frontend)
        s_ttft = sim["first_token_s"] - sim["arrival_s"]
        s_e2e = sim["finish_s"] - sim["arrival_s"]
        err_t = np.median(np.abs(s_ttft / ttft - 1)) * 100
        err_e = np.median(np.abs(s_e2e / e2e - 1)) * 100
        print(
            f"  {label:<8} TTFT {stats(s_ttft)}   E2E {stats(s_e2e)}   per-request median "
            f"|error| TTFT {err_t:.1f} %, E2E {err_e:.1f} %"
        )


def blis(data: Path, stage_seconds: float) -> None:
    stages = fit.blis_stages(data)
    async_only = {**fit.NO_HOST, "async_scheduling": True}
    sims = {
        label: fit.simulate_blis(stages, fe, stage_seconds)
        for label, fe in (("before", OFF), ("async only", async_only), ("after", {}))
    }
    print(f"\nvLLM 0.15.1 blis_trainval stage rows ({len(stages)}), ms")
    print(
        "  exp stage model        | TTFT meas  before  async  after"
        " | ITL meas  before  async  after"
    )
    errors: dict[str, dict[str, list[float]]] = {
        label: {"ttft": [], "itl": [], "e2e": []} for label in sims
    }
    for i, row in enumerate(stages):
        meas = {k: float(row[f"{k}_mean_ms"]) for k in ("ttft", "itl", "e2e")}
        cells = {label: {k: sims[label][i][k] * 1e3 for k in meas} for label in sims}
        for label in sims:
            for k in meas:
                errors[label][k].append(abs(cells[label][k] / meas[k] - 1) * 100)
        print(
            f"  {row['exp_id']:>8} {row['stage_index']} {fit.BLIS_MODELS[row['model']]:<13}"
            f"| {meas['ttft']:8.1f} {cells['before']['ttft']:7.1f}"
            f" {cells['async only']['ttft']:6.1f} {cells['after']['ttft']:6.1f}"
            f" | {meas['itl']:7.2f} {cells['before']['itl']:7.2f}"
            f" {cells['async only']['itl']:6.2f} {cells['after']['itl']:6.2f}"
        )
    for label in sims:
        medians = ", ".join(f"{k.upper()} {np.median(v):.1f} %" for k, v in errors[label].items())
        print(f"  median |error| {label}: {medians}")


def held_out(data: Path, stage_seconds: float) -> None:
    """Leave one experiment out: fit vllm@0.15 on the others, predict its stage rows."""
    stages = fit.blis_stages(data)
    errors: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": []}
    print("\nvLLM 0.15.1, leave one experiment out (fit on the other experiments), ms")
    print("  exp stage | TTFT meas  held-out | ITL meas  held-out | fitted on the others")
    for exp in sorted({r["exp_id"] for r in stages}):
        train = [r for r in stages if r["exp_id"] != exp]
        test = [r for r in stages if r["exp_id"] == exp]
        params = fit.fit_vllm015(data, stage_seconds, train)["params"]
        sims = fit.simulate_blis(test, {"enabled": True, **params}, stage_seconds)
        for row, sim in zip(test, sims, strict=True):
            meas = {k: float(row[f"{k}_mean_ms"]) for k in errors}
            for k in errors:
                errors[k].append(abs(sim[k] * 1e3 / meas[k] - 1) * 100)
            print(
                f"  {exp:>8} {row['stage_index']} | {meas['ttft']:8.1f} {sim['ttft'] * 1e3:8.1f}"
                f" | {meas['itl']:7.2f} {sim['itl'] * 1e3:8.2f} | step "
                f"{params['step_overhead_us']} us, {params['request_overhead_us']} us + "
                f"{params['per_prompt_token_us']} us/token"
            )
    medians = ", ".join(f"{k.upper()} {np.median(v):.1f} %" for k, v in errors.items())
    print(f"  median |error| held out: {medians}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=fit.DEFAULT_DATA)
    parser.add_argument("--stage-seconds", type=float, default=300.0)
    parser.add_argument(
        "--held-out", action="store_true", help="also leave each experiment out (~3 min)"
    )
    args = parser.parse_args()
    vllm019(args.data)
    blis(args.data, args.stage_seconds)
    if args.held_out:
        held_out(args.data, args.stage_seconds)


if __name__ == "__main__":
    main()
