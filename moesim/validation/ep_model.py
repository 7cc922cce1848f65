"""EP dispatch / combine cases (DeepEP, Hybrid-EP) as fit targets of the EP kernel model.

Parameter-free part, computed once per case: uniformly routed tokens (the harnesses' random
routers), the traffic they cause (normal mode: deduplicated per destination GPU, across NVLink
domains one RDMA transfer per destination node plus NVLink forwarding; low-latency mode: one
message per token-expert selection), the time of the NVLink flows and of the RDMA flows at spec
link rates on the most loaded link (`load_time`), and the bytes the busiest GPU moves over each path.

Kernel model: `moesim.costs.ep_kernels` (parameters in `topologies/kernels/ep.yaml`, fitted by
`moesim calibrate --cases`): link time at fitted link efficiencies, the SM budget (`sms`: a
kernel with S SMs moves at most S x a per-SM copy rate), fixed and host-side (torch-API timing)
costs per library. Bandwidth metrics use each table's logical byte definition (local traffic
included), as the tables define them.
"""
from __future__ import annotations

import numpy as np

from moesim.core import units
from moesim.costs.ep_kernels import Exchange, Kernel, busiest, kernel_time, library_rules, matrix_time, spec_fabric
from moesim.kernels import routing as routing_kernels
from moesim.kernels import traffic as traffic_kernels
from moesim.specs.hardware import load_system
from moesim.validation.cases import Case, Skip
from moesim.validation.targets import Target, group_of

EP_USED = {"tokens_per_gpu", "hidden", "topk", "experts", "experts_per_gpu", "dtype", "mode", "bottleneck",
           "expert_groups", "topk_groups_effective", "group_limited", "routing", "nodes", "gpus_per_node",
           "sms", "library", "timing", "masked_topk_slots_per_rank"}


def library_of(case: Case) -> tuple[str, dict]:
    """The kernel library (and version) that produced the case, with its rules."""
    rules = library_rules()
    lib = str(case.params.get("library") or rules["default_library"])
    version = rules.get("versions_by_table", {}).get(getattr(case, "table", None))
    key = version or lib
    if key not in rules["libraries"]:
        raise Skip(f"EP library {key!r} has no entry in topologies/kernels/libraries/ep.yaml")
    return lib, rules["libraries"][key]


def _choices(p: dict, ranks: int, experts: int, seed: int = 0) -> np.ndarray:
    tokens = int(p["tokens_per_gpu"]) * ranks
    groups = int(p.get("expert_groups") or 1)
    limit = int(p.get("topk_groups_effective") or 0) if groups > 1 else 0
    expert_group = (np.arange(experts) * groups // experts).astype(np.int32)
    pop = np.full(experts, 1.0 / experts)
    return routing_kernels.sample_topk(pop, expert_group, limit, tokens, int(p["topk"]), seed)


def prepare(case: Case, calibration=None) -> Target:
    p = case.params
    if case.metric not in ("bottleneck_GBps", "time_us"):
        raise Skip(f"unknown metric {case.metric!r} for EP")
    ranks = int(case.gpus)
    low_latency = p.get("mode") == "low_latency"
    lib, rules = library_of(case)
    experts = p.get("experts") or (p.get("experts_per_gpu") and p["experts_per_gpu"] * ranks)
    if not experts:
        if not low_latency:
            raise Skip("expert count not stated by the source")
        # one message per token-expert selection: the traffic depends on which GPU each selection
        # lands on (uniform), not on how many experts a GPU holds
        experts = ranks * int(p["topk"])
    experts = int(experts)
    if experts % ranks:
        raise Skip(f"{experts} experts do not divide over {ranks} ranks")
    system = load_system(case.system)
    arch = system.gpu.arch.value
    h, tpg = int(p["hidden"]), int(p["tokens_per_gpu"])
    fp8 = p.get("dtype") == "fp8"
    per_token = h + 4 * h / 128 if fp8 else 2.0 * h
    fabric = spec_fabric(system, ranks)
    domain = min(fabric.domain_gpus, ranks)
    choices = _choices(p, ranks, experts)
    token_gpu = (np.arange(len(choices)) // tpg).astype(np.int32)
    per_gpu = experts // ranks
    slot_gpu = (np.arange(experts) // per_gpu).astype(np.int32)
    node = np.arange(ranks) // domain
    same_node = node[:, None] == node[None, :]
    if low_latency:
        msg = (h + h / 128 * 4 + 16) if case.what == "ep_dispatch" else 2.0 * h
        dst_gpu = slot_gpu[choices]
        pairs = np.bincount((token_gpu[:, None] * ranks + dst_gpu).ravel(), minlength=ranks * ranks)
        matrix = pairs.reshape(ranks, ranks).astype(np.float64) * msg
        if rules.get("ll_nvlink", True):
            nv, rdma = np.where(same_node, matrix, 0.0), np.where(same_node, 0.0, matrix)
        else:  # pure-RDMA kernels: same-node peers go through the NIC too (loopback)
            nv, rdma = np.zeros_like(matrix), np.where(np.eye(ranks, dtype=bool), 0.0, matrix)
        t_nv = matrix_time(fabric, nv)
        t_rdma = _rdma_time(fabric, rdma, ranks, domain, same_node)
        logical = float(pairs.reshape(ranks, ranks)[0].sum())
        def_bytes = msg
        sm_bytes = (0.0, 0.0)
    else:
        counts = traffic_kernels.dispatch_counts(choices, token_gpu, np.arange(experts + 1, dtype=np.int32),
                                                 np.arange(experts, dtype=np.int32), slot_gpu, ranks).astype(float)
        if ranks > domain:
            rdma_c, forward_c = traffic_kernels.internode_counts(
                choices, token_gpu, np.arange(experts + 1, dtype=np.int32), np.arange(experts, dtype=np.int32),
                slot_gpu, ranks, domain)
            nv = np.where(same_node, counts, 0.0) * per_token + forward_c * per_token
            rdma = rdma_c * per_token
        else:
            nv, rdma = counts * per_token, np.zeros_like(counts)
        t_nv, t_rdma = matrix_time(fabric, nv), matrix_time(fabric, rdma)
        sm_bytes = (busiest(nv), busiest(rdma))
        if p.get("bottleneck") == "rdma" and ranks > domain:
            dst_node = slot_gpu[choices] // domain
            logical = float(sum(len(set(row)) for row in dst_node[token_gpu == 0]))
        else:
            logical = float(counts[:, 0].sum())
        def_bytes = h * (1 + 4 / 128) if fp8 else per_token
    timing = p.get("timing") or rules["timing"]
    sms = p.get("sms")
    if not low_latency and sms is None:
        raise Skip("SM count (sms) not stated by the source")
    model = kernel_time(Exchange(t_nv, t_rdma, *sm_bytes),
                        Kernel(arch, lib, float(sms or 0), low_latency=low_latency, torch_api=timing == "torch_api",
                               multi_node=ranks > domain))
    if case.metric == "time_us":
        def predict(values, model=model):
            return model(values) / units.us
    else:
        moved = logical * def_bytes

        def predict(values, model=model, moved=moved):
            return moved / model(values) / units.GBps
    return Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured, group=group_of(case),
                  model=predict, ignored=[k for k in p if k not in EP_USED])


def _rdma_time(fabric, rdma: np.ndarray, ranks: int, domain: int, same_node: np.ndarray) -> float:
    """Pure-RDMA loopback to same-node peers crosses the GPU's own NIC twice; the fabric has no
    NIC-to-NIC route inside a node, so charge those bytes at the NIC rate on top of the rest."""
    inter = np.where(same_node, 0.0, rdma)
    t = matrix_time(fabric, inter)
    local = np.where(same_node, rdma, 0.0)
    if local.any():
        nic_Bps = fabric.system.spec.scale_out.nic_Gbps.value * 1e9 / 8
        t += float(local.sum(axis=1).max()) / nic_Bps
    return t
