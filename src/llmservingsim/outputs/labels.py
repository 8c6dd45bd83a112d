"""Names of instances in the output files (trace.json tracks, report.html legends)."""

from __future__ import annotations

from typing import Any


def instance_label(row: dict[str, Any]) -> str:
    """``instance 3``, plus its pool and role when the cluster names pools or splits P/D."""
    pool, role = row.get("pool", "default"), row.get("role", "mixed")
    extra = [pool] if pool != "default" else []
    extra += [role] if role not in ("mixed", pool) else []
    return f"instance {row['index']}" + (f" ({', '.join(extra)})" if extra else "")
