"""`moesim validate`: predict each published measurement and report the signed error.

Reads a cases file in the schema of the open validation set (SCHEMA.md there): every case names
what was measured, on which system and GPU count, with which parameters. A predictor per `what`
turns the case into a moesim prediction from specs, profiles and models only; nothing here is
fitted to a case. A case moesim cannot model yet is skipped with the reason, never dropped.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from moesim.core.errors import MoesimError
from moesim.specs.hardware import load_system, system_names
from moesim.specs.model import model_names
from moesim.validation import compute as validation_compute
from moesim.validation import memcpy as validation_memcpy
from moesim.validation import memory as validation_memory
from moesim.validation.cases import Calibrated, Case, Skip
from moesim.validation.comm import predict_collective, predict_ep
from moesim.validation.serving import predict_serving
from moesim.validation.training import predict_training

PREDICTORS: dict[str, Callable[[Case, Optional[Calibrated]], tuple[float, list[str]]]] = {
    "training": predict_training,
    "memory": lambda case, cal: validation_memory.predict_memory(case),
    "memcpy": lambda case, cal: validation_memcpy.predict_memcpy(case, cal.profile if cal else None),
    "serving": predict_serving,
    "collective": predict_collective,
    "ep_dispatch": predict_ep,
    "ep_combine": predict_ep,
    "gemm": lambda case, cal: validation_compute.predict_gemm(case, cal.profile if cal else None),
    "grouped_gemm": lambda case, cal: validation_compute.predict_grouped_gemm(case, cal.profile if cal else None),
}
LATER: dict[str, str] = {}


def validate(cases: list[Case], *, profile: Optional[str | list[str]] = None) -> dict:
    """Predict every case; MAPE per `what` and overall over the cases predicted. Each calibration
    profile applies to the cases on the GPU it was fitted on (one profile per GPU)."""
    profiles = [profile] if isinstance(profile, str) else list(profile or [])
    by_gpu: dict[str, Calibrated] = {}
    for path in profiles:
        from moesim.calibration.profile import load_calibration
        loaded = load_calibration(path)
        if loaded.gpu in by_gpu:
            raise MoesimError(f"two profiles for {loaded.gpu}: {by_gpu[loaded.gpu].path} and {path}",
                              field="--profile", fix="give one profile per GPU")
        by_gpu[loaded.gpu] = Calibrated(path=path, profile=loaded)
    systems = set(system_names())
    models = set(model_names())
    rows, skipped = [], []
    for case in cases:
        reason = None
        if case.what not in PREDICTORS:
            reason = f"what {case.what!r} not modelled yet: {LATER.get(case.what, 'unknown kind of case')}"
        elif case.system not in systems:
            reason = f"unknown system {case.system!r}"
        elif "model" in case.params and case.params["model"] not in models:
            reason = f"unknown model {case.params['model']!r}"
        if reason is None:
            try:
                calibration = by_gpu.get(load_system(case.system).gpu.id) if by_gpu else None
                predicted, ignored = PREDICTORS[case.what](case, calibration)
            except Skip as exc:
                reason = str(exc)
            except MoesimError as exc:
                reason = f"cannot model: {exc.one_line()}"
            except (KeyError, TypeError, ValueError) as exc:  # a param missing or of the wrong type
                reason = f"malformed params ({type(exc).__name__}: {exc})"
        if reason is not None:
            skipped.append({"id": case.id, "reason": reason})
            continue
        rows.append({"id": case.id, "what": case.what, "metric": case.metric, "measured": case.measured,
                     "predicted": predicted, "rel_error": (predicted - case.measured) / case.measured,
                     "ignored_params": ignored})
    mape: dict[str, float] = {}
    if rows:
        mape["overall"] = float(np.mean([abs(r["rel_error"]) for r in rows]))
        for what in sorted({r["what"] for r in rows}):
            mape[what] = float(np.mean([abs(r["rel_error"]) for r in rows if r["what"] == what]))
    from moesim.core.result import code_version
    return {"cases": rows, "mape": mape, "skipped": skipped,
            "provenance": {"code": code_version(), "profile": ", ".join(profiles) or None}}
