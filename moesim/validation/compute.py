"""Predictions for the `gemm` and `grouped_gemm` validation cases, from the compute model alone.

A case (schema: validation/SCHEMA.md) names a system, whose GPU runs the GEMM, and
`params` m, n, k, dtype (+ `groups` for grouped, where m is per group); the metric is `tflops`
= 2·m·n·k·groups / kernel time. Nothing here is fitted to a case; a case moesim cannot model
raises `Skip` with the reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from moesim.core.errors import MoesimError
from moesim.costs.compute import gemm_estimate, grouped_gemm_estimate, load_compute_profile
from moesim.specs.hardware import load_system
from moesim.validation.cases import Skip

GEMM_USED = ("m", "n", "k", "dtype")
GROUPED_USED = ("m", "n", "k", "dtype", "groups", "layout")
# m-grouped (DeepGEMM contiguous / masked: each group's rows concatenated or padded per group) and
# k-grouped (weight gradient: each group its own m x n output over its own k tokens) are both
# `groups` independent m x n x k GEMMs in one kernel when groups are equal, which is what the
# cases give; both read A, B and write C once per group.
LAYOUTS = (None, "contiguous", "masked", "k_grouped_contiguous")



def _params(case: Any, names: tuple[str, ...]) -> dict:
    if case.metric != "tflops":
        raise Skip(f"metric {case.metric!r} is not modelled for {case.what}; only tflops")
    p = case.params
    missing = [n for n in names if n not in p and n not in ("layout",)]
    if missing:
        raise Skip(f"missing params: {', '.join(missing)}")
    return p


def _gpu(case: Any, calibration: Any = None):
    """GPU spec and compute profile of the case's system, calibrated when a profile is given and
    was fitted on this GPU (other GPUs keep their defaults)."""
    try:
        gpu = load_system(case.system).gpu
        profile = load_compute_profile(gpu.id)
    except MoesimError as exc:
        raise Skip(f"system {case.system!r}: {exc.one_line()}") from None
    if calibration is not None and calibration.gpu == gpu.id:
        from moesim.calibration.profile import apply_to_compute, apply_to_gpu
        return apply_to_gpu(gpu, calibration), apply_to_compute(profile, calibration)
    return gpu, profile


def predict_gemm(case: Any, calibration: Any = None) -> tuple[float, list[str]]:
    """Predicted TFLOP/s of one dense GEMM case and the params it ignored."""
    p = _params(case, GEMM_USED)
    gpu, profile = _gpu(case, calibration)
    try:
        est = gemm_estimate(gpu, profile, p["m"], p["n"], p["k"], str(p["dtype"]))
    except MoesimError as exc:
        raise Skip(exc.one_line()) from None
    return est.tflops, [k for k in p if k not in GEMM_USED]


def predict_grouped_gemm(case: Any, calibration: Any = None) -> tuple[float, list[str]]:
    """Predicted TFLOP/s of a grouped GEMM case (`groups` equal groups of m x n x k) and ignored params."""
    p = _params(case, GROUPED_USED)
    layout = p.get("layout")
    if layout not in LAYOUTS:
        raise Skip(f"layout {layout!r} is not modelled; known: {', '.join(str(x) for x in LAYOUTS[1:])}")
    groups = p["groups"]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise Skip(f"groups must be a positive integer, got {groups!r}")
    gpu, profile = _gpu(case, calibration)
    try:
        est = grouped_gemm_estimate(gpu, profile, np.full(groups, float(p["m"])), p["n"], p["k"], str(p["dtype"]))
    except MoesimError as exc:
        raise Skip(exc.one_line()) from None
    if est is None:
        raise Skip("m is zero: no rows to multiply")
    return est.tflops, [k for k in p if k not in GROUPED_USED]


PREDICTORS = {"gemm": predict_gemm, "grouped_gemm": predict_grouped_gemm}
