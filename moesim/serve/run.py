"""One request-level serving run: `serve(scenario, load) -> Result` (plain data, like `simulate`).

The deployment is the scenario's model, system, split, dtypes and framework; its `workload`
block (phase, batch, lengths) is replaced by the load: requests with their own prompt and output
lengths (`serve.load.request_lengths`: fixed, drawn from a distribution, or a trace's), driven
closed loop, open loop or from a trace (`serve.load`). The pieces:

1. `serve.scheduler.Policy`: the framework's batching defaults (`workloads/frameworks.yaml`);
2. `serve.scheduler.kv_capacity_tokens`: KV room per attention-DP rank from the VRAM ledger;
3. `serve.step_function`: step time from a grid of step-model runs, sized to what this run can
   reach (decode batches up to the admission limits, decode contexts up to the longest request,
   prefill steps up to the token budget); with `cache_dir`, its points are kept on disk;
4. the event loop below: a heap of (time, kind, order) events - arrivals, step ends and wake-ups
   of idle instances - processed in a fixed order, so the same inputs and seed give the same
   bytes. At one instant, step ends come first (a finished request's client sends its next
   request at that instant), then arrivals, then idle instances form their next step, so a step
   sees every request that arrived by its start. A closed loop's clients send their first
   requests at `serve.load.closed_loop_starts` (staggered over one request's time by default);
5. `serve.metrics`: latencies and throughput over the measured (non-warm-up) requests;
6. `uncertainty`: the mean TTFT and TPOT times what measured / predicted was over the validated
   benchmarks of the same backend and mode (`calibration.uncertainty.serving_bands`).

`--mode disagg` replaces step 4 by `serve.disagg` (prefill and decode pools, KV sent between them
over the topology); steps 1-3 and 5 are shared, so the two modes differ only where the
deployments do. A trace of either (`serve.trace`) comes back under `_trace` when asked.

Requests go to attention-DP ranks round robin over all ranks of all instances in the order
they are sent (SGLang's default DP load balancing, `load_balance_method = round_robin`).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from moesim.calibration.uncertainty import serving_bands
from moesim.cluster.scenario import Scenario, Serving
from moesim.core.digest import code_and_data_digest
from moesim.core.errors import MoesimError
from moesim.serve.disagg import Disagg, disagg_assumptions, run_disagg
from moesim.serve.load import Load, request_lengths
from moesim.serve.metrics import check_slo, goodput, run_metrics
from moesim.serve.scheduler import (ARRIVAL, STEP_END, WAKE, Clients, EventQueue, Instance, ItlSamples, Policy,
                                    check_finished_once, kv_capacity_tokens, mark_prefill_start)
from moesim.serve.step_function import StepFunction, build_step_function
from moesim.serve.trace import StepTrace, chrome_trace


def deployment_shape(sc: Scenario) -> tuple[int, int]:
    """(engine instances, attention-DP ranks per instance): an instance is one EP group of
    (ep x etp) GPUs holding (ep x etp) / tp ranks; the stage's EP-group replicas are instances."""
    p = sc.plan
    if not isinstance(sc.input.workload, Serving):
        raise MoesimError("a training scenario cannot be served", field="workload.kind",
                          fix="give a serving scenario (workload.kind: serving)")
    if p.pp > 1:
        raise MoesimError(f"request-level serving with pipeline parallelism (pp {p.pp}) is not simulated yet",
                          field="parallel.pp", fix="serve a split with pp 1")
    group = p.ep * p.etp
    if group % p.tp:
        raise MoesimError(f"EP group of {group} GPUs does not hold whole TP groups of {p.tp}", field="parallel.ep",
                          fix="make ep x etp a multiple of tp")
    ranks = group // p.tp
    return p.dp // ranks, ranks


def _reachable_batch(policy: Policy, load: Load) -> int:
    """Largest decode batch a rank can run before KV limits: the framework's limit, and in a
    closed loop never more than the clients."""
    bound = min(policy.max_running, load.total)
    return min(bound, load.concurrency) if load.concurrency is not None else bound


def rank_capacity_and_steps(sc: Scenario, load: Load, policy: Policy, *, where: str, kv_admission: str,
                            cache_dir=None) -> tuple[int, StepFunction]:
    """(KV tokens one attention-DP rank holds, the step function sized to what a run can reach) for
    an engine instance of the scenario's split: the VRAM ledger at the run's largest step
    (`kv_capacity_tokens`, `where` names the rank in its errors), then a grid up to the decode
    batches the KV and the framework allow, the longest request's context and the step budget.
    The aggregated run and each disaggregated pool size themselves with it."""
    isl, osl = load.isl, load.osl   # nominal (mean) lengths: the ledger's activations, the grid's anchors
    isl_of, osl_of = request_lengths(load)
    sizes = isl_of + osl_of
    longest = int(np.argmax(sizes))
    batch_bound = _reachable_batch(policy, load)
    kv_capacity = kv_capacity_tokens(sc, isl=isl, osl=osl, max_batch=batch_bound, prefill_tokens=policy.token_budget,
                                     where=where, longest=(int(isl_of[longest]), int(osl_of[longest])))
    # the most requests a rank can hold: as many of the shortest as its KV takes
    # (incremental admission holds only a prompt and its sampled token at admission; a run's decode
    # batch can reach as many of those, until preemption trims it)
    per_request = int(isl_of.min()) + 1 if kv_admission == "incremental" else int(sizes.min())
    max_batch = max(min(batch_bound, kv_capacity // per_request), 1)
    fn = build_step_function(sc, isl=isl, osl=osl, max_batch=policy.padded(max_batch),
                             max_prefill_tokens=policy.token_budget, max_context=int(sizes.max()),
                             cache_dir=cache_dir)
    return kv_capacity, fn


def serve(sc: Scenario, load: Load, *, disagg: Optional[Disagg] = None, trace: bool = False,
          cache_dir=None, policy: Optional[Policy] = None, slo: Optional[dict] = None) -> dict:
    """Simulate the load on the deployment and return the Result (see the module docstring).

    `disagg` (from `serve.disagg.make_disagg`) runs prefill and decode on separate pools of the
    scenario's engine instance instead, or decode on instances of a split of the disagg's own
    (`serve.disagg`); `trace` adds the run's Chrome/Perfetto
    trace under `_trace` (`serve.trace`); `cache_dir` (a folder the user named) keeps the step
    function's simulated points on disk for later runs (`serve.step_function.step_times`); `policy`
    replaces the framework's batching defaults (`Policy.of`), e.g. a benchmark's own batch limit or
    fitted overheads (`dataclasses.replace(Policy.of(sc), max_running=...)`); `slo` ({"ttft_ms": X,
    "tpot_ms": Y, "e2e_ms": Z}, any of them; `serve.metrics.check_slo`) adds `metrics.goodput`, the
    measured requests that meet them (`serve.metrics.goodput`, DistServe's definition)."""
    slo = check_slo(slo)
    instances_n, ranks_n = deployment_shape(sc)
    policy = policy or Policy.of(sc)
    where = ("one prefill rank" if disagg.decode_parallel else "one decode rank") if disagg else "one rank"
    kv_capacity, fn = rank_capacity_and_steps(sc, load, policy, where=where, kv_admission=policy.kv_admission,
                                              cache_dir=cache_dir)
    if disagg is None:
        gpus, fleet = sc.gpus, sc.system.fleet_label(sc.gpus)
        run = _run_agg(sc, load, policy, fn, instances_n=instances_n, ranks_n=ranks_n, kv_capacity=kv_capacity,
                       trace=trace)
    else:
        gpus = disagg.gpus(sc)
        fleet = sc.system.fleet_label(gpus)
        run = run_disagg(sc, load, policy, fn, disagg, ranks_n=ranks_n, kv_capacity=kv_capacity, trace=trace,
                         cache_dir=cache_dir)
    from moesim.sim.provenance import provenance
    out = {
        "scenario": sc.input.name, "model": sc.model.id, "system": sc.system.id, "gpus": gpus,
        "fleet": fleet, "parallel": sc.plan.model_dump(), "mode": "agg" if disagg is None else "disagg",
        "framework": policy.framework, "load": load.to_json(), "metrics": run.pop("metrics"),
    }
    if slo:
        req, m = run["_requests"], out["metrics"]
        m["goodput"] = goodput(ttft_s=req["ttft_s"], e2e_s=req["e2e_s"], osl=req["osl"], duration_s=m["duration_s"],
                               gpus=m["gpus"], slo=slo)
    scheduler = run.pop("scheduler")
    out["scheduler"] = dict({"policy": policy.to_json(), "instances": scheduler.pop("instances"),
                             "ranks_per_instance": ranks_n, "kv_capacity_tokens_per_rank": kv_capacity}, **scheduler)
    out.update({k: run.pop(k) for k in ("pools", "kv_transfer") if k in run})
    out.update({"step_function": fn.to_json(),
                "assumptions": assumptions(policy) + (disagg_assumptions(disagg, sc) if disagg else []),
                "provenance": dict(provenance(sc), code_and_data_digest=code_and_data_digest()),
                "uncertainty": serving_bands(policy.framework, out["mode"], out["metrics"], model=sc.model.id)})
    out.update(run)   # the private parts: _requests, and _trace when asked
    return out


def _run_agg(sc: Scenario, load: Load, policy: Policy, fn: StepFunction, *, instances_n: int, ranks_n: int,
             kv_capacity: int, trace: bool) -> dict:
    """The aggregated event loop: every instance prefills and decodes (module docstring)."""
    isl_of, osl_of = request_lengths(load)
    total = load.total
    prefilled, generated = [0] * total, [0] * total
    queued = np.full(total, math.nan)   # when the request reached the engine's queue
    prefill_start = np.full(total, math.nan)
    first_token = np.full(total, math.nan)
    finish = np.full(total, math.nan)
    finishes = [0] * total
    itl = ItlSamples()
    engines = [Instance(ranks_n, policy, fn, isl=isl_of, osl=osl_of, kv_capacity=kv_capacity, prefilled=prefilled,
                        generated=generated, warmup=load.warmup, kv_admission=policy.kv_admission)
               for _ in range(instances_n)]
    plans: list = [None] * instances_n
    plan_start = [0.0] * instances_n
    wake_pending = [False] * instances_n
    steps_trace = StepTrace([f"instance {e}" for e in range(instances_n)]) if trace else None
    events = EventQueue()
    clients = Clients(events, load, total, policy.request_overhead_s)
    push = events.push
    steps = 0
    timeline = Timeline(engines)

    def on_token(req: int, t: float) -> None:   # a first token (decode gaps go to `itl`)
        first_token[req] = t
        clients.first_token(req, t)

    def on_finish(req: int, t: float) -> None:
        finish[req] = t
        finishes[req] += 1
        clients.finished(req, t)

    clients.start(fn, instances_n * ranks_n)  # requests decode on every rank of every instance

    def start_step(e: int, t: float) -> None:
        """An idle instance forms its next step (a WAKE)."""
        plan = engines[e].plan()
        if plan is not None:
            plans[e], plan_start[e] = plan, t
            mark_prefill_start(plan, prefill_start, t)
            plans[e] = plan = engines[e].stretch(plan, t, events.next_time())
            push(plan.end_s(t), STEP_END, e)

    total_ranks = instances_n * ranks_n
    next_event = events.pop_next
    while (event := next_event()) is not None:
        t, kind, _, payload = event
        if kind == ARRIVAL:
            req = payload
            queued[req] = t
            slot = req % total_ranks
            e = slot // ranks_n
            engines[e].enqueue(slot % ranks_n, req)
            if plans[e] is None and not wake_pending[e]:
                wake_pending[e] = True
                push(t, WAKE, e)
        elif kind == WAKE:
            e = payload
            wake_pending[e] = False
            if plans[e] is None:
                start_step(e, t)
        else:
            e = payload
            engines[e].apply(plans[e], t, on_token, on_finish, itl)
            timeline.step(e, t)
            if steps_trace is not None:
                for start, end in plans[e].spans(plan_start[e]):
                    steps_trace.step(e, start, end, plans[e])
            steps += plans[e].steps
            plans[e] = None
            if events.next_time() > t:   # nothing else happens at t: its wake-up would be the next event
                start_step(e, t)
            else:
                wake_pending[e] = True
                push(t, WAKE, e)

    check_finished_once(finishes)
    measured = slice(load.warmup, total)
    arrival, seen, done = clients.sent, clients.first_seen, clients.done   # the client's times
    metrics = run_metrics(arrival=arrival[measured], first_token=seen[measured], finish=done[measured],
                          osl=osl_of[measured], itl_s=itl.array(), gpus=sc.gpus)
    out = {"metrics": metrics,
           "scheduler": {"instances": instances_n,
                         "peak_kv_tokens_per_rank": max(e.peak_kv_used for e in engines),
                         "peak_kv_reserved_tokens_per_rank": max(e.peak_kv_reserved for e in engines),
                         "peak_running_per_rank": max(e.peak_running for e in engines), "steps": steps,
                         "preemptions": sum(e.preemptions for e in engines)},
           "timeline": timeline.to_json(kv_capacity * instances_n * ranks_n),
           "_requests": {"output_tokens": list(generated), "finishes": finishes,
                         "ttft_s": (seen - arrival)[measured], "e2e_s": (done - arrival)[measured],
                         "osl": np.asarray(osl_of)[measured] if np.ndim(osl_of) else np.full(total - load.warmup, osl_of)}}
    if steps_trace is not None:
        out["_trace"] = chrome_trace(sc.input.name, steps_trace,
                                     [("queue", arrival, prefill_start), ("prefill", prefill_start, first_token),
                                      ("decode", first_token, finish)], total, load.warmup)
    return out


class Timeline:
    """Batch and KV use over the run (issue 16's "batch size and KV use over time"): after every
    step of any instance, the deployment's running and waiting requests and KV tokens in use,
    summed over ranks. An instance's totals are asked for only when it steps (`Instance.totals`:
    O(ranks), or O(1) while it decodes in lockstep) and kept per instance as they come; the
    deployment's sums after each step (each instance's latest totals) are formed at the end, in
    time order, with the same integer additions. The JSON keeps at most `POINTS` samples, the
    state at evenly spaced times (after the last step at or before each)."""

    POINTS = 200

    def __init__(self, engines: list) -> None:
        self.engines = engines
        # per instance: its steps' end times and its running, waiting and KV tokens after each
        self.t: list[list[float]] = [[] for _ in engines]
        self.counts: list[list[list[int]]] = [[[], [], []] for _ in engines]

    def step(self, e: int, t: float) -> None:
        self.t[e].append(t)
        for values, value in zip(self.counts[e], self.engines[e].totals()):
            values.append(value)

    def coasted(self, e: int, ends: list, running: int, waiting: int, kv: int, decoding: int) -> None:
        """Steps of instance `e` that ended at `ends`, single decode steps one after the other from
        a state of (`running`, `waiting`, `kv`) tokens with `decoding` requests (`serve.disagg.
        Coasting`): each adds a token per decoding request."""
        self.t[e] += ends
        running_, waiting_, kv_ = self.counts[e]
        running_ += [running] * len(ends)
        waiting_ += [waiting] * len(ends)
        kv_ += range(kv + decoding, kv + decoding * (len(ends) + 1), decoding)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(end times [steps], the deployment's (running, waiting, KV tokens) after each [steps, 3]),
        in time order: each instance's change since its own previous step, summed."""
        times = np.concatenate([np.asarray(t, dtype=float) for t in self.t])
        deltas = np.concatenate([np.diff(np.asarray(c, dtype=np.int64).reshape(3, -1).T, axis=0, prepend=0)
                                 for c in self.counts])
        order = np.argsort(times, kind="stable")
        return times[order], np.cumsum(deltas[order], axis=0)

    def to_json(self, kv_capacity_tokens: int) -> dict:
        if not any(self.t):
            return {"t_s": [], "running_requests": [], "waiting_requests": [], "kv_used_tokens": [],
                    "kv_capacity_tokens": kv_capacity_tokens}
        times, rows = self.rows()
        grid = np.linspace(0.0, times[-1], min(self.POINTS, len(times)))
        idx = np.maximum(np.searchsorted(times, grid, side="right") - 1, 0)
        rows = rows[idx]
        return {"t_s": grid.tolist(), "running_requests": rows[:, 0].tolist(), "waiting_requests": rows[:, 1].tolist(),
                "kv_used_tokens": rows[:, 2].tolist(), "kv_capacity_tokens": kv_capacity_tokens}


def assumptions(policy: Policy) -> list[str]:
    """What this result rests on beyond its inputs, in words a reader can check."""
    out = ["step time: a grid of moesim step-model runs, interpolated; a step that mixes decode and prefill "
           "tokens is composed from them (moesim/serve/step_function.py)",
           ("KV: a request reserves its ISL + OSL tokens at admission, so nothing is preempted"
            if policy.kv_admission == "whole_request" else
            "KV: a request is admitted when its prompt fits and grows a token per step; when decode tokens no "
            "longer fit, the newest decoding request is preempted and later recomputed (vLLM V1)"),
           "prefill step time is the step model's at the mean prompt length (its attention context); "
           "a request's own prompt and output lengths set its chunks, decode context, KV and finish",
           "ranks of an instance step in lockstep; a step takes as long as its slowest rank",
           "requests go to attention-DP ranks round robin"]
    out.append(f"{policy.framework}: {policy.cpu_overhead_s * 1e3:.3g} ms of CPU time and "
               f"{policy.layer_overhead_s * 1e3:.3g} ms of per-layer GPU time beyond the step model per engine step, "
               f"prompt tokens at {policy.prefill_scale:.3g} x the step model's prefill time "
               f"({policy.mixed_prefill_scale:.3g} x in a step that also decodes), "
               f"{policy.request_overhead_s * 1e3:.3g} ms per request on the first token's way to the client (HTTP, "
               f"tokenisation, detokenisation, streaming; the request joins the queue as it is sent) and, "
               f"disaggregated, {policy.kv_handoff_s * 1e3:.3g} ms of prefill-to-decode hand-over per request; from "
               f"{policy.overheads_from}")
    return out


__all__ = ["serve", "deployment_shape"]
