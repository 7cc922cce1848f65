"""Time of one max-min rate solve (Numba kernel and NumPy twin) for a uniform all-to-all, in one run.

Synthetic two-tier fabric, built here from arrays (no networkx, so it does not depend on
`moesim.cluster.topology`): GPUs sit in nodes of 8 (one node of 72 for N = 72, an NVL72 rack). Each GPU
has an NVLink up and down link to its node switch (450 GB/s each way) and a NIC up and down link
(50 GB/s, 400 Gb/s) to the leaf of its rail (rail = local GPU index). Every leaf connects to each
of S = clamp(nodes / 4, 2, 8) spines by an up and a down link of (nodes x 50 GB/s) / S, so the
fabric is non-blocking. Intra-node flows cross NVLink up + NVLink down; inter-node flows cross
NIC up, leaf->spine, spine->leaf, NIC down, always through spine (src + dst) % S, even between
GPUs of the same rail.
All-to-all: N (N - 1) flows, every ordered pair of distinct GPUs. Kernel and twin are checked to
agree (rel 1e-9) before either is timed; times are the best of `repeats`, after a warm-up call.
Run: `python -m moesim.bench.maxmin_kernel` (prints a table, then JSON).
"""
from __future__ import annotations

import json

import numpy as np

from moesim.core.timing import best_seconds
from moesim.kernels import maxmin, maxmin_reference

NVLINK_BPS, NIC_BPS = 450e9, 50e9
NUMPY_MAX_GPUS = 1024  # the twin is timed at every size up to this many GPUs




def all_to_all_fabric(n_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(capacity float64[L], flow_ptr int64[F+1], flow_links int32[nnz], fabric parameters) of the
    all-to-all on the fabric in the module docstring; flows in (src, dst) row-major order."""
    per_node = 72 if n_gpus == 72 else min(8, n_gpus)
    nodes = n_gpus // per_node
    spines = int(np.clip(nodes // 4, 2, 8))
    # link ids: NVLink up, NVLink down, NIC up, NIC down (one block of N each), then leaf->spine
    # [rail, spine] and spine->leaf [spine, rail]
    nvl_up, nvl_down, nic_up, nic_down = (np.arange(n_gpus) + k * n_gpus for k in range(4))
    leaf_up0 = 4 * n_gpus
    leaf_down0 = leaf_up0 + per_node * spines
    n_links = leaf_down0 + spines * per_node
    capacity = np.empty(n_links)
    capacity[:2 * n_gpus] = NVLINK_BPS
    capacity[2 * n_gpus:leaf_up0] = NIC_BPS
    capacity[leaf_up0:] = nodes * NIC_BPS / spines

    src, dst = np.divmod(np.arange(n_gpus * n_gpus, dtype=np.int64), n_gpus)
    src, dst = src[src != dst], dst[src != dst]
    intra = src // per_node == dst // per_node
    spine = (src + dst) % spines
    path = np.stack([nic_up[src], leaf_up0 + (src % per_node) * spines + spine,
                     leaf_down0 + spine * per_node + dst % per_node, nic_down[dst]], axis=1)
    path[intra, 0], path[intra, 1] = nvl_up[src[intra]], nvl_down[dst[intra]]
    lengths = np.where(intra, 2, 4)
    flow_ptr = np.zeros(src.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=flow_ptr[1:])
    flow_links = path[np.arange(4)[None, :] < lengths[:, None]].astype(np.int32)
    params = {"gpus_per_node": per_node, "nodes": nodes, "spines": spines, "links": n_links,
              "nvlink_Bps": NVLINK_BPS, "nic_Bps": NIC_BPS, "leaf_spine_Bps": float(capacity[-1])}
    return capacity, flow_ptr, flow_links, params


def network_benchmark(sizes=(8, 72, 256, 1024), repeats: int = 2) -> dict:
    """Seconds per max-min solve of a uniform all-to-all, kernel and twin, at each GPU count."""
    rows = []
    for n in sizes:
        capacity, flow_ptr, flow_links, params = all_to_all_fabric(n)
        rates = maxmin.maxmin_rates(capacity, flow_ptr, flow_links)  # warm-up: compile or load cache
        time_twin = n <= NUMPY_MAX_GPUS
        if time_twin:
            twin = maxmin_reference.maxmin_rates(capacity, flow_ptr, flow_links)
            if not np.allclose(rates, twin, rtol=1e-9, atol=0):
                raise RuntimeError(f"maxmin_rates differs from its NumPy twin at {n} GPUs")
        solve_s = best_seconds(lambda: maxmin.maxmin_rates(capacity, flow_ptr, flow_links), repeats)
        numpy_s = (best_seconds(lambda: maxmin_reference.maxmin_rates(capacity, flow_ptr, flow_links), repeats)
                   if time_twin else None)
        rows.append({"gpus": n, "flows": int(flow_ptr.size - 1), "link_entries": int(flow_links.size),
                     **{k: params[k] for k in ("gpus_per_node", "nodes", "spines", "links")},
                     "distinct_rates": int(np.unique(rates).size),
                     "solve_s": solve_s, "numpy_solve_s": numpy_s,
                     "speedup_vs_numpy": numpy_s / solve_s if numpy_s else None})
    return {"repeats": repeats, "nvlink_Bps": NVLINK_BPS, "nic_Bps": NIC_BPS, "network": rows}


def _table(result: dict) -> str:
    cols = ["gpus", "flows", "link_entries", "spines", "distinct_rates", "solve_s", "numpy_solve_s",
            "speedup_vs_numpy"]
    lines = ["  ".join(f"{c:>16}" for c in cols)]
    for row in result["network"]:
        cells = [row[c] for c in cols]
        lines.append("  ".join(f"{v:>16.4g}" if isinstance(v, float) else f"{str(v):>16}" for v in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    out = network_benchmark()
    print(_table(out))
    print(json.dumps(out, indent=2))
