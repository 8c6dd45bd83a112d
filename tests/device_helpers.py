"""Shared test helpers for device files: a shipped device YAML with one efficiency entry
replaced, to check how a bad value is reported."""

from __future__ import annotations

from pathlib import Path

HARDWARE = Path(__file__).resolve().parents[1] / "src" / "llmservingsim" / "data" / "hardware"


def device_file_with(tmp_path: Path, section: str, entry: str, device: str = "h100-sxm") -> Path:
    """``device``'s YAML written under ``tmp_path`` with its ``efficiency.<section>`` entry (and
    every entry after it, up to the host overheads) replaced by the one line ``entry``."""
    text = (HARDWARE / f"{device}.yaml").read_text()
    path = tmp_path / f"{device}.yaml"
    start = text.index(f"  {section}:")
    end = text.index("  iteration_overhead_us:")
    path.write_text(text[:start] + "  " + entry + "\n" + text[end:])
    return path
