"""Flow completion times on a shared fabric: max-min fair rates, re-solved whenever a flow starts or ends.

The model is flow-level (no packets): each flow is a path of links and a size in bytes; the flows
active at a moment share every link max-min fairly (progressive filling, `moesim.kernels.maxmin`),
the rates stay constant until the next flow starts or finishes, and then are solved again over the
new active set. This is the fabric model of flow-level simulators such as SimGrid's (Velho et al.,
"On the validity of flow-level TCP network models for grid and cloud simulations", TOMACS 2013).

Conventions:
- `capacity[L]` in bytes/s, one per link of the caller's flat link table (`topology`).
- Paths in CSR form: flow f crosses `flow_links[flow_ptr[f]:flow_ptr[f+1]]`.
- Latency is a pure delay before the first byte moves: flow f holds no bandwidth until
  `start_s[f] + latency_s[f]`, then sends `size_bytes[f]` at its max-min rate. `latency_s` is the
  path latency plus the per-message software latency, added by the caller.
- A zero-size flow, and a flow with no links (GPU-local, rate +inf), completes at
  `start_s + latency_s`. A flow held at rate 0 by a zero-capacity link never completes (+inf).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from moesim.core.errors import MoesimError
from moesim.kernels import maxmin, maxmin_reference

COMPLETION_RTOL = 1e-12  # a flow with at most this fraction of its bytes left has finished
_INT32_MAX = np.iinfo(np.int32).max


def _float_array(values, n: int, field: str, *, allow_negative: bool = False) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape not in ((), (n,)):
        raise MoesimError(f"{field} must be a scalar or hold one value per flow ({n}), got shape {arr.shape}",
                          field=field, fix=f"pass {n} values, in flow order")
    arr = np.ascontiguousarray(np.broadcast_to(arr, (n,)))
    if not np.all(np.isfinite(arr)):
        raise MoesimError(f"{field} must be finite, got {arr[~np.isfinite(arr)][0]}", field=field,
                          fix="pass finite numbers")
    if not allow_negative and arr.size and arr.min() < 0:
        raise MoesimError(f"{field} must be >= 0, got {arr.min()} at index {int(arr.argmin())}", field=field,
                          fix="pass values >= 0")
    return arr


def _csr(flow_ptr, flow_links) -> tuple[np.ndarray, np.ndarray]:
    """(int64[F+1], int32[nnz]) after checking the CSR shape; link ids are checked against L later."""
    ptr, links = np.asarray(flow_ptr), np.asarray(flow_links)
    if ptr.ndim != 1 or ptr.size < 1 or (ptr.size > 1 and not np.issubdtype(ptr.dtype, np.integer)):
        raise MoesimError(f"flow_ptr must be a 1-D integer array of F+1 offsets, got shape {ptr.shape} "
                          f"dtype {ptr.dtype}", field="flow_ptr", fix="pass np.int64 offsets starting at 0")
    ptr = ptr.astype(np.int64)
    if ptr[0] != 0 or np.any(np.diff(ptr) < 0):
        raise MoesimError("flow_ptr must start at 0 and never decrease", field="flow_ptr",
                          fix="build it as concatenate([[0], cumsum(path lengths)])")
    if links.ndim != 1 or (links.size and not np.issubdtype(links.dtype, np.integer)):
        raise MoesimError(f"flow_links must be a 1-D integer array, got shape {links.shape} dtype {links.dtype}",
                          field="flow_links", fix="pass link ids as np.int32")
    if links.size != ptr[-1]:
        raise MoesimError(f"flow_ptr ends at {ptr[-1]} but flow_links has {links.size} entries",
                          field="flow_links", fix="make flow_ptr[-1] equal len(flow_links)")
    if links.size and (links.min() < 0 or links.max() > _INT32_MAX):
        raise MoesimError(f"link ids must lie in [0, {_INT32_MAX}], got {links.min()}..{links.max()}",
                          field="flow_links", fix="use indices into the capacity array")
    return ptr, np.ascontiguousarray(links, dtype=np.int32)


def _capacity(capacity) -> np.ndarray:
    cap = np.ascontiguousarray(capacity, dtype=np.float64)
    if cap.ndim != 1:
        raise MoesimError(f"capacity must be 1-D (one value per link), got shape {cap.shape}", field="capacity",
                          fix="pass a float64[L] array of link capacities in bytes/s")
    return _float_array(cap, cap.size, "capacity")


def _check_link_ids(flow_links: np.ndarray, n_links: int) -> None:
    if flow_links.size and flow_links.max() >= n_links:
        raise MoesimError(f"link id {flow_links.max()} is out of range for {n_links} links", field="flow_links",
                          fix=f"use link ids in [0, {n_links - 1}], one per capacity entry")


@dataclass(frozen=True, eq=False)
class Flows:
    """F flows: paths (`flow_ptr[F+1]`, `flow_links[nnz]`) and `size_bytes`, `start_s`, `latency_s`
    (each float64[F]; a scalar is broadcast). Validated and converted to contiguous arrays on creation."""

    flow_ptr: np.ndarray
    flow_links: np.ndarray
    size_bytes: np.ndarray
    start_s: np.ndarray
    latency_s: np.ndarray

    def __post_init__(self):
        ptr, links = _csr(self.flow_ptr, self.flow_links)
        n = ptr.size - 1
        object.__setattr__(self, "flow_ptr", ptr)
        object.__setattr__(self, "flow_links", links)
        object.__setattr__(self, "size_bytes", _float_array(self.size_bytes, n, "flows.size_bytes"))
        object.__setattr__(self, "start_s", _float_array(self.start_s, n, "flows.start_s", allow_negative=True))
        object.__setattr__(self, "latency_s", _float_array(self.latency_s, n, "flows.latency_s"))

    @property
    def n_flows(self) -> int:
        return self.flow_ptr.size - 1

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]], size_bytes, start_s=0.0, latency_s=0.0) -> "Flows":
        """Flows from one list of link ids per flow (small cases and tests; large callers build CSR)."""
        lengths = np.array([len(p) for p in paths], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        links = np.array([l for p in paths for l in p], dtype=np.int64)
        return cls(ptr, links, size_bytes, start_s, latency_s)


def solve_rates(capacity, flow_ptr, flow_links, *, use_numba: bool = True) -> np.ndarray:
    """float64[F]: max-min fair rate in bytes/s of each flow (+inf for a flow with no links)."""
    cap = _capacity(capacity)
    ptr, links = _csr(flow_ptr, flow_links)
    _check_link_ids(links, cap.size)
    return _solve(cap, ptr, links, use_numba)


def _solve(cap, ptr, links, use_numba: bool) -> np.ndarray:
    return (maxmin.maxmin_rates if use_numba else maxmin_reference.maxmin_rates)(cap, ptr, links)


def _sub_csr(ptr: np.ndarray, links: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paths of flows `idx` as their own CSR, gathered in O(their entries)."""
    lo = ptr[idx]
    lengths = ptr[idx + 1] - lo
    sub_ptr = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=sub_ptr[1:])
    gather = np.repeat(lo - sub_ptr[:-1], lengths) + np.arange(sub_ptr[-1], dtype=np.int64)
    return sub_ptr, links[gather]


class RateSegment(NamedTuple):
    """An interval [start_s, end_s) with constant rates: flows `flow_ids[A]` at `rates_Bps[A]`."""

    start_s: float
    end_s: float
    flow_ids: np.ndarray
    rates_Bps: np.ndarray


def _simulate(capacity, flows: Flows, use_numba: bool, record: bool) -> tuple[np.ndarray, list[RateSegment]]:
    cap = _capacity(capacity)
    if not isinstance(flows, Flows):
        raise MoesimError(f"flows must be a moesim.costs.network.Flows, got {type(flows).__name__}", field="flows",
                          fix="build it with Flows(...) or Flows.from_paths(...)")
    _check_link_ids(flows.flow_links, cap.size)
    ptr, links, size = flows.flow_ptr, flows.flow_links, flows.size_bytes
    ready = flows.start_s + flows.latency_s
    completion = np.full(flows.n_flows, np.inf)
    instant = (size == 0) | (np.diff(ptr) == 0)
    completion[instant] = ready[instant]
    waiting = np.flatnonzero(~instant)
    waiting = waiting[np.argsort(ready[waiting], kind="stable")]
    waiting_ready = ready[waiting]
    remaining = size.copy()
    segments: list[RateSegment] = []
    active = np.empty(0, dtype=np.int64)
    nxt = 0  # waiting[nxt:] have not started
    t = -np.inf
    while nxt < waiting.size or active.size:
        if active.size == 0:
            t = max(t, waiting_ready[nxt])
        admit = int(np.searchsorted(waiting_ready, t, side="right"))
        if admit > nxt:
            active = np.concatenate([active, waiting[nxt:admit]])
            nxt = admit
        rates = _solve(cap, *_sub_csr(ptr, links, active), use_numba)
        with np.errstate(divide="ignore"):
            to_finish = remaining[active] / rates
        first_finish = to_finish.min()
        next_start = waiting_ready[nxt] if nxt < waiting.size else np.inf
        t_next = min(t + first_finish, next_start)
        if t_next == np.inf:  # every remaining flow is stuck at rate 0
            break
        moved = rates * (t_next - t)
        remaining[active] -= moved
        done = remaining[active] <= COMPLETION_RTOL * size[active]
        if t + first_finish <= next_start:
            done |= to_finish <= first_finish * (1 + COMPLETION_RTOL)
        if record:
            segments.append(RateSegment(float(t), float(t_next), active.copy(), rates))
        finished = active[done]
        completion[finished] = t_next
        remaining[finished] = 0.0
        active = active[~done]
        t = t_next
    return completion, segments


def complete_flows(capacity, flows: Flows, *, use_numba: bool = True) -> np.ndarray:
    """float64[F]: the time each flow delivers its last byte (s, same clock as `flows.start_s`).

    Event-driven: an event is a flow starting to send (`start_s + latency_s`) or finishing; at each
    event the rates of the active flows are re-solved max-min fairly, and time jumps to the earliest
    next start or finish under those rates. Flows starting at the same instant share one event.
    """
    return _simulate(capacity, flows, use_numba, record=False)[0]


def rate_segments(capacity, flows: Flows, *, use_numba: bool = True) -> list[RateSegment]:
    """The piecewise-constant rates behind `complete_flows`, one segment per interval between events
    (for link-utilisation timelines, and for checking that each flow's rate integrates to its size)."""
    return _simulate(capacity, flows, use_numba, record=True)[1]


def collective_time(capacity, flows: Flows, *, use_numba: bool = True) -> float:
    """Seconds from the first flow's start to the last flow's completion (0 for no flows)."""
    if flows.n_flows == 0:
        return 0.0
    return float(complete_flows(capacity, flows, use_numba=use_numba).max() - flows.start_s.min())
