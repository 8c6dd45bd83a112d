"""llmservingsim: a fast iteration-level simulator of LLM inference serving."""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("LLMSERVINGSIM_INTERPRETED", "").strip().lower() in ("1", "true", "yes"):
    # Run the engine's Python source even where the compiled build is installed (debugging,
    # coverage, and the test that compiled and interpreted builds give the same answers).
    from llmservingsim.build_info import prefer_source as _prefer_source

    _prefer_source()
