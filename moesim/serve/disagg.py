"""Prefill/decode disaggregation: separate prefill and decode pools, KV sent between them.

The deployment is P prefill and D decode engine instances (one EP group of ep x etp GPUs each,
`serve.run.deployment_shape`), as SGLang's PD mode and NVIDIA Dynamo run them. Prefill instances
have the scenario's split; decode instances have the same one, or a split of their own
(`make_disagg(..., decode_parallel=...)`: real deployments size the pools differently, e.g. a
prefill worker of attention-DP 4 x EP 4 and decode workers of TP 4 x EP 4). The model, system,
dtypes, framework and seed are the scenario's for both pools; each pool has its own step function
(`serve.step_function`, from its own split), KV capacity per rank (`scheduler.kv_capacity_tokens`)
and ranks per instance. GPUs: prefill instances on the first P x (its ep x etp) GPUs of the system,
decode instances after them, so a small deployment keeps its transfers inside a node (NVLink) and
a larger one sends them between nodes (RDMA) exactly where the system's topology puts the split.
A pool's step times are those of its instance simulated alone; where the pools sit changes only
the routes of the KV transfers.

A request's life (SGLang `disaggregation/decode.py`: PreallocQueue -> TransferQueue -> waiting
queue -> running batch; Dynamo routes the same way; every length below is the request's own,
`serve.load.request_lengths`):

1. it arrives at the prefill pool (attention-DP ranks round robin, as in aggregated serving) and
   queues there; a prefill instance is an ordinary continuous-batching instance whose requests
   end with their first token (`Instance` with OSL 1), so the framework's prefill policy, token
   budget and KV admission apply unchanged;
2. when its prompt is done it waits for its decode rank (round robin over the decode pool) to
   reserve ISL + OSL tokens of KV and a running slot - SGLang's decode pre-allocates before the
   prefill side may send;
3. its KV is sent prefill -> decode, routed on the system's topology: every GPU of the decode
   rank receives the part of the KV it stores from a prefill GPU that holds it (`kv_flow_plan`).
   With the same TP on both sides that is one flow per GPU pair, each of the prefill rank's TP
   GPUs sending what it stores (`costs.memory.kv_bytes_per_sequence`: a GQA head share, or the
   whole MLA latent that every TP GPU keeps); with different TP a decode GPU gathers its heads from
   the prefill GPUs that hold them, or (MLA) the whole latent from one of them. The prefill rank
   keeps the request's KV until the transfer ends (SGLang frees it when the sender reports
   success);
4. after the hand-over (`Policy.kv_handoff_s`: the router's dispatch to the decode worker, the
   transfer's set-up and the worker picking the request up, beyond the bytes' flow; a serving
   parameter of the kernel profile) it joins the decode rank's continuous batch from the rank's
   next step on.

TTFT: the first token is computed by the prefill worker but the client receives it from the
decode worker, which streams it when it takes the request into its batch after the transfer
(SGLang's prebuilt batch carries the prefill's token; the client is connected to the decode side
in both SGLang's router and Dynamo). So TTFT = queue + prefill + wait for a decode slot + KV
transfer + hand-over + wait for the decode instance's current step to end; TPOT then counts decode
steps only.

KV transfers as flows in the event loop, not a rate fixed at their start: concurrent transfers
share NICs and NVLink ports, and a rate frozen when a transfer starts would be wrong for its whole
life as soon as another one starts or ends (under load they overlap most of the time). So every
flow start and end re-solves max-min fair rates over the flows in flight (`costs.network.
solve_rates`, the same sharing model as `costs.network.complete_flows`: a flow starts sending
after its path latency, then at its fair share until its last byte). A run of N requests solves
2 N times over the few flows in flight, which costs far less than the steps; the same flows in
flight come back often, so their rates are solved once per run.

Decode instances that step side by side take their single steps without an event each
(`Coasting`): one instance's step ends keep the others stepping one step at a time, so their
steps can be planned together; the run is the per-event loop's, float for float (`COASTING`).
"""
from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Mapping, Optional

import numpy as np

from moesim.cluster.links import path_latency
from moesim.cluster.scenario import Scenario, resolve_scenario
from moesim.cluster.topology import routes
from moesim.core.errors import MoesimError
from moesim.costs.collectives import Fabric, build_fabric
from moesim.costs.memory import kv_bytes_per_sequence
from moesim.costs.network import COMPLETION_RTOL, solve_rates
from moesim.kernels import maxmin
from moesim.serve.load import Load, request_lengths
from moesim.serve.metrics import run_metrics, summary_ms
from moesim.serve.scheduler import (ARRIVAL, FLOW, STEP_END, STRETCH_MIN, WAKE, Clients, EventQueue, Instance,
                                    ItlSamples, Policy, StepPlan, check_finished_once, mark_prefill_start)
from moesim.serve.step_function import StepFunction
from moesim.serve.trace import StepTrace, chrome_trace
from moesim.specs.model import ModelSpec
from moesim.specs.parallelism import ParallelInput

MODES = ("agg", "disagg")
DECODE_SPLIT = ("tp", "ep", "etp")   # the sizes a decode pool may set for itself (pp > 1 is not served)
# payloads of FLOW events: a flow starts sending / the next flow ends / a request's hand-over to decode is done
FLOW_START, FLOW_CHECK, HANDED_OVER = 0, 1, 2
# Decode instances take runs of single steps without an event each (`Coasting`): the same run,
# faster. False: one event per step, the reference the tests compare it with.
COASTING = True


@dataclass(frozen=True)
class Disagg:
    """How many engine instances prefill and how many decode, and the decode pool's own split
    (`decode_parallel`: (size, value) pairs of `DECODE_SPLIT`; None: the scenario's split), and the
    prefill pool's own batch limit per rank (`prefill_max_running`; None: the policy's, as the decode
    pool's): a prefill engine launched with max batch 1 prefills one prompt at a time per rank
    however many wait. `prefix` is how the caller spells options in errors (`make_disagg`)."""

    prefill: int
    decode: int
    decode_parallel: Optional[tuple[tuple[str, int], ...]] = None
    prefill_max_running: Optional[int] = None
    prefix: str = field(default="", compare=False)

    def field_name(self, key: str) -> str:
        """How the caller spells an option, e.g. `--decode-tp` (CLI) or `decode_tp`."""
        return f"{self.prefix}{key if self.prefix == '--' else key.replace('-', '_')}"

    def decode_scenario(self, sc: Scenario) -> Scenario:
        """The scenario one decode instance runs: `sc` itself without a decode split of its own, or
        when that split resolves to the scenario's own (so such a run is the same run, byte for
        byte); else `sc` with the decode split on one instance's GPUs (ep x etp), resolved and
        checked as a scenario is, errors naming the decode options."""
        if self.decode_parallel is None:
            return sc
        given = dict(self.decode_parallel)
        tp, ep = given.get("tp", 1), given.get("ep", 1)
        etp = given.get("etp", tp if ep == 1 else 1)   # resolve_plan's default for an unset etp
        if (ep * etp) % tp:
            raise MoesimError(f"the decode pool's EP group of ep x etp = {ep * etp} GPUs does not hold whole TP "
                              f"groups of {tp}", field=self.field_name("decode-tp"),
                              fix=f"give a decode tp that divides {ep * etp}, or a decode ep x etp that is a multiple "
                                  f"of {tp}")
        raw = sc.input.model_copy(update={"gpus": ep * etp, "parallel": ParallelInput(**given)})
        try:
            dsc = resolve_scenario(raw, source_file=sc.source_file)
            from moesim.serve.run import deployment_shape  # run imports this module: import here
            deployment_shape(dsc)
        except MoesimError as exc:
            size = (exc.field or "").rsplit(".", 1)[-1]
            name = self.field_name(f"decode-{size if size in DECODE_SPLIT else 'ep'}")
            raise MoesimError(f"decode pool: {exc.problem}", field=name, fix=exc.fix) from None
        same = all(getattr(dsc.plan, k) == getattr(sc.plan, k) for k in ("tp", "pp", "ep", "etp"))
        return sc if same else dsc

    def gpus(self, sc: Scenario) -> int:
        return self.prefill * instance_gpus(sc) + self.decode * instance_gpus(self.decode_scenario(sc))

    def to_json(self) -> dict:
        out = {"prefill_instances": self.prefill, "decode_instances": self.decode}
        if self.decode_parallel is not None:
            out["decode_parallel"] = dict(self.decode_parallel)
        if self.prefill_max_running is not None:
            out["prefill_max_running_requests_per_rank"] = self.prefill_max_running
        return out

    def prefill_policy(self, policy: Policy) -> Policy:
        """The policy of a prefill instance: `policy` with the prefill pool's batch limit, if it has one."""
        return policy if self.prefill_max_running is None else replace(policy, max_running=self.prefill_max_running)


def instance_gpus(sc: Scenario) -> int:
    """GPUs of one engine instance: the EP group (ep x etp)."""
    return sc.plan.ep * sc.plan.etp


def _whole(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def make_disagg(mode: str, prefill_workers: Optional[int], decode_workers: Optional[int], *,
                decode_parallel: Optional[Mapping[str, Optional[int]]] = None,
                prefill_max_running: Optional[int] = None, prefix: str = "") -> Optional[Disagg]:
    """The checked pool sizes, or None for aggregated serving. `decode_parallel` gives the decode
    pool a split of its own ({"tp": N, "ep": N, "etp": N}, None values unset): built from the
    given sizes alone, unset ones taking their defaults (tp 1, ep 1, etp as `resolve_plan` sets
    it), as the scenario's own split is rebuilt from flags; nothing given: the scenario's split.
    Whether the split fits the model and divides is checked when it meets the scenario
    (`Disagg.decode_scenario`). `prefix` is how the caller spells its options in errors (the CLI:
    `--`, with dashes). `prefill_max_running` is the prefill pool's own batch limit per rank (`Disagg`)."""
    keys = ("mode", "prefill-workers", "decode-workers", "prefill-max-running") + tuple(
        f"decode-{k}" for k in DECODE_SPLIT)
    name = {k: f"{prefix}{k if prefix == '--' else k.replace('-', '_')}" for k in keys}
    if mode not in MODES:
        raise MoesimError(f"unknown mode {mode!r}", field=name["mode"], fix=f"give one of: {', '.join(MODES)}")
    split = dict(decode_parallel or {})
    unknown = sorted(set(split) - set(DECODE_SPLIT))
    if unknown:
        raise MoesimError(f"a decode pool sets only {', '.join(DECODE_SPLIT)}, not {', '.join(map(str, unknown))}",
                          field=f"{prefix}decode_parallel" if prefix != "--" else "--decode-*",
                          fix=f"give the decode pool's {', '.join(DECODE_SPLIT)}")
    given = {"prefill-workers": prefill_workers, "decode-workers": decode_workers,
             "prefill-max-running": prefill_max_running}
    given.update({f"decode-{k}": split.get(k) for k in DECODE_SPLIT})
    if mode == "agg":
        for key, value in given.items():
            if value is not None:
                what = "a decode pool's split is" if key.startswith("decode-") and key != "decode-workers" \
                    else "worker pools are"
                raise MoesimError(f"{what} only for disaggregated serving", field=name[key],
                                  fix=f"add {name['mode']} disagg, or leave out {name[key]}")
        return None
    for key, value in given.items():
        if value is None:
            if key in ("prefill-workers", "decode-workers"):
                raise MoesimError(f"disaggregated serving needs the number of {key.split('-')[0]} instances",
                                  field=name[key], fix=f"give {name[key]} N (N >= 1)")
            continue
        if not _whole(value):
            raise MoesimError(f"must be a whole number > 0, got {value!r}", field=name[key],
                              fix=f"give {name[key]} 1 or more")
    chosen = tuple((k, int(split[k])) for k in DECODE_SPLIT if split.get(k) is not None)
    return Disagg(int(prefill_workers), int(decode_workers), chosen or None,
                  None if prefill_max_running is None else int(prefill_max_running), prefix)


def kv_bytes_per_gpu(sc: Scenario, isl: int) -> float:
    """Bytes of one request's prompt KV that each GPU of its prefill rank holds and sends (the
    first output token's KV is written by the first decode step, on the decode side)."""
    return kv_bytes_per_sequence(sc, range(sc.model.num_hidden_layers), isl)


def _head_span(model: ModelSpec, tp: int, k: int) -> tuple[Fraction, Fraction]:
    """The part of a layer's KV that TP GPU `k` of `tp` stores, as an interval of [0, 1): its KV
    heads (GQA; split when tp <= heads, one head on tp / heads GPUs each when tp > heads, as
    `costs.memory.kv_share_per_gpu` counts them), or all of it (MLA: every TP GPU keeps the latent)."""
    if model.attention.type == "mla":
        return Fraction(0), Fraction(1)
    heads = model.attention.num_key_value_heads
    if tp <= heads:
        return Fraction(k, tp), Fraction(k + 1, tp)
    head = k * heads // tp
    return Fraction(head, heads), Fraction(head + 1, heads)


def kv_flow_plan(model: ModelSpec, tp_prefill: int, tp_decode: int) -> list[tuple[int, int, float]]:
    """The flows that move one request's KV from a prefill rank of `tp_prefill` GPUs to a decode
    rank of `tp_decode`: (prefill TP index, decode TP index, share of the prefill GPU's KV bytes
    it sends). Each decode GPU receives exactly the heads it stores (`_head_span`), each part from
    one prefill GPU that holds it; where several hold it (replicated heads, or MLA's latent on
    every GPU) the decode GPU's index picks the replica, spreading the senders. With the same TP on
    both sides this is one flow k -> k of the whole share per GPU (share 1.0). Linear-attention
    state, if any, is taken to split as the KV heads do."""
    spans = [_head_span(model, tp_prefill, a) for a in range(tp_prefill)]
    holders: dict = {}
    for a, span in enumerate(spans):
        holders.setdefault(span, []).append(a)
    plan = []
    for b in range(tp_decode):
        lo, hi = _head_span(model, tp_decode, b)
        for (s_lo, s_hi), replicas in holders.items():
            overlap = min(hi, s_hi) - max(lo, s_lo)
            if overlap > 0:
                plan.append((replicas[b % len(replicas)], b, float(overlap / (s_hi - s_lo))))
    return plan


class PoolTimes:
    """`Clients.start`'s time scale for pools of different splits: one request's time as
    `StepFunction.request_s` reckons it, its prompt on the prefill pool's steps and its decode
    steps on the decode pool's, so neither pool's grid is asked for points of the other phase."""

    def __init__(self, prefill: StepFunction, decode: StepFunction):
        self.prefill, self.decode = prefill, decode

    def request_s(self, isl: int, osl: int, batch: int) -> float:
        return self.prefill.prompt_s(isl) + self.decode.decoding_s(isl, osl, batch)


def decode_pool(dsc: Scenario, load: Load, policy: Policy, cache_dir=None) -> tuple[int, int, StepFunction]:
    """(attention-DP ranks per instance, KV capacity per rank, step function) of a decode pool with
    a split of its own, sized as `serve.run.serve` sizes the scenario's (`run.rank_capacity_and_steps`;
    a decode pool reserves whole requests, SGLang's PreallocQueue)."""
    from moesim.serve.run import deployment_shape, rank_capacity_and_steps  # run imports this module
    _, ranks = deployment_shape(dsc)
    kv_capacity, fn = rank_capacity_and_steps(dsc, load, policy, where="one decode rank", kv_admission="whole_request",
                                              cache_dir=cache_dir)
    return ranks, kv_capacity, fn


class Transfers:
    """KV transfers in flight as flows on the fabric, max-min fair (module docstring).

    The run's event loop drives it: `open` gives each new flow's path latency (it starts sending
    that much later: call `start` then), `start` and `check` return the time of the next flow end
    (push a FLOW_CHECK event for it, tagged with `version`); a check whose version is not the
    current one is stale (rates changed since) and does nothing.
    """

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        # float64 capacities, checked once (`solve_rates` of no flow checks them as it would at every solve)
        self._capacity = np.ascontiguousarray(fabric.capacity_Bps, dtype=np.float64)
        solve_rates(self._capacity, np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))
        self._paths: dict = {}
        self._routes: dict[tuple, int] = {}   # a route's links -> its number (pairs on the same links share it)
        self._route_of: dict[tuple, int] = {}   # (src, dst) -> its route's number
        self._solved: dict[tuple, list] = {}   # the routes in flight, in order -> their rates
        self._ids = itertools.count()
        self.links: dict[int, np.ndarray] = {}
        self.route: dict[int, int] = {}
        self.size: dict[int, float] = {}   # flows opened, not sending yet: their bytes
        self.owner: dict[int, int] = {}
        self.left: dict[int, int] = {}    # request -> its flows not yet done
        # the flows in flight, in the order they started, and beside them their routes and bytes left
        self.active: list[int] = []
        self._in_flight: list[int] = []
        self._bytes_left: list[float] = []
        self.rates: list[float] = []
        self.due: list[int] = []          # the flows that end at the next check
        self.clock = 0.0
        self.version = 0

    @property
    def remaining(self) -> dict[int, float]:
        """Bytes left per flow: those in flight as of the last start or check, the others their size."""
        return {**self.size, **dict(zip(self.active, self._bytes_left))}

    def path(self, src: int, dst: int) -> tuple[np.ndarray, float]:
        """(links, latency) of the route from GPU src to GPU dst, routed once per pair."""
        key = (src, dst)
        if key not in self._paths:
            self.route_pairs([key])
        return self._paths[key]

    def route_pairs(self, pairs: list[tuple[int, int]]) -> None:
        """Route (src, dst) GPU pairs not routed yet, in one call (`cluster.topology.routes` routes
        many pairs at the cost of one; a run knows its requests' pairs in advance)."""
        new = list(dict.fromkeys(p for p in pairs if p not in self._paths))
        if not new:
            return
        ptr, links = routes(self.fabric.graph, self.fabric.table, np.array(new))
        if links.size and (links.min() < 0 or links.max() >= self._capacity.size):
            raise AssertionError("a route has a link outside the fabric")
        for k, key in enumerate(new):
            path = np.asarray(links[ptr[k]:ptr[k + 1]], dtype=np.int64)
            self._paths[key] = (path, path_latency(self.fabric.table, path))
            self._route_of[key] = self._routes.setdefault(tuple(path.tolist()), len(self._routes))

    def open(self, req: int, pairs: list[tuple[int, int]], nbytes) -> list[tuple[float, int]]:
        """New flows for request `req`, of `nbytes` each (or one size per pair): [(path latency, flow id)]."""
        sizes = nbytes if isinstance(nbytes, (list, tuple)) else [nbytes] * len(pairs)
        out = []
        for pair, size in zip(pairs, sizes):
            links, latency = self.path(*pair)
            fid = next(self._ids)
            self.links[fid], self.size[fid], self.owner[fid] = links, size, req
            self.route[fid] = self._route_of[pair]
            out.append((latency, fid))
        self.left[req] = len(pairs)
        return out

    def _advance(self, t: float) -> None:
        """Every flow in flight has sent at its rate from the last start or check up to `t`."""
        if self.active:
            dt = t - self.clock
            self._bytes_left = [left - rate * dt for left, rate in zip(self._bytes_left, self.rates)]
        self.clock = t

    def _resolve(self) -> Optional[float]:
        self.version += 1
        if not self.active:
            self.rates, self.due = [], []
            return None
        self.rates = rates = self._rates()
        remaining = self._bytes_left
        if min(rates) > 0.0:   # the few flows in flight: plain divisions (numpy's per-call cost is larger)
            to_finish = [left / rate for left, rate in zip(remaining, rates)]
            first = min(to_finish)
        else:   # a flow held at rate 0 never ends: numpy's division (+inf)
            divided = np.array(remaining) / np.array(rates)
            to_finish, first = divided.tolist(), float(divided.min())
        # A flow whose bytes left rounded below zero has `first` < 0: scaling it would put the bound below the flow
        # itself, no flow would be due and the check would repeat at the same time for ever (a GB200 plan point did).
        bound = first + abs(first) * COMPLETION_RTOL
        self.due = [f for f, left in zip(self.active, to_finish) if left <= bound]
        return self.clock + max(first, 0.0)

    def _rates(self) -> list[float]:
        """Max-min fair rates of the flows in flight (`costs.network.solve_rates`). They depend only
        on the routes in flight, in order, and the same ones come back again and again (a
        request's flows, one transfer at a time): solved once per run for each, by the kernel
        `solve_rates` runs, on the arrays it would pass it (the fabric's capacities and the
        routes' links were checked when they were made, `__init__` and `path`)."""
        key = tuple(self._in_flight)
        rates = self._solved.get(key)
        if rates is None:
            lengths = [len(self.links[f]) for f in self.active]
            ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            links = np.concatenate([self.links[f] for f in self.active]).astype(np.int32)
            rates = self._solved[key] = maxmin.maxmin_rates(self._capacity, ptr, links).tolist()
        return rates

    def start(self, t: float, fid: int) -> Optional[float]:
        """Flow `fid` starts sending at `t`; returns the time of the next flow end."""
        self._advance(t)
        self.active.append(fid)
        self._in_flight.append(self.route[fid])
        self._bytes_left.append(self.size.pop(fid))
        return self._resolve()

    def check(self, t: float, version: int) -> tuple[list[int], Optional[float]]:
        """At a FLOW_CHECK event: (requests whose last flow ended now, time of the next flow end)."""
        if version != self.version:
            return [], None
        self._advance(t)
        ended = set(self.due)
        going = [k for k, f in enumerate(self.active) if f not in ended]
        self.active = [self.active[k] for k in going]
        self._in_flight = [self._in_flight[k] for k in going]
        self._bytes_left = [self._bytes_left[k] for k in going]
        done = []
        for fid in sorted(ended):
            req = self.owner.pop(fid)
            del self.links[fid], self.route[fid]
            self.left[req] -= 1
            if self.left[req] == 0:
                del self.left[req]
                done.append(req)
        return done, self._resolve()


class _Tie(Exception):
    """A coasting decode instance's step ends exactly when another event happens, where which of
    the two comes first can decide the run (`Coasting`): the run is made again without coasting."""


class Coasting:
    """Decode instances of a disaggregated run taking single steps without an event each.

    In the per-event loop an instance that has finished a step plans the next one and stretches it
    over the steps that follow up to the run's next event (`Instance.stretch`); with an event due
    within STRETCH_MIN of its steps it takes a single step. While another decode instance is
    stepping one step at a time, one of that instance's step ends is always due within its step
    time; so while every such stepping instance's steps are shorter than STRETCH_MIN of this one's,
    each step of this one is a single step, planned at the end of the one before, and they can be
    planned at once (`Instance.coast`). Their ends are kept here, not in the event heap, up to the
    coast's last one, a real STEP_END: the next finish, the first step end at or after a request's
    KV arrives (its plan takes the request), or the first step end after the last stepping
    partner stops or takes steps too long for it. Other instances' horizons (`horizon`) count the
    ends kept here as the events they are, and the run records each step as its own (`serve.run.
    Timeline.coasted`, the busy time step by step). The run's floats are the per-event loop's
    (tests/test_serve_fast_paths.py); a kept step end that falls exactly on another event's time, where
    only the per-event loop knows which of the two comes first, makes the run start again without
    coasting (`_Tie`)."""

    MARGIN = 1e-6   # relative: step times are compared with differences of step ends, which round

    def __init__(self, events: EventQueue):
        self.events = events
        self.plans: dict[int, StepPlan] = {}     # coasting instance -> its coast
        self.event: dict[int, int] = {}          # ... -> its STEP_END's number in `events`
        self.shortest: dict[int, float] = {}     # ... -> its shortest step
        self.counts: dict[int, tuple] = {}       # ... -> its (running, waiting, KV, decoding) when it began
        self.stepping: dict[int, float] = {}     # decode instance stepping one step at a time -> its longest step

    def horizon(self, now: float) -> float:
        """When the run's next event happens, the coasts' step ends counted (`EventQueue.next_time`)."""
        h = self.events.next_time()
        for plan in self.plans.values():
            ends = plan.ends
            i = bisect.bisect_left(ends, now)
            if i < len(ends):
                if ends[i] == now and i < len(ends) - 1:
                    raise _Tie
                h = min(h, ends[i])
        return h

    def single(self, e: int, plan: StepPlan, now: float, engine: Instance) -> StepPlan:
        """The plan decode instance `e` (`engine`) takes at `now` for its single step `plan`: that
        step and the ones after it (`Instance.coast`) when another decode instance steps one step
        at a time, each step shorter than STRETCH_MIN of the coast's; else `plan`. Either way `e`
        now steps one step at a time."""
        if any(f != e for f in self.stepping):
            coasted = engine.coast(plan, now)
            if coasted.ends:
                ends = coasted.ends
                gaps = [end - previous for previous, end in zip([now] + ends, ends)]
                shortest = min(gaps) * (1 - self.MARGIN)
                if max(longest for f, longest in self.stepping.items() if f != e) < STRETCH_MIN * shortest:
                    self.plans[e], self.shortest[e] = coasted, shortest
                    self.counts[e] = engine.totals() + (sum(map(len, plan.decodes)),)
                    self._stepping(e, max(gaps) * (1 + self.MARGIN), now)
                    return coasted
        self._stepping(e, plan.duration_s * (1 + self.MARGIN), now)
        return plan

    def _stepping(self, e: int, longest: float, now: float) -> None:
        self.stepping[e] = longest
        for g, shortest in list(self.shortest.items()):
            if g != e and longest >= STRETCH_MIN * shortest:
                self._cut(g, now)

    def stopped(self, e: int, now: float) -> None:
        """Decode instance `e` stops stepping one step at a time at `now` (it idles, or stretches):
        coasts left without a stepping partner end at their first step end after `now`."""
        if self.stepping.pop(e, None) is None:
            return
        for g in list(self.plans):
            if not any(f != g for f in self.stepping):
                self._cut(g, now)

    def arriving(self, e: int, now: float) -> None:
        """A request's KV arrives at decode instance `e` at `now`: a coast ends at its first step end
        at or after `now`, whose plan takes the request."""
        if e in self.plans:
            self._cut(e, now)

    def finished(self, e: int) -> tuple:
        """Decode instance `e`'s coast has reached its last step end (its STEP_END): its counts when
        it began."""
        del self.plans[e], self.event[e], self.shortest[e]
        return self.counts.pop(e)

    def _cut(self, e: int, now: float) -> None:
        plan = self.plans[e]
        k = bisect.bisect_left(plan.ends, now)
        if k < len(plan.ends) - 1:
            if plan.ends[k] == now:
                raise _Tie
            plan.ends = plan.ends[:k + 1]
            self.events.cancel(self.event[e])
            self.event[e] = self.events.push(plan.ends[-1], STEP_END, e)


def run_disagg(sc: Scenario, load: Load, policy: Policy, fn: StepFunction, disagg: Disagg, *, ranks_n: int,
               kv_capacity: int, trace: bool, cache_dir=None) -> dict:
    """The disaggregated event loop (`_run_disagg`): with coasting decode instances (`Coasting`), or
    again without when a coasting step end ties with another event. Not with a trace, whose
    events are written as the run produces them (a coast's steps would come when it ends)."""
    try:
        return _run_disagg(sc, load, policy, fn, disagg, ranks_n=ranks_n, kv_capacity=kv_capacity, trace=trace,
                           cache_dir=cache_dir, coast=COASTING and not trace)
    except _Tie:
        return _run_disagg(sc, load, policy, fn, disagg, ranks_n=ranks_n, kv_capacity=kv_capacity, trace=trace,
                           cache_dir=cache_dir, coast=False)


def _run_disagg(sc: Scenario, load: Load, policy: Policy, fn: StepFunction, disagg: Disagg, *, ranks_n: int,
                kv_capacity: int, trace: bool, cache_dir, coast: bool) -> dict:
    """The disaggregated event loop (module docstring); returns the mode's parts of the Result.
    `fn`, `ranks_n` and `kv_capacity` are the scenario's (the prefill pool's, and the decode pool's
    too unless it has a split of its own: then `decode_pool` builds its own, with `cache_dir`).
    Its `timeline` is the decode pool's (`serve.run.Timeline` over the decode instances: running =
    decoding, KV against the decode pool's capacity); `_requests` has the agg loop's per-request
    `ttft_s`, `e2e_s` and `osl` over the measured requests, besides every phase's times."""
    from moesim.serve.run import Timeline  # run imports this module: import here
    from moesim.sim.provenance import hardware_for
    total = load.total
    isl_of, osl_of = request_lengths(load)
    isl, osl = isl_of.tolist(), osl_of.tolist()
    dsc = disagg.decode_scenario(sc)
    if dsc is sc:
        ranks_d, kv_capacity_d, fn_d = ranks_n, kv_capacity, fn
    else:
        ranks_d, kv_capacity_d, fn_d = decode_pool(dsc, load, policy, cache_dir)
    P, D = disagg.prefill, disagg.decode
    G, tp, G_d, tp_d = instance_gpus(sc), sc.plan.tp, instance_gpus(dsc), dsc.plan.tp
    flows = kv_flow_plan(sc.model, tp, tp_d)
    shares = [share for _, _, share in flows]
    all_gpus = P * G + D * G_d
    fabric = build_fabric(sc.system, all_gpus, hardware_for(sc)[2])
    net = Transfers(fabric)
    bytes_of: dict[int, float] = {}

    def per_gpu_bytes(req: int) -> float:
        """Bytes each GPU of request `req`'s prefill rank sends (once per distinct prompt length)."""
        n = isl[req]
        if n not in bytes_of:
            bytes_of[n] = kv_bytes_per_gpu(sc, n)
        return bytes_of[n]

    prefilled, generated = [0] * total, [0] * total
    times = {k: np.full(total, math.nan) for k in ("arrival", "prefill_start", "prefill_end", "transfer_start",
                                                   "transfer_end", "handed_over", "first_token", "finish")}
    arrival, first_token, finish = times["arrival"], times["first_token"], times["finish"]
    last_token = [math.nan] * total
    finishes = [0] * total
    itl = ItlSamples()   # decode gaps, counted per rank and step (serve.scheduler)
    engines = ([Instance(ranks_n, disagg.prefill_policy(policy), fn, isl=isl, osl=1, kv_capacity=kv_capacity, prefilled=prefilled,
                         generated=generated, hold_finished_kv=True) for _ in range(P)]
               + [Instance(ranks_d, policy, fn_d, isl=isl, osl=osl, kv_capacity=kv_capacity_d, prefilled=prefilled,
                           generated=generated, warmup=load.warmup) for _ in range(D)])
    timeline = Timeline(engines[P:])   # batch and KV use of the decode pool (running = decoding)
    n = P + D
    plans: list = [None] * n
    plan_start = [0.0] * n
    busy = [0.0] * n
    steps = [0] * n
    wake_pending = [False] * n
    decode_queue = [deque() for _ in range(D * ranks_d)]
    queued_on = [set() for _ in range(D)]   # per decode instance, its ranks with requests waiting in `decode_queue`
    steps_trace = StepTrace([f"prefill {i}" for i in range(P)] + [f"decode {i}" for i in range(D)]) if trace else None
    events = EventQueue()
    clients = Clients(events, load, total, policy.request_overhead_s)
    push = events.push
    handoff_s = policy.kv_handoff_s
    coasting = Coasting(events)
    horizon = coasting.horizon

    def wake(e: int, t: float) -> None:
        if plans[e] is None and not wake_pending[e]:
            wake_pending[e] = True
            push(t, WAKE, e)

    def prefill_gpu(instance: int, rank: int, k: int) -> int:
        return instance * G + rank * tp + k

    def decode_gpu(instance: int, rank: int, k: int) -> int:   # decode instances after the P prefill ones
        return P * G + instance * G_d + rank * tp_d + k

    def prefill_slot(req: int) -> tuple[int, int]:
        return divmod(req % (P * ranks_n), ranks_n)

    def decode_slot(req: int) -> int:
        return req % (D * ranks_d)

    def schedule_check(t_next: Optional[float]) -> None:
        if t_next is not None:
            push(t_next, FLOW, (FLOW_CHECK, net.version))

    def start_transfers(slot: int, t: float) -> None:
        """Send the KV of the requests waiting for this decode rank, as far as it can reserve."""
        e, r = divmod(slot, ranks_d)
        queue = decode_queue[slot]
        while queue and engines[P + e].reserve(r, queue[0]):
            req = queue.popleft()
            times["transfer_start"][req] = t
            nbytes = per_gpu_bytes(req)
            for latency, fid in net.open(req, pairs_of(req), [nbytes * share for share in shares]):
                push(t + latency, FLOW, (FLOW_START, fid))
        if queue:
            queued_on[e].add(r)
        else:
            queued_on[e].discard(r)

    def client_finish(req: int, t: float) -> None:
        finish[req] = t
        finishes[req] += 1
        clients.finished(req, t)

    def prefill_done(req: int, t: float) -> None:
        times["prefill_end"][req] = t
        slot = decode_slot(req)
        decode_queue[slot].append(req)
        start_transfers(slot, t)

    def transfer_done(req: int, t: float) -> None:
        times["transfer_end"][req] = t
        pe, pr = prefill_slot(req)
        engines[pe].release(pr, req)
        wake(pe, t)   # the freed KV may admit a waiting prompt
        slot = decode_slot(req)
        e, r = divmod(slot, ranks_d)
        if osl[req] == 1:   # the prefill's token is the whole output: delivered, nothing to decode
            engines[P + e].cancel(r, req)
            first_token[req] = last_token[req] = t
            clients.first_token(req, t)
            client_finish(req, t)
            start_transfers(slot, t)
        elif handoff_s:
            push(t + handoff_s, FLOW, (HANDED_OVER, req))
        else:
            handed_over(req, t)

    def handed_over(req: int, t: float) -> None:
        """Request `req` joins its decode rank (its KV there, the hand-over done: `Policy.kv_handoff_s`)."""
        times["handed_over"][req] = t
        e, r = divmod(decode_slot(req), ranks_d)
        coasting.arriving(P + e, t)
        engines[P + e].join(r, req)
        wake(P + e, t)

    def decode_token(req: int, t: float) -> None:   # decode tokens go to `itl`; no first token comes here
        raise AssertionError("a decode worker's first token is streamed when it joins a batch")

    def decode_finish_of(e: int):
        def on_finish(req: int, t: float) -> None:
            client_finish(req, t)
            for r in sorted(queued_on[e - P]):   # its ranks in order (those with nothing queued have nothing to send)
                start_transfers((e - P) * ranks_d + r, t)
        return on_finish
    decode_finish = {e: decode_finish_of(e) for e in range(P, n)}

    def pairs_of(req: int) -> list[tuple[int, int]]:
        """The GPU pairs request `req`'s KV flows take, prefill rank to decode rank."""
        (pe, pr), (e, r) = prefill_slot(req), divmod(decode_slot(req), ranks_d)
        return [(prefill_gpu(pe, pr, a), decode_gpu(e, r, b)) for a, b, _ in flows]
    net.route_pairs([pair for req in range(min(total, P * ranks_n * D * ranks_d)) for pair in pairs_of(req)])

    # requests decode on the decode pool's ranks only
    clients.start(fn if fn_d is fn else PoolTimes(fn, fn_d), D * ranks_d)

    def prefill_token(req: int, t: float) -> None:
        """A prefill instance's token reaches the client later, through the decode worker."""

    def start_step(e: int, t: float) -> None:
        """An idle instance forms its next step (a WAKE)."""
        plan = engines[e].plan(t)
        if plan is None:
            coasting.stopped(e, t)
            return
        plans[e], plan_start[e] = plan, t
        if e < P:
            mark_prefill_start(plan, times["prefill_start"], t)
        else:   # the decode worker streams the prefill's token as the request joins its batch
            for req in engines[e].fresh_requests():
                if math.isnan(first_token[req]):
                    first_token[req] = last_token[req] = t
                    clients.first_token(req, t)
            # its pure decode steps up to the next event, at once
            plans[e] = plan = engines[e].stretch(plan, t, horizon(t))
            if plan.ends:
                coasting.stopped(e, t)
            elif coast and D > 1:
                plans[e] = plan = coasting.single(e, plan, t, engines[e])
        order = push(plan.end_s(t), STEP_END, e)
        if plan.coast:
            coasting.event[e] = order

    next_event = events.pop_next
    while (event := next_event()) is not None:
        t, kind, _, payload = event
        if kind == ARRIVAL:
            req = payload
            arrival[req] = clients.sent[req]
            e, r = prefill_slot(req)
            engines[e].enqueue(r, req)
            wake(e, t)
        elif kind == FLOW:
            what, value = payload
            if what == FLOW_START:
                schedule_check(net.start(t, value))
            elif what == HANDED_OVER:
                handed_over(value, t)
            else:
                done, t_next = net.check(t, value)
                schedule_check(t_next)
                for req in done:
                    transfer_done(req, t)
        elif kind == WAKE:
            e = payload
            wake_pending[e] = False
            if plans[e] is None:
                start_step(e, t)
        else:
            e = payload
            if e < P:
                engines[e].apply(plans[e], t, prefill_token, prefill_done)
            elif plans[e].coast:   # its single steps one by one, as the per-event loop ends them
                timeline.coasted(e - P, plans[e].ends[:-1], *coasting.finished(e))
                starts = [plan_start[e]] + plans[e].ends[:-1]
                for start, end in zip(starts, plans[e].ends):
                    busy[e] += end - start
                engines[e].apply(plans[e], t, decode_token, decode_finish[e], itl)
                timeline.step(e - P, t)
            else:
                engines[e].apply(plans[e], t, decode_token, decode_finish[e], itl)
                timeline.step(e - P, t)
            if steps_trace is not None:
                for start, end in plans[e].spans(plan_start[e]):
                    steps_trace.step(e, start, end, plans[e])
            if not plans[e].coast:
                busy[e] += t - plan_start[e]
            steps[e] += plans[e].steps
            plans[e] = None
            if not wake_pending[e] and horizon(t) > t:   # its wake-up would be the next event
                start_step(e, t)
            else:
                wake(e, t)

    check_finished_once(finishes)
    measured = slice(load.warmup, total)
    seen, done = clients.first_seen, clients.done   # the client's times
    metrics = run_metrics(arrival=arrival[measured], first_token=seen[measured], finish=done[measured],
                          osl=osl_of[measured], itl_s=itl.array(), gpus=all_gpus)
    span = float(np.nanmax(finish) - np.nanmin(arrival))

    def pool(engs: range, psc: Scenario, gpus_each: int, first_gpu: int, ranks: int, capacity: int) -> dict:
        return {"instances": len(engs), "gpus": len(engs) * gpus_each,
                "busy_fraction": (sum(busy[e] for e in engs) / (len(engs) * span)) if span > 0 else 0.0,
                "steps": sum(steps[e] for e in engs),
                "peak_kv_tokens_per_rank": max(engines[e].peak_kv_used for e in engs),
                "peak_kv_reserved_tokens_per_rank": max(engines[e].peak_kv_reserved for e in engs),
                "peak_running_per_rank": max(engines[e].peak_running for e in engs),
                "first_gpu": first_gpu,
                "split": {"tp": psc.plan.tp, "ep": psc.plan.ep, "etp": psc.plan.etp},
                "ranks_per_instance": ranks, "kv_capacity_tokens_per_rank": capacity}

    ts, te = times["transfer_start"][measured], times["transfer_end"][measured]
    mean_bytes = float(np.mean([per_gpu_bytes(r) for r in range(load.warmup, total)]))   # per GPU, measured
    lone_links, _ = net.path(prefill_gpu(0, 0, flows[0][0]), decode_gpu(0, 0, flows[0][1]))
    decode = pool(range(P, n), dsc, G_d, P * G, ranks_d, kv_capacity_d)
    if fn_d is not fn:   # the decode pool's own grid (the prefill pool's is the Result's step_function)
        decode["step_function"] = fn_d.to_json()
    out = {"metrics": metrics,
           "scheduler": {"instances": n,
                         "peak_kv_tokens_per_rank": max(e.peak_kv_used for e in engines),
                         "peak_kv_reserved_tokens_per_rank": max(e.peak_kv_reserved for e in engines),
                         "peak_running_per_rank": max(e.peak_running for e in engines), "steps": sum(steps)},
           "pools": {"prefill": pool(range(P), sc, G, 0, ranks_n, kv_capacity), "decode": decode},
           "kv_transfer": {"bytes_per_request": mean_bytes * sum(shares), "flows_per_request": len(flows),
                           "first_pair_links": sorted({str(fabric.table.kind[i]) for i in lone_links.tolist()}),
                           "transfer_ms": summary_ms(te - ts),
                           "wait_for_decode_slot_ms": summary_ms(ts - times["prefill_end"][measured])},
           "timeline": dict(timeline.to_json(kv_capacity_d * D * ranks_d), pool="decode"),
           "_requests": {"output_tokens": list(generated), "finishes": finishes,
                         "times_s": {k: v.tolist() for k, v in times.items()},
                         "ttft_s": (seen - arrival)[measured], "e2e_s": (done - arrival)[measured],
                         "osl": np.asarray(osl_of)[measured]}}
    if steps_trace is not None:
        out["_trace"] = chrome_trace(sc.input.name, steps_trace,
                                     [("queue", arrival, times["prefill_start"]),
                                      ("prefill", times["prefill_start"], times["prefill_end"]),
                                      ("kv_wait", times["prefill_end"], times["transfer_start"]),
                                      ("kv_transfer", times["transfer_start"], times["transfer_end"]),
                                      ("handoff", times["transfer_end"], times["handed_over"]),
                                      ("decode", times["handed_over"], finish)], total, load.warmup)
    return out


def disagg_assumptions(disagg: Optional[Disagg] = None, sc: Optional[Scenario] = None) -> list[str]:
    """What a disaggregated result rests on beyond the aggregated ones; with the run's `disagg` and
    scenario, also what a decode pool of a split of its own adds (nothing when its split is the
    scenario's, so such a run's Result is the same)."""
    out = ["disaggregated: prefill instances on the first GPUs, decode instances after them; requests are paired "
           "with a prefill and a decode rank round robin at arrival",
           "disaggregated: a decode rank reserves a request's whole KV before its transfer starts; the prefill rank "
           "holds it until the transfer ends",
           "disaggregated: KV is sent once the prompt is done (no layer-by-layer overlap with the prefill), one flow "
           "per TP GPU pair, max-min fair sharing of the links with the other transfers in flight",
           "disaggregated: the client receives the first token from the decode worker when the request joins its "
           "batch (SGLang, Dynamo); vLLM's P/D connector recomputes it there instead (one decode step later)",
           "disaggregated: both pools' KV capacity is sized for the larger activations of a prefill or a decode "
           "step (conservative for each pool alone)"]
    if disagg is not None and sc is not None and disagg.decode_scenario(sc) is not sc:
        out += ["disaggregated: the decode pool has a split of its own; each pool's step times are those of its own "
                "instance simulated alone (where an instance sits on the GPUs changes only the KV transfers' routes)",
                "disaggregated: with different TP on the two sides a decode GPU receives the KV heads it stores from "
                "the prefill GPUs that hold them (MLA: the whole latent from one prefill GPU); linear-attention "
                "state, if any, is taken to split as the KV heads do"]
    return out


__all__ = ["COASTING", "Coasting", "DECODE_SPLIT", "Disagg", "MODES", "Transfers", "decode_pool", "disagg_assumptions",
           "instance_gpus", "kv_bytes_per_gpu", "kv_flow_plan", "make_disagg", "run_disagg"]
