"""`moesim validate`: predict each published measurement and report the signed error.

Reads a cases file in the schema of the open validation set (SCHEMA.md there): every case names
what was measured, on which system and GPU count, with which parameters. Each case becomes a
target (`validation.targets`): a kernel model whose named parameters come from a kernel profile
(the shipped fit by default, `spec` for sourced defaults only). `cv="source"` refits the
parameters with each source left out in turn and predicts that source's cases from the rest:
the honest, out-of-sample error; `cv="config"` leaves out one deployment configuration at a time
(every concurrency and ISL/OSL of one serving_load deployment: `validation.serving_load.config_key`),
`cv="model"` / `cv="system"` every serving_load deployment of one model / one system at a time - how
moesim does on a model or a machine its fit has never seen (cases of other kinds keep their source as
their group under each). A case moesim cannot model is skipped
with the reason. serving_load cases also get their error per metric (`serving_load.ttft_ms`,
`serving_load.tpot_ms` beside the `what`s) and per system, backend, backend version, mode and
model (`groups`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from moesim.calibration.cv_modes import CV_MODES
from moesim.calibration.kernel_params import resolve_kernel_profile
from moesim.core.errors import MoesimError
from moesim.validation.cases import Calibrated, Case
from moesim.validation.repeatability import repeatability
from moesim.validation.targets import build_targets

PER_METRIC = ("serving_load",)   # kinds whose error is also summarised per metric
GROUP_BY = ("system", "backend", "backend_version", "mode", "model")


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
    for what, metric in sorted({(r["what"], r["metric"]) for r in rows if r["what"] in PER_METRIC}):
        e = np.array([r[key] for r in rows if r["what"] == what and r["metric"] == metric])
        mape[f"{what}.{metric}"], bias[f"{what}.{metric}"] = float(np.mean(np.abs(e))), float(np.mean(e))
    return mape, bias


def _stats(rows: list[dict], cv: bool) -> dict:
    e = np.array([r["rel_error"] for r in rows])
    out = {"cases": len(rows), "mape": float(np.mean(np.abs(e))), "bias": float(np.mean(e))}
    if cv:
        e = np.array([r["rel_error_cv"] for r in rows])
        out.update(mape_cv=float(np.mean(np.abs(e))), bias_cv=float(np.mean(e)))
    return out


def groups(rows: list[dict], cv: bool) -> dict:
    """MAPE and bias (and left-out ones with --cv) per `what.metric` of the PER_METRIC kinds, overall
    and per label (`GROUP_BY`: the rows' `labels`)."""
    out: dict = {}
    for what, metric in sorted({(r["what"], r["metric"]) for r in rows if r["what"] in PER_METRIC}):
        mine = [r for r in rows if r["what"] == what and r["metric"] == metric]
        entry = {"overall": _stats(mine, cv)}
        for label in GROUP_BY:
            names = sorted({r["labels"][label] for r in mine})
            entry[label] = {n: _stats([r for r in mine if r["labels"][label] == n], cv) for n in names}
        out[f"{what}.{metric}"] = entry
    return out


def cv_groups(targets: list, cases: list[Case], cv: str = "config") -> list:
    """The targets regrouped for `--cv config` (a serving_load case by its deployment configuration),
    `--cv model` or `--cv system` (by that label of the case); any other case by its source (it has none)."""
    from dataclasses import replace

    from moesim.validation import serving_load
    if cv == "config":
        key = serving_load.config_key
    else:
        def key(case: Case) -> str:
            return f"{cv}: {serving_load.labels(case)[cv]}"
    group = {c.id: key(c) for c in cases if c.what == serving_load.WHAT}
    return [replace(t, group=group[t.id]) if t.id in group else t for t in targets]


def validate(cases: list[Case], *, profile: Optional[str | list[str]] = None, kernel_profile: Optional[str] = None,
             cv: Optional[str] = None, workers: int = 1) -> dict:
    """Predict every case; MAPE and mean signed error per `what` and overall. Microbenchmark
    profiles (`profile`) apply to the cases on the GPU they were fitted on; `kernel_profile` gives
    the kernel-model parameters (None: the shipped fit); `workers` processes simulate the
    serving_load benchmarks (the answers do not depend on it)."""
    if cv is not None and cv not in CV_MODES:
        raise MoesimError(f"unknown cross-validation {cv!r}", field="--cv", fix=f"use one of {', '.join(CV_MODES)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MoesimError(f"workers must be a whole number >= 1, got {workers!r}", field="--workers",
                          fix="use 1 or more")
    profiles, by_gpu = _microbench_profiles(profile)
    kprofile = resolve_kernel_profile(kernel_profile)
    values = kprofile.values()
    targets, skipped = build_targets(cases, by_gpu, kprofile, workers=workers)
    held_out: dict[str, float] = {}
    if cv is not None:
        from moesim.calibration.kernel_fit import cross_validate, fit_all
        from moesim.calibration.kernel_params import definitions
        defs = definitions()
        defaults = {n: d.value for n, d in defs.items()}
        bounds = {n: d.bounds for n, d in defs.items()}
        fitted = fit_all(targets, defaults, bounds)
        in_sample = dict(defaults)
        in_sample.update(fitted.values)
        values = in_sample  # in-sample and left-out errors of the same fit, side by side
        held_out = cross_validate(targets if cv == "source" else cv_groups(targets, cases, cv), in_sample, defaults,
                                  bounds)
    label_of = _labels(cases)
    rows = []
    for t in targets:
        predicted = t.predict(values)
        row = {"id": t.id, "what": t.what, "metric": t.metric, "measured": t.measured, "predicted": predicted,
               "rel_error": (predicted - t.measured) / t.measured, "source": t.group, "ignored_params": t.ignored}
        if cv:
            row["predicted_cv"] = held_out[t.id]
            row["rel_error_cv"] = (held_out[t.id] - t.measured) / t.measured
        if t.id in label_of:
            row["labels"] = label_of[t.id]
        rows.append(row)
    mape, bias = summary(rows, "rel_error")
    out = {"cases": rows, "mape": mape, "bias": bias}
    if cv:
        out["mape_cv"], out["bias_cv"] = summary(rows, "rel_error_cv")
        out["cv"] = cv
    grouped = groups(rows, bool(cv))
    if grouped:
        out["groups"] = grouped
    from moesim.core.result import code_version
    out["skipped"] = skipped
    out["relabelled"] = [{"id": c.id, "reason": c.relabelled} for c in cases if getattr(c, "relabelled", None)]
    repeats = repeatability(cases, {r["id"]: r["rel_error_cv" if cv else "rel_error"] for r in rows})
    if repeats:
        out["repeatability"] = repeats
    out["provenance"] = {"code": code_version(), "profile": ", ".join(profiles) or None,
                         "kernel_profile": "fitted in this run (--cv)" if cv else kprofile.name}
    return out


def _labels(cases: list[Case]) -> dict[str, dict]:
    """Labels of the PER_METRIC kinds' cases (system, backend, ...), by case id."""
    from moesim.validation import serving_load
    return {c.id: serving_load.labels(c) for c in cases if c.what == serving_load.WHAT}
