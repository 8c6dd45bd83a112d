"""Effect of the serving frontend (perf/frontend.py) on the measured vLLM runs it was fitted on.

    python scripts/frontend_effect.py [--data ../shared/data] [--stage-seconds 300] [--held-out]
        [--folds 2]

Prints, for "before" (the same engine preset with ``frontend.enabled: false``: the device's
host constants, no async scheduling, no frontend delays) and "after" (the preset's fitted
frontend):

* the vLLM 0.19 per-request log (300 requests): TTFT and E2E mean / p50 / p90, measured
  (engine queued → first / last token) and simulated (arrivals at the measured offsets);
* the vLLM 0.15.1 stage rows of blis_trainval whose model is in the catalog: TTFT and ITL,
  measured (client side) and simulated ("async only": async scheduling without host overhead
  or request costs, the first pass of the fit), and the median |error| per metric;
* with --held-out, the vLLM 0.19 requests after the first 150 predicted by a fit on those 150,
  and the blis rows of each fold of experiments (``--folds``, default 2: experiments sorted by
  id, dealt alternately) predicted by a fit on the other folds.
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


def held_out_vllm019(data: Path) -> None:
    """vLLM 0.19: fit on the first 150 requests (by arrival), predict the other 150."""
    rows = fit.load_vllm019(data)
    order = np.argsort([r["arrival_time"] for r in rows])
    train = np.zeros(len(rows), dtype=bool)
    train[order[: len(rows) // 2]] = True
    params = fit.fit_vllm019(data, train)["params"]
    sim = fit.simulate_vllm019(data, rows, {**params})
    queued = np.array([r["queued_ts"] for r in rows])
    out = np.array([r["output_toks"] for r in rows], dtype=float)
    meas = {
        "ttft": np.array([r["first_token_ts"] for r in rows]) - queued,
        "e2e": np.array([r["last_token_ts"] for r in rows]) - queued,
    }
    meas["tpot"] = (meas["e2e"] - meas["ttft"]) / (out - 1)
    got = {
        "ttft": sim["first_token_s"] - sim["arrival_s"],
        "e2e": sim["finish_s"] - sim["arrival_s"],
    }
    got["tpot"] = (got["e2e"] - got["ttft"]) / (sim["output_tokens"] - 1)
    test = ~train
    medians = ", ".join(
        f"{k.upper()} {np.median(np.abs(got[k][test] / meas[k][test] - 1)) * 100:.1f} %"
        for k in ("ttft", "tpot", "e2e")
    )
    print(
        f"\nvLLM 0.19, fit on the first {int(train.sum())} requests (step "
        f"{params['step_overhead_us']} us + {params['per_seq_overhead_us']} us/seq), the last "
        f"{int(test.sum())} held out: per-request median |error| {medians}"
    )


def held_out(data: Path, stage_seconds: float, folds: int) -> None:
    """k-fold over experiments (sorted by id, dealt round-robin into ``folds`` groups; as many
    folds as experiments is leave-one-experiment-out): fit vllm@0.15 on the other folds,
    predict the fold's stage rows."""
    stages = fit.blis_stages(data)
    exps = sorted({r["exp_id"] for r in stages}, key=int)
    groups = [exps[i::folds] for i in range(min(folds, len(exps)))]
    errors: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": []}
    print(f"\nvLLM 0.15.1, {len(groups)}-fold over experiments (fit on the other folds), ms")
    print("  exp stage | TTFT meas  held-out | ITL meas  held-out | fitted on the others")
    for group in groups:
        train = [r for r in stages if r["exp_id"] not in group]
        test = [r for r in stages if r["exp_id"] in group]
        params = fit.fit_vllm015(data, stage_seconds, train)["params"]
        sims = fit.simulate_blis(test, {"enabled": True, **params}, stage_seconds)
        for row, sim in zip(test, sims, strict=True):
            meas = {k: float(row[f"{k}_mean_ms"]) for k in errors}
            for k in errors:
                errors[k].append(abs(sim[k] * 1e3 / meas[k] - 1) * 100)
            print(
                f"  {row['exp_id']:>8} {row['stage_index']} | {meas['ttft']:8.1f}"
                f" {sim['ttft'] * 1e3:8.1f}"
                f" | {meas['itl']:7.2f} {sim['itl'] * 1e3:8.2f} | step "
                f"{params['step_overhead_us']} us + {params['per_seq_overhead_us']} us/seq, "
                f"{params['request_overhead_us']} us + "
                f"{params['per_prompt_token_us']} us/token"
            )
    medians = ", ".join(f"{k.upper()} {np.median(v):.1f} %" for k, v in errors.items())
    print(f"  median |error| held out: {medians}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=fit.DEFAULT_DATA)
    parser.add_argument("--stage-seconds", type=float, default=300.0)
    parser.add_argument(
        "--held-out", action="store_true", help="also predict each fold from the others"
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=2,
        help="folds of the experiments for --held-out (13: leave one experiment out)",
    )
    args = parser.parse_args()
    vllm019(args.data)
    blis(args.data, args.stage_seconds)
    if args.held_out:
        held_out_vllm019(args.data)
        held_out(args.data, args.stage_seconds, args.folds)


if __name__ == "__main__":
    main()
