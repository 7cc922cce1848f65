"""Predict collective and EP dispatch/combine cases from the topology and the max-min network model."""
from __future__ import annotations

import numpy as np

from moesim.core import units
from moesim.costs.collectives import ALGORITHMS, build_fabric, collective_time, ep_exchange_time, flows_time
from moesim.kernels import routing as routing_kernels
from moesim.kernels import traffic as traffic_kernels
from moesim.validation.cases import Case, Skip, link_overrides

COLLECTIVE_METRICS = {"busbw_GBps", "algbw_GBps", "time_us"}


def predict_collective(case: Case, calibration=None) -> tuple[float, list[str]]:
    p = case.params
    op = p.get("op")
    if op not in ALGORITHMS:
        raise Skip(f"unknown collective op {op!r}")
    if case.metric not in COLLECTIVE_METRICS:
        raise Skip(f"unknown metric {case.metric!r} for a collective")
    size = float(p["bytes"])
    if not size > 0:
        raise Skip(f"bytes must be positive, got {p['bytes']!r}")
    timing = collective_time(case.system, case.gpus, op, size,
                             link_overrides=link_overrides(calibration, case.system))
    value = {"busbw_GBps": timing.busbw_GBps, "algbw_GBps": timing.algbw_GBps,
             "time_us": timing.time_s / units.us}[case.metric]
    ignored = [k for k in p if k not in ("op", "bytes")]
    return value, ignored


# ---------------------------------------------------------------- EP dispatch / combine
EP_USED = {"tokens_per_gpu", "hidden", "topk", "experts", "experts_per_gpu", "dtype", "mode", "bottleneck",
           "expert_groups", "topk_groups_effective", "group_limited", "routing", "nodes", "gpus_per_node"}


def _ep_choices(case: Case, n_experts: int, seed: int = 0) -> np.ndarray:
    p = case.params
    tokens = int(p["tokens_per_gpu"]) * case.gpus
    groups = int(p.get("expert_groups") or 1)
    limit = int(p.get("topk_groups_effective") or 0) if groups > 1 else 0
    expert_group = (np.arange(n_experts) * groups // n_experts).astype(np.int32)
    pop = np.full(n_experts, 1.0 / n_experts)
    return routing_kernels.sample_topk(pop, expert_group, limit, tokens, int(p["topk"]), seed)


def predict_ep(case: Case, calibration=None) -> tuple[float, list[str]]:
    """DeepEP-style dispatch/combine of uniformly routed tokens over the system's topology.

    Normal mode: tokens deduplicated per destination GPU; across NVLink domains the hierarchical
    form (one RDMA transfer per destination node to the rail peer, then NVLink forwarding), all
    concurrent as DeepEP pipelines them. Low-latency mode: one message per token-expert selection,
    direct. Bandwidth metrics use each table's logical definition (bytes incl. local traffic).
    """
    p = case.params
    if case.metric not in ("bottleneck_GBps", "time_us"):
        raise Skip(f"unknown metric {case.metric!r} for EP")
    ranks = case.gpus
    experts = p.get("experts") or (p.get("experts_per_gpu") and p["experts_per_gpu"] * ranks)
    if not experts:
        raise Skip("expert count not stated by the source")
    experts = int(experts)
    if experts % ranks:
        raise Skip(f"{experts} experts do not divide over {ranks} ranks")
    h, tpg = int(p["hidden"]), int(p["tokens_per_gpu"])
    fp8 = p.get("dtype") == "fp8"
    per_token = h + 4 * h / 128 if fp8 else 2.0 * h
    fabric = build_fabric(case.system, ranks, link_overrides(calibration, case.system))
    choices = _ep_choices(case, experts)
    token_gpu = (np.arange(len(choices)) // tpg).astype(np.int32)
    per_gpu = experts // ranks
    slot_gpu = (np.arange(experts) // per_gpu).astype(np.int32)
    ptr = np.arange(experts + 1, dtype=np.int32)
    slots = np.arange(experts, dtype=np.int32)
    domain = min(fabric.domain_gpus, ranks)
    low_latency = p.get("mode") == "low_latency"
    if low_latency:
        dst_gpu = slot_gpu[choices]
        pairs = np.bincount((token_gpu[:, None] * ranks + dst_gpu).ravel(), minlength=ranks * ranks)
        counts = pairs.reshape(ranks, ranks).astype(np.float64)
        src, dst = np.nonzero(counts)
        time_s = flows_time(fabric, src, dst, counts[src, dst] * (per_token if fp8 else 2.0 * h))
        logical = counts[0].sum()
    else:
        counts = traffic_kernels.dispatch_counts(choices, token_gpu, ptr, slots, slot_gpu, ranks).astype(float)
        rdma, forward = traffic_kernels.internode_counts(choices, token_gpu, ptr, slots, slot_gpu, ranks, domain)
        time_s = ep_exchange_time(fabric, counts * per_token, rdma * per_token, forward * per_token, domain)
        if p.get("bottleneck") == "rdma" and ranks > domain:
            dst_node = slot_gpu[choices] // domain
            mine = token_gpu == 0
            logical = float(sum(len(set(row)) for row in dst_node[mine]))
        else:
            logical = counts[:, 0].sum()
    if case.metric == "time_us":
        value = time_s / units.us
    else:
        def_bytes = h * (1 + 4 / 128) if fp8 and not low_latency else per_token
        if low_latency:
            def_bytes = (h + h / 128 * 4 + 16) if case.what == "ep_dispatch" else 2 * h
        value = logical * def_bytes / time_s / units.GBps
    ignored = [key for key in p if key not in EP_USED]
    return value, ignored
