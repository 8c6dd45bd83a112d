"""The Makefile builds its venv with the first Python >= 3.11 on PATH, whatever its name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def dry_run(path_dir: Path, venv: Path) -> str:
    """``make -n run`` with only ``path_dir`` on PATH (make itself called by absolute path)."""
    assert MAKE is not None
    # Not the variables of a make that runs this test (`make test PYTHON=...` in .ci/run): a
    # command-line PYTHON would reach the dry run through MAKEFLAGS.
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    proc = subprocess.run(
        [MAKE, "-n", "run", f"VENV={venv}"],
        cwd=ROOT,
        env={**env, "PATH": str(path_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def test_a_python3_of_a_supported_version_is_found(tmp_path: Path) -> None:
    """No python3.11 on PATH, only ``python3`` (this interpreter, >= 3.11): it is chosen."""
    (tmp_path / "python3").symlink_to(sys.executable)
    out = dry_run(tmp_path, tmp_path / "venv")
    assert f"python3 -m venv {tmp_path / 'venv'}" in out
    assert "pip install --quiet -e ." in out  # `make run`: the runtime dependencies only
    assert "[dev]" not in out


def test_an_old_python_is_skipped_with_a_clear_error(tmp_path: Path) -> None:
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # fails the version check, as Python 3.10 does
    old.chmod(0o755)
    out = dry_run(tmp_path, tmp_path / "venv")
    assert "no Python >= 3.11 on PATH" in out
