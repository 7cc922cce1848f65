"""One training step: per-stage forward/backward costs, the 1F1B pipeline in the engine, MFU."""
from __future__ import annotations

import numpy as np

from moesim.cluster.scenario import Scenario, Training
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.costs.collectives import build_fabric, collective_time
from moesim.costs.compute import gemm_time, grouped_gemm_time, memory_bound_time
from moesim.costs.memory import memory_ledger
from moesim.costs.placement import PLACEMENTS
from moesim.costs.routing import parse_skew, sample_routing
from moesim.costs.traffic import ep_traffic, token_source_gpus
from moesim.sim.engine import chrome_trace, run_pipeline
from moesim.sim.event_summary import layer_timeline
from moesim.sim.layer_ops import dense_op_times, elementwise_time, ep_comm_times
from moesim.sim.provenance import hardware_for, metric_bands, provenance
from moesim.specs import precision
from moesim.specs.opcosts import attention_core_flops
from moesim.specs.parallelism import stage_layers


def model_flops_per_token(sc: Scenario, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active parameters (matmuls, forward + backward; LM head in,
    input embedding out) + 3 x the causal attention-score FLOPs (forward + 2x backward), the
    convention of Megatron-LM's MFU (Narayanan et al. 2021) with MoE active parameters."""
    m = sc.model
    core = sum(attention_core_flops(m, (min(t, seq_len) + 1) / 2, absorbed=False, layer=i)
               for i, t in enumerate(m.kv_tokens_held(seq_len)))
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
    t_router, t_shared = dense["router"], dense["shared"]
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
        t_dispatch, t_combine = ep_comm_times(sc, fabric, traffic, domain, host_sync=True)
    else:
        t_dispatch = t_combine = 0.0
    moe = set(m.moe_layer_indices)
    recompute = {"none": 0.0, "selective": 0.0, "full": 1.0}[w.recompute]
    forward, backward = [], []
    ranges = stage_layers(m.num_hidden_layers, p.pp)
    for s, layers in enumerate(ranges):
        f_compute = f_comm = core_total = 0.0
        for i in layers:
            core = tokens * attention_core_flops(m, (min(held[i], w.seq_len) + 1) / 2, absorbed=False, layer=i) / p.tp
            t_core = core / (peak * eff)
            core_total += t_core
            f_compute += dense["attention_proj_layers"][i] + t_core + elementwise_time(sc, gpu, prof, tokens, moe_layer=i in moe)
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
    costs = training_stage_costs(sc, w)
    result = run_pipeline(costs["forward_s"], costs["backward_s"], costs["microbatches"], costs["p2p_s"])
    # Megatron overlaps the gradient reduce with the last backward of each stage and the
    # parameter gather with the next step's first forward: only the excess is exposed
    exposed_dp = max(0.0, costs["dp_sync_s"] - max(costs["backward_s"]) - max(costs["forward_s"]))
    engine_step = result.makespan_s + exposed_dp + costs["optimizer_s"]
    # what Megatron-Core spends around the engine's kernels (training_mechanisms, kernel profile)
    from moesim.sim.provenance import kernel_profile
    from moesim.sim.training_mechanisms import step_model
    step = step_model(sc, makespan_s=result.makespan_s, fixed_s=exposed_dp + costs["optimizer_s"],
                      microbatches=costs["microbatches"],
                      a2a_per_moe_layer_s=costs["dispatch_s"] + costs["combine_s"])(kernel_profile(sc).values())
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
           "fleet": sc.system.fleet_label(sc.gpus), "node": {"name": sc.system.node_label, "gpus": sc.system.gpus_per_node},
           "parallel": sc.plan.model_dump(), "phase": "training", "overlap": "1f1b", "seed": sc.input.seed,
           "metrics": metrics,
           "breakdown": {"pipeline": {"compute_s": result.makespan_s, "comm_s": 0.0, "exposed_comm_s": 0.0,
                                      "idle_s": 0.0},
                         "framework_overheads": {"compute_s": step - engine_step, "comm_s": 0.0,
                                                 "exposed_comm_s": 0.0, "idle_s": 0.0},
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
                          "p2p_s": costs["p2p_s"], "engine_step_s": engine_step,
                          "step_model": "engine step rebuilt with the training.* parameters (sim/training_mechanisms)",
                          "flop_convention": "6 x active params + 3 x causal attention scores",
                          "engine_events": len(result.events)}}
    out["uncertainty"] = metric_bands(sc, metrics, "training")
    # the pipeline schedule is the step's timeline: one row per stage (its GPUs are symmetric)
    out["details"] = {"timeline": layer_timeline(result.events, -1, unit="stage")}
    out["provenance"] = provenance(sc)
    if trace:
        out["_trace"] = chrome_trace(result, name=sc.input.name)
    return out
