"""The cluster as a networkx graph, deterministic GPU-to-GPU paths, and a flat link table.

This is the only module that imports networkx; everything downstream sees `LinkTable` arrays
(moesim.cluster.links) and CSR paths of link indices. The profile, fabric and custom-topology
files it builds from are read by moesim.cluster.topology_files.

Graph conventions (one `networkx.DiGraph`)
------------------------------------------
Node kinds (attribute `kind`):
- `gpu`       `n{node}.gpu{local}`; attributes `index` (global GPU number 0..G-1, the GPU order of
              every array in moesim), `node`, `local`, `domain`.
- `nvswitch`  `d{domain}.nvsw0`: one logical switch per NVLink domain; attributes `domain`,
              `switch_chips` (the real chip count from the system file, None where unpublished).
- `nic`       `n{node}.nic{k}`, k = local * nics_per_gpu + i; attributes `node`, `gpu` (global),
              `rail` (= k).
- `host`      `n{node}.host`: the CPU side of a node (Grace pair on a GB200 tray), on no route yet.
- `leaf`      `leaf{rail}` (one pod) or `leaf{rail}.{pod}` (several); attributes `rail`, `pod`.
- `spine`     `spine{s}`; attribute `index`.
Edge attributes, all required (a missing one raises, never defaults):
- `capacity_Bps` > 0: bytes/s in the edge's direction;
- `latency_s` >= 0: one-way per-hop latency;
- `kind` in {nvlink, pcie, ib, roce, c2c}.
Every physical link is two directed edges (one per direction, each with the per-direction
rate), so full-duplex traffic never contends with its reverse. Nodes and edges are added in
natural sorted order of their ids (`n2` before `n10`), so iteration is deterministic and
readable; `link_table` numbers the edges in that order.

Modelling choices
-----------------
- One aggregated NVSwitch per domain is exact for flow-level max-min fairness when each GPU
  spreads its NVLinks evenly over the switch chips (Hopper HGX: 18 links over 4 chips; NVL72:
  18 links over 18 chips in 9 trays) and traffic is striped over all links, as NCCL and NVSwitch
  routing do: every chip (plane) then carries the same fraction of every GPU's traffic, so the
  plane-by-plane max-min problems are scaled copies of one problem whose only constraints are the
  per-GPU egress and ingress edges. The switch chips themselves are non-blocking, so they are no
  constraint. The real count is kept as `switch_chips`.
- Scale-out is a rail-optimised two-tier fat tree (`topologies/fabrics/rail-optimized.yaml`):
  NIC rail r of every node in pod p (nodes p*leaf_down_ports ... ) plugs into leaf (r, p); every
  leaf links to every spine. A leaf's uplink capacity is its attached downlink capacity divided by
  `scale_out.oversubscription` (uplinks provisioned in proportion to the nodes present), spread
  evenly over the spines. The spine count is the smallest leaf's uplink count in NIC-rate links
  (at least 1, at most `switch_ports - leaf_down_ports`): a full 32-node pod then has one
  NIC-rate link to each of 32 spines, as in a 64-port two-tier fat tree, and a lone flow hashed to
  one spine still gets a full NIC rate. A spine of 64 ports serves at most 64 leaves (2,048 NICs;
  DS-ISCA reaches 16,384 GPUs by giving each rail its own plane of spines); beyond that a real
  fabric needs a third tier, and moesim keeps two tiers with the same per-leaf uplink capacity
  (a non-blocking core).
- A cluster of one NVLink domain has no scale-out fabric (no NIC, leaf or spine): no route uses it.
- gpu<->nic edges are the NIC's PCIe Gen5 x16 link (`gpu_nic_GBps` of the system's hardware
  profile, 64 GB/s), above the 400G NIC's 50 GB/s so the NIC binds; on GB200 the GPU's host link
  is NVLink-C2C to Grace, but the NIC still sits on PCIe Gen5, so the same rate applies.
  gpu<->host edges carry the GPU spec's `host_link` rate, kind `pcie` or `c2c` per the profile.
- Latencies per hop come from `topologies/profiles/<system>.yaml` (DS-ISCA Table 5, split over
  the hops of these routes so each path total reproduces the measurement).

Routes (`route`, `routes`): same NVLink domain: gpu -> nvsw -> gpu. Otherwise NIC i = (src+dst)
% nics_per_gpu on both sides, gpu -> nic -> leaf -> [spine (src+dst) % n_spines, if the two
leaves differ] -> leaf -> nic -> gpu. A deterministic stand-in for ECMP hashing.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import networkx as nx
import numpy as np

from moesim.cluster.links import LinkTable, path_links
from moesim.cluster.topology_files import CustomTopology, HopLatencies, load_fabric, load_profile
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.core.loader import line_of, parse_record, read_yaml
from moesim.specs.hardware import System

NODE_KINDS = ("gpu", "nvswitch", "nic", "leaf", "spine", "host")
LINK_KINDS = ("nvlink", "pcie", "ib", "roce", "c2c")
EDGE_ATTRS = ("capacity_Bps", "latency_s", "kind")
DEFAULT_FABRIC = "rail-optimized"


# ----------------------------------------------------------------------------- graph building

_DIGITS = re.compile(r"(\d+)")


def natural_key(node_id: str) -> tuple:
    """Sort key that orders the numbers inside ids numerically: n2.gpu1 < n10.gpu0."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(node_id)))


def _edge_key(edge: tuple) -> tuple:
    return natural_key(edge[0]), natural_key(edge[1])


def _link(edges: list, a: str, b: str, capacity_Bps: float, latency_s: float, kind: str) -> None:
    """Append one physical full-duplex link as two directed edges."""
    attrs = {"capacity_Bps": float(capacity_Bps), "latency_s": float(latency_s), "kind": kind}
    edges.append((a, b, dict(attrs)))
    edges.append((b, a, dict(attrs)))


def _assemble(nodes: list, edges: list, meta: dict) -> nx.DiGraph:
    graph = nx.DiGraph(**meta)
    graph.add_nodes_from(sorted(nodes, key=lambda n: natural_key(n[0])))
    graph.add_edges_from(sorted(edges, key=_edge_key))
    return graph


MAX_GPUS = 131_072  # 1,820 NVL72 racks: above any cluster built today, below this machine's memory


def build_cluster(system: System, gpus: int, *, profile: str | None = None,
                  fabric: str = DEFAULT_FABRIC) -> nx.DiGraph:
    """The graph of `gpus` GPUs of `system`: NVLink domains joined by a rail-optimised fat tree.

    GPU g sits in node g // gpus_per_node (a DGX/HGX node, or a GB200 tray) and NVLink domain
    g // domain_gpus; a last node or domain may be partly filled. `profile` names the hardware
    profile (default: the system id), `fabric` the switch port counts.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, (int, np.integer)) or gpus < 1:
        raise MoesimError(f"number of GPUs must be a whole number >= 1, got {gpus!r}", field="gpus",
                          fix="give the cluster size, e.g. 16")
    gpus = int(gpus)
    if gpus > MAX_GPUS:
        raise MoesimError(f"{gpus:,} GPUs is more than moesim builds a topology graph for ({MAX_GPUS:,})",
                          field="gpus", fix=f"give at most {MAX_GPUS:,} GPUs")
    try:
        prof = load_profile(profile or system.spec.hardware_profile or system.id)
    except MoesimError as exc:
        if profile is not None or exc.file:
            raise
        raise MoesimError(f"no hardware profile for system {system.id!r} ({exc.problem})",
                          file=exc.file, field="profile",
                          fix=f"set hardware_profile: <name> in the system file (e.g. dgx-h100), or create "
                              f"topologies/profiles/{system.id}.yaml") from None
    fab = load_fabric(fabric)
    lat = {k: getattr(prof.hop_latency_us, k).value * units.us for k in HopLatencies.model_fields}
    spec = system.spec
    per_node, per_domain = system.gpus_per_node, system.domain_gpus
    nics_per_gpu = spec.scale_out.nics_per_gpu.value
    fabric_kind = spec.scale_out.kind
    nvlink_Bps = spec.scale_up.per_gpu_GBps_per_direction.value * units.GBps
    host_Bps = system.gpu.host_link.per_direction_GBps.value * units.GBps
    gpu_nic_Bps = prof.gpu_nic_GBps.value * units.GBps
    nic_Bps = spec.scale_out.nic_Gbps.value * units.Gbps
    oversub = spec.scale_out.oversubscription.value
    if nics_per_gpu < 1:
        raise MoesimError(f"nics_per_gpu must be >= 1, got {nics_per_gpu}", field="scale_out.nics_per_gpu",
                          fix="give the number of scale-out NICs per GPU")

    n_nodes = -(-gpus // per_node)
    n_domains = -(-gpus // per_domain)
    nodes: list = []
    edges: list = []
    for d in range(n_domains):
        nodes.append((f"d{d}.nvsw0", {"kind": "nvswitch", "domain": d,
                                      "switch_chips": spec.scale_up.switch_chips.value}))
    for n in range(n_nodes):
        nodes.append((f"n{n}.host", {"kind": "host", "node": n}))
    for g in range(gpus):
        n, local, d = g // per_node, g % per_node, g // per_domain
        gid = f"n{n}.gpu{local}"
        nodes.append((gid, {"kind": "gpu", "index": g, "node": n, "local": local, "domain": d}))
        _link(edges, gid, f"d{d}.nvsw0", nvlink_Bps, lat["nvlink"], "nvlink")
        _link(edges, gid, f"n{n}.host", host_Bps, lat["host"], prof.host_link_kind.value)

    meta = {"structure": "cluster", "system": system.id, "gpus": gpus, "gpus_per_node": per_node,
            "domain_gpus": per_domain, "nics_per_gpu": nics_per_gpu, "profile": prof.id,
            "fabric": fab.id, "n_spines": 0}
    if n_domains == 1:
        return _assemble(nodes, edges, meta)

    pod_nodes = fab.leaf_down_ports.value
    n_pods = -(-n_nodes // pod_nodes)
    attached: dict[tuple[int, int], int] = {}
    for g in range(gpus):
        n, local = g // per_node, g % per_node
        for i in range(nics_per_gpu):
            rail = local * nics_per_gpu + i
            key = (rail, n // pod_nodes)
            attached[key] = attached.get(key, 0) + 1
            nic, leaf = f"n{n}.nic{rail}", _leaf_id(*key, n_pods)
            nodes.append((nic, {"kind": "nic", "node": n, "gpu": g, "rail": rail}))
            _link(edges, f"n{n}.gpu{local}", nic, gpu_nic_Bps, lat["pcie"], "pcie")
            _link(edges, nic, leaf, nic_Bps, lat[f"{fabric_kind}_leaf"], fabric_kind)
    for (rail, pod) in attached:
        nodes.append((_leaf_id(rail, pod, n_pods), {"kind": "leaf", "rail": rail, "pod": pod}))
    if len(attached) > 1:
        up_ports = fab.switch_ports.value - fab.leaf_down_ports.value
        n_spines = max(1, min(up_ports, math.floor(min(attached.values()) / oversub + 1e-9)))
        meta["n_spines"] = n_spines
        for s in range(n_spines):
            nodes.append((f"spine{s}", {"kind": "spine", "index": s}))
        for (rail, pod), count in attached.items():
            per_spine = count * nic_Bps / oversub / n_spines
            for s in range(n_spines):
                _link(edges, _leaf_id(rail, pod, n_pods), f"spine{s}", per_spine, lat[f"{fabric_kind}_spine"],
                      fabric_kind)
    return _assemble(nodes, edges, meta)


def _leaf_id(rail: int, pod: int, n_pods: int) -> str:
    return f"leaf{rail}" if n_pods == 1 else f"leaf{rail}.{pod}"


# ----------------------------------------------------------------------------- custom topologies

def load_custom_topology(path: str | Path) -> nx.DiGraph:
    """Read a topology YAML (`nodes:` with id/kind, `links:` with a, b, capacity_GBps per
    direction, latency_us, kind, bidirectional=true) into a graph that follows the conventions
    above, and check that every GPU reaches every other."""
    file = str(path)
    data, tree = read_yaml(Path(path))
    topo = parse_record(CustomTopology, data, file=file, node=tree)

    def fail(problem: str, loc: tuple, fix: str) -> MoesimError:
        line = line_of(tree, loc)
        return MoesimError(problem, file=f"{file}:{line}" if line else file,
                           field=".".join(str(k) for k in loc), fix=fix)

    seen: dict[str, int] = {}
    for i, node in enumerate(topo.nodes):
        if node.id in seen:
            raise fail(f"node id {node.id!r} is listed twice (first at nodes.{seen[node.id]})",
                       ("nodes", i, "id"), "give every node a unique id")
        seen[node.id] = i
    if not any(n.kind == "gpu" for n in topo.nodes):
        raise fail("the topology has no GPU", ("nodes",), "add nodes with kind: gpu")
    gpu_order = [n.id for n in topo.nodes if n.kind == "gpu"]
    index = {gid: i for i, gid in enumerate(gpu_order)}
    nodes = [(n.id, {"kind": n.kind, "index": index[n.id]} if n.kind == "gpu" else {"kind": n.kind})
             for n in topo.nodes]
    edges: list = []
    pairs: dict[tuple[str, str], int] = {}
    for i, link in enumerate(topo.links):
        for end in ("a", "b"):
            name = getattr(link, end)
            if name not in seen:
                raise fail(f"link endpoint {name!r} is not a listed node", ("links", i, end),
                           f"add it under nodes: or use one of: {', '.join(sorted(seen, key=natural_key)[:8])}")
        if link.a == link.b:
            raise fail(f"link from {link.a!r} to itself", ("links", i, "b"), "connect two different nodes")
        attrs = {"capacity_Bps": link.capacity_GBps * units.GBps, "latency_s": link.latency_us * units.us,
                 "kind": link.kind}
        directions = [(link.a, link.b), (link.b, link.a)] if link.bidirectional else [(link.a, link.b)]
        for u, v in directions:
            if (u, v) in pairs:
                raise fail(f"link {u} -> {v} is given twice (also links.{pairs[(u, v)]})", ("links", i),
                           "merge them into one link with the summed capacity")
            pairs[(u, v)] = i
            edges.append((u, v, dict(attrs)))
    graph = _assemble(nodes, edges, {"structure": "custom", "name": topo.name or Path(path).stem,
                                     "gpus": len(gpu_order)})
    check_connected(graph, file=file)
    return graph


# ----------------------------------------------------------------------------- queries

def gpu_nodes(graph: nx.DiGraph) -> list[str]:
    """GPU node ids in global GPU order (attribute `index`)."""
    found = []
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") == "gpu":
            if "index" not in attrs:
                raise MoesimError(f"GPU node {node!r} has no 'index'", field=f"nodes.{node}.index",
                                  fix="give every GPU node its global GPU number")
            found.append((attrs["index"], node))
    found.sort()
    if [i for i, _ in found] != list(range(len(found))):
        raise MoesimError("GPU indices are not 0..G-1", field="nodes.index",
                          fix="number the GPU nodes 0, 1, 2, ... without gaps")
    return [node for _, node in found]


def check_connected(graph: nx.DiGraph, file: str | None = None) -> None:
    """Raise unless every GPU has a directed path to every other GPU."""
    gpus = gpu_nodes(graph)
    if not gpus:
        raise MoesimError("the topology has no GPU", file=file, field="nodes", fix="add nodes with kind: gpu")
    root = gpus[0]
    forward = nx.descendants(graph, root)
    backward = nx.ancestors(graph, root)
    for gpu in gpus[1:]:
        if gpu not in forward:
            raise MoesimError(f"{root} cannot reach {gpu}", file=file, field="links",
                              fix=f"add a link (or a bidirectional one) on a path from {root} to {gpu}")
        if gpu not in backward:
            raise MoesimError(f"{gpu} cannot reach {root}", file=file, field="links",
                              fix=f"add a link (or a bidirectional one) on a path from {gpu} to {root}")


def link_table(graph: nx.DiGraph) -> LinkTable:
    """Number the edges of `graph`; raise on a missing or invalid attribute."""
    edges = sorted(graph.edges, key=_edge_key)
    capacity = np.empty(len(edges), dtype=np.float64)
    latency = np.empty(len(edges), dtype=np.float64)
    kinds = []
    for i, (u, v) in enumerate(edges):
        attrs = graph.edges[u, v]
        for name in EDGE_ATTRS:
            if name not in attrs:
                raise MoesimError(f"link {u} -> {v} has no '{name}'", field=f"links.{u}->{v}.{name}",
                                  fix=f"give every link {', '.join(EDGE_ATTRS)}")
        cap, lat, kind = attrs["capacity_Bps"], attrs["latency_s"], attrs["kind"]
        if not (isinstance(cap, (int, float)) and math.isfinite(cap) and cap > 0):
            raise MoesimError(f"link {u} -> {v} has capacity_Bps {cap!r}", field=f"links.{u}->{v}.capacity_Bps",
                              fix="give a finite capacity > 0 in bytes/s")
        if not (isinstance(lat, (int, float)) and math.isfinite(lat) and lat >= 0):
            raise MoesimError(f"link {u} -> {v} has latency_s {lat!r}", field=f"links.{u}->{v}.latency_s",
                              fix="give a finite latency >= 0 in seconds")
        if kind not in LINK_KINDS:
            raise MoesimError(f"link {u} -> {v} has kind {kind!r}", field=f"links.{u}->{v}.kind",
                              fix=f"use one of: {', '.join(LINK_KINDS)}")
        capacity[i], latency[i] = cap, lat
        kinds.append(kind)
    return LinkTable(capacity_Bps=capacity, latency_s=latency, kind=kinds, edges=edges,
                     index={e: i for i, e in enumerate(edges)})


def _successor(graph: nx.DiGraph, node: str, kind: str) -> list[str]:
    return sorted((v for v in graph.successors(node) if graph.nodes[v].get("kind") == kind), key=natural_key)


def _check_gpu(gpu: int, count: int, field: str) -> int:
    if isinstance(gpu, bool) or not isinstance(gpu, (int, np.integer)) or not 0 <= gpu < count:
        raise MoesimError(f"GPU {gpu!r} is not in 0..{count - 1}", field=field,
                          fix=f"give a GPU number below {count}")
    return int(gpu)


def route(graph: nx.DiGraph, table: LinkTable, src_gpu: int, dst_gpu: int) -> np.ndarray:
    """Link indices (int32[hops]) of the path from GPU `src_gpu` to GPU `dst_gpu`.

    Built clusters follow the structured route of the module docstring, walking node names; a
    custom topology takes the lowest-latency path (networkx Dijkstra, deterministic ties).
    """
    gpus = gpu_nodes(graph)
    s = _check_gpu(src_gpu, len(gpus), "src_gpu")
    d = _check_gpu(dst_gpu, len(gpus), "dst_gpu")
    if s == d:
        return np.empty(0, dtype=np.int32)
    src, dst = gpus[s], gpus[d]
    if graph.graph.get("structure") != "cluster":
        return path_links(table, nx.shortest_path(graph, src, dst, weight="latency_s"))
    if graph.nodes[src]["domain"] == graph.nodes[dst]["domain"]:
        return path_links(table, [src, _successor(graph, src, "nvswitch")[0], dst])
    i = (s + d) % graph.graph["nics_per_gpu"]
    nic_s, nic_d = _successor(graph, src, "nic")[i], _successor(graph, dst, "nic")[i]
    leaf_s, leaf_d = _successor(graph, nic_s, "leaf")[0], _successor(graph, nic_d, "leaf")[0]
    middle = [leaf_s]
    if leaf_s != leaf_d:
        spines = _successor(graph, leaf_s, "spine")
        middle += [spines[(s + d) % len(spines)], leaf_d]
    return path_links(table, [src, nic_s, *middle, nic_d, dst])


def _structure_arrays(graph: nx.DiGraph, table: LinkTable) -> dict:
    """Per-GPU and per-leaf link indices that make every structured route arithmetic (computed
    once per graph and link table, then kept in the graph's metadata)."""
    cached = graph.graph.get("_route_arrays")
    if cached is not None and cached[0] is table:
        return cached[1]
    out = _build_structure_arrays(graph, table)
    graph.graph["_route_arrays"] = (table, out)
    return out


def _build_structure_arrays(graph: nx.DiGraph, table: LinkTable) -> dict:
    gpus = gpu_nodes(graph)
    G, K = len(gpus), graph.graph["nics_per_gpu"]
    ix = table.index
    out = {"domain": np.empty(G, np.int64), "gpu_up": np.empty(G, np.int32), "gpu_down": np.empty(G, np.int32)}
    for g, gid in enumerate(gpus):
        sw = _successor(graph, gid, "nvswitch")[0]
        out["domain"][g] = graph.nodes[gid]["domain"]
        out["gpu_up"][g], out["gpu_down"][g] = ix[(gid, sw)], ix[(sw, gid)]
    leaves = sorted((n for n, a in graph.nodes(data=True) if a.get("kind") == "leaf"), key=natural_key)
    if not leaves:
        return out
    leaf_num = {leaf: i for i, leaf in enumerate(leaves)}
    for name in ("nic_up", "nic_down", "leaf_in", "leaf_out", "leaf_of"):
        out[name] = np.empty((G, K), np.int32)
    for g, gid in enumerate(gpus):
        for i, nic in enumerate(_successor(graph, gid, "nic")):
            leaf = _successor(graph, nic, "leaf")[0]
            out["nic_up"][g, i], out["nic_down"][g, i] = ix[(gid, nic)], ix[(nic, gid)]
            out["leaf_in"][g, i], out["leaf_out"][g, i] = ix[(nic, leaf)], ix[(leaf, nic)]
            out["leaf_of"][g, i] = leaf_num[leaf]
    spines = sorted((n for n, a in graph.nodes(data=True) if a.get("kind") == "spine"), key=natural_key)
    out["spine_up"] = np.array([[ix[(leaf, sp)] for sp in spines] for leaf in leaves], np.int32).reshape(len(leaves), -1)
    out["spine_down"] = np.array([[ix[(sp, leaf)] for sp in spines] for leaf in leaves], np.int32).reshape(len(leaves), -1)
    return out


def routes(graph: nx.DiGraph, table: LinkTable, pairs) -> tuple[np.ndarray, np.ndarray]:
    """Paths of many (src, dst) GPU pairs in CSR form: pair p crosses links[ptr[p]:ptr[p+1]].

    pairs: int[P, 2]. Returns (ptr int64[P+1], links int32[nnz]), equal to `route` per pair.
    Built clusters are routed arithmetically (vectorised, ~1M pairs in well under a second);
    custom topologies pair by pair.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or (pairs.size and not np.issubdtype(pairs.dtype, np.integer)):
        raise MoesimError(f"pairs must be an integer array of shape [P, 2], got shape {pairs.shape} dtype "
                          f"{pairs.dtype}", field="pairs", fix="pass np.array([[src, dst], ...])")
    P = len(pairs)
    G = graph.graph.get("gpus") if graph.graph.get("structure") == "cluster" else len(gpu_nodes(graph))
    if P and (pairs.min() < 0 or pairs.max() >= G):
        bad = pairs[(pairs < 0) | (pairs >= G)][0]
        raise MoesimError(f"GPU {int(bad)} is not in 0..{G - 1}", field="pairs", fix=f"give GPU numbers below {G}")
    if graph.graph.get("structure") != "cluster":
        paths = [route(graph, table, int(a), int(b)) for a, b in pairs]
        ptr = np.zeros(P + 1, np.int64)
        ptr[1:] = np.cumsum([len(p) for p in paths])
        links = np.concatenate(paths).astype(np.int32) if paths else np.empty(0, np.int32)
        return ptr, links
    arr = _structure_arrays(graph, table)
    s, d = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    hops = np.full((P, 6), -1, np.int32)
    differ = s != d
    intra = differ & (arr["domain"][s] == arr["domain"][d])
    inter = differ & ~intra
    hops[:, 0] = np.where(intra, arr["gpu_up"][s], -1)
    hops[:, 1] = np.where(intra, arr["gpu_down"][d], -1)
    if inter.any():
        if "leaf_of" not in arr:
            raise MoesimError("pairs cross NVLink domains but the graph has no scale-out network", field="pairs",
                              fix="build the cluster with build_cluster")
        i = (s + d) % graph.graph["nics_per_gpu"]
        ls, ld = arr["leaf_of"][s, i], arr["leaf_of"][d, i]
        cross = inter & (ls != ld)
        hops[:, 0] = np.where(inter, arr["nic_up"][s, i], hops[:, 0])
        hops[:, 1] = np.where(inter, arr["leaf_in"][s, i], hops[:, 1])
        if cross.any():
            sp = (s + d) % arr["spine_up"].shape[1]
            hops[:, 2] = np.where(cross, arr["spine_up"][ls, sp], -1)
            hops[:, 3] = np.where(cross, arr["spine_down"][ld, sp], -1)
        hops[:, 4] = np.where(inter, arr["leaf_out"][d, i], -1)
        hops[:, 5] = np.where(inter, arr["nic_down"][d, i], -1)
    valid = hops >= 0
    ptr = np.zeros(P + 1, np.int64)
    np.cumsum(valid.sum(axis=1), out=ptr[1:])
    return ptr, hops[valid]
