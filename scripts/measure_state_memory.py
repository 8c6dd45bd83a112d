"""Peak memory a run costs per request and per instance (state_memory.BYTES_PER_REQUEST and
BYTES_PER_INSTANCE): each measurement runs in a fresh process and reads its peak RSS.

    .venv/bin/python scripts/measure_state_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, resource, sys
from llmservingsim.config import load_config
from llmservingsim.simulation import simulate
requests, instances = int(sys.argv[1]), int(sys.argv[2])
cfg = load_config(None, [
    "model=llama-3.2-1b", f"workload.num_requests={requests}", f"cluster.instances={instances}",
    "workload.input_len={dist: fixed, value: 16}", "workload.output_len={dist: fixed, value: 2}",
    "workload.arrival.rate=500",
])
simulate(cfg, check_invariants=False)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def peak_bytes(requests: int, instances: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(requests), str(instances)],
        capture_output=True,
        text=True,
        check=True,
        env={"LLMSERVINGSIM_CHECK_INVARIANTS": "0", "PATH": ""},
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    base = peak_bytes(20_000, 4)
    many_requests = peak_bytes(2_000_000, 4)
    per_request = (many_requests - base) / (2_000_000 - 20_000)
    few = peak_bytes(10, 1)
    many_instances = peak_bytes(10, 8_001)
    per_instance = (many_instances - few) / 8_000
    print(f"per request: {per_request:,.0f} B (20,000 -> 2,000,000 requests, 4 instances)")
    print(f"per instance: {per_instance / 1024:,.1f} KiB (1 -> 8,001 instances, 10 requests)")


if __name__ == "__main__":
    main()
