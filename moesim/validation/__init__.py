"""Validation: predict published measurements, one module per kind of case, and report the signed errors."""
