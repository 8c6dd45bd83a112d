"""The kernel-launch floor of an eager step against its GPU time (docs/accuracy.md, known
error 3): a vLLM 0.6 prefill step of the APEX+ Llama-3.1-70B TP8 replay, timed with the
roofline on H100, its kernel count, the floor at the host's dispatch cost per kernel
(perf.cuda_graphs.launch_us, default 35 µs), and the cost per kernel at which the floor starts
to bind.

    python scripts/cuda_graph_floor.py [--model llama-3.1-70b] [--tp 8] [--tokens 74]
"""

from __future__ import annotations

import argparse

from llmservingsim.build import cuda_graph_policy
from llmservingsim.catalog import load_device, load_model
from llmservingsim.config import CudaGraphsConfig
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.network.topology import Topology
from llmservingsim.perf.iteration import BatchShape, IterationTimer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-70b")
    parser.add_argument("--device", default="h100-sxm")
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=74, help="prompt tokens of the prefill")
    args = parser.parse_args()
    device = load_device(args.device)
    policy = cuda_graph_policy(CudaGraphsConfig(mode="eager"))
    timers = [
        IterationTimer(
            load_model(args.model),
            device,
            RooflineBackend(device, "bf16"),
            Topology.build(device),
            tensor_parallel=args.tp,
            dtype="bf16",
            kv_dtype="bf16",
            cuda_graphs=graphs,
        )
        for graphs in (None, policy)
    ]
    batch = BatchShape([(args.tokens, 0)], 0, 0, 1)
    off, eager = (timer.step(batch).seconds for timer in timers)
    timer = timers[1]
    host = timer.step_overhead + timer.seq_overhead
    gpu = off - host
    kernels = timer.step_kernels(batch)
    print(f"{args.model} TP{args.tp} on {args.device}, one {args.tokens}-token prefill step:")
    print(f"  GPU time {gpu * 1e3:.1f} ms, {kernels} kernel launches")
    floor_ms, launch_us = kernels * policy.launch_s * 1e3, policy.launch_s * 1e6
    print(f"  launch floor {floor_ms:.1f} ms at {launch_us:.1f} µs")
    print(f"  eager step {eager * 1e3:.1f} ms (graphs off: {off * 1e3:.1f} ms)")
    print(f"  the floor binds above {gpu / kernels * 1e6:.1f} µs per kernel")


if __name__ == "__main__":
    main()
