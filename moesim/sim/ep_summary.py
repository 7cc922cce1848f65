"""`moesim route`: one MoE layer's routing, placement and EP traffic for a scenario, summarised.

Runs the pipeline routing → placement → traffic once for the scenario's EP group and returns
plain data (the JSON contract of `moesim route --json`).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import numpy as np

from moesim.cluster.scenario import Scenario, Serving
from moesim.core.errors import MoesimError
from moesim.costs.collectives import build_fabric
from moesim.costs.ep_kernels import library_rules, step_exchange_times
from moesim.costs.placement import PLACEMENTS, gpu_load, imbalance, parse_placement, replica_bytes
from moesim.costs.routing import parse_skew, sample_routing
from moesim.costs.traffic import ep_traffic, token_source_gpus
from moesim.sim.layer_ops import serving_tokens_per_rank
from moesim.sim.provenance import kernel_profile
from moesim.specs import precision


def default_tokens(sc: Scenario) -> int:
    """Tokens one EP group routes per forward: each DP rank's batch (decode) or prompt chunk."""
    w = sc.input.workload
    if isinstance(w, Serving):
        per_rank = serving_tokens_per_rank(w)
    else:
        per_rank = w.micro_batch * w.seq_len
    ranks_per_group = max(sc.plan.dp // sc.plan.edp, 1)
    return per_rank * ranks_per_group


def planning_load(sc: Scenario, skew, tokens: int, layer: int, node_limit: Optional[int], nodes: int,
                  sample) -> np.ndarray:
    """The expert load EPLB plans with: the measured load of the previous batch, as EPLB does in
    production, never the batch it is evaluated on (a trace is its own history)."""
    if skew.kind == "trace":
        return sample.expert_load[0].astype(np.float64)
    history = sample_routing(sc.model, skew, tokens, seed=sc.input.seed, layers=[layer], batch=1,
                             node_limit=node_limit, nodes=nodes, field="skew")
    return history.expert_load[0].astype(np.float64)


def route_summary(sc: Scenario, *, skew: str = "uniform", placement: Optional[str] = None,
                  tokens: Optional[int] = None, layer: int = 0, node_limit: Optional[int] = None,
                  capacity_factor: Optional[float] = None, dispatch_dtype: str = "fp8") -> dict:
    model, plan = sc.model, sc.plan
    redundant = sc.input.experts.redundant
    name, redundant = parse_placement(placement or ("eplb" if redundant else "contiguous"), redundant)
    if not 0 <= layer < model.num_moe_layers:
        raise MoesimError(f"MoE layer {layer} out of range", field="layer",
                          fix=f"use 0..{model.num_moe_layers - 1}")
    n_gpus = plan.ep
    if (model.moe.num_experts + redundant) % n_gpus:
        raise MoesimError(f"{model.moe.num_experts} experts + {redundant} redundant do not divide over ep {n_gpus}",
                          field="placement", fix="choose R so that experts + R is a multiple of ep")
    domain = min(sc.system.domain_gpus, n_gpus)
    nodes = max(n_gpus // domain, 1)
    tokens = default_tokens(sc) if tokens is None else tokens
    parsed = parse_skew(skew, field="skew")
    sample = sample_routing(model, parsed, tokens, seed=sc.input.seed, layers=[layer], node_limit=node_limit,
                            nodes=nodes, capacity_factor=capacity_factor, field="skew")
    place = PLACEMENTS[name](planning_load(sc, parsed, tokens, layer, node_limit, nodes, sample),
                             n_gpus, redundant, domain)
    load = sample.expert_load[0].astype(np.float64)
    per_gpu = gpu_load(place, load)
    choices = sample.choices[0] if sample.kept is None else np.where(sample.kept[0], sample.choices[0], -1)
    traffic = ep_traffic(choices, token_source_gpus(len(choices), n_gpus), place, gpus_per_node=domain,
                         hidden=model.hidden_size, dispatch_dtype=dispatch_dtype)
    expert_bytes = model.routed_expert_params * precision.bytes_per_element(
        sc.input.dtypes.expert_weights or sc.input.dtypes.weights)
    return {
        "scenario": sc.input.name, "model": model.id, "system": sc.system.id, "ep": n_gpus,
        "nvlink_domain_gpus": domain, "tokens": tokens, "moe_layer": layer, "skew": sample.skew,
        "placement": name, "redundant_experts": redundant, "seed": sc.input.seed,
        "expert_load": load.astype(np.int64).tolist(), "gpu_load": per_gpu.tolist(),
        "imbalance": float(imbalance(per_gpu)), "expert_imbalance": float(load.max() / load.mean()),
        "dropped_tokens": int(sample.dropped[0]),
        "replica_bytes_per_gpu_per_layer": float(replica_bytes(place, expert_bytes)),
        "dispatch_bytes_matrix": traffic.dispatch_bytes.tolist(),
        "combine_bytes_matrix": traffic.combine_bytes.tolist(),
        "dispatch_totals": traffic.totals(),
        "dispatch_dtype": dispatch_dtype,
        "_rdma_bytes": traffic.rdma_bytes.tolist(),
        "_nvlink_forward_bytes": traffic.nvlink_forward_bytes.tolist(),
    }


def ep_comm_summary(sc: Scenario, *, skew: str = "uniform", placement: Optional[str] = None,
                    tokens: Optional[int] = None, layer: int = 0, dispatch_dtype: str = "fp8") -> dict:
    """Dispatch and combine time of one MoE layer's routed traffic on the topology (`moesim comm --ep`),
    from the EP kernel model the simulator uses (kernel time: no host-side cost).

    Bandwidth is reported per GPU as DeepEP does: bytes a GPU receives (dispatch) or sends
    (combine), its own share included, over the time."""
    summary = route_summary(sc, skew=skew, placement=placement, tokens=tokens, layer=layer,
                            dispatch_dtype=dispatch_dtype)
    fabric = build_fabric(sc.system, summary["ep"])
    domain = summary["nvlink_domain_gpus"]
    dispatch = np.array(summary["dispatch_bytes_matrix"])
    combine = np.array(summary["combine_bytes_matrix"])
    totals = summary["dispatch_totals"]
    traffic = SimpleNamespace(dispatch_bytes=dispatch, combine_bytes=combine, rdma_bytes=np.array(summary["_rdma_bytes"]),
                              nvlink_forward_bytes=np.array(summary["_nvlink_forward_bytes"]))
    # the EP kernel model the simulator uses (link rates, SM budget, fixed costs), kernel time only
    profile = kernel_profile(sc)
    t_dispatch, t_combine = step_exchange_times(fabric, traffic, domain, sc.system.gpu.arch.value, profile.values(),
                                                host_sync=False)
    recv = dispatch.sum(axis=0).max()
    return {"scenario": summary["scenario"], "model": summary["model"], "system": summary["system"],
            "ep": summary["ep"], "tokens": summary["tokens"], "skew": summary["skew"],
            "placement": summary["placement"], "imbalance": summary["imbalance"],
            "dispatch_time_us": t_dispatch * 1e6, "combine_time_us": t_combine * 1e6,
            "dispatch_GBps_per_gpu": recv / t_dispatch / 1e9 if t_dispatch else None,
            "combine_GBps_per_gpu": combine.sum(axis=1).max() / t_combine / 1e9 if t_combine else None,
            "dispatch_totals": totals,
            "notes": [f"EP kernel model (costs/ep_kernels): {library_rules()['simulate']['library']} normal kernels, "
                      f"{library_rules()['simulate']['sms']['value']} SMs, kernel time only; kernel profile {profile.name}"]}
