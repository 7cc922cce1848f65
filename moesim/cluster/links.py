"""The flat link table and link-index paths the network solver works on, free of any graph library.

`LinkTable` holds per-link arrays (moesim.cluster.topology.link_table numbers a graph's edges into
one); a path is an int32 array of link indices into it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.core.errors import MoesimError


@dataclass(frozen=True)
class LinkTable:
    """Flat per-link arrays for the network solver, edges in natural sorted order.

    capacity_Bps: float64[L] bytes/s; latency_s: float64[L]; kind: list[str] of L;
    edges: list of L (u, v); index: (u, v) -> link number.
    """

    capacity_Bps: np.ndarray
    latency_s: np.ndarray
    kind: list
    edges: list
    index: dict

    def __len__(self) -> int:
        return len(self.edges)


def path_links(table: LinkTable, path: list[str]) -> np.ndarray:
    try:
        return np.array([table.index[(u, v)] for u, v in zip(path, path[1:])], dtype=np.int32)
    except KeyError as exc:
        raise MoesimError(f"link {exc.args[0][0]} -> {exc.args[0][1]} is not in the link table",
                          field="table", fix="build the table with link_table(graph) of this graph") from None


def path_latency(table: LinkTable, links) -> float:
    """Sum of per-hop latencies along a path of link indices, seconds."""
    return float(table.latency_s[np.asarray(links, dtype=np.int64)].sum())
