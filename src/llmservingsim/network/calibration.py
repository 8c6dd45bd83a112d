"""Compare the collective model with measured NCCL all-reduce times and fit its links.

Two sources of measurements: Vidur's network CSVs (``load_samples``: intra- and inter-node,
eager calls) and AIConfigurator's ``nccl_perf`` tables (``load_table_samples``: nccl-tests'
``all_reduce_perf`` inside one node, calls issued back to back). Used by
``scripts/calibrate_network.py`` and ``scripts/calibrate_kernel_tables.py`` (fit + report) and
by tests that keep the shipped device YAMLs honest when the data is present.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmservingsim.hardware.device import DeviceSpec, Link
from llmservingsim.network import collectives
from llmservingsim.network.topology import Topology

# Vidur node types whose devices we ship, and the catalog device each one measured.
NODE_DEVICES = {"h100_dgx": "h100-sxm", "a100_dgx": "a100-80gb"}


@dataclass(frozen=True, slots=True)
class Sample:
    collective: str  # all_reduce | send_recv
    num_workers: int
    devices_per_node: int
    size: int
    seconds: float

    @property
    def crosses_nodes(self) -> bool:
        return self.devices_per_node < self.num_workers


def load_samples(node_dir: Path) -> list[Sample]:
    """Median over ranks of each (collective, workers, placement, size) point."""
    samples: list[Sample] = []
    for collective in ("all_reduce", "send_recv"):
        path = node_dir / f"{collective}.csv"
        if not path.is_file():
            continue
        groups: dict[tuple[int, int, int], list[float]] = defaultdict(list)
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                key = (int(row["num_workers"]), int(row["devices_per_node"]), int(row["size"]))
                groups[key].append(float(row[f"time_stats.{collective}.median"]) * 1e-3)
        for (workers, per_node, size), times in sorted(groups.items()):
            samples.append(Sample(collective, workers, per_node, size, statistics.median(times)))
    return samples


def load_table_samples(folder: Path) -> list[Sample]:
    """The all-reduce points of an AIConfigurator ``nccl_perf.parquet`` folder (fp16 messages;
    the table's ``message_size`` counts elements, ``latency`` is in ms), 2 GPUs and more, all in
    one node."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "nccl_perf.parquet").to_pydict()
    samples = [
        Sample("all_reduce", int(gpus), int(gpus), 2 * int(size), float(ms) * 1e-3)
        for op, dtype, gpus, size, ms in zip(
            table["op_name"],
            table["nccl_dtype"],
            table["num_gpus"],
            table["message_size"],
            table["latency"],
            strict=True,
        )
        if op == "all_reduce" and dtype == "half" and int(gpus) >= 2
    ]
    return sorted(samples, key=lambda s: (s.num_workers, s.size))


def fit_link(samples: list[Sample], device: DeviceSpec, which: str) -> Link:
    """Least-squares fit (relative error, soft L1) of ``which`` link's ``latency_us``,
    ``call_latency_us`` and ``efficiency`` to ``samples``, keeping the datasheet bandwidth."""
    import numpy as np
    from scipy.optimize import least_squares

    base: Link = getattr(device.links, which)

    def link(x: np.ndarray) -> Link:
        return Link(
            bandwidth_gbps=base.bandwidth_gbps,
            latency_us=float(x[0]),
            call_latency_us=float(x[1]),
            efficiency=float(min(1.0, x[2])),
            links_per_node=base.links_per_node,
        )

    def residuals(x: np.ndarray) -> np.ndarray:
        kw = {"intra": link(x)} if which == "intra_node" else {"inter": link(x)}
        return np.array([predict(s, device, **kw) / s.seconds - 1 for s in samples])

    x0 = [base.latency_us, 30.0, 0.7]
    fit = least_squares(residuals, x0, bounds=([0, 0, 0.01], [500, 2000, 1.0]), loss="soft_l1")
    return link(fit.x)


def fit_hop_latency(samples: list[Sample], device: DeviceSpec, max_bytes: int) -> Link:
    """The intra-node link with ``latency_us`` (NCCL's per-hop latency) least-squares fitted
    (relative error) to the all-reduce ``samples`` of at most ``max_bytes``, where the hops'
    latency is the whole cost; bandwidth, efficiency and the call cap are kept."""
    import numpy as np
    from scipy.optimize import least_squares

    base = device.links.intra_node
    small = [s for s in samples if s.size <= max_bytes]

    def residuals(x: np.ndarray) -> np.ndarray:
        link = base.model_copy(update={"latency_us": float(x[0])})
        return np.array([predict(s, device, intra=link) / s.seconds - 1 for s in small])

    fit = least_squares(residuals, [base.latency_us], bounds=([0.0], [500.0]))
    return base.model_copy(update={"latency_us": float(fit.x[0])})


def predict(
    sample: Sample, device: DeviceSpec, intra: Link | None = None, inter: Link | None = None
) -> float:
    """Model time of one measured point (NCCL: no custom all-reduce)."""
    topo = Topology.build(
        device,
        devices_per_node=sample.devices_per_node,
        intra_node=intra,
        inter_node=inter,
        custom_allreduce=False,
    )
    if sample.collective == "send_recv":
        dst = sample.devices_per_node if sample.crosses_nodes else 1
        return collectives.send(topo, sample.size, 0, dst)
    return collectives.all_reduce(topo, sample.size, 0, sample.num_workers)


def mape_table(
    samples: list[Sample], model: Callable[[Sample], float]
) -> dict[tuple[str, int, int], tuple[float, int]]:
    """Mean absolute percentage error per (collective, workers, devices per node)."""
    errors: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for s in samples:
        errors[(s.collective, s.num_workers, s.devices_per_node)].append(
            abs(model(s) - s.seconds) / s.seconds
        )
    return {key: (100 * statistics.fmean(v), len(v)) for key, v in sorted(errors.items())}
