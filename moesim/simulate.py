"""`simulate(scenario) -> Result`: the one orchestrator of the pipeline.

Serving steps (prefill or decode) of one expert-parallel group: routing is sampled per MoE layer,
placed, turned into dispatch/combine flows on the topology and timed by the max-min network
model; each GPU's op times come from the compute model (roofline x efficiency); the SimPy engine
schedules them on per-GPU compute and comm streams, with or without two-batch overlap.

Symmetry (why one EP group is enough): every EP group of a stage runs the same ops on its own
tokens, so with `edp` replicas the cluster's per-GPU metrics equal one group's. Inside the group
every GPU is simulated: their expert loads differ, and the slowest one sets each layer's pace.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from . import precision, units
from . import rng as seeds
from .collectives import build_fabric, collective_time, ep_exchange_time
from .compute import gemm_time, grouped_gemm_time, load_compute_profile, memory_bound_time
from .engine import Op, chrome_trace, run_step
from .errors import MoesimError
from .memory import kv_share_per_gpu, memory_ledger
from .opcosts import attention_core_flops
from .placement import PLACEMENTS
from .routing import parse_skew, sample_routing
from .scenario import Scenario, Serving
from .traffic import ep_traffic, token_source_gpus

OVERLAPS = ("none", "two_batch")


def ep_comm_times(fabric, traffic, domain: int) -> tuple[float, float]:
    """Seconds of dispatch and combine; combine mirrors dispatch with BF16 bytes per token."""
    ratio = traffic.combine_bytes.sum() / max(traffic.dispatch_bytes.sum(), 1.0)
    dispatch = ep_exchange_time(fabric, traffic.dispatch_bytes, traffic.rdma_bytes, traffic.nvlink_forward_bytes,
                                domain)
    combine = ep_exchange_time(fabric, traffic.combine_bytes, traffic.rdma_bytes.T * ratio,
                               traffic.nvlink_forward_bytes.T * ratio, domain)
    return dispatch, combine


def _tokens_per_rank(w: Serving) -> int:
    return w.batch if w.phase == "decode" else (w.prefill_chunk_tokens or w.batch * w.input_len)


def serving_layers(sc: Scenario, *, microbatches: int, skew: str, placement: Optional[str]) -> tuple[list, int, dict]:
    """Per-layer op lists for one micro-batch of a serving step of one EP group."""
    m, p, w = sc.model, sc.plan, sc.input.workload
    gpu = sc.system.gpu
    prof = load_compute_profile(gpu.id)
    dt = sc.input.dtypes
    w_dtype = dt.weights
    att_dtype = dt.attention_weights or dt.weights
    exp_dtype = dt.expert_weights or dt.weights
    group = p.ep * p.etp
    if group % p.tp:
        raise MoesimError(f"EP group of {group} GPUs does not hold whole TP groups of {p.tp}", field="parallel.ep",
                          fix="make ep x etp a multiple of tp")
    ranks = group // p.tp
    tokens = max(_tokens_per_rank(w) // microbatches, 1)
    group_tokens = tokens * ranks
    d = m.hidden_size
    fabric = build_fabric(sc.system.id, group)
    domain = min(sc.system.domain_gpus, group)
    redundant = sc.input.experts.redundant
    name = placement or ("eplb" if redundant else "contiguous")
    parsed = parse_skew(skew, field="skew")
    decode = w.phase == "decode"
    ctx = w.context_len if decode else w.input_len
    held = m.kv_tokens_held(ctx)
    kv_bytes = precision.bytes_per_element(dt.kv_cache) * kv_share_per_gpu(m, p.tp)

    # dense parts per DP rank (identical on every GPU of the group)
    att_n = m.attention_params / (d * p.tp)
    t_attn_proj = gemm_time(gpu, prof, tokens, int(att_n), d, att_dtype)
    t_router = gemm_time(gpu, prof, tokens, m.moe.num_experts, d, "bf16")
    shared_i = m.moe.num_shared_experts * (m.moe.shared_expert_intermediate_size or 0) // p.tp
    t_shared = (gemm_time(gpu, prof, tokens, 2 * shared_i, d, w_dtype) + gemm_time(gpu, prof, tokens, d, shared_i, w_dtype)) \
        if shared_i else 0.0
    dense_i = (m.layers.dense_intermediate_size or 0) // p.tp
    t_dense = (gemm_time(gpu, prof, tokens, 2 * dense_i, d, w_dtype) + gemm_time(gpu, prof, tokens, d, dense_i, w_dtype)) \
        if dense_i else 0.0
    peak = gpu.peak_flops(precision.get("bf16").family)
    t_allreduce = collective_time(sc.system.id, group, "all_reduce", tokens * d * 2,
                                  participants=list(range(p.tp))).time_s if p.tp > 1 else 0.0

    def attention_core(layer: int) -> float:
        if decode:
            kv = tokens * held[layer] * m.kv_elements_per_token_per_layer * kv_bytes
            flops = tokens * attention_core_flops(m, held[layer], absorbed=True) / p.tp
        else:
            kv = tokens * m.kv_elements_per_token_per_layer * kv_bytes
            flops = tokens * attention_core_flops(m, (min(held[layer], ctx) + 1) / 2, absorbed=False) / p.tp
        return max(memory_bound_time(gpu, prof, kv), flops / (peak * prof.matmul_efficiency("bf16")))

    moe_index = {layer: i for i, layer in enumerate(m.moe_layer_indices)}
    sample_layers = sorted(moe_index.values())
    sample = sample_routing(m, parsed, group_tokens, seed=sc.input.seed, layers=sample_layers,
                            nodes=max(group // domain, 1), field="skew")
    history = sample_routing(m, parsed, group_tokens, seed=sc.input.seed, layers=sample_layers, batch=1,
                             nodes=max(group // domain, 1), field="skew") if name == "eplb" else sample
    token_gpu = token_source_gpus(group_tokens, p.ep)
    inter = m.moe.moe_intermediate_size // p.etp
    dispatch_dtype = "fp8" if precision.get(exp_dtype).family in ("fp8", "fp4") else "bf16"
    layers, loads = [], []
    for layer in range(m.num_hidden_layers):
        ops = [Op("attention", "attention", "compute", (t_attn_proj + attention_core(layer),) * group)]
        if p.tp > 1:
            ops.append(Op("tp all-reduce", "tp_allreduce", "comm", (t_allreduce,)))
        if layer not in moe_index:
            ops.append(Op("dense mlp", "dense_mlp", "compute", (t_dense,) * group))
            if p.tp > 1:
                ops.append(Op("tp all-reduce", "tp_allreduce", "comm", (t_allreduce,)))
            layers.append(ops)
            continue
        i = sample_layers.index(moe_index[layer])
        place = PLACEMENTS[name](history.expert_load[i].astype(float), p.ep, redundant, domain)
        traffic = ep_traffic(sample.choices[i], token_gpu, place, gpus_per_node=domain, hidden=d,
                             dispatch_dtype=dispatch_dtype)
        t_dispatch, t_combine = ep_comm_times(fabric, traffic, domain)
        # per-slot token counts: each (token, expert) pair goes to replica token % replicas
        ptr, slots = place.expert_slot_ptr, place.expert_slots
        choice = sample.choices[i]
        rows = np.repeat(np.arange(len(choice)), choice.shape[1])
        experts = choice.ravel()
        reps = ptr[experts + 1] - ptr[experts]
        slot_tokens = np.bincount(slots[ptr[experts] + rows % reps], minlength=len(place.slot_expert)).astype(float)
        per_gpu = []
        for g in range(p.ep):
            local = slot_tokens[place.slot_gpu == g]
            t = grouped_gemm_time(gpu, prof, local, 2 * inter, d, exp_dtype) + \
                grouped_gemm_time(gpu, prof, local, d, inter, exp_dtype)
            per_gpu.extend([t] * p.etp)
        loads.append(slot_tokens)
        ops += [Op("router", "router", "compute", (t_router,) * group),
                Op("dispatch", "dispatch", "comm", (t_dispatch,)),
                Op("experts", "routed_experts", "compute", tuple(per_gpu)),
                Op("shared experts", "shared_experts", "compute", (t_shared,) * group),
                Op("combine", "combine", "comm", (t_combine,))]
        layers.append(ops)
    head_rows = tokens if decode else max(w.batch // microbatches, 1)
    layers[-1] = layers[-1] + [Op("lm head", "lm_head", "compute",
                                  (gemm_time(gpu, prof, head_rows, m.vocab_size // p.tp, d, "bf16"),) * group)]
    info = {"group_gpus": group, "dp_ranks_per_group": ranks, "tokens_per_rank_per_microbatch": tokens,
            "placement": name, "skew": parsed.label(), "dispatch_dtype": dispatch_dtype,
            "efficiency_notes": fabric.efficiency_notes}
    return layers, group, info


def _breakdown(events, critical_gpu: int) -> dict:
    """Per op class on the critical GPU: compute seconds, comm seconds, comm seconds during which
    that GPU's compute stream was idle (exposed), and time spent waiting for slower peers (idle)."""
    mine = [e for e in events if e.gpu == critical_gpu]
    busy = sorted((e.start_s, e.end_s) for e in mine if e.stream == "compute")
    out: dict[str, dict[str, float]] = {}
    for e in mine:
        row = out.setdefault(e.op_class, {"compute_s": 0.0, "comm_s": 0.0, "exposed_comm_s": 0.0, "idle_s": 0.0})
        span = e.end_s - e.start_s
        if e.op_class == "idle_wait":
            row["idle_s"] += span
            continue
        if e.stream == "compute":
            row["compute_s"] += span
            continue
        row["comm_s"] += span
        covered = sum(max(0.0, min(e.end_s, b) - max(e.start_s, a)) for a, b in busy)
        row["exposed_comm_s"] += max(span - covered, 0.0)
    return out


def simulate(sc: Scenario, *, overlap: str = "none", skew: str = "uniform", placement: Optional[str] = None,
             trace: bool = False) -> dict:
    """Simulate one step of the scenario and return the Result (plain data)."""
    if overlap not in OVERLAPS:
        raise MoesimError(f"unknown overlap {overlap!r}", field="overlap", fix=f"use one of: {', '.join(OVERLAPS)}")
    w = sc.input.workload
    if not isinstance(w, Serving):
        raise MoesimError("training steps are not simulated yet", field="workload.kind",
                          fix="use a serving workload (training lands in a later increment)")
    wall = time.perf_counter()
    micro = 2 if overlap == "two_batch" else 1
    layers, group, info = serving_layers(sc, microbatches=micro, skew=skew, placement=placement)
    result = run_step(layers, group, microbatches=micro)
    step = result.makespan_s
    busy = np.zeros(group)
    for e in result.events:
        if e.stream == "compute":
            busy[e.gpu] += e.end_s - e.start_s
    critical = int(np.argmax(busy))  # the GPU the others wait for
    p = sc.plan
    tokens_per_rank = _tokens_per_rank(w)
    tokens_per_gpu_step = tokens_per_rank * info["dp_ranks_per_group"] / group
    metrics = {"step_time_s": step, "tokens_per_s_per_gpu": tokens_per_gpu_step / step,
               "tokens_per_s_per_node": tokens_per_gpu_step / step * sc.system.gpus_per_node}
    if w.phase == "decode":
        metrics["tpot_ms"] = step * 1e3
    else:
        metrics["ttft_ms"] = step * 1e3
    out = {
        "scenario": sc.input.name, "model": sc.model.id, "system": sc.system.id, "gpus": sc.gpus,
        "parallel": p.model_dump(), "phase": w.phase, "overlap": overlap, "seed": sc.input.seed,
        "metrics": metrics, "breakdown": _breakdown(result.events, critical),
        "memory": memory_ledger(sc).to_json(), "simulation": dict(info, critical_gpu=critical,
                                                                  engine_events=len(result.events),
                                                                  wall_s=time.perf_counter() - wall),
    }
    if trace:
        out["_trace"] = chrome_trace(result, name=sc.input.name)
    return out
