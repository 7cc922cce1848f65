"""Predict a served-throughput case (phase `mixed`: continuous batching of prompts and decodes) with the
request-level simulator, `moesim serve`.

Such a case is an engine run at its batch limit, as `trtllm-bench --backend pytorch throughput` does: far
more requests than the engine holds, queued at once, so every finished request makes room for the next and
the engine runs full. moesim serves the deployment the case states - model, system, split, formats, the
batch per GPU as each attention-DP rank's running limit, the step's token budget where stated - at the
engine's defaults otherwise (`workloads/frameworks.yaml`, the kernel profile's fitted serving overheads),
under a closed loop of that many clients sending requests of the stated lengths. The measured figure is
a long run's rate; the case does not state how many requests it ran, so moesim reports the steady rate:
`STEADY_RUN_ROUNDS` rounds of the clients with the first (the burst that fills the idle engine) left out as warm-up.

The engine is the framework whose repository the case's source is (`engine_of`): a measurement from
another publication (an MLPerf log) names no engine here, and is skipped with that reason.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from moesim.validation.cases import Case, Skip, profile_override

STEADY_RUN_ROUNDS = 4          # simulated rounds of the clients; the first, the burst, is the warm-up
MIXED_USED = {"model", "phase", "parallel", "batch_per_gpu", "max_num_tokens", "input_len", "output_len", "dtype",
              "kv_cache_dtype"}
METRICS = ("tokens_per_s_per_gpu", "tokens_per_s_per_node")


def engine_of(case: Case) -> Optional[str]:
    """The serving framework whose GitHub repository the case's source names, if exactly one does."""
    from moesim.cluster.scenario import framework_table
    source = case.source.lower()
    named = [name for name, fw in framework_table().frameworks.items()
             if fw.batching is not None and fw.repository is not None
             and f"github {fw.repository.value.lower()} " in f"{source} "]
    return named[0] if len(named) == 1 else None


def predict_mixed(case: Case, calibration=None) -> tuple[float, list[str]]:
    """The case's output tokens per second per GPU (or per node) from a `serve` run (module docstring)."""
    from moesim.cluster.scenario import load_scenario
    from moesim.core.errors import MoesimError
    from moesim.serve.load import make_load
    from moesim.serve.run import deployment_shape, serve
    from moesim.serve.scheduler import Policy

    p = case.params
    if case.metric not in METRICS:
        raise Skip(f"metric {case.metric!r} of a served run is not predicted (give one of {', '.join(METRICS)})")
    par = p.get("parallel") or {}
    missing = [k for k in ("batch_per_gpu", "input_len", "output_len") if k not in p]
    missing += [] if "ep" in par else ["parallel.ep"]
    if missing:
        raise Skip(f"served run: {', '.join(missing)} not stated by the source")
    engine = engine_of(case)
    if engine is None:
        raise Skip("served run: its source is not a serving framework's repository, so the engine and its "
                   "scheduler are not known")
    tp, ep = int(par.get("tp", 1)), int(par["ep"])
    gpus = int(case.gpus or 0)
    if gpus < 1 or gpus % tp:
        raise Skip(f"served run: {gpus} GPUs do not hold whole TP groups of {tp}")
    dp = int(par.get("attn_dp", gpus // tp))
    overrides = {"model": p["model"], "system": case.system, "gpus": gpus, "parallel.tp": tp, "parallel.dp": dp,
                 "parallel.ep": ep, "dtypes.weights": p.get("dtype", "bf16"),
                 "dtypes.kv_cache": p.get("kv_cache_dtype", "bf16"), "runtime.framework": engine, "seed": 0,
                 "workload": {"kind": "serving", "phase": "decode", "batch": 1, "input_len": int(p["input_len"]),
                              "output_len": int(p["output_len"])}}
    overrides.update(profile_override(calibration, case.system))
    try:
        sc = load_scenario(None, overrides)
        instances, ranks = deployment_shape(sc)
        per_rank = int(p["batch_per_gpu"]) * tp          # an attention-DP rank spans tp GPUs
        clients = per_rank * ranks * instances
        default = Policy.of(sc)   # the serving overheads of the kernel profile the caller runs under
        policy = replace(default, max_running=per_rank, token_budget=int(p.get("max_num_tokens", default.token_budget)))
        load = make_load(concurrency=clients, isl=int(p["input_len"]), osl=int(p["output_len"]),
                         requests=STEADY_RUN_ROUNDS * clients, warmup=clients, closed_loop_start="burst", seed=0)
        result = serve(sc, load, policy=policy)
    except MoesimError as exc:
        raise Skip(f"served run cannot be modelled: {exc.one_line()}") from None
    per_gpu = result["metrics"]["output_tokens_per_s_per_gpu"]
    value = per_gpu if case.metric == "tokens_per_s_per_gpu" else per_gpu * sc.system.gpus_per_node
    ignored = [k for k in p if k not in MIXED_USED]
    return value, ignored


__all__ = ["STEADY_RUN_ROUNDS", "engine_of", "predict_mixed"]
