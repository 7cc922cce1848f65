"""`moesim validate`: predict each published measurement and report the signed error.

Reads a cases file in the schema of the open validation set (SCHEMA.md there): every case names
what was measured, on which system and GPU count, with which parameters. Each case becomes a
target (`validation.targets`): a kernel model whose named parameters come from a kernel profile
(the shipped fit by default, `spec` for sourced defaults only). `cv="source"` refits the
parameters with each source left out in turn and predicts that source's cases from the rest:
the honest, out-of-sample error. A case moesim cannot model is skipped with the reason.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from moesim.calibration.kernel_params import resolve_kernel_profile
from moesim.core.errors import MoesimError
from moesim.validation.cases import Calibrated, Case
from moesim.validation.targets import build_targets

CV_MODES = ("source",)


def _microbench_profiles(profile: Optional[str | list[str]]) -> tuple[list[str], dict[str, Calibrated]]:
    profiles = [profile] if isinstance(profile, str) else list(profile or [])
    by_gpu: dict[str, Calibrated] = {}
    for path in profiles:
        from moesim.calibration.profile import load_calibration
        loaded = load_calibration(path)
        if loaded.gpu in by_gpu:
            raise MoesimError(f"two profiles for {loaded.gpu}: {by_gpu[loaded.gpu].path} and {path}",
                              field="--profile", fix="give one profile per GPU")
        by_gpu[loaded.gpu] = Calibrated(path=path, profile=loaded)
    return profiles, by_gpu


def summary(rows: list[dict], key: str) -> tuple[dict[str, float], dict[str, float]]:
    """MAPE and mean signed error per `what` and overall, of the rows' `key` errors."""
    mape: dict[str, float] = {}
    bias: dict[str, float] = {}
    if not rows:
        return mape, bias
    errors = np.array([r[key] for r in rows])
    mape["overall"], bias["overall"] = float(np.mean(np.abs(errors))), float(np.mean(errors))
    for what in sorted({r["what"] for r in rows}):
        e = np.array([r[key] for r in rows if r["what"] == what])
        mape[what], bias[what] = float(np.mean(np.abs(e))), float(np.mean(e))
    return mape, bias


def validate(cases: list[Case], *, profile: Optional[str | list[str]] = None, kernel_profile: Optional[str] = None,
             cv: Optional[str] = None) -> dict:
    """Predict every case; MAPE and mean signed error per `what` and overall. Microbenchmark
    profiles (`profile`) apply to the cases on the GPU they were fitted on; `kernel_profile` gives
    the kernel-model parameters (None: the shipped fit)."""
    if cv is not None and cv not in CV_MODES:
        raise MoesimError(f"unknown cross-validation {cv!r}", field="--cv", fix="use --cv source")
    profiles, by_gpu = _microbench_profiles(profile)
    kprofile = resolve_kernel_profile(kernel_profile)
    values = kprofile.values()
    targets, skipped = build_targets(cases, by_gpu, kprofile)
    held_out: dict[str, float] = {}
    if cv == "source":
        from moesim.calibration.kernel_fit import cross_validate, fit_all
        from moesim.calibration.kernel_params import definitions
        defs = definitions()
        defaults = {n: d.value for n, d in defs.items()}
        bounds = {n: d.bounds for n, d in defs.items()}
        fitted = fit_all(targets, defaults, bounds)
        in_sample = dict(defaults)
        in_sample.update(fitted.values)
        values = in_sample  # in-sample and left-out errors of the same fit, side by side
        held_out = cross_validate(targets, in_sample, defaults, bounds)
    rows = []
    for t in targets:
        predicted = t.predict(values)
        row = {"id": t.id, "what": t.what, "metric": t.metric, "measured": t.measured, "predicted": predicted,
               "rel_error": (predicted - t.measured) / t.measured, "source": t.group, "ignored_params": t.ignored}
        if cv:
            row["predicted_cv"] = held_out[t.id]
            row["rel_error_cv"] = (held_out[t.id] - t.measured) / t.measured
        rows.append(row)
    mape, bias = summary(rows, "rel_error")
    out = {"cases": rows, "mape": mape, "bias": bias}
    if cv:
        out["mape_cv"], out["bias_cv"] = summary(rows, "rel_error_cv")
        out["cv"] = cv
    from moesim.core.result import code_version
    out["skipped"] = skipped
    out["provenance"] = {"code": code_version(), "profile": ", ".join(profiles) or None,
                         "kernel_profile": "fitted in this run (--cv)" if cv else kprofile.name}
    return out
