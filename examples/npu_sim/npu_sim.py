#!/usr/bin/env python3
"""A small cycle-approximate systolic-array NPU simulator speaking llmservingsim's external
perf-backend protocol (JSON lines on stdin/stdout; docs/extending.md).

Standalone: only the Python standard library, so it stands in for any simulator written in
any language. Model (weight-stationary arrays, double-buffered SRAM):

* A GEMM (M×K) · (K×N) is cut into weight tiles of ``rows × cols``; each array holds one tile
  and streams the M input rows through it, which takes ``M + rows + cols - 1`` cycles (fill
  and drain of the pipeline). Skinny GEMMs (decode, M ≪ rows) therefore under-fill the array.
  Tiles are spread over ``arrays`` arrays.
* DRAM traffic: every weight tile once; the M×K inputs once if they fit in half the SRAM,
  otherwise once per column of tiles; the M×N outputs once. Loads overlap compute (double
  buffering), so a GEMM takes max(compute, traffic / bandwidth) plus one tile's fill.
* Attention runs as two GEMMs per KV head (Q·Kᵀ with the K cache as the stationary operand,
  then P·V) plus softmax on the vector unit; elementwise ops run on the vector unit at
  ``vector_lanes`` elements per cycle, bounded by DRAM bandwidth.

Usage:  python npu_sim.py [--rows 128 --cols 128 --arrays 8 --freq-ghz 1.0 --sram-mib 32
                           --vector-lanes 512 --bandwidth-gbps GB/s]
(bandwidth defaults to the device's memory_bandwidth_gbps from the hello request).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass

NAME, VERSION = "npu_sim", "1.0"
BYTES = {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
OP_OVERHEAD_CYCLES = 500  # command issue and synchronisation per kernel
SEQUENCE_CYCLES = 50  # decode attention: block-table walk and softmax setup per sequence


@dataclass
class Npu:
    rows: int
    cols: int
    arrays: int
    freq_hz: float
    sram_bytes: float
    vector_lanes: int
    bandwidth: float  # bytes/s

    def gemm_cycles(self, m: int, n: int, k: int, elem: float, weight_elem: float) -> float:
        """Cycles of one (m×k)·(k×n) GEMM, memory stalls included."""
        tiles_k, tiles_n = math.ceil(k / self.rows), math.ceil(n / self.cols)
        tiles_per_array = math.ceil(tiles_k * tiles_n / self.arrays)
        pass_cycles = m + self.rows + self.cols - 1
        compute = tiles_per_array * pass_cycles
        inputs = m * k * elem
        input_reads = 1 if inputs <= self.sram_bytes / 2 else tiles_n
        traffic = k * n * weight_elem + inputs * input_reads + m * n * elem
        memory = traffic / self.bandwidth * self.freq_hz
        return max(compute, memory) + pass_cycles

    def vector_cycles(self, elements: float, traffic: float) -> float:
        return max(elements / self.vector_lanes, traffic / self.bandwidth * self.freq_hz)

    def attention_cycles(
        self, queries: int, context: float, q_heads: int, kv_heads: int, head_dim: int, elem: float
    ) -> float:
        """Per KV head: scores = Q·Kᵀ (K stationary), out = P·V, softmax on the vector unit."""
        group = q_heads // max(kv_heads, 1)
        rows = queries * group
        ctx = max(1, math.ceil(context))
        scores = self.gemm_cycles(rows, ctx, head_dim, elem, elem)
        values = self.gemm_cycles(rows, head_dim, ctx, elem, elem)
        softmax = self.vector_cycles(3.0 * rows * ctx, 0.0)
        return kv_heads * (scores + values + softmax)

    def seconds(self, request: dict[str, object]) -> float:
        dims = request.get("dims") or {}
        assert isinstance(dims, dict)
        dtype = str(request.get("dtype", "bf16"))
        weight_elem = BYTES.get(dtype, 2.0)
        elem = 2.0 if weight_elem < 2.0 and dtype != "fp8" else weight_elem  # weight-only quant
        kind = request.get("kind")
        if kind == "gemm":
            cycles = self.gemm_cycles(dims["m"], dims["n"], dims["k"], elem, weight_elem)
        elif kind == "attention_prefill":
            context = dims["ctx"] + (dims["new"] + 1) / 2  # causal: half the new-token square
            cycles = self.attention_cycles(
                dims["new"], context, dims["q_heads"], dims["kv_heads"], dims["head_dim"], elem
            )
        elif kind == "attention_decode":
            # One query per sequence; the batch's contexts add up, as does the work.
            cycles = self.attention_cycles(
                1, dims["context"], dims["q_heads"], dims["kv_heads"], dims["head_dim"], elem
            )
            cycles += dims["batch"] * SEQUENCE_CYCLES
        else:  # elementwise and anything else: vector unit, bounded by DRAM
            traffic = float(str(request.get("bytes", 0.0)))
            cycles = self.vector_cycles(traffic / elem, traffic)
        return (cycles + OP_OVERHEAD_CYCLES) / self.freq_hz


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--cols", type=int, default=128)
    ap.add_argument("--arrays", type=int, default=8)
    ap.add_argument("--freq-ghz", type=float, default=1.0)
    ap.add_argument("--sram-mib", type=float, default=32.0)
    ap.add_argument("--vector-lanes", type=int, default=512)
    ap.add_argument("--bandwidth-gbps", type=float, default=None)
    args = ap.parse_args(argv)
    npu: Npu | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("type") == "hello":
            device = request.get("device") or {}
            bandwidth = args.bandwidth_gbps or float(device.get("memory_bandwidth_gbps", 1000))
            npu = Npu(
                args.rows,
                args.cols,
                args.arrays,
                args.freq_ghz * 1e9,
                args.sram_mib * 2**20,
                args.vector_lanes,
                bandwidth * 1e9,
            )
            answer: dict[str, object] = {"name": NAME, "version": VERSION}
        elif npu is None:
            answer = {"error": "first request must be hello"}
        else:
            try:
                answer = {"seconds": npu.seconds(request)}
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                answer = {"error": f"cannot time {request.get('op')}: {exc!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
