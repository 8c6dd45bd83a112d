"""``llmservingsim validate``: simulate published measurements and report the error.

:mod:`reference` reads the measurement file, :mod:`scenario` turns one row into simulator
settings (the one mapping function), :mod:`run` simulates each distinct scenario once, and
:mod:`report` writes the table (docs/accuracy.md is its output).
"""
