"""Fit the roofline backend's efficiency factors to measured operator profiles.

``llmservingsim calibrate`` is a thin CLI over :func:`run.calibrate`: load the tables
(hardware/profiles), fit each parameter group by least squares on relative error
(:mod:`fit`), check the fit on a held-out model, and write a device YAML whose ``efficiency:``
block the roofline backend then uses unchanged (docs/calibration.md).
"""
