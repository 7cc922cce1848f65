"""Prefill/decode disaggregation: separate prefill and decode pools, KV sent between them.

The deployment is P prefill and D decode engine instances, each an instance of the scenario's
split (one EP group of ep x etp GPUs, `serve.run.deployment_shape`), as SGLang's PD mode and
NVIDIA Dynamo run them. GPUs: prefill instances on the first P x (ep x etp) GPUs of the system,
decode instances after them, so a small deployment keeps its transfers inside a node (NVLink) and
a larger one sends them between nodes (RDMA) exactly where the system's topology puts the split.

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
3. its KV is sent prefill -> decode: one flow per GPU pair of the two ranks (each of the rank's
   TP GPUs sends what it stores, `costs.memory.kv_bytes_per_sequence`: a GQA head share, or the
   whole MLA latent that every TP GPU keeps), routed on the system's topology. The prefill rank
   keeps the request's KV until the transfer ends (SGLang frees it when the sender reports
   success);
4. it joins the decode rank's continuous batch from the rank's next step on.

TTFT: the first token is computed by the prefill worker but the client receives it from the
decode worker, which streams it when it takes the request into its batch after the transfer
(SGLang's prebuilt batch carries the prefill's token; the client is connected to the decode side
in both SGLang's router and Dynamo). So TTFT = queue + prefill + wait for a decode slot + KV
transfer + wait for the decode instance's current step to end; TPOT then counts decode steps only.

KV transfers as flows in the event loop, not a rate fixed at their start: concurrent transfers
share NICs and NVLink ports, and a rate frozen when a transfer starts would be wrong for its whole
life as soon as another one starts or ends (under load they overlap most of the time). So every
flow start and end re-solves max-min fair rates over the flows in flight (`costs.network.
solve_rates`, the same sharing model as `costs.network.complete_flows`: a flow starts sending
after its path latency, then at its fair share until its last byte). A run of N requests solves
2 N times over the few flows in flight, which costs far less than the steps.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from moesim.cluster.links import path_latency
from moesim.cluster.scenario import Scenario
from moesim.cluster.topology import routes
from moesim.core.errors import MoesimError
from moesim.costs.collectives import Fabric, build_fabric
from moesim.costs.memory import kv_bytes_per_sequence
from moesim.costs.network import COMPLETION_RTOL, solve_rates
from moesim.serve.load import Load, request_lengths
from moesim.serve.metrics import run_metrics, summary_ms
from moesim.serve.scheduler import (ARRIVAL, FLOW, STEP_END, WAKE, Clients, EventQueue, Instance, Policy,
                                    check_finished_once, mark_prefill_start)
from moesim.serve.step_function import StepFunction
from moesim.serve.trace import StepTrace, chrome_trace

MODES = ("agg", "disagg")
FLOW_START, FLOW_CHECK = 0, 1   # payloads of FLOW events: a flow starts sending / the next flow ends


@dataclass(frozen=True)
class Disagg:
    """How many engine instances prefill and how many decode."""

    prefill: int
    decode: int

    def gpus(self, sc: Scenario) -> int:
        return (self.prefill + self.decode) * instance_gpus(sc)

    def to_json(self) -> dict:
        return {"prefill_instances": self.prefill, "decode_instances": self.decode}


def instance_gpus(sc: Scenario) -> int:
    """GPUs of one engine instance: the EP group (ep x etp)."""
    return sc.plan.ep * sc.plan.etp


def make_disagg(mode: str, prefill_workers: Optional[int], decode_workers: Optional[int], *,
                prefix: str = "") -> Optional[Disagg]:
    """The checked pool sizes, or None for aggregated serving. `prefix` is how the caller spells
    its options in errors (the CLI: `--`, with dashes)."""
    name = {k: f"{prefix}{k if prefix == '--' else k.replace('-', '_')}"
            for k in ("mode", "prefill-workers", "decode-workers")}
    if mode not in MODES:
        raise MoesimError(f"unknown mode {mode!r}", field=name["mode"], fix=f"give one of: {', '.join(MODES)}")
    given = {"prefill-workers": prefill_workers, "decode-workers": decode_workers}
    if mode == "agg":
        for key, value in given.items():
            if value is not None:
                raise MoesimError("worker pools are only for disaggregated serving", field=name[key],
                                  fix=f"add {name['mode']} disagg, or leave out {name[key]}")
        return None
    for key, value in given.items():
        if value is None:
            raise MoesimError(f"disaggregated serving needs the number of {key.split('-')[0]} instances",
                              field=name[key], fix=f"give {name[key]} N (N >= 1)")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise MoesimError(f"must be a whole number > 0, got {value!r}", field=name[key],
                              fix=f"give {name[key]} 1 or more")
    return Disagg(int(prefill_workers), int(decode_workers))


def kv_bytes_per_gpu(sc: Scenario, isl: int) -> float:
    """Bytes of one request's prompt KV that each GPU of its prefill rank holds and sends (the
    first output token's KV is written by the first decode step, on the decode side)."""
    return kv_bytes_per_sequence(sc, range(sc.model.num_hidden_layers), isl)


class Transfers:
    """KV transfers in flight as flows on the fabric, max-min fair (module docstring).

    The run's event loop drives it: `open` gives each new flow's path latency (it starts sending
    that much later: call `start` then), `start` and `check` return the time of the next flow end
    (push a FLOW_CHECK event for it, tagged with `version`); a check whose version is not the
    current one is stale (rates changed since) and does nothing.
    """

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self._paths: dict = {}
        self._ids = itertools.count()
        self.links: dict[int, np.ndarray] = {}
        self.size: dict[int, float] = {}
        self.remaining: dict[int, float] = {}
        self.owner: dict[int, int] = {}
        self.left: dict[int, int] = {}    # request -> its flows not yet done
        self.active: list[int] = []
        self.rates = np.empty(0)
        self.due: list[int] = []          # the flows that end at the next check
        self.clock = 0.0
        self.version = 0

    def path(self, src: int, dst: int) -> tuple[np.ndarray, float]:
        """(links, latency) of the route from GPU src to GPU dst, routed once per pair."""
        key = (src, dst)
        if key not in self._paths:
            ptr, links = routes(self.fabric.graph, self.fabric.table, np.array([[src, dst]]))
            path = np.asarray(links[ptr[0]:ptr[1]], dtype=np.int64)
            self._paths[key] = (path, path_latency(self.fabric.table, path))
        return self._paths[key]

    def open(self, req: int, pairs: list[tuple[int, int]], nbytes: float) -> list[tuple[float, int]]:
        """New flows of `nbytes` each for request `req`: [(path latency, flow id)]."""
        out = []
        for src, dst in pairs:
            links, latency = self.path(src, dst)
            fid = next(self._ids)
            self.links[fid], self.size[fid], self.remaining[fid], self.owner[fid] = links, nbytes, nbytes, req
            out.append((latency, fid))
        self.left[req] = len(pairs)
        return out

    def _advance(self, t: float) -> None:
        for fid, rate in zip(self.active, self.rates.tolist()):
            self.remaining[fid] -= rate * (t - self.clock)
        self.clock = t

    def _resolve(self) -> Optional[float]:
        self.version += 1
        if not self.active:
            self.rates, self.due = np.empty(0), []
            return None
        lengths = [len(self.links[f]) for f in self.active]
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.rates = solve_rates(self.fabric.capacity_Bps, ptr, np.concatenate([self.links[f] for f in self.active]))
        to_finish = np.array([self.remaining[f] for f in self.active]) / self.rates
        first = float(to_finish.min())
        self.due = [f for f, left in zip(self.active, to_finish.tolist()) if left <= first * (1 + COMPLETION_RTOL)]
        return self.clock + first

    def start(self, t: float, fid: int) -> Optional[float]:
        """Flow `fid` starts sending at `t`; returns the time of the next flow end."""
        self._advance(t)
        self.active.append(fid)
        return self._resolve()

    def check(self, t: float, version: int) -> tuple[list[int], Optional[float]]:
        """At a FLOW_CHECK event: (requests whose last flow ended now, time of the next flow end)."""
        if version != self.version:
            return [], None
        self._advance(t)
        ended = set(self.due)
        self.active = [f for f in self.active if f not in ended]
        done = []
        for fid in sorted(ended):
            req = self.owner.pop(fid)
            for table in (self.links, self.size, self.remaining):
                del table[fid]
            self.left[req] -= 1
            if self.left[req] == 0:
                del self.left[req]
                done.append(req)
        return done, self._resolve()


def run_disagg(sc: Scenario, load: Load, policy: Policy, fn: StepFunction, disagg: Disagg, *, ranks_n: int,
               kv_capacity: int, trace: bool) -> dict:
    """The disaggregated event loop (module docstring); returns the mode's parts of the Result."""
    from moesim.sim.provenance import hardware_for
    total = load.total
    isl_of, osl_of = request_lengths(load)
    isl, osl = isl_of.tolist(), osl_of.tolist()
    P, D, G, tp = disagg.prefill, disagg.decode, instance_gpus(sc), sc.plan.tp
    fabric = build_fabric(sc.system, disagg.gpus(sc), hardware_for(sc)[2])
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
                                                   "transfer_end", "first_token", "finish")}
    arrival, first_token, finish = times["arrival"], times["first_token"], times["finish"]
    last_token = [math.nan] * total
    finishes = [0] * total
    itl: list[float] = []
    engines = ([Instance(ranks_n, policy, fn, isl=isl, osl=1, kv_capacity=kv_capacity, prefilled=prefilled,
                         generated=generated, hold_finished_kv=True) for _ in range(P)]
               + [Instance(ranks_n, policy, fn, isl=isl, osl=osl, kv_capacity=kv_capacity, prefilled=prefilled,
                           generated=generated) for _ in range(D)])
    n = P + D
    plans: list = [None] * n
    plan_start = [0.0] * n
    busy = [0.0] * n
    steps = [0] * n
    wake_pending = [False] * n
    decode_queue = [deque() for _ in range(D * ranks_n)]
    steps_trace = StepTrace([f"prefill {i}" for i in range(P)] + [f"decode {i}" for i in range(D)]) if trace else None
    events = EventQueue()
    clients = Clients(events, load, total)
    push = events.push

    def wake(e: int, t: float) -> None:
        if plans[e] is None and not wake_pending[e]:
            wake_pending[e] = True
            push(t, WAKE, e)

    def gpu(instance: int, rank: int, k: int) -> int:
        return instance * G + rank * tp + k

    def prefill_slot(req: int) -> tuple[int, int]:
        return divmod(req % (P * ranks_n), ranks_n)

    def decode_slot(req: int) -> int:
        return req % (D * ranks_n)

    def schedule_check(t_next: Optional[float]) -> None:
        if t_next is not None:
            push(t_next, FLOW, (FLOW_CHECK, net.version))

    def start_transfers(slot: int, t: float) -> None:
        """Send the KV of the requests waiting for this decode rank, as far as it can reserve."""
        e, r = divmod(slot, ranks_n)
        queue = decode_queue[slot]
        while queue and engines[P + e].reserve(r, queue[0]):
            req = queue.popleft()
            times["transfer_start"][req] = t
            pe, pr = prefill_slot(req)
            pairs = [(gpu(pe, pr, k), gpu(P + e, r, k)) for k in range(tp)]
            for latency, fid in net.open(req, pairs, per_gpu_bytes(req)):
                push(t + latency, FLOW, (FLOW_START, fid))

    def client_finish(req: int, t: float) -> None:
        finish[req] = t
        finishes[req] += 1
        clients.finished(t)

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
        e, r = divmod(slot, ranks_n)
        if osl[req] == 1:   # the prefill's token is the whole output: delivered, nothing to decode
            engines[P + e].cancel(r, req)
            first_token[req] = last_token[req] = t
            client_finish(req, t)
            start_transfers(slot, t)
        else:
            engines[P + e].join(r, req)
            wake(P + e, t)

    def decode_token(req: int, t: float) -> None:
        if req >= load.warmup:
            itl.append(t - last_token[req])
        last_token[req] = t

    def decode_finish_of(e: int):
        def on_finish(req: int, t: float) -> None:
            client_finish(req, t)
            for r in range(ranks_n):
                start_transfers((e - P) * ranks_n + r, t)
        return on_finish

    clients.start(fn, D * ranks_n)  # requests decode on the decode pool's ranks only

    def prefill_token(req: int, t: float) -> None:
        """A prefill instance's token reaches the client later, through the decode worker."""
    while events:
        t, kind, payload = events.pop()
        if kind == ARRIVAL:
            req = payload
            arrival[req] = t
            e, r = prefill_slot(req)
            engines[e].ranks[r].waiting.append(req)
            wake(e, t)
        elif kind == FLOW:
            what, value = payload
            if what == FLOW_START:
                schedule_check(net.start(t, value))
            else:
                done, t_next = net.check(t, value)
                schedule_check(t_next)
                for req in done:
                    transfer_done(req, t)
        elif kind == WAKE:
            e = payload
            wake_pending[e] = False
            if plans[e] is not None:
                continue
            plan = engines[e].plan()
            if plan is None:
                continue
            plans[e], plan_start[e] = plan, t
            if e < P:
                mark_prefill_start(plan, times["prefill_start"], t)
            else:   # the decode worker streams the prefill's token as the request joins its batch
                for decodes in plan.decodes:
                    for req in decodes:
                        if math.isnan(first_token[req]):
                            first_token[req] = last_token[req] = t
            push(t + plan.duration_s, STEP_END, e)
        else:
            e = payload
            if e < P:
                engines[e].apply(plans[e], t, prefill_token, prefill_done)
            else:
                engines[e].apply(plans[e], t, decode_token, decode_finish_of(e))
            if steps_trace is not None:
                steps_trace.step(e, plan_start[e], t, plans[e])
            busy[e] += t - plan_start[e]
            steps[e] += 1
            plans[e] = None
            wake(e, t)

    check_finished_once(finishes)
    measured = slice(load.warmup, total)
    metrics = run_metrics(arrival=arrival[measured], first_token=first_token[measured], finish=finish[measured],
                          osl=osl_of[measured], itl_s=np.asarray(itl), gpus=disagg.gpus(sc))
    span = float(np.nanmax(finish) - np.nanmin(arrival))

    def pool(engs: range) -> dict:
        return {"instances": len(engs), "gpus": len(engs) * G,
                "busy_fraction": (sum(busy[e] for e in engs) / (len(engs) * span)) if span > 0 else 0.0,
                "steps": sum(steps[e] for e in engs),
                "peak_kv_tokens_per_rank": max(engines[e].peak_kv_used for e in engs),
                "peak_running_per_rank": max(engines[e].peak_running for e in engs),
                "first_gpu": engs[0] * G}

    ts, te = times["transfer_start"][measured], times["transfer_end"][measured]
    mean_bytes = float(np.mean([per_gpu_bytes(r) for r in range(load.warmup, total)]))   # per GPU, measured
    lone_links, _ = net.path(gpu(0, 0, 0), gpu(P, 0, 0))
    out = {"metrics": metrics,
           "scheduler": {"instances": n,
                         "peak_kv_tokens_per_rank": max(e.peak_kv_used for e in engines),
                         "peak_kv_reserved_tokens_per_rank": max(e.peak_kv_reserved for e in engines),
                         "peak_running_per_rank": max(e.peak_running for e in engines), "steps": sum(steps)},
           "pools": {"prefill": pool(range(P)), "decode": pool(range(P, n))},
           "kv_transfer": {"bytes_per_request": mean_bytes * tp, "flows_per_request": tp,
                           "first_pair_links": sorted({str(fabric.table.kind[i]) for i in lone_links.tolist()}),
                           "transfer_ms": summary_ms(te - ts),
                           "wait_for_decode_slot_ms": summary_ms(ts - times["prefill_end"][measured])},
           "_requests": {"output_tokens": list(generated), "finishes": finishes,
                         "times_s": {k: v.tolist() for k, v in times.items()}}}
    if steps_trace is not None:
        out["_trace"] = chrome_trace(sc.input.name, steps_trace,
                                     [("queue", arrival, times["prefill_start"]),
                                      ("prefill", times["prefill_start"], times["prefill_end"]),
                                      ("kv_wait", times["prefill_end"], times["transfer_start"]),
                                      ("kv_transfer", times["transfer_start"], times["transfer_end"]),
                                      ("decode", times["transfer_end"], finish)], total, load.warmup)
    return out


def disagg_assumptions() -> list[str]:
    """What a disaggregated result rests on beyond the aggregated ones."""
    return ["disaggregated: prefill instances on the first GPUs, decode instances after them; requests are paired "
            "with a prefill and a decode rank round robin at arrival",
            "disaggregated: a decode rank reserves a request's whole KV before its transfer starts; the prefill rank "
            "holds it until the transfer ends",
            "disaggregated: KV is sent once the prompt is done (no layer-by-layer overlap with the prefill), one flow "
            "per TP GPU pair, max-min fair sharing of the links with the other transfers in flight",
            "disaggregated: the client receives the first token from the decode worker when the request joins its "
            "batch (SGLang, Dynamo); vLLM's P/D connector recomputes it there instead (one decode step later)",
            "disaggregated: both pools' KV capacity is sized for the larger activations of a prefill or a decode "
            "step (conservative for each pool alone)"]


__all__ = ["Disagg", "MODES", "Transfers", "disagg_assumptions", "instance_gpus", "kv_bytes_per_gpu", "make_disagg",
           "run_disagg"]
