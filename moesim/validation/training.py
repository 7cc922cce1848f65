"""Predict training-step cases (Megatron-style splits, 1F1B pipeline) with the step simulator."""
from __future__ import annotations

from moesim.validation.cases import Case, Skip, profile_override

TRAINING_USED = {"model", "parallel", "seq_len", "global_batch_seqs", "micro_batch", "dtype", "recompute"}


def predict_training(case: Case, calibration=None) -> tuple[float, list[str]]:
    """One training step of the case's Megatron-style split, simulated with the 1F1B pipeline."""
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate

    p = case.params
    if case.metric not in ("tflops_per_gpu", "mfu", "tokens_per_s_per_gpu", "step_time_s"):
        raise Skip(f"unknown metric {case.metric!r} for training")
    par = p.get("parallel") or {}
    if par.get("cp", 1) != 1:
        raise Skip("context parallelism is not modelled yet")
    missing = [k for k in ("seq_len", "global_batch_seqs") if k not in p]
    if missing:
        raise Skip(f"missing params: {', '.join(missing)}")
    dtype = p.get("dtype", "bf16")
    overrides = {"model": p["model"], "system": case.system, "gpus": case.gpus,
                 "parallel.tp": int(par.get("tp", 1)), "parallel.pp": int(par.get("pp", 1)),
                 "parallel.ep": int(par.get("ep", 1)), "dtypes.weights": dtype, "dtypes.kv_cache": "bf16",
                 "runtime.framework": "megatron",
                 "workload": {"kind": "training", "seq_len": int(p["seq_len"]), "micro_batch": int(p.get("micro_batch", 1)),
                              "global_batch": int(p["global_batch_seqs"]),
                              "recompute": p.get("recompute", "none") if p.get("recompute") in ("none", "selective", "full")
                              else "none"}}
    overrides.update(profile_override(calibration, case.system))
    # a measured deployment ran, so a memory verdict of the model must not hide the prediction
    result = simulate(load_scenario(None, overrides), ignore_memory=True)
    value = result["metrics"][case.metric]
    ignored = [k for k in p if k not in TRAINING_USED] + [f"parallel.{k}" for k in par if k not in ("tp", "pp", "ep", "cp")]
    return value, ignored
