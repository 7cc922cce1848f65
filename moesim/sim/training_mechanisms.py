"""Training steps as Megatron-Core runs them: the engine's step plus what the framework spends around it.

The engine (`sim/training_step`) prices every GEMM with the compute model (kernel fit applied),
the attention core at the GEMM dtype's tensor-core rate, the element-wise work as one roofline
pass, and EP all-to-all with the EP kernel model; the 1F1B engine then schedules the stages.
Measured Megatron-Core steps of fine-grained MoE models run 2-3x slower than that. This module
splits every pipeline stage's simulated micro-batch into its parts (recomputed from the same
cost functions the engine calls, and checked against its stage times) and rebuilds the step with
the named parameters of `topologies/kernels/training.yaml`:

    stage  = 3 G / e_gemm[arch]                   GEMMs (forward + 2x backward)
           + 3.5 F_attn / (P_bf16 x e_attn)        attention core in BF16 (FlashAttention; bwd 2.5x fwd)
           + 3 E                                   element-wise roofline, as simulated
           + R x PERMUTE_BYTES / B_hbm             token (un)permutation passes over routed rows (fixed count)
           + N_kern x t_launch                     host time of kernels launched without CUDA graphs
           + 2 C x a2a_exposed                     TP all-reduce, EP dispatch/combine (fwd + bwd)
    step   = n_slots x max(stage) + exposed DP sync + optimizer

`n_slots` (= simulated pipeline makespan / simulated slowest stage) carries the 1F1B schedule of
the simulator over to the rebuilt stages, its bubble divided by the interleaving degree `vpp`. A
DualPipe schedule (DeepSeek-V3 report) overlaps the all-to-all with compute, so there the stage is
max(compute, communication). Full recompute adds a forward pass, selective one the attention core.
Grouped-GEMM padding is left out: the open cases run force-balanced routing, so every expert gets
the same (large) row count and the simulator's tile quantisation already prices the tail tiles.

`moesim simulate` reports this step (the engine's own makespan stays in the breakdown); the
validation targets of training cases evaluate the same `step_model` with trial parameter values.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

# FlashAttention backward runs 5 matmuls to the forward's 2 (Dao, FlashAttention-2, arXiv:2307.08691 Sec. 3.1)
ATTENTION_BWD_OVER_FWD = 2.5

# Kernels Megatron-Core (TransformerEngine modules, fused permute, alltoall/flex dispatcher) launches
# per layer and micro-batch, forward + backward, counted from the module structure of one layer:
#   layer: 2 norms, QKV + out projection (with FP8 casts), RoPE, attention, 2 residual adds,
#          optimizer-side none; backward twice the forward kernels.
#   moe:   router GEMM, softmax/sigmoid, top-k, aux/score bookkeeping, permute + unpermute, the
#          two chunk sorts around the all-to-all, the all-to-all itself, activation.
#   expert: per local expert, TE GroupedLinear runs one GEMM (plus its input cast) per expert for
#          fc1 and fc2; backward dgrad + wgrad.
# The count sets only the relative weight of layer, MoE and per-expert launches; their scale is the
# fitted `training.launch_us` (a count and a per-kernel time cannot both be fitted).
KERNELS = {"layer": 60, "moe": 80, "expert": 18}
# HBM bytes per routed token-row element per MoE layer and micro-batch (forward + backward) beyond the
# one pass the element-wise roofline counts. Counted from Megatron-Core moe_utils.py (permute,
# sort_chunks_by_idxs before and after the experts, unpermute): 4 passes, each reading and writing a
# BF16 routed row (4 x 4 B) in the forward, the same in the backward (32 B), minus the 12 B the
# roofline already holds (one read + write per pass, x3 for forward + backward). A count, not fitted:
# with 8 cases it is not separable from the launch time (both grow with routed tokens per layer).
PERMUTE_BYTES = 20.0


@dataclass(frozen=True)
class Stage:
    """One pipeline stage's forward pass of one micro-batch, split by mechanism (seconds, FLOPs, elements)."""

    gemm_s: float
    attention_flops: float
    attention_sim_s: float
    elementwise_s: float
    comm_s: float
    routed_elements: float
    kernels: float

    @property
    def simulated_s(self) -> float:
        """The simulator's forward time of this stage (its parts summed)."""
        return self.gemm_s + self.attention_sim_s + self.elementwise_s + self.comm_s

    def simulated_pass_s(self, recompute: str) -> float:
        """The simulator's forward + backward time (backward: 2x compute, recompute, comm again)."""
        compute = self.simulated_s - self.comm_s
        extra = compute if recompute == "full" else self.attention_sim_s if recompute == "selective" else 0.0
        return 3 * compute + extra + 2 * self.comm_s


def pipeline_slots(makespan_s: float, slowest_s: float, microbatches: int, vpp: int) -> float:
    """Stage-times per step: the simulator's 1F1B makespan over its slowest stage (microbatches +
    the warm-up/drain bubble), with the bubble cut by the interleaving degree `vpp` (Megatron's
    interleaved schedule: bubble (p-1)/(v m), Narayanan et al. 2021, arXiv:2104.04473 Sec. 2.2)."""
    slots = makespan_s / slowest_s
    return microbatches + max(slots - microbatches, 0.0) / max(vpp, 1)


def stage_parts(sc, a2a_per_moe_layer_s: float) -> list[Stage]:
    """Per stage, the simulator's forward micro-batch cost split by mechanism (same cost calls as
    `sim/training_step.training_stage_costs`; their sum is the simulated stage forward time)."""
    import numpy as np

    from moesim.costs.compute import gemm_time, grouped_gemm_time
    from moesim.sim.layer_ops import dense_op_times, elementwise_time
    from moesim.sim.provenance import hardware_for
    from moesim.specs import precision
    from moesim.specs.opcosts import attention_core_flops
    from moesim.specs.parallelism import stage_layers

    m, p, w = sc.model, sc.plan, sc.input.workload
    gpu, prof, links = hardware_for(sc)
    dt = sc.input.dtypes
    dtype, exp_dtype = dt.weights, dt.expert_weights or dt.weights
    d, tokens, group = m.hidden_size, w.micro_batch * w.seq_len, p.ep * p.etp
    slots = (m.moe.num_experts + sc.input.experts.redundant) // p.ep
    per_slot = tokens * max(group // p.tp, 1) * m.moe.num_experts_per_tok / (m.moe.num_experts + sc.input.experts.redundant)
    inter = m.moe.moe_intermediate_size // p.etp
    experts = grouped_gemm_time(gpu, prof, np.full(slots, per_slot), 2 * inter, d, exp_dtype) + \
        grouped_gemm_time(gpu, prof, np.full(slots, per_slot), d, inter, exp_dtype)
    dense = dense_op_times(sc, gpu, prof, tokens, group, dtype=dtype, attention_dtype=dt.attention_weights or dtype,
                           links=links)
    rate = gpu.peak_flops(precision.get(dtype).family) * prof.matmul_efficiency(dtype)
    held = m.kv_tokens_held(w.seq_len)
    moe = set(m.moe_layer_indices)
    ranges = stage_layers(m.num_hidden_layers, p.pp)
    routed_per_layer = tokens * m.moe.num_experts_per_tok * d / p.tp  # routed rows x hidden, per GPU
    out = []
    for s, layers in enumerate(ranges):
        gemm = flops = elem = comm = routed = kernels = 0.0
        for i in layers:
            flops += tokens * attention_core_flops(m, (min(held[i], w.seq_len) + 1) / 2, absorbed=False, layer=i) / p.tp
            elem += elementwise_time(sc, gpu, prof, tokens, moe_layer=i in moe)
            gemm += dense["attention_proj_layers"][i]
            comm += 2 * dense["tp_allreduce"]
            kernels += KERNELS["layer"]
            if i in moe:
                gemm += dense["router"] + experts + dense["shared"]
                comm += a2a_per_moe_layer_s
                routed += routed_per_layer
                kernels += KERNELS["moe"] + KERNELS["expert"] * slots
            else:
                gemm += dense["dense"]
        if s == len(ranges) - 1:
            gemm += gemm_time(gpu, prof, tokens, m.vocab_size // p.tp, d, "bf16")
        out.append(Stage(gemm_s=gemm, attention_flops=flops, attention_sim_s=flops / rate, elementwise_s=elem,
                         comm_s=comm, routed_elements=routed, kernels=kernels))
    return out


def step_model(sc, *, makespan_s: float, fixed_s: float, microbatches: int, a2a_per_moe_layer_s: float,
               vpp: int = 1, dualpipe: bool = False) -> Callable[[Mapping[str, float]], float]:
    """Seconds of one training step as a function of the training.* parameter values. The engine's
    makespan sets the pipeline slots; `fixed_s` is the exposed DP sync plus the optimizer."""
    from moesim.costs.compute import hbm_effective_Bps
    from moesim.sim.provenance import hardware_for

    stages = stage_parts(sc, a2a_per_moe_layer_s)
    w = sc.input.workload
    n_slots = pipeline_slots(makespan_s, max(s.simulated_pass_s(w.recompute) for s in stages), microbatches, vpp)
    gpu, prof, _ = hardware_for(sc)
    arch, bf16, hbm = gpu.arch.value, gpu.peak_flops("bf16"), hbm_effective_Bps(gpu, prof)
    passes = 4 if w.recompute == "full" else 3  # forward, backward (2x), recomputed forward
    attn_passes = 1 + ATTENTION_BWD_OVER_FWD + (1 if w.recompute in ("full", "selective") else 0)

    def stage_time(s: Stage, v: Mapping[str, float]) -> float:
        compute = (passes * s.gemm_s / v[f"training.gemm_efficiency.{arch}"]
                   + attn_passes * s.attention_flops / (bf16 * v["training.attention_efficiency"])
                   + passes * s.elementwise_s
                   + passes / 3 * s.routed_elements * PERMUTE_BYTES / hbm
                   + passes / 3 * s.kernels * v["training.launch_us"] * 1e-6)
        comm = 2 * s.comm_s * v["training.a2a_exposed"]
        return max(compute, comm) if dualpipe else compute + comm

    def step(v: Mapping[str, float]) -> float:
        return n_slots * max(stage_time(s, v) for s in stages) + fixed_s
    return step
