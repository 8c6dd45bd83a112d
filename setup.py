"""Build: the engine's typed Python modules are compiled with mypyc (docs/performance.md).

The same source runs interpreted when it cannot be compiled (no C compiler, or
LLMSERVINGSIM_INTERPRETED=1): the install then still succeeds and gives the same answers,
only slower; summary.json's ``engine_build`` says which build ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))
from llmservingsim.build_info import COMPILED_MODULES  # noqa: E402

sys.path.pop(0)


class OptionalBuildExt(build_ext):
    """Compile the extensions if possible; otherwise warn and install the pure-Python build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # no compiler, a compiler error: the interpreted build
            self.warn(f"llmservingsim: engine not compiled ({error}); the Python source runs")

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            self.warn(f"llmservingsim: {getattr(ext, 'name', ext)} not compiled ({error})")


def engine_extensions() -> list[object]:
    if os.environ.get("LLMSERVINGSIM_INTERPRETED", "").strip() in ("1", "true", "yes"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("llmservingsim: mypyc not available; the engine runs interpreted", file=sys.stderr)
        return []
    paths = [f"src/{name.replace('.', '/')}.py" for name in COMPILED_MODULES]
    return list(
        mypycify(
            ["--config-file", "mypyc.ini", *paths],
            opt_level="3",
            debug_level="0",
            group_name="llmservingsim_engine",
            multi_file=True,  # several C files: compiled in parallel (build_ext -j)
        )
    )


setup(ext_modules=engine_extensions(), cmdclass={"build_ext": OptionalBuildExt})
