"""Collective kernel time: NCCL's latency/protocol model with fitted link efficiencies.

One model serves the validation cases (nccl-tests) and the simulator's collectives (`moesim
comm`, TP all-reduce in a step). Parameters: `topologies/kernels/collective.yaml`; NCCL's own
tables: `topologies/kernels/tables/collective.yaml` (`costs.nccl_tuning`). The costly,
parameter-free part (moesim's ring / all-to-all plan on the topology with only NVLink, or only
the network, limiting at spec rates; NCCL's latency per protocol) is computed once; the returned
models map parameter values to GPU time in microseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.costs import nccl_tuning as nt
from moesim.costs.collectives import ALGORITHMS, bandwidth_time, build_fabric

_BIG = 1e6  # capacity multiplier that takes a link class out of the bound
_NVLINK_ONLY = (("nvlink", 1.0), ("ib", _BIG), ("roce", _BIG), ("pcie", _BIG), ("c2c", _BIG))
_NET_ONLY = (("nvlink", _BIG), ("ib", 1.0), ("roce", 1.0), ("pcie", _BIG), ("c2c", _BIG))
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")

Model = Callable[[Mapping[str, float]], float]  # values -> GPU time in us


@dataclass(frozen=True)
class KernelChoice:
    """The algorithm and protocol NCCL runs, and the GPU time of that choice (us) per parameter values."""

    algo: str
    protocol: str
    gpu_us: Model


def spec_times(system, n: int, op: str, size: float) -> tuple[float, float]:
    """Seconds of moesim's plan with only NVLink, or only the network, limiting (spec rates)."""
    algo = "direct" if op == "all_to_all" else "ring"
    out = []
    for overrides in (_NVLINK_ONLY, _NET_ONLY):
        fabric = build_fabric(system, n, overrides)
        plan = ALGORITHMS[op][algo](fabric, list(range(n)), size)
        seconds, _ = bandwidth_time(fabric, plan)
        out.append(seconds if math.isfinite(seconds) else 0.0)
    return out[0], out[1]


def candidates(op: str, single_domain: bool, forced: Optional[str]) -> list[str]:
    if forced == "nvls" and not single_domain and op == "all_reduce":
        raise MoesimError("NVLS across NVLink domains (NVLS-tree) is not modelled", field="algo",
                          fix="use ring across NVLink domains")
    if forced == "collnet" and op != "all_reduce":
        raise MoesimError("CollNet is modelled for all_reduce only", field="algo", fix="use ring")
    if forced:
        return [forced]
    if op == "all_to_all":
        return ["direct"]
    if op == "all_reduce":   # across NVLink domains NCCL also weighs its trees (small messages: log2 network hops)
        return ["ring", "nvls"] if single_domain else ["ring", "tree"]
    return ["ring"]


def protocol_models(system, op: str, algo: str, n: int, size: float, t_nvl: float, t_net: float) -> dict[str, Model]:
    """GPU time (us) per protocol NCCL may use for this algorithm."""
    arch = system.gpu.arch.value
    domain = system.domain_gpus
    nodes = max(1, math.ceil(n / domain))  # NCCL (with MNNVL) sees one NVLink domain as one node
    up, out = system.spec.scale_up, system.spec.scale_out
    nvl, nvls = f"collective.nvlink_eff.{arch}", f"collective.nvls_eff.{arch}"
    if algo == "nvls":
        rate = up.per_gpu_GBps_per_direction.value * units.GBps
        fill = nt.nvls_pipeline_bytes(arch, n)
        lat = nt.nvls_latency_us(nodes)
        if op == "all_reduce":
            return {"simple": lambda v: v["collective.latency_scale"] * lat
                    + (size + min(size, v["collective.nvls_fill"] * fill)) / (rate * v[nvls]) / units.us}
        return {"simple": lambda v: v["collective.latency_scale"] * lat + t_nvl / v[nvl] / units.us}
    if algo == "collnet":
        ppn = max(1, min(n, domain))
        nic = out.nic_Gbps.value / 8 * out.nics_per_gpu.value * units.GBps
        t_nic = size / ppn / nic
        t_up = 2 * size * (ppn - 1) / ppn / (up.per_gpu_GBps_per_direction.value * units.GBps)
        lat = nt.ring_latency_us(op, n, nodes, "simple")
        return {"simple": lambda v: v["collective.latency_scale"] * lat + max(
            t_nic / (v["collective.net_eff.ib"] * v["collective.collnet_eff"]), t_up / v[nvl]) / units.us}
    if algo == "tree":   # all-reduce across nodes (NVLink domains): the network sets the rate
        if op != "all_reduce" or nodes <= 1:
            raise MoesimError("the tree is modelled for all_reduce across NVLink domains only", field="algo",
                              fix="use ring")
        nic = out.nic_Gbps.value / 8 * out.nics_per_gpu.value * units.GBps
        return {proto: (lambda v, lat=nt.tree_latency_us(n, nodes, proto), rate=nic * nt.tree_bw_factor(proto):
                        v["collective.latency_scale"] * lat + size / (rate * v["collective.net_eff.ib"]) / units.us)
                for proto in nt.PROTOCOLS}
    if algo == "direct":
        remote = n - min(n, domain) if n > domain else 0
        local = n - 1 - remote
        hop = nt.tables()["hop_latency_us"]["nvlink"]["ring"]["ll"]
        base = nt.tables()["base_latency_us"]["ring"]["simple"]
        return {"simple": lambda v: v["collective.latency_scale"] * (base + local * hop)
                + remote * v["collective.p2p_peer_us"]
                + max(t_nvl / v[nvl], t_net / v["collective.net_eff.ib"]) / units.us}
    # ring: NCCL's three protocols
    ll_cap_s = size * nt.ring_steps(op, n) / n / (nt.ll_max_busbw_GBps(arch, nodes) * units.GBps)
    models: dict[str, Model] = {}
    for proto in nt.PROTOCOLS:
        lat = nt.ring_latency_us(op, n, nodes, proto)
        factor = nt.protocol_bw_factor(proto)
        cap = ll_cap_s if proto == "ll" else 0.0

        def model(v, lat=lat, factor=factor, cap=cap):
            bw_s = max(t_nvl / v[nvl], t_net / v["collective.net_eff.ib"]) / factor
            return v["collective.latency_scale"] * lat + max(bw_s, cap) / units.us
        models[proto] = model
    return models


def choose(system, n: int, op: str, size: float, values: Mapping[str, float],
           forced: Optional[str] = None) -> KernelChoice:
    """NCCL's pick: the fastest algorithm and protocol at `values` (or the forced algorithm)."""
    if op not in OPS:
        raise MoesimError(f"no kernel model for {op!r}", field="op", fix=f"use one of: {', '.join(OPS)}")
    single_domain = n <= system.domain_gpus
    t_nvl, t_net = spec_times(system, n, op, size)
    best = None
    for algo in candidates(op, single_domain, forced):
        for proto, model in protocol_models(system, op, algo, n, size, t_nvl, t_net).items():
            t = model(values)
            if best is None or t < best[0]:
                best = (t, algo, proto, model)
    _, algo, proto, model = best
    return KernelChoice(algo=algo, protocol=proto, gpu_us=model)


def kernel_seconds(system, n: int, op: str, size: float, values: Mapping[str, float],
                   forced: Optional[str] = None) -> tuple[float, KernelChoice]:
    """GPU seconds of one collective inside a step (no host launch: a serving step replays CUDA
    graphs, a training step's launches overlap the previous kernels), and NCCL's choice."""
    choice = choose(system, n, op, size, values, forced)
    return choice.gpu_us(values) * units.us, choice
