"""NumPy twins of `moesim.kernels.maxmin`: same names, same arguments, same results, vectorised.

They exist to be read and to check the kernel (tests compare rates to 1e-9); see the kernel
module for the conventions (CSR paths, +inf for a flow with no links, progressive filling).
Each iteration works on the (link, flow) entries of the flows not yet frozen; the kernel's two
ways of finding the flows to freeze (scan, link->flow incidence) give the same sets, so the twin
needs only one.
"""
from __future__ import annotations

import numpy as np

SATURATION_RTOL = 1e-12


def link_incidence(n_links, flow_ptr, flow_links, flows):
    """(link_ptr int64[L+1], link_flows int64[nnz']): the CSR transpose restricted to the flows
    `flows` (int64[K]), each link's flows in the order of `flows`, a flow once per crossing."""
    flows = np.asarray(flows, dtype=np.int64)
    lengths = flow_ptr[flows + 1] - flow_ptr[flows]
    entries = np.repeat(flow_ptr[flows] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    links = np.asarray(flow_links, dtype=np.int64)[entries]
    link_ptr = np.concatenate([[0], np.cumsum(np.bincount(links, minlength=n_links))]).astype(np.int64)
    return link_ptr, np.repeat(flows, lengths)[np.argsort(links, kind="stable")]


def maxmin_rates(capacity, flow_ptr, flow_links):
    """float64[F]: the max-min fair rate of every flow (+inf for a flow that crosses no link)."""
    capacity = np.asarray(capacity, dtype=np.float64)
    n_links = capacity.shape[0]
    lengths = np.diff(flow_ptr)
    rates = np.where(lengths > 0, 0.0, np.inf)
    flow_of = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)  # unfrozen entries only
    links = np.asarray(flow_links, dtype=np.int64)
    n_unfrozen = np.bincount(links, minlength=n_links)
    frozen_sum = np.zeros(n_links)
    level = 0.0
    while links.size:
        active = np.flatnonzero(n_unfrozen > 0)
        left = capacity[active] - frozen_sum[active]
        share = left / n_unfrozen[active]
        first = int(np.argmin(share))
        level = max(level, float(share[first]))
        saturated = left - level * n_unfrozen[active] <= SATURATION_RTOL * capacity[active]
        saturated[first] = True
        on_saturated = np.zeros(n_links, dtype=bool)
        on_saturated[active[saturated]] = True
        newly = np.zeros(rates.size, dtype=bool)
        newly[flow_of[on_saturated[links]]] = True
        rates[newly] = level
        freezing = newly[flow_of]
        counts = np.bincount(links[freezing], minlength=n_links)
        frozen_sum += level * counts
        n_unfrozen -= counts
        links, flow_of = links[~freezing], flow_of[~freezing]
    return rates
