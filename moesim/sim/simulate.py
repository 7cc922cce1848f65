"""`simulate(scenario) -> Result`: the one orchestrator of the pipeline.

Serving steps (prefill or decode) of one expert-parallel group: routing is sampled per MoE layer,
placed, turned into dispatch/combine flows on the topology and timed by the max-min network
model (`layer_ops`); each GPU's op times come from the compute model (roofline x efficiency);
the SimPy engine schedules them on per-GPU compute and comm streams, with or without two-batch
overlap. Training steps run the 1F1B pipeline (`training_step`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from moesim.cluster.scenario import Scenario, Serving, Training, with_redundant_experts
from moesim.core.errors import MoesimError
from moesim.costs.feasibility import fit_problem, require_fit
from moesim.costs.memory import memory_ledger
from moesim.costs.placement import parse_placement
from moesim.sim.engine import chrome_trace, run_step
from moesim.sim.event_summary import breakdown, layer_timeline
from moesim.sim.layer_ops import serving_layers, serving_tokens_per_rank
from moesim.sim.provenance import metric_bands, provenance
from moesim.sim.training_step import simulate_training

OVERLAPS = ("none", "two_batch")


def simulate(sc: Scenario, *, overlap: str = "none", skew: str = "uniform", placement: Optional[str] = None,
             trace: bool = False, ignore_memory: bool = False) -> dict:
    """Simulate one step of the scenario and return the Result (plain data).

    A deployment that does not fit in VRAM is refused (`costs.feasibility.require_fit`) unless
    `ignore_memory`; then the Result says so in `warnings`, which every table and report shows.
    """
    if overlap not in OVERLAPS:
        raise MoesimError(f"unknown overlap {overlap!r}", field="overlap", fix=f"use one of: {', '.join(OVERLAPS)}")
    if placement:  # `eplb:R` asks for R replica slots: they cost VRAM and must divide, as in the file
        placement, redundant = parse_placement(placement, sc.input.experts.redundant)
        sc = with_redundant_experts(sc, redundant, field="placement")
    warnings = []
    if ignore_memory:
        problem = fit_problem(sc)
        if problem:
            warnings.append(f"{problem}: simulated anyway (--ignore-memory); this deployment cannot run")
    else:
        require_fit(sc)
    w = sc.input.workload
    if isinstance(w, Training):
        return _with_warnings(simulate_training(sc, w, trace=trace), warnings)
    micro = 2 if overlap == "two_batch" else 1
    layers, group, info = serving_layers(sc, microbatches=micro, skew=skew, placement=placement)
    details = info.pop("details")
    result = run_step(layers, group, microbatches=micro)
    step = result.makespan_s
    busy = np.zeros(group)
    for e in result.events:
        if e.stream == "compute":
            busy[e.gpu] += e.end_s - e.start_s
    critical = int(np.argmax(busy))  # the GPU the others wait for
    p = sc.plan
    tokens_per_rank = serving_tokens_per_rank(w)
    tokens_per_gpu_step = tokens_per_rank * info["dp_ranks_per_group"] / group
    metrics = {"step_time_s": step, "tokens_per_s_per_gpu": tokens_per_gpu_step / step,
               "tokens_per_s_per_node": tokens_per_gpu_step / step * sc.system.gpus_per_node}
    if w.phase == "decode":
        metrics["tpot_ms"] = step * 1e3
    else:
        metrics["ttft_ms"] = step * 1e3
    out = {
        "scenario": sc.input.name, "model": sc.model.id, "system": sc.system.id, "gpus": sc.gpus,
        "fleet": sc.system.fleet_label(sc.gpus), "node": {"name": sc.system.node_label, "gpus": sc.system.gpus_per_node},
        "parallel": p.model_dump(), "phase": w.phase, "overlap": overlap, "seed": sc.input.seed,
        "metrics": metrics, "breakdown": breakdown(result.events, critical),
        "memory": memory_ledger(sc).to_json(), "simulation": dict(info, critical_gpu=critical,
                                                                  engine_events=len(result.events)),
    }
    out["uncertainty"] = metric_bands(sc, metrics, "serving")
    timeline_layer = details["moe_layers"][0] if details["moe_layers"] else 0
    out["details"] = dict(details, timeline=layer_timeline(result.events, timeline_layer))
    out["provenance"] = provenance(sc)
    if trace:
        out["_trace"] = chrome_trace(result, name=sc.input.name)
    return _with_warnings(out, warnings)


def _with_warnings(result: dict, warnings: list[str]) -> dict:
    """Put `warnings` first among the result's keys, where no reader can miss them (absent if none)."""
    return {"warnings": warnings, **result} if warnings else result


def simulate_disaggregated(prefill: Scenario, decode: Scenario, **kwargs) -> dict:
    """Prefill/decode disaggregation as two pools (DeepSeek / SGLang / Dynamo): each pool is
    simulated on its own; a request needs `input_len` prefill tokens and `output_len` decode
    tokens, so the pair serves min(prefill rate / input_len, decode rate / output_len) requests/s.
    KV transfer between pools is not modelled yet (it overlaps with decode in these systems)."""
    wp, wd = prefill.input.workload, decode.input.workload
    if not (isinstance(wp, Serving) and wp.phase == "prefill" and isinstance(wd, Serving) and wd.phase == "decode"):
        raise MoesimError("disaggregation needs a prefill scenario and a decode scenario", field="workload.phase",
                          fix="give --prefill a scenario with phase: prefill and SCENARIO one with phase: decode")
    if prefill.model.id != decode.model.id:
        raise MoesimError(f"pools serve different models ({prefill.model.id} vs {decode.model.id})", field="model",
                          fix="use the same model in both scenarios")
    p, d = simulate(prefill, **kwargs), simulate(decode, **kwargs)
    prefill_tps = p["metrics"]["tokens_per_s_per_gpu"] * prefill.gpus
    decode_tps = d["metrics"]["tokens_per_s_per_gpu"] * decode.gpus
    requests = min(prefill_tps / wd.input_len, decode_tps / wd.output_len)
    gpus = prefill.gpus + decode.gpus
    return {"pools": {"prefill": p, "decode": d},
            "metrics": {"requests_per_s": requests, "output_tokens_per_s_per_gpu": requests * wd.output_len / gpus,
                        "ttft_ms": p["metrics"]["ttft_ms"], "tpot_ms": d["metrics"]["tpot_ms"],
                        "bound_by": "prefill" if prefill_tps / wd.input_len < decode_tps / wd.output_len else "decode",
                        "prefill_to_decode_gpu_ratio_balanced": (decode.gpus * wd.input_len / wd.output_len)
                        * (p["metrics"]["tokens_per_s_per_gpu"] ** -1) * d["metrics"]["tokens_per_s_per_gpu"]
                        / max(decode.gpus, 1)}}
