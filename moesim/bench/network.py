"""`moesim bench network`: one max-min solve of a uniform all-to-all on moesim's own topologies.

8, 256 and 1024 GPUs are DGX H100 clusters (rail-optimised fat tree beyond one node); 72 is one
GB200 NVL72 rack. Paths come from `moesim.cluster.topology.routes` (not timed); the solve is timed for
the Numba kernel and its NumPy twin in the same run, after a warm-up, and the two are checked to
agree before timing (nccl-tests style: correctness first).
"""
from __future__ import annotations

import numpy as np

from moesim.cluster.topology import build_cluster, link_table, routes
from moesim.core.timing import best_seconds
from moesim.kernels import maxmin, maxmin_reference
from moesim.specs.hardware import load_system

SYSTEM_FOR = {72: "gb200-nvl72"}




def network_benchmark(sizes=(8, 72, 256, 1024), repeats: int = 2) -> dict:
    rows = []
    for n in sizes:
        system_id = SYSTEM_FOR.get(n, "dgx-h100")
        graph = build_cluster(load_system(system_id), n)
        table = link_table(graph)
        g = np.arange(n)
        src, dst = np.meshgrid(g, g, indexing="ij")
        mask = src != dst
        ptr, links = routes(graph, table, np.stack([src[mask], dst[mask]], axis=1))
        cap = table.capacity_Bps
        rates = maxmin.maxmin_rates(cap, ptr, links)
        twin = maxmin_reference.maxmin_rates(cap, ptr, links)
        if not np.allclose(rates, twin, rtol=1e-9, atol=0):
            raise RuntimeError(f"max-min kernel and NumPy twin disagree at {n} GPUs")
        solve = best_seconds(lambda: maxmin.maxmin_rates(cap, ptr, links), repeats)
        numpy_solve = best_seconds(lambda: maxmin_reference.maxmin_rates(cap, ptr, links), repeats)
        rows.append({"gpus": n, "system": system_id, "flows": int(len(ptr) - 1), "links": int(len(cap)),
                     "link_entries": int(len(links)), "solve_s": solve, "numpy_solve_s": numpy_solve,
                     "speedup_vs_numpy": numpy_solve / solve})
    return {"repeats": repeats, "network": rows}
