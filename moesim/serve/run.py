"""One request-level serving run: `serve(scenario, load) -> Result` (plain data, like `simulate`).

The deployment is the scenario's model, system, split, dtypes and framework; its `workload`
block (phase, batch, lengths) is replaced by the load: requests of `load.isl` prompt and
`load.osl` output tokens, driven closed or open loop (`serve.load`). The pieces:

1. `serve.scheduler.Policy`: the framework's batching defaults (`workloads/frameworks.yaml`);
2. `serve.scheduler.kv_capacity_tokens`: KV room per attention-DP rank from the VRAM ledger;
3. `serve.step_function`: step time from a grid of step-model runs, sized to what this run can
   reach (decode batches up to the admission limits, prefill steps up to the token budget);
4. the event loop below: a heap of (time, kind, order) events - arrivals, step ends and wake-ups
   of idle instances - processed in a fixed order, so the same inputs and seed give the same
   bytes. At one instant, step ends come first (a finished request's client sends its next
   request at that instant), then arrivals, then idle instances form their next step, so a step
   sees every request that arrived by its start;
5. `serve.metrics`: latencies and throughput over the measured (non-warm-up) requests.

Requests go to attention-DP ranks round robin over all ranks of all instances in the order
they are sent (SGLang's default DP load balancing, `load_balance_method = round_robin`).
"""
from __future__ import annotations

import heapq
import itertools
import math

import numpy as np

from moesim.cluster.scenario import Scenario, Serving
from moesim.core.digest import code_and_data_digest
from moesim.core.errors import MoesimError
from moesim.serve.load import Load, open_loop_arrivals
from moesim.serve.metrics import run_metrics
from moesim.serve.scheduler import Instance, Policy, kv_capacity_tokens
from moesim.serve.step_function import build_step_function

STEP_END, ARRIVAL, WAKE = 0, 1, 2   # order of events at the same instant (see the module docstring)


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


def serve(sc: Scenario, load: Load) -> dict:
    """Simulate the load on the deployment and return the Result (see the module docstring)."""
    instances_n, ranks_n = deployment_shape(sc)
    policy = Policy.of(sc)
    isl, osl = load.isl, load.osl
    batch_bound = _reachable_batch(policy, load)
    kv_capacity = kv_capacity_tokens(sc, isl=isl, osl=osl, max_batch=batch_bound, prefill_tokens=policy.token_budget)
    max_batch = max(min(batch_bound, kv_capacity // (isl + osl)), 1)
    fn = build_step_function(sc, isl=isl, osl=osl, max_batch=policy.padded(max_batch),
                             max_prefill_tokens=policy.token_budget)

    total = load.total
    prefilled, generated = [0] * total, [0] * total
    arrival = np.full(total, math.nan)
    first_token = np.full(total, math.nan)
    finish = np.full(total, math.nan)
    last_token = [math.nan] * total
    finishes = [0] * total
    itl: list[float] = []
    engines = [Instance(ranks_n, policy, fn, isl=isl, osl=osl, kv_capacity=kv_capacity, prefilled=prefilled,
                        generated=generated) for _ in range(instances_n)]
    plans: list = [None] * instances_n
    wake_pending = [False] * instances_n
    heap: list = []
    order = itertools.count()
    issued = 0
    steps = 0

    def push(t: float, kind: int, payload: int) -> None:
        heapq.heappush(heap, (t, kind, next(order), payload))

    def send(t: float) -> None:
        nonlocal issued
        push(t, ARRIVAL, issued)
        issued += 1

    def on_token(req: int, t: float) -> None:
        if math.isnan(first_token[req]):
            first_token[req] = t
        elif req >= load.warmup:
            itl.append(t - last_token[req])
        last_token[req] = t

    def on_finish(req: int, t: float) -> None:
        finish[req] = t
        finishes[req] += 1
        if load.mode == "closed" and issued < total:
            send(t)

    if load.mode == "closed":
        for _ in range(min(load.concurrency, total)):
            send(0.0)
    else:
        for t in open_loop_arrivals(load).tolist():
            send(t)

    total_ranks = instances_n * ranks_n
    while heap:
        t, kind, _, payload = heapq.heappop(heap)
        if kind == ARRIVAL:
            req = payload
            arrival[req] = t
            slot = req % total_ranks
            e = slot // ranks_n
            engines[e].ranks[slot % ranks_n].waiting.append(req)
            if plans[e] is None and not wake_pending[e]:
                wake_pending[e] = True
                push(t, WAKE, e)
        elif kind == WAKE:
            e = payload
            wake_pending[e] = False
            if plans[e] is not None:
                continue
            plan = engines[e].plan()
            if plan is not None:
                plans[e] = plan
                push(t + plan.duration_s, STEP_END, e)
        else:
            e = payload
            engines[e].apply(plans[e], t, on_token, on_finish)
            plans[e] = None
            steps += 1
            wake_pending[e] = True
            push(t, WAKE, e)

    unfinished = [i for i in range(total) if finishes[i] != 1]
    if unfinished:  # every request must finish exactly once; anything else is a scheduler bug
        raise AssertionError(f"{len(unfinished)} requests did not finish exactly once (first: {unfinished[0]})")
    measured = slice(load.warmup, total)
    metrics = run_metrics(arrival=arrival[measured], first_token=first_token[measured], finish=finish[measured],
                          osl=osl, itl_s=np.asarray(itl), gpus=sc.gpus)
    from moesim.sim.provenance import provenance
    return {
        "scenario": sc.input.name, "model": sc.model.id, "system": sc.system.id, "gpus": sc.gpus,
        "fleet": sc.system.fleet_label(sc.gpus), "parallel": sc.plan.model_dump(),
        "framework": policy.framework, "load": load.to_json(), "metrics": metrics,
        "scheduler": {"policy": policy.to_json(), "instances": instances_n, "ranks_per_instance": ranks_n,
                      "kv_capacity_tokens_per_rank": kv_capacity,
                      "peak_kv_tokens_per_rank": max(e.peak_kv_used for e in engines),
                      "peak_kv_reserved_tokens_per_rank": max(e.peak_kv_reserved for e in engines),
                      "peak_running_per_rank": max(e.peak_running for e in engines), "steps": steps},
        "step_function": fn.to_json(),
        "assumptions": assumptions(policy),
        "provenance": dict(provenance(sc), code_and_data_digest=code_and_data_digest()),
        "_requests": {"output_tokens": list(generated), "finishes": finishes},
    }


def assumptions(policy: Policy) -> list[str]:
    """What this result rests on beyond its inputs, in words a reader can check."""
    out = ["step time: a grid of moesim step-model runs, interpolated; a step that mixes decode and prefill "
           "tokens is composed from them (moesim/serve/step_function.py)",
           "KV: a request reserves ISL + OSL tokens at admission, so nothing is preempted",
           "ranks of an instance step in lockstep; a step takes as long as its slowest rank",
           "requests go to attention-DP ranks round robin"]
    if not policy.cpu_overhead_published:
        out.append(f"{policy.framework}: per-step CPU time is not published; none is added")
    return out


__all__ = ["serve", "deployment_shape"]
