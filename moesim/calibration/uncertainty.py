"""Error bars: how far to trust a simulated metric, from measured residuals.

A headline metric gets value x (1 -+ 2 x rms), where rms combines (root of the sum of squares)
the RMS relative error of moesim's predictions on the validation cases of the same kind
(`serving` for serving metrics, `training` for training metrics; `topologies/
residuals/validation.yaml`, written by `moesim validate --write-residuals`) and, when a
calibration profile is used, the largest residual of its fits. k = 2 is roughly a 95% band if
the errors were normal; with few cases it is a statement of evidence, not a guarantee.
"""
from __future__ import annotations

import hashlib
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from moesim import __version__
from moesim.core.loader import data_root
from moesim.core.output import write_atomic

K = 2.0
METRIC_KIND = {"tokens_per_s_per_gpu": None, "tokens_per_s_per_node": None, "tpot_ms": "serving",
               "ttft_ms": "serving", "step_time_s": None, "tflops_per_gpu": "training", "mfu": "training"}


def residuals_path() -> Path:
    return data_root() / "topologies" / "residuals" / "validation.yaml"


def residual_summary(result: dict) -> dict:
    """Per `what`: cases, RMS and mean signed relative error, MAPE - what error bars rest on."""
    out = {}
    for what in sorted({c["what"] for c in result["cases"]}):
        errors = np.array([c["rel_error"] for c in result["cases"] if c["what"] == what])
        out[what] = {"cases": int(errors.size), "rms_rel_error": float(np.sqrt(np.mean(errors**2))),
                     "mean_rel_error": float(errors.mean()), "mape": float(np.mean(np.abs(errors)))}
    return out


def write_residuals(path: str, result: dict, *, cases_file: str, profile: Optional[str]) -> Path:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    data = {"format": "moesim-residuals/v1",
            "provenance": {"cases_file": Path(cases_file).name,
                           "cases_sha256": hashlib.sha256(Path(cases_file).read_bytes()).hexdigest(),
                           "profile": profile, "moesim_version": __version__, "moesim_commit": commit,
                           "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "command": "moesim validate --cases CASES --write-residuals FILE"},
            "residuals": residual_summary(result)}
    return write_atomic(path, "# Residuals of moesim's predictions on measured cases, per `what`; what\n"
                              "# `moesim simulate` error bars rest on (moesim/calibration/uncertainty.py).\n"
                        + yaml.safe_dump(data, sort_keys=False))


def load_residuals(path: Optional[Path] = None) -> Optional[dict]:
    path = path or residuals_path()
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


def bands(metrics: dict, kind: str, *, calibration_rms: float = 0.0, residuals: Optional[dict] = None) -> dict:
    """{metric: {low, high, rms, rests_on}} for the headline metrics of a `kind` (serving|training) step."""
    table = (residuals or {}).get("residuals", {})
    row = table.get(kind)
    out = {}
    for name, value in metrics.items():
        if name not in METRIC_KIND or not isinstance(value, (int, float)):
            continue
        basis, rms = [], 0.0
        if row:
            rms = row["rms_rel_error"]
            basis.append(f"{kind} validation residuals: RMS {100 * rms:.0f}% over {row['cases']} case(s), "
                         f"mean signed {100 * row['mean_rel_error']:+.0f}%")
        if calibration_rms:
            rms = math.hypot(rms, calibration_rms)
            basis.append(f"calibration fit RMS {100 * calibration_rms:.1f}%")
        if not basis:
            out[name] = {"low": None, "high": None, "rms": None, "rests_on": "no residuals available"}
            continue
        out[name] = {"low": max(value * (1 - K * rms), 0.0), "high": value * (1 + K * rms), "rms": rms,
                     "rests_on": "; ".join(basis)}
    return out
