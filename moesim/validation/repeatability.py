"""How closely the measured serving benchmarks repeat themselves: a floor under any model's error.

validation/serving_load.yaml measures some benchmarks more than once (other imports, other dates)
under the same stated deployment and load: model, system, backend and version, formats, pools,
ISL / OSL and concurrency. Where those measurements differ, a model that predicts one value per
stated benchmark - every deterministic simulator, moesim included - cannot be closer to them on
average than the best single value per benchmark is (`best_single_value`); the spread is what the
records do not state (launch flags such as speculative decoding or the memory fraction, the run's
machine and software stack on the day).
Identical values (one measurement copied into several imports) are counted once: copies are not
repeats. `moesim validate` reports the floor beside its own error.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Mapping, Optional

import numpy as np

from moesim.validation.cases import Case

DIGITS = 2   # measured values equal to this many decimals (ms) are one measurement copied, not a repeat
# The case kinds moesim predicts from the stated parameters alone. Kernel microbenchmarks are not among
# them: each source's cases run on that source's own calibration (its machine), so two sources measuring
# the same kernel are not one benchmark to moesim.
STATED_ONLY = ("serving_load",)


def benchmark_key(case: Case) -> str:
    """What a measurement was taken of: the case's kind, metric, system, GPUs and every stated parameter."""
    return json.dumps([case.what, case.metric, case.system, case.gpus, case.params], sort_keys=True, default=str)


def repeated(cases: list[Case]) -> dict[str, list[dict[float, str]]]:
    """Per `what.metric`, each benchmark measured more than once: its distinct measured values, each with
    the id of the first case that holds it."""
    values: dict[str, dict[float, str]] = defaultdict(dict)
    kind: dict[str, str] = {}
    for c in cases:
        if c.what not in STATED_ONLY:
            continue
        key = benchmark_key(c)
        values[key].setdefault(round(float(c.measured), DIGITS), c.id)
        kind[key] = f"{c.what}.{c.metric}"
    out: dict[str, list[dict[float, str]]] = defaultdict(list)
    for key, vals in values.items():
        if len(vals) > 1:
            out[kind[key]].append(vals)
    return dict(out)


def best_single_value(values: list[float]) -> float:
    """The one prediction with the least mean |prediction / value - 1| over `values`: sum |c - v| / v is
    piecewise linear in c, least at the median of the values weighted by 1 / v."""
    v = np.sort(np.asarray(values, dtype=float))
    w = 1.0 / v
    return float(v[np.searchsorted(np.cumsum(w), w.sum() / 2.0)])


def floor(groups: list[dict[float, str]], errors: Optional[Mapping[str, float]] = None) -> dict:
    """The spread of repeated measurements: how many benchmarks and values, the least MAPE any one value
    per benchmark achieves on them (`mape_floor`, `best_single_value`), the median and largest max / min
    ratio, and with `errors` (relative error by case id) the model's own MAPE on the same values
    (`model_mape`, over the `model_values` it predicted)."""
    best = [best_single_value(list(g)) for g in groups]
    spread = [abs(c / v - 1.0) for c, g in zip(best, groups) for v in g]
    ratios = [max(g) / min(g) for g in groups]
    out = {"benchmarks": len(groups), "values": len(spread), "mape_floor": float(np.mean(spread)),
           "median_max_over_min": float(np.median(ratios)), "max_max_over_min": float(max(ratios))}
    if errors is not None:
        mine = [abs(errors[i]) for g in groups for i in g.values() if i in errors]
        out["model_values"] = len(mine)
        out["model_mape"] = float(np.mean(mine)) if mine else None
    return out


def repeatability(cases: list[Case], errors: Optional[Mapping[str, float]] = None) -> dict[str, dict]:
    """`floor` per `what.metric` of the cases' repeated benchmarks (none: an empty dict)."""
    return {kind: floor(groups, errors) for kind, groups in sorted(repeated(cases).items())}


__all__ = ["benchmark_key", "best_single_value", "floor", "repeatability", "repeated"]
