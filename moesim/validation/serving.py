"""Predict serving cases: one prefill or decode step of a deployment with the step simulator; a served run
(phase `mixed`) with the request-level one (`validation.serving_mixed`)."""
from __future__ import annotations

from moesim.validation.cases import Case, Skip, profile_override

SERVING_USED = {"model", "phase", "parallel", "batch_per_gpu", "batch_tokens_per_gpu", "input_len", "context_len",
                "dtype", "attn_dtype", "kv_cache_dtype", "overlap", "eplb", "redundant_experts"}


def predict_serving(case: Case, calibration=None) -> tuple[float, list[str]]:
    """One serving step of the deployment the case describes, simulated by the engine."""
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate

    p = case.params
    phase = p.get("phase")
    if phase == "mixed":
        from moesim.validation.serving_mixed import predict_mixed
        return predict_mixed(case, calibration)
    if phase not in ("prefill", "decode"):
        raise Skip(f"unknown serving phase {phase!r} (prefill, decode or mixed)")
    if case.metric not in ("tokens_per_s_per_gpu", "tokens_per_s_per_node", "tpot_ms", "ttft_ms"):
        raise Skip(f"unknown metric {case.metric!r} for serving")
    par = p.get("parallel") or {}
    if "ep" not in par:
        raise Skip("parallel split not stated by the source")
    if phase == "decode":
        if "batch_per_gpu" not in p or "context_len" not in p:
            raise Skip("decode batch per GPU or context length not stated by the source")
        batch, input_len, output_len = int(p["batch_per_gpu"]), int(p["context_len"]) - 1, 1
    else:
        tokens = p.get("batch_tokens_per_gpu")
        if not tokens or "input_len" not in p:
            raise Skip("prefill tokens per GPU or input length not stated by the source")
        input_len = int(p["input_len"])
        batch, output_len = max(int(tokens) // input_len, 1), 1
    tp, ep = int(par.get("tp", 1)), int(par["ep"])
    model = p["model"]
    from moesim.specs.model import load_model
    experts = load_model(model).moe.num_experts
    redundant = int(p.get("redundant_experts", 0))
    if (experts + redundant) % ep:
        if not p.get("eplb"):
            raise Skip(f"{experts} experts do not divide over ep {ep} and the source names no redundant experts")
        redundant += (-(experts + redundant)) % ep
    weights = p.get("dtype", "bf16")
    overrides = {"model": model, "system": case.system, "gpus": case.gpus, "parallel.tp": tp, "parallel.ep": ep,
                 "experts.redundant": redundant, "dtypes.weights": weights,
                 "dtypes.attention_weights": p.get("attn_dtype"), "dtypes.kv_cache": p.get("kv_cache_dtype", "bf16"),
                 "workload": {"kind": "serving", "phase": phase, "batch": batch, "input_len": input_len,
                              "output_len": output_len}}
    overrides.update(profile_override(calibration, case.system))
    overlap = "two_batch" if p.get("overlap") == "two_batch" else "none"
    placement = "eplb" if (p.get("eplb") or redundant) else None
    # a measured deployment ran, so a memory verdict of the model must not hide the prediction
    result = simulate(load_scenario(None, overrides), overlap=overlap, placement=placement, ignore_memory=True)
    m = result["metrics"]
    value = {"tokens_per_s_per_gpu": m["tokens_per_s_per_gpu"], "tokens_per_s_per_node": m["tokens_per_s_per_node"],
             "tpot_ms": m.get("tpot_ms"), "ttft_ms": m.get("ttft_ms")}[case.metric]
    if value is None:
        raise Skip(f"metric {case.metric} does not apply to a {phase} step")
    ignored = [k for k in p if k not in SERVING_USED]
    if p.get("overlap") not in (None, "none", "two_batch"):
        ignored.append(f"overlap={p['overlap']} (simulated without overlap)")
    return value, ignored
