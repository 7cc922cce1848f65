"""Calibration: microbenchmark results, fitting profiles, applying them, and the error bands that rest on residuals."""
