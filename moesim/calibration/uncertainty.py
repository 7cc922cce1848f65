"""Error bands: how far to trust a simulated metric, from the signed residuals on measured cases.

moesim's error is not symmetric noise: on the open cases it is optimistic in almost every class.
So a band is built from the measured / predicted ratios of the validation cases of the same kind
(`serving` for serving metrics, `training` for training metrics; `topologies/residuals/
validation.yaml`, written by `moesim validate --write-residuals`), taken in log space and in the
"speed" direction (a time metric's ratio is inverted, so throughput and latency cases pool):

  centre = value x exp(d x mu)                (bias-corrected: what the cases say the truth is)
  band   = value x exp(d x (mu -+ q x s x sqrt(1 + 1/n)))

with mu, s the mean and standard deviation of log(measured / predicted speed) over the n cases,
d = +1 for a rate and -1 for a time, q the 97.5 % quantile of Student's t with n - 1 degrees of
freedom (`scipy.stats.t`): a 95 % prediction interval for one new deployment, which widens as
the evidence thins (q = 12.7 for two cases, 2.0 for sixty). The band is asymmetric in linear
terms and never negative; s is combined (root sum of squares) with the largest residual of a
calibration profile when one is used; a fraction such as MFU is capped at 1. A band needs at
least two cases, and always says how many it rests on.
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from scipy.stats import t as student_t

from moesim import __version__
from moesim.calibration.cv_modes import CV_MODES, left_out_basis
from moesim.core.loader import data_root
from moesim.core.output import write_atomic
from moesim.core.result import git_commit

COVERAGE = 0.95  # of the prediction interval
MIN_CASES = 2
METRIC_KIND = {"tokens_per_s_per_gpu": None, "tokens_per_s_per_node": None, "tpot_ms": "serving",
               "ttft_ms": "serving", "step_time_s": None, "tflops_per_gpu": "training", "mfu": "training"}
FRACTIONS = ("mfu",)  # metrics whose physical range ends at 1
TIME_SUFFIXES = ("_ms", "_us", "_s")


def speed_direction(metric: str) -> int:
    """-1 for a time (smaller is faster), +1 for a rate or a size."""
    return -1 if metric.endswith(TIME_SUFFIXES) else 1


def log_speed_ratios(cases: list[dict]) -> np.ndarray:
    """log(measured / predicted) of each case, in the speed direction (a time's ratio inverted)."""
    return np.array([speed_direction(c["metric"]) * math.log(c["measured"] / c["predicted"]) for c in cases])


def residuals_path() -> Path:
    return data_root() / "topologies" / "residuals" / "validation.yaml"


def scored_cases(result: dict) -> list[dict]:
    """`result`'s cases with the predictions residuals rest on: the left-out ones (`predicted_cv`,
    `rel_error_cv`) as `predicted` and `rel_error` when it cross-validated, else its own."""
    if "mape_cv" not in result:
        return result["cases"]
    return [dict(c, predicted=c["predicted_cv"], rel_error=c["rel_error_cv"]) for c in result["cases"]]


def residual_summary(result: dict) -> dict:
    """Per `what`: cases, RMS and mean signed relative error, MAPE - what error bars rest on.

    With cross-validation (`validate --cv source`) the left-out predictions are used: a band
    must cover what a new deployment will see, not the fit's own cases."""
    cases = scored_cases(result)
    out = {}
    for what in sorted({c["what"] for c in cases}):
        mine = [c for c in cases if c["what"] == what]
        errors = np.array([c["rel_error"] for c in mine])
        logs = log_speed_ratios(mine)
        out[what] = {"cases": int(errors.size), "rms_rel_error": float(np.sqrt(np.mean(errors**2))),
                     "mean_rel_error": float(errors.mean()), "mape": float(np.mean(np.abs(errors))),
                     "log_speed_ratio": {"mean": float(logs.mean()),
                                         "sd": float(logs.std(ddof=1)) if logs.size >= MIN_CASES else None}}
    return out


def basis_of(result: dict) -> str:
    """Which predictions a residual summary of `result` (`moesim validate`'s) rests on."""
    if "mape_cv" not in result:
        return "in-sample predictions"
    return left_out_basis(result["cv"]) if result.get("cv") in CV_MODES else "cross-validated predictions"


# Serving error bands (`serving_bands`): per backend, mode and metric of the serving_load benchmarks, the
# quantiles of measured / predicted that bound BAND_COVERAGE of them. Empirical, not a fitted law: the
# residuals are heavy-tailed and skewed (a few deployments 10-40x off), which a normal band would hide.
SERVING_METRICS = ("ttft_ms", "tpot_ms")
BAND_COVERAGE = 0.90
MIN_BAND_CASES = 20   # below this the 5 % and 95 % quantiles are one or two benchmarks each


def serving_classes(result: dict) -> dict:
    """{"<backend>.<mode>.<metric>": {cases, mape, mean_rel_error, measured_over_predicted: {low, median,
    high}}} over `result`'s serving_load cases (left-out predictions when it cross-validated); {} without any."""
    scored: dict[str, list[dict]] = {}
    for case in scored_cases(result):
        labels = case.get("labels") or {}
        if case["what"] != "serving_load" or not {"backend", "mode"} <= set(labels):
            continue
        scored.setdefault(f"{labels['backend']}.{labels['mode']}.{case['metric']}", []).append(case)
    tail = (1 - BAND_COVERAGE) / 2
    out = {}
    for key, cases in sorted(scored.items()):
        r = np.array([c["measured"] / c["predicted"] for c in cases])
        rel = np.array([c["rel_error"] for c in cases])   # the signed error validate reports
        low, median, high = np.quantile(r, [tail, 0.5, 1 - tail])
        out[key] = {"cases": int(r.size), "mape": float(np.mean(np.abs(rel))), "mean_rel_error": float(rel.mean()),
                    "measured_over_predicted": {"low": float(low), "median": float(median), "high": float(high)}}
    return out


SERVING_RESIDUALS_COMMAND = ("moesim validate --cases validation/serving_load.yaml --cv config "
                             "--write-residuals topologies/residuals/serving_load.yaml")
# A model the validated benchmarks do not have gets the residuals of every model predicted from a fit without it
# (`--cv model`): left out, a model's TPOT errs by 21 % against 17 % for a configuration (README, Validation).
NEW_MODEL_RESIDUALS_COMMAND = ("moesim validate --cases validation/serving_load.yaml --cv model "
                               "--write-residuals topologies/residuals/serving_load_new_model.yaml")


def serving_residuals_path() -> Path:
    return data_root() / "topologies" / "residuals" / "serving_load.yaml"


def new_model_residuals_path() -> Path:
    return data_root() / "topologies" / "residuals" / "serving_load_new_model.yaml"


@lru_cache(maxsize=1)
def shipped_serving_residuals() -> Optional[dict]:
    """The shipped serving residuals, read once per process (a plan serves hundreds of points)."""
    return load_residuals(serving_residuals_path())


@lru_cache(maxsize=1)
def shipped_new_model_residuals() -> Optional[dict]:
    """The shipped leave-one-model-out serving residuals, read once per process."""
    return load_residuals(new_model_residuals_path())


def serving_labels(result: dict) -> dict[str, list[str]]:
    """The models and systems of `result`'s serving_load cases: what its serving classes have seen."""
    cases = [c for c in result.get("cases", []) if c.get("what") == "serving_load" and c.get("labels")]
    return {label: sorted({c["labels"][label] for c in cases if label in c["labels"]}) for label in ("model", "system")}


def is_new_model(model: Optional[str], residuals: Optional[dict]) -> bool:
    """Whether `model` is absent from the benchmarks `residuals` were computed on (False when unknown)."""
    seen = ((residuals or {}).get("serving_labels") or {}).get("model")
    return bool(model and seen and model not in seen)


def serving_bands(framework: str, mode: str, metrics: dict, residuals: Optional[dict] = None, *,
                  model: Optional[str] = None, new_model_residuals: Optional[dict] = None) -> dict:
    """{metric: {median, low, high, coverage, cases, mape, bias, new_model, rests_on}} for a serve run's mean TTFT
    and TPOT: the run's means times the quantiles of measured / predicted over the validated benchmarks of the
    same backend and mode (`serving_classes`; the shipped file unless `residuals` is given). For a `model` those
    benchmarks do not have, the quantiles of each benchmark predicted from a fit without its model
    (`new_model_residuals`, the shipped leave-one-model-out file unless given): the error a new model should
    expect, not the error of a configuration of a fitted one. low/high/median are None where fewer than
    MIN_BAND_CASES benchmarks of that kind were validated."""
    residuals = shipped_serving_residuals() if residuals is None else residuals
    new_model = is_new_model(model, residuals)
    missing = f"no serving residuals ({SERVING_RESIDUALS_COMMAND} writes them)"
    if new_model:
        residuals = shipped_new_model_residuals() if new_model_residuals is None else new_model_residuals
        missing = (f"{model} is not among the validated models and there are no leave-one-model-out residuals "
                   f"({NEW_MODEL_RESIDUALS_COMMAND} writes them)")
    classes = (residuals or {}).get("serving_classes") or {}
    basis = ((residuals or {}).get("provenance") or {}).get("basis", "predictions")
    if new_model:
        basis += (f" ({model} is not among the validated models, so each benchmark is predicted from a fit "
                  f"without its own model)")
    out = {}
    for name in SERVING_METRICS:
        value = metrics.get(name)
        mean = value.get("mean") if isinstance(value, dict) else value
        if not isinstance(mean, (int, float)):
            continue
        row = classes.get(f"{framework}.{mode}.{name}")
        n = row["cases"] if row else 0
        if n < MIN_BAND_CASES:
            why = (f"{n} validated {framework} {mode} benchmark(s): too few for a band (need {MIN_BAND_CASES})"
                   if residuals else missing)
            out[name] = {"median": None, "low": None, "high": None, "cases": n, "mape": (row or {}).get("mape"),
                         "bias": (row or {}).get("mean_rel_error"), "new_model": new_model, "rests_on": why}
            continue
        q = row["measured_over_predicted"]
        out[name] = {"median": mean * q["median"], "low": mean * q["low"], "high": mean * q["high"],
                     "coverage": BAND_COVERAGE, "cases": n, "mape": row["mape"], "bias": row["mean_rel_error"],
                     "new_model": new_model,
                     "rests_on": f"{n} {framework} {mode} benchmarks of validation/serving_load.yaml, {basis}: "
                                 f"measured / predicted mean {name[:4].upper()} {q['low']:.2f}-{q['high']:.2f} in "
                                 f"{BAND_COVERAGE:.0%} of them (median {q['median']:.2f}), MAPE "
                                 f"{100 * row['mape']:.0f} %, mean signed error {100 * row['mean_rel_error']:+.0f} %; "
                                 f"closed-loop loads of fixed lengths, as those benchmarks ran"}
    return out


def write_residuals(path: str, result: dict, *, cases_file: str, profile: Optional[str]) -> Path:
    commit = git_commit()
    data = {"format": "moesim-residuals/v1",
            "provenance": {"cases_file": Path(cases_file).name,
                           "cases_sha256": hashlib.sha256(Path(cases_file).read_bytes()).hexdigest(),
                           "profile": profile, "moesim_version": __version__, "moesim_commit": commit,
                           "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "basis": basis_of(result),
                           "command": f"moesim validate --cases CASES --cv {result['cv']} --write-residuals FILE"
                           if "mape_cv" in result else "moesim validate --cases CASES --write-residuals FILE"},
            "residuals": residual_summary(result)}
    classes = serving_classes(result)
    if classes:
        data["serving_classes"] = classes
        data["serving_labels"] = serving_labels(result)
    return write_atomic(path, "# Residuals of moesim's predictions on measured cases, per `what` (what `moesim\n"
                              "# simulate` error bars rest on) and per serving backend, mode and metric (what `moesim\n"
                              "# serve` error bands rest on); moesim/calibration/uncertainty.py.\n"
                        + yaml.safe_dump(data, sort_keys=False))


def load_residuals(path: Optional[Path] = None) -> Optional[dict]:
    path = path or residuals_path()
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


def bands(metrics: dict, kind: str, *, calibration_rms: float = 0.0, residuals: Optional[dict] = None) -> dict:
    """{metric: {centre, low, high, cases, bias, sd_log, rests_on}} for the headline metrics of a
    `kind` (serving|training) step; see the module docstring. low/high/centre are None where the
    evidence is too thin (no residuals, fewer than two cases, or a residuals file without the
    log-ratio statistics)."""
    row = (residuals or {}).get("residuals", {}).get(kind)
    stats = (row or {}).get("log_speed_ratio") or {}
    out = {}
    for name, value in metrics.items():
        if name not in METRIC_KIND or not isinstance(value, (int, float)):
            continue
        if not row or stats.get("sd") is None:
            why = "no residuals available" if not row else (
                f"{kind} validation residuals: {row['cases']} case(s), too few for a band (need {MIN_CASES})"
                if row["cases"] < MIN_CASES else "residuals file without log-ratio statistics: rewrite it "
                                                 "with moesim validate --write-residuals")
            out[name] = {"centre": None, "low": None, "high": None, "cases": (row or {}).get("cases", 0),
                         "bias": (row or {}).get("mean_rel_error"), "sd_log": None, "rests_on": why}
            continue
        mu, sd = stats["mean"], stats["sd"]
        basis = [f"{kind} validation residuals: {row['cases']} cases, mean signed error "
                 f"{100 * row['mean_rel_error']:+.0f}%, measured/predicted speed x{math.exp(mu):.2f} "
                 f"(log sd {sd:.2f})"]
        if calibration_rms:
            sd = math.hypot(sd, calibration_rms)
            basis.append(f"calibration fit RMS {100 * calibration_rms:.1f}%")
        n = row["cases"]
        half = float(student_t.ppf(0.5 + COVERAGE / 2, n - 1)) * sd * math.sqrt(1 + 1 / n)
        d = speed_direction(name)
        centre = value * math.exp(d * mu)
        low, high = sorted(value * math.exp(d * (mu + s * half)) for s in (-1, 1))
        if name in FRACTIONS:
            centre, low, high = min(centre, 1.0), min(low, 1.0), min(high, 1.0)
            basis.append("capped at 1")
        out[name] = {"centre": centre, "low": low, "high": high, "cases": row["cases"],
                     "bias": row["mean_rel_error"], "sd_log": sd, "rests_on": "; ".join(basis)}
    return out
