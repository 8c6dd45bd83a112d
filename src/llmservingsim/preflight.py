"""Checks made before any simulation time is spent: where the outputs go, and what a run
would cost (memory for the request table, a finite simulated time).

Each failure is a one-line :class:`~llmservingsim.errors.UserError`; nothing here allocates
in proportion to the workload.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmservingsim.errors import ConfigError


def check_out_dir(out_dir: Path, flag: str = "--out") -> None:
    """``out_dir`` is a directory that exists or can be made: not a file, under no file, and
    its first existing ancestor writable."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{flag} {out_dir}: is a file, expected a directory (or a new path)")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {out_dir}: {parent} is a file, not a directory")
            if not out_dir.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {out_dir}: cannot create it ({parent} is not writable)")
            return
