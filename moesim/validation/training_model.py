"""Training-step cases as fit targets of the training mechanisms (`sim/training_mechanisms`).

Each case is simulated ONCE; the target evaluates `step_model` (the engine's step rebuilt with the
named parameters of `topologies/kernels/training.yaml`: GEMM efficiency per architecture, fused
attention efficiency, host launch time per kernel, exposed share of the all-to-all) and converts
it to the case's metric. The case's `parallel.vpp` (interleaved 1F1B) and `pipeline_schedule:
dualpipe` shape the pipeline, which scenarios do not express yet.
"""
from __future__ import annotations

from collections.abc import Mapping

from moesim.calibration.kernel_fit import Target
from moesim.validation.cases import Case, Skip, profile_override
from moesim.validation.targets import group_of

USED = {"model", "parallel", "seq_len", "global_batch_seqs", "micro_batch", "dtype", "recompute",
        "pipeline_schedule"}
USED_PARALLEL = {"tp", "pp", "ep", "cp", "vpp"}
METRICS = ("tflops_per_gpu", "mfu", "tokens_per_s_per_gpu", "step_time_s")


def scenario_overrides(case: Case, calibration=None) -> dict:
    """The case's scenario: its Megatron split, 1F1B, balanced dropless routing."""
    p = case.params
    if case.metric not in METRICS:
        raise Skip(f"unknown metric {case.metric!r} for training")
    par = p.get("parallel") or {}
    if par.get("cp", 1) != 1:
        raise Skip("context parallelism is not modelled yet")
    missing = [k for k in ("seq_len", "global_batch_seqs") if k not in p]
    if missing:
        raise Skip(f"missing params: {', '.join(missing)} (the source does not state them)")
    recompute = p.get("recompute", "none")
    overrides = {"model": p["model"], "system": case.system, "gpus": case.gpus,
                 "parallel.tp": int(par.get("tp", 1)), "parallel.pp": int(par.get("pp", 1)),
                 "parallel.ep": int(par.get("ep", 1)), "dtypes.weights": p.get("dtype", "bf16"),
                 "dtypes.kv_cache": "bf16", "runtime.framework": "megatron",
                 "workload": {"kind": "training", "seq_len": int(p["seq_len"]),
                              "micro_batch": int(p.get("micro_batch", 1)), "global_batch": int(p["global_batch_seqs"]),
                              "recompute": recompute if recompute in ("none", "selective", "full") else "none"}}
    overrides.update(profile_override(calibration, case.system))
    return overrides


def prepare(case: Case, calibration=None) -> Target:
    """Simulate the case once; the target rebuilds its step from the stage parts and the parameters
    (`sim.training_mechanisms.step_model`, the same function `moesim simulate` reports)."""
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate
    from moesim.sim.training_mechanisms import step_model
    from moesim.sim.training_step import model_flops_per_token
    from moesim.specs import precision

    sc = load_scenario(None, scenario_overrides(case, calibration))
    result = simulate(sc, ignore_memory=True)  # a measured deployment ran: no memory verdict
    br, sim = result["breakdown"], result["simulation"]
    vpp = int((case.params.get("parallel") or {}).get("vpp", 1) or 1)
    step = step_model(sc, makespan_s=br["pipeline"]["compute_s"],
                      fixed_s=br["dp_gradient_sync"]["exposed_comm_s"] + br["optimizer"]["compute_s"],
                      microbatches=sim["microbatches"], a2a_per_moe_layer_s=br["ep_all_to_all_per_layer"]["comm_s"],
                      vpp=vpp, dualpipe=case.params.get("pipeline_schedule") == "dualpipe")
    w = sc.input.workload
    tokens = w.global_batch * w.seq_len
    flops_per_gpu = model_flops_per_token(sc, w.seq_len) * tokens / sc.gpus
    measured_metric = case.metric
    peak = sc.system.gpu.peak_flops(precision.get(sc.input.dtypes.weights).family)  # the simulator's MFU peak

    def model(v: Mapping[str, float]) -> float:
        seconds = step(v)
        if measured_metric == "step_time_s":
            return seconds
        if measured_metric == "tokens_per_s_per_gpu":
            return tokens / seconds / sc.gpus
        tflops = flops_per_gpu / seconds / 1e12
        return tflops if measured_metric == "tflops_per_gpu" else tflops * 1e12 / peak

    p = case.params
    par = p.get("parallel") or {}
    ignored = [k for k in p if k not in USED] + [f"parallel.{k}" for k in par if k not in USED_PARALLEL]
    return Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured, group=group_of(case),
                  model=model, ignored=ignored)
