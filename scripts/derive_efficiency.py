#!/usr/bin/env python3
"""Derive the roofline efficiency parameters (device YAML ``efficiency:``) from measured profiles.

Fits, per GPU, by least squares on log(time) (i.e. minimising relative error):

  GEMM       t = max(2MNK / (peak * eta_c(M)),
                     (K*N*bw + M*K*ba + M*N*ba) / (bw_mem * memory)) + launch
             eta_c(M) = compute_max * M / (M + compute_half_m)
  mem op     t = (R + W) / (bw_mem * memory) + launch
  attention  t = max(flops / (peak * attention_compute), bytes / (bw_mem * memory)) + launch
  all-reduce t = 2(p-1) * latency + 2(p-1)/p * S / bandwidth

Recommended values (the printed YAML): per-layer-sum fit (residual on the sum of a layer's 9
profiled ops) with compute_half_m FIXED at 32 and compute_max, memory, kernel_launch_us fitted;
the same fit with compute_half_m free is printed for comparison (see docs/calibration.md).
attention_compute is taken from published FlashAttention throughput, not fitted.

Data (see shared/data/README.md sections 1-2): Vidur per-layer operator profiles
(profiles/vidur/compute/<sku>/*/*/mlp.csv, ms, median column), Vidur all-reduce profiles
(profiles/vidur/network/<node>/all_reduce.csv) and LLMServingSim H100 profiles
(profiles/llmservingsim/v0/H100/...; layers.csv in ns, attention.csv in ms).

Usage:  .venv/bin/python scripts/derive_efficiency.py [DATA_DIR]
        (DATA_DIR defaults to ../shared/data relative to the repository root)

Needs only numpy and scipy. Exits 0 with a message when the data directory is absent.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"

BA = 2  # bf16/fp16 activation bytes
BW = 2  # bf16/fp16 weight bytes
BKV = 2  # bf16 KV cache bytes

# Datasheet dense 16-bit tensor peaks (FLOP/s) and DRAM bandwidth (B/s).
DEVICES = {
    "h100": dict(label="H100 SXM5 80GB", peak=989.4e12, bw=3350e9, arch="Hopper"),
    "a100": dict(label="A100 SXM4 80GB", peak=312.0e12, bw=2039e9, arch="Ampere GA100"),
    # A40 datasheet: "Peak FP16/BF16 Tensor Core 149.7 | 299.4* TF" (* = with sparsity), i.e.
    # 149.7 dense; GA102 professional parts run FP16 with FP32 accumulate at the full rate.
    "a40": dict(label="A40 48GB (PCIe)", peak=149.7e12, bw=696e9, arch="Ampere GA102"),
}

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MEM_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
FAMILY = {
    "attn_pre_proj": "gemm:qkv",
    "attn_post_proj": "gemm:o",
    "mlp_up_proj": "gemm:up",
    "mlp_down_proj": "gemm:down",
    "input_layernorm": "mem:norm",
    "post_attention_layernorm": "mem:norm",
    "attn_rope": "mem:rope",
    "mlp_act": "mem:act",
    "add": "mem:add",
}

# LLMServingSim H100 layer profiles: model shapes (HF config.json values).
LSS_MODELS = {
    "Llama-3.1-70B": dict(h=8192, I=28672, nq=64, nkv=8, d=128, vocab=128256),
    "Llama-3.1-8B": dict(h=4096, I=14336, nq=32, nkv=8, d=128, vocab=128256),
}
LSS_GEMM = {  # layer_name -> family
    "q_proj": "gemm:q",
    "k_proj": "gemm:k",
    "v_proj": "gemm:v",
    "o_proj": "gemm:o",
    "gate_proj": "gemm:up",
    "up_proj": "gemm:up",
    "down_proj": "gemm:down",
    "lm_head": "gemm:lm_head",
}
LSS_MEM = {
    "input_layernorm": "mem:norm",
    "post_layernorm": "mem:norm",
    "final_layernorm": "mem:norm",
    "rope": "mem:rope",
    "act_fn": "mem:act",
}

# Recommended compute_half_m: FIXED, not fitted. Left free, the per-layer-sum fit gives
# half_m ~ 0.45-0.55 x each GPU's peak/bandwidth ratio (a memory effect absorbed by the compute
# term), which puts a compute floor under small-M (decode) GEMMs that does not scale with memory
# bandwidth. 32 keeps GEMMs with M below one 64-row MMA tile memory (weight-streaming) bound.
FIXED_HALF_M = 32.0

# attention_compute is NOT fitted (the LLMServingSim H100 attention table cannot calibrate FLOP
# efficiency: its prefill time depends only on kv_cache_size, not on the chunk). Published
# forward-pass throughput instead: FlashAttention-3 (bf16, d=128, 512-16k tokens) ~470-650 of
# 989 TFLOP/s on H100 -> 0.50 for Hopper/Blackwell; FlashAttention-2 50-73 % of A100 peak ->
# 0.60 for Ampere/Ada.
ATTENTION_COMPUTE = {
    "h100": (0.50, "FlashAttention-3 paper: ~0.5-0.65 of H100 peak (fwd, bf16, d=128)"),
    "a100": (0.60, "FlashAttention-2 paper: 50-73% of A100 peak (fwd)"),
    "a40": (0.60, "Ampere: FlashAttention-2 A100 figure (50-73%), not measured on A40"),
}

NET_NODES = ("h100_dgx", "h100_pairwise_nvlink", "a100_dgx", "a100_pairwise_nvlink")


# --------------------------------------------------------------------------------------------
# sample containers


@dataclass
class Samples:
    """Flat arrays, one entry per measured (operator, shape) point."""

    is_gemm: list = field(default_factory=list)
    m: list = field(default_factory=list)
    flops: list = field(default_factory=list)
    nbytes: list = field(default_factory=list)
    t: list = field(default_factory=list)  # seconds
    family: list = field(default_factory=list)
    model: list = field(default_factory=list)
    n: list = field(default_factory=list)
    source: list = field(default_factory=list)
    row: list = field(default_factory=list)  # (model, tp, num_tokens) point the op belongs to

    def add(self, *, gemm, m, flops, nbytes, t, family, model, n, source, row=""):
        self.is_gemm.append(gemm)
        self.m.append(m)
        self.flops.append(flops)
        self.nbytes.append(nbytes)
        self.t.append(t)
        self.family.append(family)
        self.model.append(model)
        self.n.append(n)
        self.source.append(source)
        self.row.append(row)

    def arrays(self):
        return dict(
            is_gemm=np.array(self.is_gemm, bool),
            m=np.array(self.m, float),
            flops=np.array(self.flops, float),
            nbytes=np.array(self.nbytes, float),
            t=np.array(self.t, float),
            family=np.array(self.family),
            model=np.array(self.model),
            n=np.array(self.n, float),
            source=np.array(self.source),
            row=np.array(self.row),
        )


def gemm_cost(m, n, k):
    return 2.0 * m * n * k, k * n * BW + m * k * BA + m * n * BA


def read_csv(path: Path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------------------------
# loaders


def load_vidur(data: Path, sku: str) -> dict:
    s = Samples()
    for path in sorted((data / "profiles/vidur/compute" / sku).glob("*/*/mlp.csv")):
        model = path.parent.name
        for r in read_csv(path):
            nq, nkv, h, inter = (
                int(r[c]) for c in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd")
            )
            gated = r["use_gated_mlp"].strip().lower() == "true"
            m = int(r["num_tokens"])
            tp = int(r["num_tensor_parallel_workers"])
            d = h // nq
            shapes = {
                "attn_pre_proj": ((nq + 2 * nkv) * d // tp, h),
                "attn_post_proj": (h, nq * d // tp),
                "mlp_up_proj": ((2 if gated else 1) * inter // tp, h),
                "mlp_down_proj": (h, inter // tp),
            }
            ip = inter // tp
            mem_bytes = {
                "input_layernorm": 2 * m * h * BA + h * BA,
                "post_attention_layernorm": 2 * m * h * BA + h * BA,
                "attn_rope": 2 * m * (nq + nkv) * d // tp * BA,
                "mlp_act": (m * 2 * ip + m * ip) * BA if gated else 2 * m * ip * BA,
                "add": 3 * m * h * BA,
            }
            for op in GEMM_OPS + MEM_OPS:
                t = fnum(r.get(f"time_stats.{op}.median")) * 1e-3
                if not np.isfinite(t) or t <= 0:
                    continue
                if op in GEMM_OPS:
                    n, k = shapes[op]
                    fl, by = gemm_cost(m, n, k)
                    s.add(
                        gemm=True,
                        m=m,
                        flops=fl,
                        nbytes=by,
                        t=t,
                        family=FAMILY[op],
                        model=model,
                        n=n,
                        source="vidur",
                        row=f"{model}|{tp}|{m}",
                    )
                else:
                    s.add(
                        gemm=False,
                        m=m,
                        flops=0.0,
                        nbytes=mem_bytes[op],
                        t=t,
                        family=FAMILY[op],
                        model=model,
                        n=0,
                        source="vidur",
                        row=f"{model}|{tp}|{m}",
                    )
    return s.arrays()


def load_lss_layers(data: Path) -> dict:
    s = Samples()
    base = data / "profiles/llmservingsim/v0/H100/meta-llama"
    for path in sorted(base.glob("*/tp*/layers.csv")):
        model = path.parent.parent.name
        cfg = LSS_MODELS.get(model)
        if cfg is None:
            continue
        h, inter, nq, nkv, d, vocab = (cfg[k] for k in ("h", "I", "nq", "nkv", "d", "vocab"))
        for r in read_csv(path):
            name = r["layer_name"]
            m = int(r["input"])
            tp = int(r["tp_size"])
            t = fnum(r["latency(ns)"]) * 1e-9
            if not np.isfinite(t) or t <= 0:
                continue
            shapes = {
                "q_proj": (nq * d // tp, h),
                "k_proj": (nkv * d // tp, h),
                "v_proj": (nkv * d // tp, h),
                "o_proj": (h, nq * d // tp),
                "gate_proj": (inter // tp, h),
                "up_proj": (inter // tp, h),
                "down_proj": (h, inter // tp),
                "lm_head": (vocab // tp, h),
            }
            mem_bytes = {  # the formula's fused-kernel bytes (the profiled HF ops are unfused)
                "input_layernorm": 2 * m * h * BA + h * BA,
                "post_layernorm": 2 * m * h * BA + h * BA,
                "final_layernorm": 2 * m * h * BA + h * BA,
                "rope": 2 * m * (nq + nkv) * d // tp * BA,
                "act_fn": 2
                * m
                * inter
                // tp
                * BA,  # HF: act_fn(gate) alone, the *up is a separate op
            }
            if name in LSS_GEMM:
                n, k = shapes[name]
                fl, by = gemm_cost(m, n, k)
                s.add(
                    gemm=True,
                    m=m,
                    flops=fl,
                    nbytes=by,
                    t=t,
                    family=LSS_GEMM[name],
                    model=model,
                    n=n,
                    source="lss",
                )
            elif name in LSS_MEM:
                s.add(
                    gemm=False,
                    m=m,
                    flops=0.0,
                    nbytes=mem_bytes[name],
                    t=t,
                    family=LSS_MEM[name],
                    model=model,
                    n=0,
                    source="lss",
                )
    return s.arrays()


def subset(a: dict, mask) -> dict:
    return {k: v[mask] for k, v in a.items()}


def concat(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------------------------
# operator model and fit


def predict(params, a, peak, bw):
    cmax, half_m, eta_mem, launch_us = params
    eta_c = cmax * a["m"] / (a["m"] + half_m)
    t_mem = a["nbytes"] / (bw * eta_mem)
    t_cmp = np.where(a["is_gemm"], a["flops"] / (peak * np.maximum(eta_c, 1e-12)), 0.0)
    return np.maximum(t_cmp, t_mem) + launch_us * 1e-6


def fit_operators(a, peak, bw, *, fix=None):
    """Least squares on log(t_pred / t_meas); GEMM and memory-op rows weighted to equal totals."""
    fix = fix or {}
    names = ("compute_max", "compute_half_m", "memory", "kernel_launch_us")
    x0 = np.array([0.7, 64.0, 0.7, 5.0])
    lo = np.array([0.05, 0.0, 0.05, 0.0])
    hi = np.array([1.0, 4096.0, 1.0, 100.0])
    free = [i for i, nm in enumerate(names) if nm not in fix]
    g = a["is_gemm"]
    w = np.ones(len(g))
    for mask in (g, ~g):
        if mask.any():
            w[mask] = 1.0 / np.sqrt(mask.sum())
    logt = np.log(a["t"])

    def full(xf):
        x = x0.copy()
        for nm, v in fix.items():
            x[names.index(nm)] = v
        x[free] = xf
        return x

    def resid(xf):
        return w * (np.log(predict(full(xf), a, peak, bw)) - logt)

    best = None
    for start_half in (16.0, 64.0, 256.0):
        xs = x0.copy()
        xs[1] = start_half
        r = least_squares(resid, xs[free], bounds=(lo[free], hi[free]), x_scale="jac")
        if best is None or r.cost < best.cost:
            best = r
    return full(best.x)


def layer_sums(a, pred):
    """Per-layer time (sum of the 9 profiled ops of one (model, TP, num_tokens) point)."""
    _, idx = np.unique(a["row"], return_inverse=True)
    return np.bincount(idx, weights=pred), np.bincount(idx, weights=a["t"]), idx


def fit_layer_sum(a, peak, bw, *, fix=None):
    """Same 4 parameters; least squares on log of the per-layer sum (what a step adds up).

    ``fix`` maps parameter names (as in fit_operators) to values held constant."""
    fix = fix or {}
    names = ("compute_max", "compute_half_m", "memory", "kernel_launch_us")
    lo = np.array([0.05, 0.0, 0.05, 0.0])
    hi = np.array([1.0, 4096.0, 1.0, 100.0])
    free = [i for i, nm in enumerate(names) if nm not in fix]
    _, idx = np.unique(a["row"], return_inverse=True)
    meas = np.log(np.bincount(idx, weights=a["t"]))

    def full(xf, base):
        x = base.copy()
        for nm, v in fix.items():
            x[names.index(nm)] = v
        x[free] = xf
        return x

    best, best_x = None, None
    for h in (16.0, 64.0, 256.0):
        x0 = full(np.array([0.7, h, 0.7, 5.0])[free], np.array([0.7, h, 0.7, 5.0]))

        def resid(xf, x0=x0):
            return np.log(np.bincount(idx, weights=predict(full(xf, x0), a, peak, bw))) - meas

        r = least_squares(resid, x0[free], bounds=(lo[free], hi[free]), x_scale="jac")
        if best is None or r.cost < best.cost:
            best, best_x = r, full(r.x, x0)
        if "compute_half_m" in fix:  # the start points only differ in compute_half_m
            break
    return best_x


def bw_speedup(params, a, peak, bw, factor=2.0, *, launch=True):
    """Median (over model/TP points) speed-up of the M=1 layer sum when bandwidth x factor.

    launch=False drops kernel_launch_us (which no bandwidth can shorten): the roofline part."""
    one = subset(a, a["m"] == 1)
    if len(one["t"]) == 0:
        return float("nan")
    p = np.array(params, float)
    if not launch:
        p[3] = 0.0
    t1, _, _ = layer_sums(one, predict(p, one, peak, bw))
    t2, _, _ = layer_sums(one, predict(p, one, peak, bw * factor))
    return float(np.median(t1 / t2))


def ape(pred, meas):
    return np.abs(pred / meas - 1.0) * 100.0


def mape_by(a, pred, key="family"):
    out = {}
    err = ape(pred, a["t"])
    for fam in sorted(set(a[key])):
        m = a[key] == fam
        out[fam] = (
            int(m.sum()),
            float(err[m].mean()),
            float(np.median(pred[m] / a["t"][m] - 1) * 100),
        )
    g = a["is_gemm"]
    for name, m in (("ALL gemm", g), ("ALL mem", ~g), ("ALL", np.ones(len(g), bool))):
        if m.any():
            out[name] = (
                int(m.sum()),
                float(err[m].mean()),
                float(np.median(pred[m] / a["t"][m] - 1) * 100),
            )
    return out


# --------------------------------------------------------------------------------------------
# attention (H100, LLMServingSim Llama-3.1-70B tp4)


def load_attention(data: Path):
    path = data / "profiles/llmservingsim/v0/H100/meta-llama/Llama-3.1-70B/tp4/attention.csv"
    if not path.exists():
        return None
    rows = read_csv(path)
    out = defaultdict(list)
    for r in rows:
        pre = r["is_prefill"].strip().lower() == "true"
        t = (
            fnum(r["time_stats.attn_prefill.median" if pre else "time_stats.attn_decode.median"])
            * 1e-3
        )
        if not np.isfinite(t) or t <= 0:
            continue
        tp = int(r["num_tensor_parallel_workers"])
        nq, nkv = int(r["n_q_head"]), int(r["n_kv_head"])
        d = int(r["n_embd"]) // nq
        out["pre"].append(pre)
        out["B"].append(int(r["batch_size"]))
        out["chunk"].append(int(r["prefill_chunk_size"]))
        out["kv"].append(int(r["kv_cache_size"]))
        out["hq"].append(nq // tp)
        out["hkv"].append(max(1, nkv // tp))
        out["d"].append(d)
        out["t"].append(t)
    return {k: np.array(v) for k, v in out.items()}


def attn_cost(att, interp):
    """flops, bytes per row. interp 'cached': kv_cache_size = tokens cached before the chunk;
    'total': kv_cache_size includes the chunk (ctx_prev = kv - chunk)."""
    B, new, kv, hq, hkv, d = (att[k].astype(float) for k in ("B", "chunk", "kv", "hq", "hkv", "d"))
    pre = att["pre"]
    ctx_prev = kv if interp == "cached" else np.maximum(kv - new, 0)
    fl_p = B * 4 * new * (ctx_prev + (new + 1) / 2) * hq * d
    by_p = B * (2 * new * hq * d * BA + 2 * (ctx_prev + new) * hkv * d * BKV)
    fl_d = 4 * B * kv * hq * d
    by_d = 2 * B * kv * hkv * d * BKV + 2 * B * hq * d * BA
    return np.where(pre, fl_p, fl_d), np.where(pre, by_p, by_d)


def attn_predict(ac, eta_mem, launch_us, fl, by, peak, bw):
    return np.maximum(fl / (peak * ac), by / (bw * eta_mem)) + launch_us * 1e-6


def fit_attention(fl, by, t, peak, bw, *, eta_mem=None, launch_us=None):
    """Fit attention_compute (and eta_mem / launch where not given) on log time."""
    names = []
    x0, lo, hi = [], [], []
    for nm, v, s, lo_, h in (
        ("ac", None, 0.5, 1e-3, 1.0),
        ("em", eta_mem, 0.7, 0.01, 1.0),
        ("lu", launch_us, 5.0, 0.0, 200.0),
    ):
        if v is None:
            names.append(nm)
            x0.append(s)
            lo.append(lo_)
            hi.append(h)

    def unpack(x):
        d = dict(zip(names, x, strict=True))
        return d.get("ac", 1.0), d.get("em", eta_mem), d.get("lu", launch_us)

    def resid(x):
        ac, em, lu = unpack(x)
        return np.log(attn_predict(ac, em, lu, fl, by, peak, bw)) - np.log(t)

    r = least_squares(resid, x0, bounds=(lo, hi), x_scale="jac")
    return unpack(r.x)


def fit_decode_mem(by, t, bw):
    def resid(x):
        return np.log(by / (bw * x[0]) + x[1] * 1e-6) - np.log(t)

    r = least_squares(resid, [0.7, 5.0], bounds=([0.01, 0.0], [1.0, 200.0]), x_scale="jac")
    return r.x


# --------------------------------------------------------------------------------------------
# all-reduce


def load_allreduce(data: Path, node: str):
    path = data / "profiles/vidur/network" / node / "all_reduce.csv"
    if not path.exists():
        return None
    groups = defaultdict(list)
    for r in read_csv(path):
        p, dpn = int(r["num_workers"]), int(r["devices_per_node"])
        if p != dpn:  # keep only collectives that stay on one node
            continue
        t = fnum(r["time_stats.all_reduce.median"]) * 1e-3
        if np.isfinite(t) and t > 0:
            groups[(p, int(r["size"]))].append(t)
    keys = sorted(groups)
    p = np.array([k[0] for k in keys], float)
    s = np.array([k[1] for k in keys], float)
    t = np.array([np.median(groups[k]) for k in keys])  # median over ranks
    return p, s, t


def ar_predict(lat_us, bw_gbps, p, s):
    return 2 * (p - 1) * lat_us * 1e-6 + 2 * (p - 1) / p * s / (bw_gbps * 1e9)


def fit_allreduce(p, s, t):
    def resid(x):
        return np.log(ar_predict(x[0], x[1], p, s)) - np.log(t)

    r = least_squares(resid, [5.0, 100.0], bounds=([0.0, 1.0], [1000.0, 5000.0]), x_scale="jac")
    return r.x


# --------------------------------------------------------------------------------------------
# reporting


def print_table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*r))


def fmt_params(p):
    return f"cmax={p[0]:.3f} half_m={p[1]:.1f} mem={p[2]:.3f} launch={p[3]:.2f}us"


def m_bins(a, pred, label):
    bins = [(1, 1), (2, 16), (17, 128), (129, 512), (513, 2048), (2049, 10**9)]
    g = a["is_gemm"]
    rows = []
    for lo, hi in bins:
        m = g & (a["m"] >= lo) & (a["m"] <= hi)
        if m.any():
            ratio = pred[m] / a["t"][m] - 1
            rows.append(
                (
                    f"{label} M {lo}-{hi if hi < 10**9 else 'max'}",
                    int(m.sum()),
                    f"{ape(pred[m], a['t'][m]).mean():.1f}",
                    f"{np.median(ratio) * 100:+.1f}",
                )
            )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "data_dir",
        nargs="?",
        default=str(DEFAULT_DATA),
        help="shared data folder (default %(default)s)",
    )
    ap.add_argument(
        "--holdout-train",
        default="Llama-2-7b-hf",
        help="model whose profiles train the held-out fit",
    )
    args = ap.parse_args(argv)
    data = Path(args.data_dir)
    if not (data / "profiles").is_dir():
        print(f"derive_efficiency: data folder {data} (profiles/) not found; skipping.")
        return 0

    fitted = {}
    summary_rows = []
    layer_rows = []
    for sku, dev in DEVICES.items():
        a = load_vidur(data, sku)
        if len(a["t"]) == 0:
            print(f"[{sku}] no Vidur profiles; skipped")
            continue
        peak, bw = dev["peak"], dev["bw"]
        print(
            f"\n=== {sku}: {dev['label']}  peak {peak / 1e12:.1f} TFLOP/s, {bw / 1e9:.0f} GB/s  "
            f"({len(a['t'])} Vidur points)"
        )
        p_all = fit_operators(a, peak, bw)
        p_gemm = fit_operators(subset(a, a["is_gemm"]), peak, bw)
        p_mem = fit_operators(
            subset(a, ~a["is_gemm"]), peak, bw, fix={"compute_max": 1.0, "compute_half_m": 0.0}
        )
        print(f"joint fit (GEMM + mem ops) : {fmt_params(p_all)}")
        print(f"GEMM-only fit              : {fmt_params(p_gemm)}")
        print(f"mem-op-only fit            : mem={p_mem[2]:.3f} launch={p_mem[3]:.2f}us")
        pred = predict(p_all, a, peak, bw)
        ins = mape_by(a, pred)
        p_free = fit_layer_sum(a, peak, bw)
        p_lay = fit_layer_sum(a, peak, bw, fix={"compute_half_m": FIXED_HALF_M})
        pred_lay = predict(p_lay, a, peak, bw)
        lay_ops = mape_by(a, pred_lay)
        print(f"per-layer-sum fit, half free: {fmt_params(p_free)}")
        print(f"per-layer-sum fit, half={FIXED_HALF_M:.0f} : {fmt_params(p_lay)}   <- recommended")
        ratio = peak / bw
        print(
            f"peak/bandwidth = {ratio:.0f} FLOP/B; free-fit half_m / ratio = "
            f"{p_free[1] / ratio:.2f}"
        )
        lrows = []
        lmape = {}
        small = np.array([int(r.split("|")[2]) <= 64 for r in np.unique(a["row"])])
        for nm, pp in (
            ("joint", pred),
            ("GEMM-only", predict(p_gemm, a, peak, bw)),
            ("layer-sum, half free", predict(p_free, a, peak, bw)),
            (f"layer-sum, half={FIXED_HALF_M:.0f} (rec.)", pred_lay),
        ):
            ps, ms, _ = layer_sums(a, pp)
            lmape[nm] = (ape(ps, ms).mean(), ape(ps[small], ms[small]).mean())
            lrows.append(
                (
                    nm,
                    f"{ape(ps, ms).mean():.1f}",
                    f"{ape(ps[small], ms[small]).mean():.1f}",
                    f"{ape(ps[~small], ms[~small]).mean():.1f}",
                    f"{np.median(ps / ms - 1) * 100:+.1f}",
                )
            )
        speed = {
            nm: (bw_speedup(pp, a, peak, bw), bw_speedup(pp, a, peak, bw, launch=False))
            for nm, pp in (("free", p_free), ("rec", p_lay))
        }
        print(
            "batch-1 decode (M=1 layer sum, median over model/TP points) speed-up with 2x "
            f"memory bandwidth, with launch | launch excluded: half free "
            f"{speed['free'][0]:.2f}x | {speed['free'][1]:.2f}x, "
            f"half={FIXED_HALF_M:.0f} {speed['rec'][0]:.2f}x | {speed['rec'][1]:.2f}x"
        )
        print_table(
            f"[{sku}] per-layer time (sum of 9 ops) MAPE % by parameter set",
            ("fit", "MAPE layer", "M<=64", "M>64", "median bias"),
            lrows,
        )
        print_table(
            f"[{sku}] per-op MAPE % with the recommended layer-sum fit (half_m={FIXED_HALF_M:.0f})",
            ("family", "n", "MAPE", "bias"),
            [(k, v[0], f"{v[1]:.1f}", f"{v[2]:+.1f}") for k, v in lay_ops.items()],
        )
        big = ~a["is_gemm"] & (a["m"] >= 1024)
        print_table(
            f"[{sku}] memory ops at M>=1024: achieved (R+W)/t as a fraction of {bw / 1e9:.0f} GB/s",
            ("family", "median", "p10", "p90"),
            [
                (
                    f,
                    f"{np.median(v):.2f}",
                    f"{np.percentile(v, 10):.2f}",
                    f"{np.percentile(v, 90):.2f}",
                )
                for f in sorted(set(a["family"][big]))
                for v in [
                    a["nbytes"][big & (a["family"] == f)] / a["t"][big & (a["family"] == f)] / bw
                ]
            ],
        )

        # held-out: train on one model, evaluate on the others
        tr = a["model"] == args.holdout_train
        p_tr = fit_operators(subset(a, tr), peak, bw)
        te = subset(a, ~tr)
        ho = mape_by(te, predict(p_tr, te, peak, bw))
        ho_models = mape_by(te, predict(p_tr, te, peak, bw), key="model")
        print(f"held-out fit on {args.holdout_train}: {fmt_params(p_tr)}")
        ho_layer = {}
        for nm, fix in (
            ("half free", None),
            (f"half={FIXED_HALF_M:.0f}", {"compute_half_m": FIXED_HALF_M}),
        ):
            p_ltr = fit_layer_sum(subset(a, tr), peak, bw, fix=fix)
            ps, ms, _ = layer_sums(te, predict(p_ltr, te, peak, bw))
            ho_lay_ops = mape_by(te, predict(p_ltr, te, peak, bw))
            ho_layer[nm] = ape(ps, ms).mean()
            print(
                f"held-out layer-sum fit ({nm}) on {args.holdout_train}: {fmt_params(p_ltr)} "
                f"-> per-layer MAPE on other models {ape(ps, ms).mean():.1f}%, "
                f"per-op MAPE gemm {ho_lay_ops['ALL gemm'][1]:.1f}% "
                f"mem {ho_lay_ops['ALL mem'][1]:.1f}% all {ho_lay_ops['ALL'][1]:.1f}%"
            )
        rows = []
        for fam in ins:
            n, e, b = ins[fam]
            h = ho.get(fam)
            rows.append(
                (
                    fam,
                    n,
                    f"{e:.1f}",
                    f"{b:+.1f}",
                    f"{h[1]:.1f}" if h else "-",
                    f"{h[2]:+.1f}" if h else "-",
                )
            )
        print_table(
            f"[{sku}] MAPE % per op family (in-sample joint fit | "
            f"held-out: train {args.holdout_train})",
            ("family", "n", "MAPE in", "bias in", "MAPE held", "bias held"),
            rows,
        )
        print_table(
            f"[{sku}] held-out MAPE per test model",
            ("model", "n", "MAPE", "median bias"),
            [
                (k, v[0], f"{v[1]:.1f}", f"{v[2]:+.1f}")
                for k, v in ho_models.items()
                if not k.startswith("ALL")
            ],
        )
        print_table(
            f"[{sku}] GEMM error by M (joint fit; bias = median(pred/meas-1))",
            ("bin", "n", "MAPE", "bias %"),
            m_bins(a, pred, sku),
        )
        print_table(
            f"[{sku}] GEMM error by M (recommended layer-sum fit, half_m={FIXED_HALF_M:.0f})",
            ("bin", "n", "MAPE", "bias %"),
            m_bins(a, pred_lay, sku),
        )
        fitted[sku] = dict(
            joint=p_all, gemm=p_gemm, mem=p_mem, holdout=p_tr, ins=ins, ho=ho, layer=p_lay
        )
        rec_nm = f"layer-sum, half={FIXED_HALF_M:.0f} (rec.)"
        layer_rows.append(
            (
                sku,
                f"{p_lay[0]:.3f}",
                f"{p_lay[2]:.3f}",
                f"{p_lay[3]:.2f}",
                f"{lmape[rec_nm][0]:.1f}",
                f"{lmape[rec_nm][1]:.1f}",
                f"{ho_layer[f'half={FIXED_HALF_M:.0f}']:.1f}",
                f"{speed['rec'][0]:.2f}/{speed['rec'][1]:.2f}",
                f"{p_free[0]:.3f}/{p_free[1]:.0f}/{p_free[2]:.3f}/{p_free[3]:.2f}",
                f"{lmape['layer-sum, half free'][0]:.1f}",
                f"{lmape['layer-sum, half free'][1]:.1f}",
                f"{ho_layer['half free']:.1f}",
                f"{speed['free'][0]:.2f}/{speed['free'][1]:.2f}",
                f"{ratio:.0f}",
                f"{p_free[1] / ratio:.2f}",
            )
        )
        summary_rows.append(
            (
                sku,
                f"{p_all[0]:.3f}",
                f"{p_all[1]:.1f}",
                f"{p_all[2]:.3f}",
                f"{p_all[3]:.2f}",
                f"{ins['ALL gemm'][1]:.1f}",
                f"{ins['ALL mem'][1]:.1f}",
                f"{ins['ALL'][1]:.1f}",
                f"{ho['ALL'][1]:.1f}",
            )
        )

        if sku == "h100":
            lss = load_lss_layers(data)
            if len(lss["t"]):
                lg = subset(lss, lss["is_gemm"])
                lm = subset(lss, ~lss["is_gemm"])
                p_lss = fit_operators(lg, peak, bw)
                print(f"\n[h100] LLMServingSim layers.csv GEMM-only fit: {fmt_params(p_lss)}")
                cross = mape_by(lg, predict(p_all, lg, peak, bw))
                own = mape_by(lg, predict(p_lss, lg, peak, bw))
                print_table(
                    "[h100] LLMServingSim GEMMs: MAPE % with Vidur joint fit (cross-source) "
                    "| own fit",
                    ("family", "n", "MAPE vidur-fit", "bias", "MAPE own-fit", "bias"),
                    [
                        (
                            k,
                            v[0],
                            f"{v[1]:.1f}",
                            f"{v[2]:+.1f}",
                            f"{own[k][1]:.1f}",
                            f"{own[k][2]:+.1f}",
                        )
                        for k, v in cross.items()
                    ],
                )
                print_table(
                    "[h100] LLMServingSim GEMM error by M (Vidur joint fit)",
                    ("bin", "n", "MAPE", "bias %"),
                    m_bins(lg, predict(p_all, lg, peak, bw), "lss"),
                )
                noth = lg["family"] != "gemm:lm_head"
                both = concat(subset(a, a["is_gemm"]), subset(lg, noth))
                p_both = fit_operators(both, peak, bw)
                print(
                    f"[h100] GEMM fit on Vidur + LLMServingSim (no lm_head): {fmt_params(p_both)}"
                )
                fitted[sku]["gemm_both"] = p_both
                pm = fit_operators(lm, peak, bw, fix={"compute_max": 1.0, "compute_half_m": 0.0})
                mm = mape_by(lm, predict(p_all, lm, peak, bw))
                print(
                    f"[h100] LLMServingSim memory ops (unfused HF/PyTorch ops): own fit "
                    f"mem={pm[2]:.3f} "
                    f"launch={pm[3]:.1f}us; with Vidur joint fit MAPE {mm['ALL'][1]:.0f}% "
                    f"(median bias {mm['ALL'][2]:+.0f}%) -> not used for the fit"
                )
                fitted[sku]["lss"] = dict(p=p_lss, cross=cross, own=own, mem=pm, memm=mm)

    print_table(
        "Operator fits (joint GEMM + memory ops, Vidur mlp.csv)",
        (
            "device",
            "compute_max",
            "half_m",
            "memory",
            "launch_us",
            "MAPE gemm",
            "MAPE mem",
            "MAPE all",
            "MAPE held-out",
        ),
        summary_rows,
    )

    print_table(
        f"Per-layer-sum fits: recommended (compute_half_m fixed at {FIXED_HALF_M:.0f}) vs "
        "half_m free (MAPE % of per-layer time; 2xBW = speed-up of a batch-1 decode layer with 2x "
        "bandwidth, with/without launch time)",
        (
            "device",
            "compute_max",
            "memory",
            "launch_us",
            "MAPE layer",
            "M<=64",
            "held-out",
            "2xBW",
            "free: cmax/half/mem/launch",
            "MAPE layer",
            "M<=64",
            "held-out",
            "2xBW",
            "peak/bw",
            "half/(peak/bw)",
        ),
        layer_rows,
    )

    # attention on H100
    att = load_attention(data)
    ac_h100 = None
    if att is not None and "h100" in fitted:
        dev = DEVICES["h100"]
        peak, bw = dev["peak"], dev["bw"]
        _, _, em, lu = fitted["h100"]["joint"]
        pre = att["pre"]
        print(
            f"\n=== attention (H100, Llama-3.1-70B tp4: hq=16, hkv=2, d=128): "
            f"{pre.sum()} prefill rows, "
            f"{(~pre).sum()} decode rows; batch sizes in prefill rows: {sorted(set(att['B'][pre]))}"
        )
        rows = []
        for interp in ("cached", "total"):
            fl, by = attn_cost(att, interp)
            ac, _, _ = fit_attention(
                fl[pre], by[pre], att["t"][pre], peak, bw, eta_mem=em, launch_us=lu
            )
            pr = attn_predict(ac, em, lu, fl[pre], by[pre], peak, bw)
            e = ape(pr, att["t"][pre])
            acf, emf, luf = fit_attention(fl[pre], by[pre], att["t"][pre], peak, bw)
            prf = attn_predict(acf, emf, luf, fl[pre], by[pre], peak, bw)
            big = att["chunk"][pre] >= 512
            ac_big, _, _ = fit_attention(
                fl[pre][big], by[pre][big], att["t"][pre][big], peak, bw, eta_mem=em, launch_us=lu
            )
            pb = attn_predict(ac_big, em, lu, fl[pre], by[pre], peak, bw)
            rows.append(
                (
                    interp,
                    f"{ac:.3f}",
                    f"{e.mean():.1f}",
                    f"{acf:.3f}/{emf:.2f}/{luf:.1f}",
                    f"{ape(prf, att['t'][pre]).mean():.1f}",
                    f"{ac_big:.3f}",
                    f"{ape(pb[big], att['t'][pre][big]).mean():.1f}",
                    f"{ape(pb, att['t'][pre]).mean():.1f}",
                )
            )
            if interp == "total":
                ac_h100 = (ac, ac_big)
                # error by chunk size
                brow = []
                for lo, hi in ((32, 32), (64, 128), (160, 256), (288, 511), (512, 1024)):
                    mk = (att["chunk"][pre] >= lo) & (att["chunk"][pre] <= hi)
                    if mk.any():
                        brow.append(
                            (
                                f"new {lo}-{hi}",
                                int(mk.sum()),
                                f"{ape(pr[mk], att['t'][pre][mk]).mean():.1f}",
                                f"{np.median(pr[mk] / att['t'][pre][mk] - 1) * 100:+.1f}",
                                f"{np.median(pb[mk] / att['t'][pre][mk] - 1) * 100:+.1f}",
                                f"{np.median(fl[pre][mk] / att['t'][pre][mk]) / peak:.3f}",
                            )
                        )
                bins_pre = brow
        print_table(
            "prefill: attention_compute fits "
            "(eta_mem, launch from the H100 joint fit unless 'free')",
            (
                "kv_cache_size =",
                "attn_compute",
                "MAPE",
                "free ac/mem/launch",
                "MAPE free",
                "ac (new>=512)",
                "MAPE new>=512",
                "MAPE all w/ that",
            ),
            rows,
        )
        print_table(
            "prefill error by chunk ('total' interpretation: kv_cache_size includes the chunk)",
            (
                "bin",
                "n",
                "MAPE (all-fit)",
                "bias all-fit %",
                "bias new>=512-fit %",
                "median achieved/peak",
            ),
            bins_pre,
        )
        d = ~pre
        B, kv, hq, hkv, hd = (att[k][d].astype(float) for k in ("B", "kv", "hq", "hkv", "d"))
        td = att["t"][d]
        drows = []
        for interp, ctx in (
            ("per sequence (c = kv_cache_size)", kv),
            ("batch total (c = kv_cache_size / B)", kv / B),
        ):
            by_d = 2 * B * ctx * hkv * hd * BKV + 2 * B * hq * hd * BA
            emd, lud = fit_decode_mem(by_d, td, bw)
            prd_dev = by_d / (bw * em) + lu * 1e-6
            prd_own = by_d / (bw * emd) + lud * 1e-6
            ach = by_d / td / bw
            drows.append(
                (
                    interp,
                    f"{np.median(ach):.3f}",
                    f"{np.percentile(ach, 95):.3f}",
                    f"{(ach > 1).mean() * 100:.0f}",
                    f"{emd:.3f}/{lud:.1f}",
                    f"{ape(prd_own, td).mean():.1f}",
                    f"{ape(prd_dev, td).mean():.1f}",
                    f"{np.median(prd_dev / td - 1) * 100:+.1f}",
                )
            )
        print_table(
            "decode: which interpretation of kv_cache_size, and eta_mem check",
            (
                "interpretation",
                "achieved BW/peak median",
                "p95",
                "% rows > peak",
                "own fit mem/launch",
                "MAPE own",
                "MAPE dev-fit",
                "bias dev-fit %",
            ),
            drows,
        )
        srow = []
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            mk = (b == B) & (kv == 32768)
            if mk.any():
                srow.append((b, f"{td[mk][0] * 1e6:.1f}", f"{td[mk][0] * 1e9 / (32768 / b):.1f}"))
        print_table(
            "decode scaling at kv_cache_size = 32768",
            ("batch_size", "t (us)", "ns per token of kv/B"),
            srow,
        )
        emd, lud = fit_decode_mem(2 * B * (kv / B) * hkv * hd * BKV + 2 * B * hq * hd * BA, td, bw)
        fitted["h100"]["decode"] = (emd, lud)

    # all-reduce
    ar_rows = []
    for node in NET_NODES:
        got = load_allreduce(data, node)
        if got is None:
            continue
        p, s, t = got
        lat, bwg = fit_allreduce(p, s, t)
        pr = ar_predict(lat, bwg, p, s)
        per = {int(w): ape(pr[p == w], t[p == w]).mean() for w in sorted(set(p))}
        big = s >= 2**24
        busbw = {
            int(w): np.median(2 * (w - 1) / w * s[(p == w) & big] / t[(p == w) & big]) / 1e9
            for w in sorted(set(p))
        }
        sep = []
        for w in sorted(set(p)):
            mk = p == w
            lw, bw_w = fit_allreduce(p[mk], s[mk], t[mk])
            sep.append(
                f"p{int(w)}:{lw:.1f}us/{bw_w:.0f}GB/s/"
                f"{ape(ar_predict(lw, bw_w, p[mk], s[mk]), t[mk]).mean():.0f}%"
            )
        ar_rows.append(
            (
                node,
                f"{lat:.2f}",
                f"{bwg:.1f}",
                " ".join(f"p{w}:{e:.1f}" for w, e in per.items()),
                f"{ape(pr, t).mean():.1f}",
                " ".join(f"p{w}:{b:.0f}" for w, b in busbw.items()),
                " ".join(sep),
            )
        )
    if ar_rows:
        print_table(
            "TP all-reduce fits, t = 2(p-1)*latency + 2(p-1)/p*S/bandwidth "
            "(one node, median over ranks)",
            (
                "node",
                "latency_us",
                "bandwidth_gbps",
                "MAPE % per world size",
                "MAPE all",
                "bus BW GB/s at S>=16MiB",
                "per-world-size fit lat/bw/MAPE",
            ),
            ar_rows,
        )

    # YAML
    if ac_h100 is not None:
        print(
            f"\n(attention_compute fitted on the LLMServingSim H100 table: {ac_h100[0]:.3f} all "
            f"prefill rows, {ac_h100[1]:.3f} new>=512 rows; NOT used, see ATTENTION_COMPUTE)"
        )
    print(
        f"\n# ---- recommended efficiency: per-layer-sum fit with compute_half_m fixed at "
        f"{FIXED_HALF_M:.0f};\n# attention_compute from published FlashAttention throughput "
        "(not fitted)"
    )
    for sku, f in fitted.items():
        cmax, half_m, em, lu = f["layer"]
        ac, note = ATTENTION_COMPUTE[sku]
        print(f"# {sku} ({DEVICES[sku]['label']})")
        print("efficiency:")
        print(f"  compute_max: {cmax:.3f}")
        print(f"  compute_half_m: {half_m:.0f}   # fixed, not fitted")
        print(f"  attention_compute: {ac:.2f}   # {note}")
        print(f"  memory: {em:.3f}")
        print(f"  kernel_launch_us: {lu:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
