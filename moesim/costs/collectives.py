"""Collective algorithms as flows on the topology, timed by the max-min network model.

Each algorithm is a function (fabric, participants, size) -> `Plan`: concurrent flows (pairs of
global GPU indices with byte counts) plus the number of sequential latency steps. The flows are
routed on the cluster graph and their rates solved max-min fairly together, so every link they
share is contended; the time is the slowest flow plus the NCCL latency model
(`topologies/profiles/nccl.yaml`: base + steps x per-hop latency, fastest protocol per size).

Definitions follow nccl-tests PERFORMANCE.md: `size` is the per-rank buffer nccl-tests prints;
algbw = size / time; busbw = algbw x 2(n-1)/n (all-reduce), x (n-1)/n (all-gather,
reduce-scatter, all-to-all), x 1 (send/recv).

Achievable link rates: a link's spec rate times the efficiency its system's hardware profile
derives from a microbenchmark (NVLink: measured P2P copy / spec; NIC: measured effective rate /
line rate); where none is published the spec rate is used, and the output says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

from moesim.cluster.links import LinkTable, path_latency
from moesim.cluster.topology import build_cluster, link_table, routes
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record
from moesim.costs.network import solve_rates
from moesim.specs.hardware import Sourced, System

BUSBW_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "send_recv": lambda n: 1.0,
}


class ProtocolTable(Record):
    source: str
    base_latency_us: dict[str, dict[str, float]]
    hop_latency_us: dict[str, dict[str, dict[str, float]]]
    nvls_note: Optional[str] = None
    protocol_efficiency: dict[str, Sourced[float]]


@lru_cache(maxsize=1)
def nccl_model() -> ProtocolTable:
    return load_record(ProtocolTable, data_root() / "topologies" / "collectives" / "nccl.yaml")


@dataclass
class Fabric:
    """A built cluster: graph, flat links and achievable capacities, for one system and size."""

    system: System
    gpus: int
    graph: object
    table: LinkTable
    capacity_Bps: np.ndarray
    efficiency_notes: list[str] = field(default_factory=list)

    @property
    def gpus_per_node(self) -> int:
        return self.system.gpus_per_node

    @property
    def domain_gpus(self) -> int:
        return self.system.domain_gpus


def link_efficiency(system: System) -> tuple[dict[str, float], list[str]]:
    """Achievable / spec rate per link kind, from the system's measured microbenchmarks."""
    notes = []
    up = system.spec.scale_up
    eff = {"nvlink": 1.0, "ib": 1.0, "roce": 1.0, "pcie": 1.0, "c2c": 1.0}
    if up.measured_p2p_GBps is not None and up.measured_p2p_GBps.value:
        eff["nvlink"] = up.measured_p2p_GBps.value / up.per_gpu_GBps_per_direction.value
        notes.append(f"NVLink at {eff['nvlink']:.3f} of spec: measured P2P {up.measured_p2p_GBps.value:g} GB/s "
                     f"({up.measured_p2p_GBps.source})")
    else:
        notes.append("NVLink at spec rate: no P2P measurement in the system file")
    out = system.spec.scale_out
    if out.nic_effective_GBps is not None and out.nic_effective_GBps.value:
        line = out.nic_Gbps.value / 8
        eff[out.kind] = out.nic_effective_GBps.value / line
        notes.append(f"NIC at {eff[out.kind]:.3f} of line rate: {out.nic_effective_GBps.value:g} GB/s "
                     f"({out.nic_effective_GBps.source})")
    else:
        notes.append("NIC at line rate: no effective-rate measurement in the system file")
    return eff, notes


_FABRICS: dict = {}


def build_fabric(system: "System | str", gpus: int, link_overrides: tuple[tuple[str, float], ...] = ()) -> Fabric:
    """The cluster of `gpus` GPUs of a system (a loaded System, or a built-in name / YAML path)
    with achievable link rates; `link_overrides` ((kind, efficiency), ...) replace the system
    file's efficiencies, e.g. from a calibration. Built once per distinct system, size and
    overrides (user system files with their own ids work the same way)."""
    from moesim.specs.hardware import load_system
    if isinstance(system, str):
        system = load_system(system)
    key = (system.model_dump_json(), gpus, link_overrides)
    if key in _FABRICS:
        return _FABRICS[key]
    graph = build_cluster(system, gpus)
    table = link_table(graph)
    eff, notes = link_efficiency(system)
    for kind, value in link_overrides:
        eff[kind] = value
        notes.append(f"{kind} at {value:.3f} of spec: calibrated profile")
    scale = np.array([eff.get(k, 1.0) for k in table.kind])
    fabric = Fabric(system=system, gpus=gpus, graph=graph, table=table, capacity_Bps=table.capacity_Bps * scale,
                    efficiency_notes=notes)
    if len(_FABRICS) > 64:
        _FABRICS.clear()
    _FABRICS[key] = fabric
    return fabric


@dataclass
class Plan:
    """Concurrent flows of one collective and its sequential latency steps."""

    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    steps: int
    algo: str
    latency_algo: str = "ring"  # which row of the NCCL latency table applies


@dataclass
class Timing:
    time_s: float
    algbw_GBps: float
    busbw_GBps: float
    algo: str
    protocol: str
    bandwidth_s: float
    latency_s: float
    bottleneck_kind: str
    notes: list[str]


def _domain(g: np.ndarray, fabric: Fabric) -> np.ndarray:
    return g // fabric.domain_gpus


def ring_flows(participants: list[int], fabric: Fabric) -> tuple[list[int], list[int], int]:
    """NCCL-style rings as (src, dst) flow lists and the ring count.

    Inside one NVLink domain: one ring in index order. Across domains: one ring (channel) per
    local GPU index c of a domain, rail-aligned as NCCL's PXN keeps it: inside each domain the
    ring runs c -> c+1 -> ... -> c-1 -> c over NVLink, and leaves from GPU c to GPU c of the next
    domain over NIC rail c, so every NIC carries one ring and none crosses rails via the spines.
    """
    parts = sorted(participants)
    if len({g // fabric.domain_gpus for g in parts}) == 1:
        return parts, parts[1:] + parts[:1], 1
    per_domain = fabric.domain_gpus
    nodes: dict[int, list[int]] = {}
    for g in parts:
        nodes.setdefault(g // per_domain, []).append(g)
    order = sorted(nodes)
    width = min(len(v) for v in nodes.values())
    src, dst = [], []
    for c in range(width):
        for k, n in enumerate(order):
            local = nodes[n]
            cycle = local[c:] + local[:c]
            if len(cycle) > 1:
                src.extend(cycle)
                dst.extend(cycle[1:] + cycle[:1])
            src.append(local[c])
            dst.append(nodes[order[(k + 1) % len(order)]][c])
    return src, dst, width


def _ring_plan(participants, fabric, size, volume_factor, algo) -> Plan:
    src, dst, rings = ring_flows(participants, fabric)
    n = len(participants)
    steps = {"all_reduce": 2 * (n - 1)}.get(algo, n - 1)
    return Plan(np.array(src), np.array(dst), np.full(len(src), size * volume_factor / rings), steps, "ring", "ring")


def all_reduce_ring(fabric, participants, size) -> Plan:
    n = len(participants)
    plan = _ring_plan(participants, fabric, size, 2 * (n - 1) / n, "all_reduce")
    return plan


def all_reduce_nvls(fabric, participants, size) -> Plan:
    """In-switch reduction (NVLS): each GPU pushes its data into the NVSwitch, which reduces and
    multicasts; the bound is the switch's reduction bandwidth per GPU (system spec)."""
    up = fabric.system.spec.scale_up
    if len({g // fabric.domain_gpus for g in participants}) != 1:
        raise MoesimError("NVLS all-reduce needs every participant in one NVLink domain", field="algo",
                          fix="use ring (or tree) across domains")
    if up.nvls_reduction_GBps is None or not up.nvls_reduction_GBps.value:
        raise MoesimError(f"{fabric.system.id} publishes no NVLS reduction bandwidth", field="algo",
                          fix="use ring")
    n = len(participants)
    return Plan(np.array(participants), np.array(participants), np.full(n, size * 2 * (n - 1) / n),
                2, "nvls", "nvls")


def all_gather_ring(fabric, participants, size) -> Plan:
    n = len(participants)
    return _ring_plan(participants, fabric, size, (n - 1) / n, "all_gather")


def reduce_scatter_ring(fabric, participants, size) -> Plan:
    n = len(participants)
    return _ring_plan(participants, fabric, size, (n - 1) / n, "reduce_scatter")


def all_to_all_direct(fabric, participants, size) -> Plan:
    """Every rank sends size/n to every other rank at once (NCCL grouped send/recv)."""
    p = np.array(sorted(participants))
    n = len(p)
    src, dst = np.meshgrid(p, p, indexing="ij")
    mask = src != dst
    return Plan(src[mask], dst[mask], np.full(mask.sum(), size / n), 1, "direct", "ring")


def all_to_all_matrix(fabric, participants, matrix: np.ndarray) -> Plan:
    """An explicit byte matrix [src, dst] over the participants (EP dispatch/combine)."""
    p = np.array(participants)
    src, dst = np.nonzero(matrix)
    keep = src != dst
    return Plan(p[src[keep]], p[dst[keep]], matrix[src[keep], dst[keep]].astype(float), 1, "matrix", "ring")


def send_recv(fabric, participants, size) -> Plan:
    p = list(participants)
    if len(p) != 2:
        raise MoesimError(f"send_recv needs 2 GPUs, got {len(p)}", field="gpus", fix="give --gpus 2")
    return Plan(np.array([p[0]]), np.array([p[1]]), np.array([float(size)]), 1, "p2p", "ring")


ALGORITHMS: dict[str, dict[str, Callable]] = {
    "all_reduce": {"ring": all_reduce_ring, "nvls": all_reduce_nvls},
    "all_gather": {"ring": all_gather_ring},
    "reduce_scatter": {"ring": reduce_scatter_ring},
    "all_to_all": {"direct": all_to_all_direct},
    "send_recv": {"p2p": send_recv},
}


def default_algo(op: str, fabric: Fabric, participants) -> str:
    """NCCL's choice for large messages: NVLS all-reduce inside one domain where the switch
    supports it, ring otherwise; direct all-to-all."""
    if op == "all_reduce":
        up = fabric.system.spec.scale_up
        one_domain = len({g // fabric.domain_gpus for g in participants}) == 1
        if one_domain and up.nvls_reduction_GBps is not None and up.nvls_reduction_GBps.value:
            return "nvls"
        return "ring"
    return next(iter(ALGORITHMS[op]))


def bandwidth_time(fabric: Fabric, plan: Plan) -> tuple[float, str]:
    """Seconds until the slowest flow of the plan finishes under max-min sharing, and the kind of
    link that binds it."""
    if plan.algo == "nvls":
        up = fabric.system.spec.scale_up
        rate = up.nvls_reduction_GBps.value * units.GBps
        return float(plan.nbytes.max() / rate), "nvls"
    pairs = np.stack([plan.src, plan.dst], axis=1)
    ptr, links = routes(fabric.graph, fabric.table, pairs)
    rates = solve_rates(fabric.capacity_Bps, ptr, links)
    finite = np.isfinite(rates)
    if not finite.any():
        return 0.0, "local"
    times = np.where(finite, plan.nbytes / np.where(finite, rates, 1.0), 0.0)
    slowest = int(np.argmax(times))
    path = links[ptr[slowest]:ptr[slowest + 1]]
    kind = min((fabric.table.kind[i] for i in path), key=lambda k: 0 if k in ("ib", "roce") else 1)
    return float(times[slowest]), kind


def _routed_flows(fabric: Fabric, src, dst, nbytes):
    """(bytes, ptr, links) of the flows that cross the network (non-empty, not GPU-local); None if none do."""
    src, dst, nbytes = np.asarray(src), np.asarray(dst), np.asarray(nbytes, dtype=np.float64)
    keep = (nbytes > 0) & (src != dst)
    if not keep.any():
        return None
    ptr, links = routes(fabric.graph, fabric.table, np.stack([src[keep], dst[keep]], axis=1))
    return nbytes[keep], ptr, links


def flows_time(fabric: Fabric, src, dst, nbytes) -> float:
    """Seconds until the slowest of these concurrent flows (global GPU indices) completes under
    max-min sharing, plus that flow's path latency. Zero-byte and GPU-local flows cost nothing."""
    routed = _routed_flows(fabric, src, dst, nbytes)
    if routed is None:
        return 0.0
    nbytes, ptr, links = routed
    rates = solve_rates(fabric.capacity_Bps, ptr, links)
    times = nbytes / rates
    slowest = int(np.argmax(times))
    return float(times[slowest] + path_latency(fabric.table, links[ptr[slowest]:ptr[slowest + 1]]))


def load_time(fabric: Fabric, src, dst, nbytes) -> float:
    """Seconds until concurrent flows complete when the network is work-conserving: the most
    loaded link's bytes over its rate, plus the longest path latency. Static max-min
    (`flows_time`) fixes each flow's rate for its whole life, which overstates the makespan of
    uneven flows (random routing: the largest of many small per-pair counts); a link that stays
    busy until its last byte is what DeepEP-style chunked transfers achieve."""
    routed = _routed_flows(fabric, src, dst, nbytes)
    if routed is None:
        return 0.0
    nbytes, ptr, links = routed
    per_flow = np.repeat(nbytes, np.diff(ptr))
    load = np.bincount(links, weights=per_flow, minlength=len(fabric.capacity_Bps))
    hop_latency = np.bincount(np.repeat(np.arange(len(nbytes)), np.diff(ptr)), weights=fabric.table.latency_s[links],
                              minlength=len(nbytes))
    return float(np.max(load / fabric.capacity_Bps) + hop_latency.max())


def ep_exchange_time(fabric: Fabric, direct: np.ndarray, rdma: np.ndarray, forward: np.ndarray,
                     domain: int) -> float:
    """One EP all-to-all (dispatch or combine) as DeepEP's normal kernels run it: direct flows
    inside an NVLink domain; across domains one RDMA transfer per destination node to the rail
    peer plus NVLink forwarding, all concurrent (DeepEP pipelines them in chunks)."""
    g = direct.shape[0]
    if g <= domain:
        src, dst = np.nonzero(direct)
        return flows_time(fabric, src, dst, direct[src, dst])
    node = np.arange(g) // domain
    mats = [np.where(node[:, None] == node[None, :], direct, 0.0), rdma, forward]
    src = np.concatenate([np.nonzero(m)[0] for m in mats])
    dst = np.concatenate([np.nonzero(m)[1] for m in mats])
    nbytes = np.concatenate([m[np.nonzero(m)] for m in mats])
    return flows_time(fabric, src, dst, nbytes)


def latency(fabric: Fabric, plan: Plan, protocol: str) -> float:
    model = nccl_model()
    crosses = len({g // fabric.domain_gpus for g in np.concatenate([plan.src, plan.dst])}) > 1
    hop = model.hop_latency_us["net" if crosses else "nvlink"][plan.latency_algo][protocol]
    return (model.base_latency_us[plan.latency_algo][protocol] + plan.steps * hop) * units.us


def time_plan(fabric: Fabric, plan: Plan, op: str, size: float, n: int) -> Timing:
    """Fastest protocol: latency + bandwidth time / protocol efficiency (NCCL's tuner logic)."""
    bw_s, kind = bandwidth_time(fabric, plan)
    model = nccl_model()
    best = None
    for proto, eff in model.protocol_efficiency.items():
        lat = latency(fabric, plan, proto)
        total = lat + bw_s / eff.value
        if best is None or total < best[0]:
            best = (total, proto, lat, bw_s / eff.value)
    total, proto, lat, bw_part = best
    algbw = size / total / units.GBps if total > 0 else float("inf")
    return Timing(time_s=total, algbw_GBps=algbw, busbw_GBps=algbw * BUSBW_FACTOR[op](n), algo=plan.algo,
                  protocol=proto, bandwidth_s=bw_part, latency_s=lat, bottleneck_kind=kind,
                  notes=list(fabric.efficiency_notes))


def collective_time(system_id: "System | str", gpus: int, op: str, size: float, *, algo: Optional[str] = None,
                    participants: Optional[list[int]] = None,
                    link_overrides: tuple[tuple[str, float], ...] = ()) -> Timing:
    """Time of one collective of `size` bytes per rank over `participants` (default: all GPUs)."""
    if op not in ALGORITHMS:
        raise MoesimError(f"unknown collective {op!r}", field="op", fix=f"use one of: {', '.join(ALGORITHMS)}")
    if size <= 0:
        raise MoesimError(f"size must be positive, got {size}", field="bytes", fix="give a size such as 1M or 8G")
    fabric = build_fabric(system_id, gpus, link_overrides)
    members = list(range(gpus)) if participants is None else list(participants)
    if len(members) < 2:
        raise MoesimError("a collective needs at least 2 GPUs", field="gpus", fix="give --gpus 2 or more")
    name = algo or default_algo(op, fabric, members)
    if name not in ALGORITHMS[op]:
        raise MoesimError(f"unknown algorithm {name!r} for {op}", field="algo",
                          fix=f"use one of: {', '.join(ALGORITHMS[op])}")
    plan = ALGORITHMS[op][name](fabric, members, float(size))
    return time_plan(fabric, plan, op, float(size), len(members))
