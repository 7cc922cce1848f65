"""Numba kernel for max-min fair flow rates on shared links, by progressive filling (water-filling).

Conventions shared with the NumPy twin in `maxmin_reference.py`:
- `capacity[L]` in bytes/s; flow f crosses the links `flow_links[flow_ptr[f]:flow_ptr[f+1]]`
  (CSR, `flow_ptr[F+1]` int64, `flow_links[nnz]` int32). A link listed twice for one flow is
  crossed twice and counts twice against its capacity (a hairpin path).
- A flow with no links (GPU-local copy) is limited by no link: its rate is +inf, and the caller
  decides what that means (`moesim.costs.network` completes it as soon as it starts).
- Progressive filling (Bertsekas & Gallager, Data Networks, 6.5.2): every unfrozen flow rises at
  the same rate `level`; a link saturates when `frozen_sum + level * n_unfrozen` reaches its
  capacity, where `frozen_sum` is the bandwidth of the flows already frozen on it. The next level
  is therefore the smallest fair share `(capacity - frozen_sum) / n_unfrozen` over the links that
  still carry unfrozen flows; every link whose leftover `capacity - frozen_sum - level * n_unfrozen`
  is within `SATURATION_RTOL * capacity` of zero saturates at that level, and its unfrozen flows
  freeze at `level` (never below the previous level, which rounding could otherwise produce;
  the first link with the smallest share always saturates, so every iteration freezes a flow).
  One iteration per distinct bottleneck level.
- Finding the flows to freeze has two modes with the same result.
  Scan mode (`freeze_scan`) walks the paths of all unfrozen flows and needs no link->flow
  incidence; it wins when a level freezes many flows (a uniform all-to-all freezes almost every
  flow at its first level). It keeps the per-link counts of unfrozen flows by decrementing for
  each flow it freezes or, when the saturated links carry more than half the flows left, by
  recounting the flows it kept: decrements of consecutive flows hit the same link, a serial
  chain through memory that cost 6 of 15 ms of a 1M-flow all-to-all.
  Once an iteration freezes less than `SCAN_MIN_FROZEN` of the entries it scanned, the kernel
  builds the link->flow CSR transpose of the flows still unfrozen, once, and from then on visits
  only the flows of saturated links. Scans therefore cost at most 1/SCAN_MIN_FROZEN times the
  entries they freeze plus one pass: a solve is O(nnz + iterations x active links) either way.
  Building the transpose of all flows up front took 60% of the 1M-flow all-to-all solve.
- Hot loops index with unsigned link ids, so Numba skips the negative-index test (as in
  `traffic.py`); timings in `bench_network.py`.
- `frozen_sum` grows by `level * (flows frozen on the link this iteration)` so kernel and twin
  round identically. Indices are trusted (the caller validates), so nothing is bounds-checked.
"""
from __future__ import annotations

import numpy as np

from moesim.kernels import kernel

SATURATION_RTOL = 1e-12
SCAN_MIN_FROZEN = 0.125  # scan mode goes on while an iteration freezes this share of what it scans


@kernel
def link_incidence(n_links, flow_ptr, flow_links, flows):
    """(link_ptr int64[L+1], link_flows int64[nnz']): the CSR transpose restricted to the flows
    `flows` (int64[K]), each link's flows in the order of `flows`, a flow once per crossing."""
    link_ptr = np.zeros(n_links + 1, dtype=np.int64)
    for j in range(flows.shape[0]):
        f = flows[j]
        for i in range(flow_ptr[f], flow_ptr[f + 1]):
            link_ptr[flow_links[i] + 1] += 1
    for l in range(n_links):
        link_ptr[l + 1] += link_ptr[l]
    fill = link_ptr[:-1].copy()
    link_flows = np.empty(link_ptr[n_links], dtype=np.int64)
    for j in range(flows.shape[0]):
        f = flows[j]
        for i in range(flow_ptr[f], flow_ptr[f + 1]):
            l = flow_links[i]
            link_flows[fill[l]] = f
            fill[l] += 1
    return link_ptr, link_flows


@kernel
def freeze_scan(flow_ptr, flow_links, is_saturated, level, decrement, flows, n_scan, pending, rates, n_unfrozen):
    """Scan mode: freeze at `level` every flow among `flows[:n_scan]` (or flows 0..n_scan-1 when
    `flows` is None, the first scan) that crosses a saturated link, decrementing `n_unfrozen` if
    `decrement`; write the others, in order, to `pending` (which may be `flows` itself) and return
    (kept flows, their entries, entries of the flows frozen). A flow with no links gets +inf.

    Passing None compiles a separate loop without the indirection (Numba specialises on the type),
    which made the first scan of a 1M-flow all-to-all 1.8x faster than a runtime branch."""
    kept = 0
    kept_entries = 0
    froze_entries = 0
    for j in range(n_scan):
        f = j if flows is None else flows[j]
        lo = flow_ptr[f]
        hi = flow_ptr[f + 1]
        if lo == hi:
            rates[f] = np.inf
            continue
        hit = False
        for i in range(lo, hi):
            if is_saturated[np.uint32(flow_links[i])]:
                hit = True
                break
        if hit:
            rates[f] = level
            froze_entries += hi - lo
            if decrement:
                for i in range(lo, hi):
                    n_unfrozen[np.uint32(flow_links[i])] -= 1
        else:
            pending[kept] = f
            kept += 1
            kept_entries += hi - lo
    return kept, kept_entries, froze_entries


@kernel
def maxmin_rates(capacity, flow_ptr, flow_links):
    """float64[F]: the max-min fair rate of every flow (+inf for a flow that crosses no link)."""
    n_links = capacity.shape[0]
    n_flows = flow_ptr.shape[0] - 1
    rates = np.empty(n_flows)  # the first scan writes +inf or a level into every entry
    pending = np.empty(n_flows, dtype=np.int64)  # unfrozen flows, ascending (scan mode, after the first scan)
    n_pending = 0
    first_scan = True  # the first scan walks every flow, so `pending` is never filled with all of them
    n_unfrozen = np.zeros(n_links, dtype=np.int64)
    for i in range(flow_links.shape[0]):
        n_unfrozen[np.uint32(flow_links[i])] += 1
    n_before = n_unfrozen.copy()  # n_unfrozen at the start of the iteration
    frozen_sum = np.zeros(n_links)
    active = np.empty(n_links, dtype=np.int64)  # links that still carry unfrozen flows, ascending
    n_active = 0
    for l in range(n_links):
        if n_unfrozen[l] > 0:
            active[n_active] = l
            n_active += 1
    if n_active == 0:  # no flow crosses a link, so no scan will write the rates
        rates[:] = np.inf
    saturated = np.empty(n_links, dtype=np.int64)
    is_saturated = np.zeros(n_links, dtype=np.bool_)
    transposed = False
    link_ptr = np.zeros(1, dtype=np.int64)
    link_flows = np.zeros(0, dtype=np.int64)
    frozen = np.zeros(0, dtype=np.bool_)
    level = 0.0
    while n_active > 0:
        share_min = np.inf
        first = -1  # the first link with the smallest share always saturates, so the loop ends
        for j in range(n_active):
            l = active[j]
            share = (capacity[l] - frozen_sum[l]) / n_unfrozen[l]
            if share < share_min:
                share_min = share
                first = l
        level = max(level, share_min)
        n_sat = 0
        for j in range(n_active):
            l = active[j]
            if l == first or capacity[l] - frozen_sum[l] - level * n_unfrozen[l] <= SATURATION_RTOL * capacity[l]:
                saturated[n_sat] = l
                n_sat += 1
        if transposed:
            for j in range(n_sat):
                l = saturated[j]
                for k in range(link_ptr[l], link_ptr[l + 1]):
                    f = link_flows[k]
                    if frozen[f]:
                        continue
                    frozen[f] = True
                    rates[f] = level
                    for i in range(flow_ptr[f], flow_ptr[f + 1]):
                        n_unfrozen[flow_links[i]] -= 1
        else:
            for j in range(n_sat):
                is_saturated[saturated[j]] = True
            # crossings of the saturated links: at least the flows about to freeze, at most their count
            # with multiplicity; decrement inline when that is at most half the flows left, else recount
            crossings = 0
            for j in range(n_sat):
                crossings += n_unfrozen[saturated[j]]
            if first_scan:
                decrement = 2 * crossings <= n_flows
                kept, kept_entries, froze_entries = freeze_scan(
                    flow_ptr, flow_links, is_saturated, level, decrement, None, n_flows, pending, rates, n_unfrozen)
                first_scan = False
            else:
                decrement = 2 * crossings <= n_pending
                kept, kept_entries, froze_entries = freeze_scan(
                    flow_ptr, flow_links, is_saturated, level, decrement, pending, n_pending, pending, rates,
                    n_unfrozen)
            n_pending = kept
            for j in range(n_sat):
                is_saturated[saturated[j]] = False
            if not decrement:
                for j in range(n_active):
                    n_unfrozen[active[j]] = 0
                for j in range(n_pending):
                    f = pending[j]
                    for i in range(flow_ptr[f], flow_ptr[f + 1]):
                        n_unfrozen[flow_links[i]] += 1
            if SCAN_MIN_FROZEN * (kept_entries + froze_entries) > froze_entries:
                transposed = True
                link_ptr, link_flows = link_incidence(n_links, flow_ptr, flow_links, pending[:n_pending])
                frozen = np.zeros(n_flows, dtype=np.bool_)
        kept = 0
        for j in range(n_active):
            l = active[j]
            frozen_sum[l] += level * (n_before[l] - n_unfrozen[l])
            n_before[l] = n_unfrozen[l]
            if n_unfrozen[l] > 0:
                active[kept] = l
                kept += 1
        n_active = kept
    return rates
