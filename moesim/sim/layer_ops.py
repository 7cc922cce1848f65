"""Op times of one serving step for the engine: attention and dense GEMMs, element-wise kernels,
EP dispatch/combine timed on the topology, and the per-layer op lists with routed expert loads.

Symmetry (why one EP group is enough): every EP group of a stage runs the same ops on its own
tokens, so with `edp` replicas the cluster's per-GPU metrics equal one group's. Inside the group
every GPU is simulated: their expert loads differ, and the slowest one sets each layer's pace.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from moesim.cluster.scenario import Scenario, Serving
from moesim.core.errors import MoesimError
from moesim.costs.collective_kernels import kernel_seconds
from moesim.costs.collectives import build_fabric, collective_time
from moesim.costs.compute import gemm_time, grouped_gemm_times_per_owner, memory_bound_time
from moesim.costs.exchange import moe_exchange
from moesim.costs.memory import kv_share_per_gpu
from moesim.costs.placement import PLACEMENTS
from moesim.costs.routing import parse_skew, sample_routing
from moesim.costs.traffic import ep_traffic, token_source_gpus
from moesim.sim.engine import Op, fuse
from moesim.sim.provenance import hardware_for, kernel_profile, kernel_values_key
from moesim.specs import precision
from moesim.specs.opcosts import attention_core_flops, attention_kv_elements_read


def ep_comm_times(sc: Scenario, fabric, traffic, domain: int, *, host_sync: bool) -> tuple[float, float]:
    """Seconds of dispatch and combine: the EP kernel model (`costs.ep_kernels`) with the
    scenario's kernel profile."""
    from moesim.costs.ep_kernels import step_exchange_times
    return step_exchange_times(fabric, traffic, domain, sc.system.gpu.arch.value, kernel_profile(sc).values(),
                               host_sync=host_sync)


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
    by_params: dict[int, float] = {}  # layers with the same token mixer share one GEMM time
    for params in {m.layer_attention_params(i) for i in range(m.num_hidden_layers)}:
        by_params[params] = gemm_time(gpu, prof, tokens, int(params / (d * p.tp)), d, attention_dtype)
    return {"attention_proj": gemm_time(gpu, prof, tokens, int(m.attention_params / (d * p.tp)), d, attention_dtype),
            # per layer: a linear-attention or sparse-attention layer has its own projections
            "attention_proj_layers": [by_params[m.layer_attention_params(i)] for i in range(m.num_hidden_layers)],
            "router": gemm_time(gpu, prof, tokens, m.moe.num_experts, d, "bf16"),
            "shared": ffn(shared_i, dtype),
            "dense": ffn((m.layers.dense_intermediate_size or 0) // p.tp, dtype),
            "tp_allreduce": tp_allreduce_time(sc, tokens * d * 2, links) if p.tp > 1 else 0.0}


def tp_allreduce_time(sc: Scenario, size: float, links: tuple) -> float:
    """The TP group's all-reduce (inside one NVLink domain): the collective kernel model with the
    scenario's kernel profile; with a microbenchmark profile's measured links, the topology model
    at those rates instead (a measurement of this cluster beats a fit across published ones)."""
    p = sc.plan
    if links:
        return collective_time(sc.system, max(p.tp, 2), "all_reduce", size, participants=list(range(p.tp)),
                               link_overrides=links).time_s
    return kernel_seconds(sc.system, p.tp, "all_reduce", size, kernel_profile(sc).values())[0]


ACTIVATION_BYTES = 2   # BF16 hidden states: what the all-gather moves and the reduce-scatter sums


def gather_exchange_times(sc: Scenario, gathered_bytes: float) -> tuple[float, float]:
    """Seconds of the all-gather / reduce-scatter exchange (`Runtime.ep_exchange`): every GPU of the
    EP group gathers all of the group's tokens (`gathered_bytes`, the whole gathered buffer, as
    nccl-tests sizes it), runs its local experts on the tokens routed to them, and the partial
    outputs are reduce-scattered back to their ranks - NCCL collectives on the collective kernel
    model, whatever the routing."""
    group = sc.plan.ep * sc.plan.etp
    values = kernel_profile(sc).values()
    gather = kernel_seconds(sc.system, group, "all_gather", gathered_bytes, values)[0]
    scatter = kernel_seconds(sc.system, group, "reduce_scatter", gathered_bytes, values)[0]
    return gather, scatter


def serving_tokens_per_rank(w: Serving) -> int:
    return w.batch if w.phase == "decode" else (w.prefill_chunk_tokens or w.batch * w.input_len)


def check_simulatable(sc: Scenario) -> None:
    """Raise for a valid split the engine cannot simulate yet (an EP group smaller than a TP group:
    Megatron allows it, the serving engine's per-group model does not)."""
    p = sc.plan
    if (p.ep * p.etp) % p.tp:
        raise MoesimError(f"EP group of {p.ep * p.etp} GPUs does not hold whole TP groups of {p.tp}",
                          field="parallel.ep", fix="make ep x etp a multiple of tp")


def slot_token_counts(place, choice: np.ndarray, expert_load: np.ndarray) -> np.ndarray:
    """Tokens per expert slot: each (token, expert) pair goes to replica token % replicas. With one
    slot per expert (no replicas) that is the expert's own count, read off the sample's loads
    instead of a pass over every pair (the same integers, so the same floats)."""
    ptr, slots = place.expert_slot_ptr, place.expert_slots
    if len(slots) == len(ptr) - 1 and np.all(np.diff(ptr) == 1):
        out = np.zeros(len(place.slot_expert), dtype=np.int64)
        out[slots[ptr[:-1]]] = expert_load
        return out.astype(float)
    rows = np.repeat(np.arange(len(choice)), choice.shape[1])
    experts = choice.ravel()
    reps = ptr[experts + 1] - ptr[experts]
    return np.bincount(slots[ptr[experts] + rows % reps], minlength=len(place.slot_expert)).astype(float)


def serving_layers(sc: Scenario, *, microbatches: int, skew: str, placement: Optional[str],
                   routed_cache: Optional[dict] = None) -> tuple[list, int, dict]:
    """Per-layer op lists for one micro-batch of a serving step of one EP group. `routed_cache`: a
    dict the caller keeps, in which the routed-expert part of a step (`_routed_parts`: routing
    sample, dispatch/combine and expert times, which do not depend on the context length) is kept
    by what it depends on, so steps of other context lengths reuse it (the step-time grid,
    `serve.step_function`); the `details` of a reused part are the ones it was made with. Only
    for a skew that names no file (whose bytes could change between calls)."""
    m, p, w = sc.model, sc.plan, sc.input.workload
    gpu, prof, links = hardware_for(sc)
    dt = sc.input.dtypes
    w_dtype = dt.weights
    att_dtype = dt.attention_weights or dt.weights
    check_simulatable(sc)
    group = p.ep * p.etp
    tokens = max(serving_tokens_per_rank(w) // microbatches, 1)
    parsed = parse_skew(skew, field="skew")
    decode = w.phase == "decode"
    ctx = w.context_len if decode else w.input_len
    held = m.kv_tokens_held(ctx)
    kv_bytes = precision.bytes_per_element(dt.kv_cache) * kv_share_per_gpu(m, p.tp)

    dense = dense_op_times(sc, gpu, prof, tokens, group, dtype=w_dtype, attention_dtype=att_dtype, links=links)
    t_router, t_shared, t_proj = dense["router"], dense["shared"], dense["attention_proj_layers"]
    t_dense, t_allreduce = dense["dense"], dense["tp_allreduce"]
    peak = gpu.peak_flops(precision.get("bf16").family)

    def attention_core(layer: int) -> float:
        """Per layer kind (opcosts): a full or windowed layer reads its held KV, a sparse layer the
        indexer keys and at most top-k latents, a linear layer its fixed state."""
        linear = m.attention_kind(layer) == "linear"
        if decode:
            kv = tokens * attention_kv_elements_read(m, layer, held[layer]) * kv_bytes
            flops = tokens * attention_core_flops(m, held[layer], absorbed=True, layer=layer) / p.tp
        else:
            kv = 0.0 if linear else tokens * m.kv_elements_per_token_per_layer * kv_bytes
            flops = tokens * attention_core_flops(m, (min(held[layer], ctx) + 1) / 2, absorbed=False, layer=layer) / p.tp
        return max(memory_bound_time(gpu, prof, kv), flops / (peak * prof.matmul_efficiency("bf16")))

    moe_index = {layer: i for i, layer in enumerate(m.moe_layer_indices)}
    if routed_cache is None or parsed.kind in ("file", "trace"):
        routed, details, fabric, name, dispatch_dtype = _routed_parts(sc, tokens, parsed, placement)
    else:
        key = (_without_lengths(sc).model_dump_json(), kernel_values_key(sc), tokens, skew, placement)
        if key not in routed_cache:
            if len(routed_cache) >= ROUTED_KEPT:
                routed_cache.clear()
            routed_cache[key] = _routed_parts(sc, tokens, parsed, placement)
        routed, details, fabric, name, dispatch_dtype = routed_cache[key]
        details = dict(details, **{k: list(details[k]) for k in ("moe_layers", "expert_load", "gpu_load")})
    routed = iter(routed)
    exchange = moe_exchange(sc)
    layers = []
    for layer in range(m.num_hidden_layers):
        attention = [Op("attention", "attention", "compute",
                        (t_proj[layer] + attention_core(layer),) * group),
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
        t_dispatch, t_combine, per_gpu = next(routed)
        router = Op("router", "router", "compute", (t_router,) * group)
        if p.tp > 1:
            ops = [fuse(attention), Op("tp all-reduce", "tp_allreduce", "comm", (t_allreduce,)), router]
        else:
            ops = [fuse(attention + [router])]
        experts = fuse([Op("experts", "routed_experts", "compute", per_gpu),
                        Op("shared experts", "shared_experts", "compute", (t_shared,) * group)])
        if exchange == "replicated":
            if p.tp > 1:
                ops += [experts, Op("moe all-reduce", "tp_allreduce", "comm", (t_allreduce,))]
            else:
                ops[-1] = fuse([ops[-1], experts])
        else:
            ops += [Op("dispatch", "dispatch", "comm", (t_dispatch,)), experts,
                    Op("combine", "combine", "comm", (t_combine,))]
        layers.append(ops)
    head_rows = tokens if decode else max(w.batch // microbatches, 1)
    head = gemm_time(gpu, prof, head_rows, m.vocab_size // p.tp, m.hidden_size, "bf16")
    layers[-1] = layers[-1] + [Op("lm head", "lm_head", "compute", (head,) * group)]
    info = {"group_gpus": group, "dp_ranks_per_group": group // p.tp, "tokens_per_rank_per_microbatch": tokens,
            "placement": name, "skew": parsed.label(), "dispatch_dtype": dispatch_dtype,
            "efficiency_notes": fabric.efficiency_notes, "details": details}
    return layers, group, info


# Routed-expert parts a `routed_cache` keeps (`serving_layers`): enough for a deployment's step grid.
ROUTED_KEPT = 32


def _without_lengths(sc: Scenario) -> Scenario:
    """The scenario with its serving workload's batch and lengths set to fixed values (the phase
    kept): what the routed-expert part of a step depends on besides its tokens per rank."""
    workload = Serving(kind="serving", phase=sc.input.workload.phase, batch=1, input_len=1, output_len=1)
    return sc.model_copy(update={"input": sc.input.model_copy(update={"workload": workload})})


def _routed_parts(sc: Scenario, tokens: int, parsed, placement: Optional[str]) -> tuple:
    """The routed-expert part of a serving step of `tokens` tokens per rank: per MoE layer in
    layer order (dispatch seconds, combine seconds, routed experts' seconds per GPU), the
    `details` of the step's routing, the group's fabric, the placement's name and the dispatch
    dtype. It depends on the scenario and the phase, not on the context length."""
    m, p, w = sc.model, sc.plan, sc.input.workload
    gpu, prof, links = hardware_for(sc)
    exp_dtype = sc.input.dtypes.expert_weights or sc.input.dtypes.weights
    group = p.ep * p.etp
    group_tokens = tokens * (group // p.tp)
    d = m.hidden_size
    fabric = build_fabric(sc.system, group, links)
    domain = min(sc.system.domain_gpus, group)
    redundant = sc.input.experts.redundant
    name = placement or ("eplb" if redundant else "contiguous")
    moe_index = {layer: i for i, layer in enumerate(m.moe_layer_indices)}
    sample_layers = sorted(moe_index.values())
    sample = sample_routing(m, parsed, group_tokens, seed=sc.input.seed, layers=sample_layers,
                            nodes=max(group // domain, 1), field="skew")
    history = sample_routing(m, parsed, group_tokens, seed=sc.input.seed, layers=sample_layers, batch=1,
                             nodes=max(group // domain, 1), field="skew") if name == "eplb" else sample
    token_gpu = token_source_gpus(group_tokens, p.ep)
    inter = m.moe.moe_intermediate_size // p.etp
    dispatch_dtype = "fp8" if precision.get(exp_dtype).family in ("fp8", "fp4") else "bf16"
    exchange = moe_exchange(sc)
    gathered = gather_exchange_times(sc, group_tokens * d * ACTIVATION_BYTES) \
        if exchange == "allgather_reducescatter" else None
    routed = []
    details: dict = {"moe_layers": [], "expert_load": [], "gpu_load": [], "traffic_layer": None,
                     "dispatch_bytes": None, "gpus_per_node": domain}
    for layer in sorted(moe_index):
        i = sample_layers.index(moe_index[layer])
        place = PLACEMENTS[name](history.expert_load[i].astype(float), p.ep, redundant, domain)
        traffic = None
        if exchange == "all_to_all":   # only an all-to-all moves tokens by where their experts are
            traffic = ep_traffic(sample.choices[i], token_gpu, place, gpus_per_node=domain, hidden=d,
                                 dispatch_dtype=dispatch_dtype)
            t_dispatch, t_combine = ep_comm_times(sc, fabric, traffic, domain, host_sync=w.phase == "prefill")
        elif exchange == "allgather_reducescatter":
            t_dispatch, t_combine = gathered
        else:
            t_dispatch, t_combine = 0.0, 0.0
        # per-slot token counts: each (token, expert) pair goes to replica token % replicas
        slot_tokens = slot_token_counts(place, sample.choices[i], sample.expert_load[i])
        per_rank = grouped_gemm_times_per_owner(gpu, prof, slot_tokens, place.slot_gpu, p.ep, 2 * inter, d, exp_dtype) \
            + grouped_gemm_times_per_owner(gpu, prof, slot_tokens, place.slot_gpu, p.ep, d, inter, exp_dtype)
        routed.append((t_dispatch, t_combine, tuple(np.repeat(per_rank, p.etp).tolist())))
        details["moe_layers"].append(layer)
        details["expert_load"].append(sample.expert_load[i].astype(np.int64).tolist())
        details["gpu_load"].append(np.bincount(place.slot_gpu, weights=slot_tokens, minlength=p.ep).tolist())
        if traffic is not None and details["dispatch_bytes"] is None:
            details["traffic_layer"], details["dispatch_bytes"] = layer, traffic.dispatch_bytes.tolist()
    return routed, details, fabric, name, dispatch_dtype
