"""Monitoring: performance, resources, errors and image data drift (issue 5).

``features`` computes cheap per-image and per-prediction features off the hot path; ``drift``
holds the pure statistics (PSI, KS) and the verdict over a reference profile and a sliding
window. Importing this package imports nothing heavy.
"""
