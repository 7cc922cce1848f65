"""Collective cases (nccl-tests) as fit targets: NCCL's latency/protocol model plus fitted link efficiencies.

Why this shape: nccl-tests times small messages by NCCL's per-step latencies and the protocol it
picks (LL / LL128 / Simple, NVLS Simple), host launch cost in `-g N` mode, and large ones by the
achieved rate of the binding link class (NVLink per arch, NVLS switch reduction per arch, IB NIC).
Everything parameter-free is done once per case: the algorithm (the case's own where its id or
notes force one, else NCCL's pick under this model at the sourced defaults), the protocol (NCCL's
pick likewise), NCCL's latency, and the time of moesim's ring / all-to-all plan with only NVLink,
or only the network, limiting at spec rates. The target's closure is a few multiplications.
Formula and sources: `topologies/kernels/collective.yaml`.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping

from moesim.calibration.kernel_fit import Target
from moesim.calibration.kernel_params import definitions
from moesim.core import units
from moesim.costs import nccl_tuning as nt
from moesim.costs.collectives import ALGORITHMS, BUSBW_FACTOR, bandwidth_time, build_fabric
from moesim.specs.hardware import load_system
from moesim.validation.cases import Case, Skip
from moesim.validation.targets import group_of

METRICS = ("busbw_GBps", "algbw_GBps", "time_us")
USED = {"op", "bytes", "nodes"}
_BIG = 1e6  # capacity multiplier that takes a link class out of the bound
_NVLINK_ONLY = (("nvlink", 1.0), ("ib", _BIG), ("roce", _BIG), ("pcie", _BIG), ("c2c", _BIG))
_NET_ONLY = (("nvlink", _BIG), ("ib", 1.0), ("roce", 1.0), ("pcie", _BIG), ("c2c", _BIG))

Model = Callable[[Mapping[str, float]], float]  # values -> GPU time in us


def forced_algorithm(case: Case) -> str | None:
    """The algorithm a case states (id first, then NCCL_ALGO in its notes); None: NCCL's choice."""
    text = case.id.lower()
    notes = (getattr(case, "notes", None) or "").lower()
    if "collnet" in text or "sharp" in text:
        return "collnet"
    if re.search(r"(^|-)nvls(-|$)", text):
        return "nvls"
    if re.search(r"(^|-)ring(-|$)", text) or "nccl_algo=ring" in notes:
        return "ring"
    if "nccl_algo=nvls" in notes:
        return "nvls"
    return None


def _spec_times(case: Case, op: str, size: float) -> tuple[float, float]:
    """Seconds of moesim's plan with only NVLink, or only the network, limiting (spec rates)."""
    algo = "direct" if op == "all_to_all" else "ring"
    out = []
    for overrides in (_NVLINK_ONLY, _NET_ONLY):
        fabric = build_fabric(case.system, case.gpus, overrides)
        plan = ALGORITHMS[op][algo](fabric, list(range(case.gpus)), size)
        seconds, _ = bandwidth_time(fabric, plan)
        out.append(seconds if math.isfinite(seconds) else 0.0)
    return out[0], out[1]


def _candidates(case: Case, op: str, single_domain: bool) -> list[str]:
    forced = forced_algorithm(case)
    if forced == "nvls" and not single_domain and op == "all_reduce":
        raise Skip("NVLS across NVLink domains (NVLS-tree) is not modelled")
    if forced == "collnet" and op != "all_reduce":
        raise Skip("CollNet is modelled for all_reduce only")
    if forced:
        return [forced]
    if op == "all_to_all":
        return ["direct"]
    if op == "all_reduce" and single_domain:
        return ["ring", "nvls"]
    return ["ring"]


def _models(case: Case, op: str, algo: str, arch: str, n: int, nodes: int, size: float,
            t_nvl: float, t_net: float) -> dict[str, Model]:
    """GPU time (us) per protocol NCCL may use for this algorithm."""
    system = load_system(case.system)
    up, out = system.spec.scale_up, system.spec.scale_out
    nvl, nvls = f"collective.nvlink_eff.{arch}", f"collective.nvls_eff.{arch}"
    domain = system.domain_gpus
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


def prepare(case: Case, calibration=None) -> Target:
    p = case.params
    op = p.get("op")
    if op not in ALGORITHMS or op == "send_recv":
        raise Skip(f"unknown collective op {op!r}")
    if case.metric not in METRICS:
        raise Skip(f"unknown metric {case.metric!r} for a collective")
    size = float(p["bytes"])
    if not size > 0:
        raise Skip(f"bytes must be positive, got {p['bytes']!r}")
    n = int(case.gpus)
    if n < 2:
        raise Skip("a collective needs at least 2 GPUs")
    system = load_system(case.system)
    arch = system.gpu.arch.value
    domain = system.domain_gpus
    single_domain = n <= domain
    nodes = max(1, math.ceil(n / domain))  # NCCL (with MNNVL) sees one NVLink domain as one node
    t_nvl, t_net = _spec_times(case, op, size)
    defaults = {k: d.value for k, d in definitions().items()}
    best = None
    for algo in _candidates(case, op, single_domain):
        for proto, model in _models(case, op, algo, arch, n, nodes, size, t_nvl, t_net).items():
            t = model(defaults)
            if best is None or t < best[0]:
                best = (t, algo, proto, model)
    _, algo, proto, gpu_model = best
    launches = nt.gpus_per_launch(case.source, min(n, system.gpus_per_node))
    factor = BUSBW_FACTOR[op](n)
    metric = case.metric

    def predict(v: Mapping[str, float]) -> float:
        t_us = max(gpu_model(v), launches * v["collective.launch_us"])
        if metric == "time_us":
            return t_us
        algbw = size / (t_us * units.us) / units.GBps
        return algbw * factor if metric == "busbw_GBps" else algbw

    ignored = [k for k in p if k not in USED]
    target = Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured,
                    group=group_of(case), model=predict, ignored=ignored)
    target.algo, target.protocol, target.launches = algo, proto, launches  # for tests and reports
    return target
