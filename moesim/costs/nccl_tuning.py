"""NCCL's own latency and protocol model (tuning.cc), as pure functions of plain numbers.

Why: nccl-tests times of small and medium messages are set by NCCL's per-step latencies and by
the protocol NCCL picks (LL / LL128 / Simple on rings; Simple on NVLS), not by link bandwidth.
The tables are NCCL's own (`topologies/kernels/tables/collective.yaml`, cited to a tag and
commit); the kernel model scales them with fitted, named parameters. Nothing here reads a
measurement.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from moesim.core.loader import data_root, read_yaml

PROTOCOLS = ("ll", "ll128", "simple")


@lru_cache(maxsize=1)
def tables() -> dict[str, Any]:
    data, _ = read_yaml(data_root() / "topologies" / "kernels" / "tables" / "collective.yaml")
    return data


def ring_steps(op: str, n: int) -> int:
    """Sequential ring steps (ncclTopoTuneModel nsteps): 2(n-1) all-reduce, n-1 gather/scatter."""
    return 2 * (n - 1) if op == "all_reduce" else n - 1


def ring_latency_us(op: str, n: int, nodes: int, proto: str) -> float:
    """NCCL's modelled latency of one ring collective (ncclTopoTuneModel + ncclTopoGetAlgoTime)."""
    t = tables()
    nsteps = ring_steps(op, n)
    lat = t["base_latency_us"]["ring"][proto]
    intra = t["hop_latency_us"]["nvlink"]["ring"][proto]
    if nodes <= 1:
        return lat + nsteps * intra
    overhead = t["net_overhead_us"] * (t["net_overhead_simple_factor"] if proto == "simple" else 1.0)
    intra = max(intra, overhead)
    ppn = n / nodes
    inter = t["hop_latency_us"]["net"]["tree" if ppn == 1 else "ring"][proto]
    inter_steps = 2 * (nodes - 1) if op == "all_reduce" else nodes - 1
    lat += (nsteps - inter_steps) * intra + inter_steps * inter
    if proto == "simple" and op == "all_reduce":
        lat *= t["ring_plateau_factor"]
    return lat


def tree_latency_us(n: int, nodes: int, proto: str) -> float:
    """NCCL's modelled latency of a tree all-reduce (ncclTopoTuneModel): up the tree and back down,
    each way the ranks of a node in a chain over NVLink and log2(nodes) network hops."""
    t = tables()
    per_node = n // nodes
    return t["base_latency_us"]["tree"][proto] + 2 * (
        (per_node - 1) * t["hop_latency_us"]["nvlink"]["tree"][proto]
        + (nodes.bit_length() - 1) * t["hop_latency_us"]["net"]["tree"][proto])


def tree_bw_factor(proto: str) -> float:
    """Algorithm bandwidth of a tree all-reduce / the network's rate per GPU (ncclTopoTuneModel's
    refinements, table `tree_*`)."""
    t = tables()
    return t["tree_allreduce_bw_factor"] * t["tree_protocol_bw_factor"][proto] * t["tree_algbw_ratio"]


def nvls_latency_us(nodes: int) -> float:
    """NVLS (Simple only): hwLat NVLink NVLS, plus the network hop across nodes."""
    t = tables()
    lat = t["hop_latency_us"]["nvlink"]["nvls"]["simple"]
    return lat + (t["hop_latency_us"]["net"]["nvls"]["simple"] if nodes > 1 else 0.0)


def ll_max_busbw_GBps(arch: str, nodes: int) -> float:
    """LL's busbw ceiling (llMaxBws): by GPU arch on one node, by CPU (Intel/ARM row) across nodes."""
    t = tables()["ll_max_busbw_GBps"]
    if nodes <= 1:
        return float(t["one_node"].get(arch, t["one_node"]["hopper"]))
    return float(t["two_nodes"] if nodes == 2 else t["more_nodes"])


def protocol_bw_factor(proto: str) -> float:
    return float(tables()["protocol_bw_factor"][proto])


def nvls_pipeline_bytes(arch: str, n: int) -> float:
    """Bytes in flight when the NVLS pipeline is full: one chunk per channel per rank."""
    t = tables()
    return float(n * t["nvls_chunk_bytes"] * t["nvls_channels"].get(arch, t["nvls_channels"]["hopper"]))


def gpus_per_launch(source: str, gpus_per_host: int) -> int:
    """GPUs whose kernels one host thread launches per nccl-tests iteration (rule table by source)."""
    for rule in tables()["launch_mode"]:
        if rule["match"] in source:
            return gpus_per_host if rule["per_process"] == "all" else int(rule["per_process"])
    return 1
