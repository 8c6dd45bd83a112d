"""llmservingsim: a fast iteration-level simulator of LLM inference serving."""

__version__ = "0.1.0"
