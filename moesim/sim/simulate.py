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

from moesim.specs import precision
from moesim.core import units
from moesim.costs.collectives import build_fabric, collective_time, ep_exchange_time
from moesim.costs.compute import (gemm_time, grouped_gemm_time, grouped_gemm_times_per_owner, load_compute_profile,
                      memory_bound_time)
from moesim.sim.engine import Op, chrome_trace, fuse, run_pipeline, run_step
from moesim.core.errors import MoesimError
from moesim.costs.memory import kv_share_per_gpu, memory_ledger
from moesim.specs.opcosts import attention_core_flops
from moesim.costs.placement import PLACEMENTS
from moesim.costs.routing import parse_skew, sample_routing
from moesim.specs.parallelism import stage_layers
from moesim.cluster.scenario import Scenario, Serving, Training
from moesim.costs.traffic import ep_traffic, token_source_gpus

OVERLAPS = ("none", "two_batch")


def ep_comm_times(fabric, traffic, domain: int) -> tuple[float, float]:
    """Seconds of dispatch and combine; combine mirrors dispatch with BF16 bytes per token."""
    ratio = traffic.combine_bytes.sum() / max(traffic.dispatch_bytes.sum(), 1.0)
    dispatch = ep_exchange_time(fabric, traffic.dispatch_bytes, traffic.rdma_bytes, traffic.nvlink_forward_bytes,
                                domain)
    combine = ep_exchange_time(fabric, traffic.combine_bytes, traffic.rdma_bytes.T * ratio,
                               traffic.nvlink_forward_bytes.T * ratio, domain)
    return dispatch, combine


def elementwise_time(sc: Scenario, gpu, prof, tokens: float, *, moe_layer: bool) -> float:
    """Memory-bound time of the non-GEMM work of one layer (norms, activations, residual adds,
    router softmax/top-k, token permutation): the activation elements each operator class reads
    and writes (`opcosts`), in the activation dtype, over the achievable HBM bandwidth - the
    roofline of kernels with no data reuse. Per GPU: routed-expert work per token scales with the
    token-expert pairs the GPU holds; TP splits the per-head and per-channel parts."""
    m, p = sc.model, sc.plan
    a = precision.bytes_per_element(sc.input.dtypes.activations)
    d = m.hidden_size
    per_token = 4 * d + 2 * d * m.norms_per_layer + 2 * d / p.tp  # projections in/out, norms, core in/out
    if moe_layer:
        mo = m.moe
        pairs = mo.num_experts_per_tok * p.dp / (p.ep * p.edp)
        per_token += d + mo.num_experts + pairs * (2 * d + 3 * mo.moe_intermediate_size / p.etp)
        per_token += mo.num_shared_experts * (2 * d + 3 * (mo.shared_expert_intermediate_size or 0) / p.tp)
    else:
        per_token += 2 * d + 3 * (m.layers.dense_intermediate_size or 0) / p.tp
    return memory_bound_time(gpu, prof, tokens * per_token * a)


def dense_op_times(sc: Scenario, gpu, prof, tokens: int, group: int, *, dtype: str, attention_dtype: str,
                   links: tuple = ()) -> dict:
    """Seconds of the per-DP-rank GEMMs of one layer (identical on every GPU of the group) and of
    the TP all-reduce after attention or MLP: attention projections, router, shared experts,
    dense MLP (gate+up then down)."""
    m, p = sc.model, sc.plan
    d = m.hidden_size

    def ffn(inter: int, fmt: str) -> float:
        return gemm_time(gpu, prof, tokens, 2 * inter, d, fmt) + gemm_time(gpu, prof, tokens, d, inter, fmt) \
            if inter else 0.0

    shared_i = m.moe.num_shared_experts * (m.moe.shared_expert_intermediate_size or 0) // p.tp
    return {"attention_proj": gemm_time(gpu, prof, tokens, int(m.attention_params / (d * p.tp)), d, attention_dtype),
            "router": gemm_time(gpu, prof, tokens, m.moe.num_experts, d, "bf16"),
            "shared": ffn(shared_i, dtype),
            "dense": ffn((m.layers.dense_intermediate_size or 0) // p.tp, dtype),
            "tp_allreduce": collective_time(sc.system, max(group, 2), "all_reduce", tokens * d * 2,
                                            participants=list(range(p.tp)), link_overrides=links).time_s
            if p.tp > 1 else 0.0}


def _tokens_per_rank(w: Serving) -> int:
    return w.batch if w.phase == "decode" else (w.prefill_chunk_tokens or w.batch * w.input_len)


def calibration_name(sc: Scenario):
    """The calibration profile in force: the scenario's (or --profile), else the system file's."""
    return sc.input.runtime.profile or sc.system.spec.calibration


def hardware_for(sc: Scenario) -> tuple:
    """(gpu spec, compute profile, link overrides) for the scenario, calibrated when the scenario
    names a profile (`runtime.profile`, or `--profile`)."""
    gpu = sc.system.gpu
    prof = load_compute_profile(gpu.id)
    name = calibration_name(sc)
    if not name:
        return gpu, prof, ()
    from moesim.calibration.fit import apply_to_compute, apply_to_gpu, link_efficiency_overrides, load_calibration
    cal = load_calibration(name)
    if cal.gpu != gpu.id:
        raise MoesimError(f"profile is calibrated for {cal.gpu}, the scenario runs on {gpu.id}",
                          field="runtime.profile", fix="calibrate on this GPU or pick the matching system")
    return apply_to_gpu(gpu, cal), apply_to_compute(prof, cal), tuple(sorted(link_efficiency_overrides(cal).items()))


def check_simulatable(sc: Scenario) -> None:
    """Raise for a valid split the engine cannot simulate yet (an EP group smaller than a TP group:
    Megatron allows it, the serving engine's per-group model does not)."""
    p = sc.plan
    if (p.ep * p.etp) % p.tp:
        raise MoesimError(f"EP group of {p.ep * p.etp} GPUs does not hold whole TP groups of {p.tp}",
                          field="parallel.ep", fix="make ep x etp a multiple of tp")


def serving_layers(sc: Scenario, *, microbatches: int, skew: str, placement: Optional[str]) -> tuple[list, int, dict]:
    """Per-layer op lists for one micro-batch of a serving step of one EP group."""
    m, p, w = sc.model, sc.plan, sc.input.workload
    gpu, prof, links = hardware_for(sc)
    dt = sc.input.dtypes
    w_dtype = dt.weights
    att_dtype = dt.attention_weights or dt.weights
    exp_dtype = dt.expert_weights or dt.weights
    check_simulatable(sc)
    group = p.ep * p.etp
    ranks = group // p.tp
    tokens = max(_tokens_per_rank(w) // microbatches, 1)
    group_tokens = tokens * ranks
    d = m.hidden_size
    fabric = build_fabric(sc.system, group, links)
    domain = min(sc.system.domain_gpus, group)
    redundant = sc.input.experts.redundant
    name = placement or ("eplb" if redundant else "contiguous")
    parsed = parse_skew(skew, field="skew")
    decode = w.phase == "decode"
    ctx = w.context_len if decode else w.input_len
    held = m.kv_tokens_held(ctx)
    kv_bytes = precision.bytes_per_element(dt.kv_cache) * kv_share_per_gpu(m, p.tp)

    dense = dense_op_times(sc, gpu, prof, tokens, group, dtype=w_dtype, attention_dtype=att_dtype, links=links)
    t_attn_proj, t_router, t_shared = dense["attention_proj"], dense["router"], dense["shared"]
    t_dense, t_allreduce = dense["dense"], dense["tp_allreduce"]
    peak = gpu.peak_flops(precision.get("bf16").family)

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
    layers = []
    details: dict = {"moe_layers": [], "expert_load": [], "gpu_load": [], "traffic_layer": None,
                     "dispatch_bytes": None, "gpus_per_node": domain}
    for layer in range(m.num_hidden_layers):
        attention = [Op("attention", "attention", "compute", (t_attn_proj + attention_core(layer),) * group),
                     Op("elementwise", "elementwise", "compute",
                        (elementwise_time(sc, gpu, prof, tokens, moe_layer=layer in moe_index),) * group)]
        if layer not in moe_index:
            dense = [Op("dense mlp", "dense_mlp", "compute", (t_dense,) * group)]
            if p.tp > 1:
                layers.append([fuse(attention), Op("tp all-reduce", "tp_allreduce", "comm", (t_allreduce,)),
                               fuse(dense), Op("tp all-reduce", "tp_allreduce", "comm", (t_allreduce,))])
            else:
                layers.append([fuse(attention + dense)])
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
        per_rank = grouped_gemm_times_per_owner(gpu, prof, slot_tokens, place.slot_gpu, p.ep, 2 * inter, d, exp_dtype) \
            + grouped_gemm_times_per_owner(gpu, prof, slot_tokens, place.slot_gpu, p.ep, d, inter, exp_dtype)
        per_gpu = np.repeat(per_rank, p.etp).tolist()
        details["moe_layers"].append(layer)
        details["expert_load"].append(sample.expert_load[i].astype(np.int64).tolist())
        details["gpu_load"].append(np.bincount(place.slot_gpu, weights=slot_tokens, minlength=p.ep).tolist())
        if details["dispatch_bytes"] is None:
            details["traffic_layer"], details["dispatch_bytes"] = layer, traffic.dispatch_bytes.tolist()
        router = Op("router", "router", "compute", (t_router,) * group)
        if p.tp > 1:
            ops = [fuse(attention), Op("tp all-reduce", "tp_allreduce", "comm", (t_allreduce,)), router]
        else:
            ops = [fuse(attention + [router])]
        ops += [Op("dispatch", "dispatch", "comm", (t_dispatch,)),
                fuse([Op("experts", "routed_experts", "compute", tuple(per_gpu)),
                      Op("shared experts", "shared_experts", "compute", (t_shared,) * group)]),
                Op("combine", "combine", "comm", (t_combine,))]
        layers.append(ops)
    head_rows = tokens if decode else max(w.batch // microbatches, 1)
    layers[-1] = layers[-1] + [Op("lm head", "lm_head", "compute",
                                  (gemm_time(gpu, prof, head_rows, m.vocab_size // p.tp, d, "bf16"),) * group)]
    info = {"group_gpus": group, "dp_ranks_per_group": ranks, "tokens_per_rank_per_microbatch": tokens,
            "placement": name, "skew": parsed.label(), "dispatch_dtype": dispatch_dtype,
            "efficiency_notes": fabric.efficiency_notes, "details": details}
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


def model_flops_per_token(sc: Scenario, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active parameters (matmuls, forward + backward; LM head in,
    input embedding out) + 3 x the causal attention-score FLOPs (forward + 2x backward), the
    convention of Megatron-LM's MFU (Narayanan et al. 2021) with MoE active parameters."""
    m = sc.model
    core = sum(attention_core_flops(m, (min(t, seq_len) + 1) / 2, absorbed=False) for t in m.kv_tokens_held(seq_len))
    return 6.0 * m.active_params + 3.0 * core


def training_stage_costs(sc: Scenario, w: Training) -> dict:
    """Forward and backward seconds per micro-batch of every pipeline stage, plus the step's
    pipeline transfer, data-parallel gradient sync and optimizer times."""
    m, p = sc.model, sc.plan
    gpu, prof, links = hardware_for(sc)
    dt = sc.input.dtypes
    dtype = dt.weights
    exp_dtype = dt.expert_weights or dt.weights
    d = m.hidden_size
    tokens = w.micro_batch * w.seq_len  # per DP rank per micro-batch
    if w.global_batch % (p.dp * w.micro_batch):
        raise MoesimError(f"global batch {w.global_batch} is not a multiple of dp x micro_batch = "
                          f"{p.dp * w.micro_batch}", field="workload.global_batch",
                          fix=f"use a multiple of {p.dp * w.micro_batch}")
    microbatches = w.global_batch // (p.dp * w.micro_batch)
    peak = gpu.peak_flops(precision.get(dtype).family)
    eff = prof.matmul_efficiency(dtype)
    group = p.ep * p.etp
    fabric = build_fabric(sc.system, max(group, 2), links)
    domain = min(sc.system.domain_gpus, group)
    # balanced routing (the validation cases run force-balanced, dropless MoE): equal tokens per slot
    group_tokens = tokens * max(group // p.tp, 1)
    slots = (m.moe.num_experts + sc.input.experts.redundant) // p.ep
    per_slot = group_tokens * m.moe.num_experts_per_tok / (m.moe.num_experts + sc.input.experts.redundant)
    inter = m.moe.moe_intermediate_size // p.etp
    t_experts = grouped_gemm_time(gpu, prof, np.full(slots, per_slot), 2 * inter, d, exp_dtype) + \
        grouped_gemm_time(gpu, prof, np.full(slots, per_slot), d, inter, exp_dtype)
    dense = dense_op_times(sc, gpu, prof, tokens, group, dtype=dtype, attention_dtype=dt.attention_weights or dtype,
                           links=links)
    t_attn_proj, t_router, t_shared = dense["attention_proj"], dense["router"], dense["shared"]
    t_dense, t_tp = dense["dense"], dense["tp_allreduce"]
    held = m.kv_tokens_held(w.seq_len)
    if group > 1:
        sample = sample_routing(m, parse_skew("uniform"), group_tokens, seed=sc.input.seed, layers=[0],
                                nodes=max(group // domain, 1))
        place = PLACEMENTS["contiguous"](np.ones(m.moe.num_experts), p.ep, 0, domain) \
            if not sc.input.experts.redundant else PLACEMENTS["eplb"](np.ones(m.moe.num_experts), p.ep,
                                                                      sc.input.experts.redundant, domain)
        traffic = ep_traffic(sample.choices[0], token_source_gpus(group_tokens, p.ep), place, gpus_per_node=domain,
                             hidden=d, dispatch_dtype="fp8" if precision.get(dtype).family in ("fp8", "fp4") else "bf16")
        t_dispatch, t_combine = ep_comm_times(fabric, traffic, domain)
    else:
        t_dispatch = t_combine = 0.0
    moe = set(m.moe_layer_indices)
    recompute = {"none": 0.0, "selective": 0.0, "full": 1.0}[w.recompute]
    forward, backward = [], []
    ranges = stage_layers(m.num_hidden_layers, p.pp)
    for s, layers in enumerate(ranges):
        f_compute = f_comm = core_total = 0.0
        for i in layers:
            core = tokens * attention_core_flops(m, (min(held[i], w.seq_len) + 1) / 2, absorbed=False) / p.tp
            t_core = core / (peak * eff)
            core_total += t_core
            f_compute += t_attn_proj + t_core + elementwise_time(sc, gpu, prof, tokens, moe_layer=i in moe)
            f_comm += 2 * t_tp
            if i in moe:
                f_compute += t_router + t_experts + t_shared
                f_comm += t_dispatch + t_combine
            else:
                f_compute += t_dense
        if s == len(ranges) - 1:
            f_compute += gemm_time(gpu, prof, tokens, m.vocab_size // p.tp, d, "bf16")
        selective = core_total if w.recompute == "selective" else 0.0
        forward.append(f_compute + f_comm)
        backward.append(2 * f_compute + recompute * f_compute + selective + f_comm)
    # pipeline transfer of one micro-batch's activations (BF16, split by TP) between stages
    p2p = collective_time(sc.system, 2 * sc.system.domain_gpus, "send_recv", tokens * d * 2 / p.tp,
                          participants=[0, sc.system.domain_gpus], link_overrides=links).time_s if p.pp > 1 else 0.0
    # gradient sync (ZeRO-1: reduce-scatter of BF16 gradients + all-gather of BF16 parameters),
    # dense over dp ranks, experts over expert-dp ranks, each through one NIC per GPU (ring bound)
    ledger = memory_ledger(sc)
    params = ledger.weight_params_per_gpu
    # the fullest stage's parameters (the ledger's binding stage) set the sync volume
    expert_params = sum(slots * m.routed_expert_params / p.etp for i in ranges[ledger.binding_stage] if i in moe)
    nic = sc.system.spec.scale_out
    nic_Bps = (nic.nic_effective_GBps.value if nic.nic_effective_GBps else nic.nic_Gbps.value / 8) * units.GBps \
        * nic.nics_per_gpu.value
    def ring(nbytes: float, ranks: int) -> float:
        return 0.0 if ranks <= 1 else 2 * 2 * nbytes * (ranks - 1) / ranks / nic_Bps
    t_dp = ring(params - expert_params, p.dp) + ring(expert_params, p.edp)
    states = (params - expert_params) / max(p.dp, 1) + expert_params / max(p.edp, 1)
    t_opt = memory_bound_time(gpu, prof, states * (12 * 2 + 4 + 2))
    return {"forward_s": forward, "backward_s": backward, "microbatches": microbatches, "p2p_s": p2p,
            "dp_sync_s": t_dp, "optimizer_s": t_opt, "dispatch_s": t_dispatch, "combine_s": t_combine,
            "tokens_per_microbatch": tokens}


def simulate_training(sc: Scenario, w: Training, *, trace: bool) -> dict:
    wall = time.perf_counter()
    costs = training_stage_costs(sc, w)
    result = run_pipeline(costs["forward_s"], costs["backward_s"], costs["microbatches"], costs["p2p_s"])
    # Megatron overlaps the gradient reduce with the last backward of each stage and the
    # parameter gather with the next step's first forward: only the excess is exposed
    exposed_dp = max(0.0, costs["dp_sync_s"] - max(costs["backward_s"]) - max(costs["forward_s"]))
    step = result.makespan_s + exposed_dp + costs["optimizer_s"]
    tokens = w.global_batch * w.seq_len
    flops = model_flops_per_token(sc, w.seq_len) * tokens
    peak = sc.system.gpu.peak_flops(precision.get(sc.input.dtypes.weights).family)
    per_gpu_flops = flops / step / sc.gpus
    ideal = sum(costs["forward_s"]) + sum(costs["backward_s"])
    metrics = {"step_time_s": step, "tokens_per_s_per_gpu": tokens / step / sc.gpus,
               "tflops_per_gpu": per_gpu_flops / 1e12, "mfu": per_gpu_flops / peak,
               "pipeline_bubble_fraction": 1 - costs["microbatches"] * ideal / len(costs["forward_s"]) / result.makespan_s}
    stage0 = {"forward_s": costs["forward_s"][0], "backward_s": costs["backward_s"][0]}
    out = {"scenario": sc.input.name, "model": sc.model.id, "system": sc.system.id, "gpus": sc.gpus,
           "parallel": sc.plan.model_dump(), "phase": "training", "overlap": "1f1b", "seed": sc.input.seed,
           "metrics": metrics,
           "breakdown": {"pipeline": {"compute_s": result.makespan_s, "comm_s": 0.0, "exposed_comm_s": 0.0,
                                      "idle_s": 0.0},
                         "ep_all_to_all_per_layer": {"compute_s": 0.0,
                                                     "comm_s": costs["dispatch_s"] + costs["combine_s"],
                                                     "exposed_comm_s": costs["dispatch_s"] + costs["combine_s"],
                                                     "idle_s": 0.0},
                         "dp_gradient_sync": {"compute_s": 0.0, "comm_s": costs["dp_sync_s"],
                                              "exposed_comm_s": exposed_dp, "idle_s": 0.0},
                         "optimizer": {"compute_s": costs["optimizer_s"], "comm_s": 0.0, "exposed_comm_s": 0.0,
                                       "idle_s": 0.0}},
           "memory": memory_ledger(sc).to_json(),
           "simulation": {"microbatches": costs["microbatches"], "stage0_per_microbatch": stage0,
                          "p2p_s": costs["p2p_s"], "flop_convention": "6 x active params + 3 x causal attention scores",
                          "engine_events": len(result.events), "wall_s": time.perf_counter() - wall}}
    out["uncertainty"] = metric_bands(sc, metrics, "training")
    # the pipeline schedule is the step's timeline: one row per stage (its GPUs are symmetric)
    out["details"] = {"timeline": layer_timeline(result.events, -1, unit="stage")}
    out["provenance"] = provenance(sc)
    if trace:
        out["_trace"] = chrome_trace(result, name=sc.input.name)
    return out


def metric_bands(sc: Scenario, metrics: dict, kind: str) -> dict:
    """Error bars of the headline metrics (moesim.calibration.uncertainty), with what they rest on."""
    from moesim.calibration.uncertainty import bands, load_residuals
    rms = 0.0
    if calibration_name(sc):
        from moesim.calibration.fit import load_calibration, profile_rms
        rms = profile_rms(load_calibration(calibration_name(sc)))
    return bands(metrics, kind, calibration_rms=rms, residuals=load_residuals())


def simulate(sc: Scenario, *, overlap: str = "none", skew: str = "uniform", placement: Optional[str] = None,
             trace: bool = False) -> dict:
    """Simulate one step of the scenario and return the Result (plain data)."""
    if overlap not in OVERLAPS:
        raise MoesimError(f"unknown overlap {overlap!r}", field="overlap", fix=f"use one of: {', '.join(OVERLAPS)}")
    w = sc.input.workload
    if isinstance(w, Training):
        return simulate_training(sc, w, trace=trace)
    wall = time.perf_counter()
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
    out["uncertainty"] = metric_bands(sc, metrics, "serving")
    timeline_layer = details["moe_layers"][0] if details["moe_layers"] else 0
    out["details"] = dict(details, timeline=layer_timeline(result.events, timeline_layer))
    out["provenance"] = provenance(sc)
    if trace:
        out["_trace"] = chrome_trace(result, name=sc.input.name)
    return out


def layer_timeline(events, layer: int, *, unit: str = "gpu") -> dict:
    """Every GPU's compute and comm spans of one layer, times from the layer's first start:
    what a report draws as the per-GPU timeline (the whole step is in --trace). Layer -1 is the
    training pipeline, whose rows are stages."""
    mine = [e for e in events if e.layer == layer]
    t0 = min((e.start_s for e in mine), default=0.0)
    return {"layer": layer, "rows": unit,
            "columns": [unit, "stream", "op_class", "name", "microbatch", "start_s", "end_s"],
            "spans": [[e.gpu, e.stream, e.op_class, e.name, e.microbatch, e.start_s - t0, e.end_s - t0]
                      for e in mine]}


def provenance(sc: Scenario) -> dict:
    """What a reader needs to reproduce the numbers: code version and the data behind them."""
    from moesim.core.result import code_version
    profile = calibration_name(sc) or None
    return {"code": code_version(), "scenario": sc.input.name, "calibration_profile": profile,
            "rates": f"calibrated: {profile}" if profile
            else "spec rates x efficiencies of topologies/compute and the system's published microbenchmarks"}


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
