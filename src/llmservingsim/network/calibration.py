"""Compare the collective model with measured NCCL profiles (Vidur's network CSVs).

Used by ``scripts/calibrate_network.py`` (fit + report) and by a test that keeps the shipped
device YAMLs honest when ../shared/data is present.
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
