"""Fit the network links of the device YAMLs to Vidur's measured NCCL profiles and report MAPE.

    python scripts/calibrate_network.py [--data ../shared/data/profiles/vidur/network] [--fit]

Without --fit it reports the error of the shipped YAML values; with --fit it also least-squares
fits (relative error, scipy) latency_us, call_latency_us and efficiency of the intra-node and
inter-node links, keeping the datasheet bandwidth, and prints the values to put in the YAML.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmservingsim.catalog import load_device
from llmservingsim.network.calibration import (
    NODE_DEVICES,
    fit_link,
    load_samples,
    mape_table,
    predict,
)

DEFAULT = Path(__file__).resolve().parents[2] / "shared/data/profiles/vidur/network"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--fit", action="store_true")
    args = parser.parse_args()
    print("| node | collective | GPUs | GPUs/node | points | MAPE % |")
    print("|---|---|---|---|---|---|")
    for node, name in NODE_DEVICES.items():
        device = load_device(name)
        samples = load_samples(args.data / node)
        links = {}
        if args.fit:
            for which in ("intra_node", "inter_node"):
                subset = [s for s in samples if s.crosses_nodes == (which == "inter_node")]
                links[which] = fit_link(subset, device, which)
        intra, inter = links.get("intra_node"), links.get("inter_node")

        def model(s, device=device, intra=intra, inter=inter):  # type: ignore[no-untyped-def]
            return predict(s, device, intra, inter)

        for (coll, workers, per_node), (mape, n) in mape_table(samples, model).items():
            print(f"| {node} | {coll} | {workers} | {per_node} | {n} | {mape:.1f} |")
        for which, link in links.items():
            print(f"  {name} {which}: {link.model_dump()}")


if __name__ == "__main__":
    main()
