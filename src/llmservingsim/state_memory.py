"""What a run's state costs this machine's memory, checked before anything is allocated in
proportion to the workload (the request table, the instances)."""

from __future__ import annotations

import os

from llmservingsim.errors import ConfigError

BYTES_PER_REQUEST = 256
"""Peak memory one request costs a run (request table, request log, engine state): 181 B
measured at 2 million requests (scripts/measure_state_memory.py), rounded up for prompt
contents and the output writers."""
BYTES_PER_INSTANCE = 16 * 1024
"""Memory one instance costs (schedulers, KV block tables, timer caches): 12.3 KB measured at
8,000 instances (scripts/measure_state_memory.py), rounded up."""


def check_state_memory(num_requests: int = 0, instances: int = 0) -> None:
    """Refuse, before allocating, a run whose request table and instances would not fit this
    machine's memory; the error gives the estimate."""
    need = num_requests * BYTES_PER_REQUEST + instances * BYTES_PER_INSTANCE
    have = machine_memory_bytes()
    if have is None or need <= have:
        return
    parts = []
    if num_requests:
        parts.append(f"{num_requests:,} requests × {BYTES_PER_REQUEST} B")
    if instances:
        parts.append(f"{instances:,} instances × {BYTES_PER_INSTANCE // 1024} KiB")
    raise ConfigError(
        f"workload.num_requests / cluster: the run needs about {need / 1e9:,.1f} GB "
        f"({' + '.join(parts)}), more than this machine's {have / 1e9:,.1f} GB of memory: "
        "simulate fewer requests or instances"
    )


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None
