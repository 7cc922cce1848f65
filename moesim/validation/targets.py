"""Turn validation cases into fit targets: each case as a function of the kernel-model parameters.

A mechanism module per `what` builds a target from a case (`prepare(case, calibration)`): the
costly, parameter-free part of the prediction (routing samples, traffic, spec rates, simulated
step breakdowns) is computed here once, and the target's model maps parameter values to the
predicted metric. Kinds without named parameters yet (memory, serving) are constant targets of
their spec-based predictor. A case moesim cannot model raises `Skip` with the reason.
"""
from __future__ import annotations

from typing import Callable, Optional

from moesim.calibration.kernel_fit import Target, bind
from moesim.calibration.kernel_params import KernelProfile, standing_in_for_default
from moesim.core.errors import MoesimError
from moesim.specs.hardware import load_system, system_names
from moesim.specs.model import model_names
from moesim.validation import memory as validation_memory
from moesim.validation.cases import Calibrated, Case, Skip
from moesim.validation.serving import predict_serving

Prepare = Callable[[Case, Optional[Calibrated]], Target]


def group_of(case: Case) -> str:
    """The source a case comes from, for leave-one-source-out: its table, else its source."""
    table = getattr(case, "table", None)
    return str(table) if table else case.source


def constant(case: Case, value: float, ignored: list[str]) -> Target:
    return Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured, group=group_of(case),
                  model=lambda values: value, ignored=ignored)


def _from_predictor(predict) -> Prepare:
    def prepare(case: Case, calibration: Optional[Calibrated]) -> Target:
        value, ignored = predict(case, calibration)
        return constant(case, value, ignored)
    return prepare


def preparers() -> dict[str, Prepare]:
    from moesim.validation import collective_model, copy_model, ep_model, gemm_model, training_model
    return {"memory": _from_predictor(lambda case, cal: validation_memory.predict_memory(case)),
            "serving": _from_predictor(predict_serving),
            "training": training_model.prepare,
            "memcpy": copy_model.prepare,
            "collective": collective_model.prepare,
            "ep_dispatch": ep_model.prepare,
            "ep_combine": ep_model.prepare,
            "gemm": gemm_model.prepare,
            "grouped_gemm": gemm_model.prepare}


def build_targets(cases: list[Case], by_gpu: dict[str, Calibrated], profile: KernelProfile, *, workers: int = 1
                  ) -> tuple[list[Target], list[dict]]:
    """Targets of every case moesim can model, and the skipped ones with their reason. Cases
    predicted by simulating a whole step simulate it with `profile`; kinds prepared in batches
    (`batch_preparers`: serving_load) spread their simulations over `workers` processes (the
    targets do not depend on it)."""
    key = _cache_key(cases, by_gpu, profile)
    if key in _BUILT:  # validate, calibrate and --cv on the same cases in one process build once
        targets, skipped = _BUILT[key]
        return list(targets), [dict(s) for s in skipped]
    with standing_in_for_default(profile):
        built = _build(cases, by_gpu, profile, workers)
    if len(_BUILT) >= 4:
        _BUILT.pop(next(iter(_BUILT)))
    _BUILT[key] = built
    return list(built[0]), [dict(s) for s in built[1]]


_BUILT: dict = {}


def _cache_key(cases: list[Case], by_gpu: dict[str, Calibrated], profile: KernelProfile) -> tuple:
    """Targets depend on the cases, the microbenchmark profiles, the kernel profile (whole-step
    targets simulate with it) and moesim's code and data (a changed file changes every answer)."""
    from moesim.core.digest import code_and_data_digest
    return (tuple(c.model_dump_json() for c in cases), tuple(sorted((g, c.path) for g, c in by_gpu.items())),
            tuple(sorted(profile.fitted.items())), code_and_data_digest())


def batch_preparers() -> dict:
    """Kinds whose cases are prepared together, `prepare_many(cases, calibration_of, profile, workers)
    -> {case id: Target or Skip}`: a serving_load benchmark gives two cases from one run, and the
    benchmarks of one deployment share its step-time function (`validation.serving_load`)."""
    from moesim.validation import serving_load
    return {serving_load.WHAT: serving_load.prepare_many}


def _build(cases: list[Case], by_gpu: dict[str, Calibrated], profile: KernelProfile, workers: int = 1
           ) -> tuple[list[Target], list[dict]]:
    systems, models = set(system_names()), set(model_names())
    values = profile.values()
    table = preparers()
    batch = batch_preparers()

    def reason_of(case: Case) -> Optional[str]:
        if case.what not in table and case.what not in batch:
            return f"what {case.what!r} not modelled yet: unknown kind of case"
        if case.system not in systems:
            return f"unknown system {case.system!r}"
        if "model" in case.params and case.params["model"] not in models:
            return f"unknown model {case.params['model']!r}"
        return None

    def calibration_of(case: Case) -> Optional[Calibrated]:
        return by_gpu.get(load_system(case.system).gpu.id) if by_gpu else None

    prepared: dict = {}
    for what, prepare_many in batch.items():
        mine = [c for c in cases if c.what == what and reason_of(c) is None]
        if mine:
            prepared.update(prepare_many(mine, calibration_of, profile, workers))
    targets, skipped = [], []
    for case in cases:
        reason = reason_of(case)
        if reason is None:
            try:
                if case.what in batch:
                    made = prepared[case.id]
                    if isinstance(made, Skip):
                        raise made
                else:
                    made = table[case.what](case, calibration_of(case))
                target = bind(made, values)
                if not target.predict(values) > 0:
                    raise Skip("the model predicts no time for this case")
                targets.append(target)
            except Skip as exc:
                reason = str(exc)
            except MoesimError as exc:
                reason = f"cannot model: {exc.one_line()}"
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a param missing or wrong type
                reason = f"malformed params ({type(exc).__name__}: {exc})"
        if reason is not None:
            skipped.append({"id": case.id, "reason": reason})
    return targets, skipped
