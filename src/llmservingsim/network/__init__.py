"""Interconnect cost models (alpha-beta). The full topology model comes with issue #4."""
