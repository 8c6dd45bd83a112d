"""Iteration timing: model op graph × perf backend × network → seconds per engine step."""
