"""Run serving_load benchmarks: one `serve` run per benchmark, grouped by deployment, in a process pool.

`run_groups(groups, profile, workers)` returns, per benchmark key, the run's TTFT and TPOT means (and
each simulated round's, which the measured rounds weight),
the step counts the fit's first-order model needs (`validation.serving_load`) and the parameter
values it ran at - or `{"skip": reason}`. A group (one deployment's benchmarks) runs in one process
so its benchmarks share the deployment's step-time function (`serve.step_function`, shared per
process for the same resolved scenario). Groups go to `workers` processes, largest first; a run
depends only on its own inputs (the step function's points do not depend on the order they are
simulated in), so the answers are the same floats for any number of workers.

Step counts come from the run's trace (`serve.trace`: engine steps per instance, phases per
request), per measured request:
- agg: n_first = steps of the request's instance that end after it arrives and by its first token;
  n_tpot = steps that end after its first token and by its last, over OSL - 1; p_first and p_tpot the
  step model's prefill time of the same steps (`prefill_model_s`), summed, the latter over OSL - 1;
- disagg: n_first = steps of its prefill instance from arrival to prompt done, plus the decode
  instance's steps it waited for after it was handed over (steps from its hand-over to its last token less
  its OSL - 1 decode steps); n_tpot = 1 (a decode instance runs only decode steps, each gives it a token);
  p_first the prefill instance's steps' prefill time, p_tpot = 0.
A request's instance is the one with a step ending when its phase ends (its last token, its prompt).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import numpy as np

from moesim.core.errors import MoesimError
from moesim.core.pools import worker_pool
from moesim.serve.scheduler import moe_kernel_family, rank_layers, serving_overhead_names
from moesim.validation.serving_load import (ROUNDS, Benchmark, batch_limit, disagg_for, graph_sizes, load_for,
                                            round_means, scenario_overrides, step_policy, step_token_budget,
                                            weighted_mean)

US = 1e6              # trace timestamps are microseconds
MS = 1e3
MATCH_S = 1e-9        # a phase that ends at a step's end: the same instant up to float rounding


def run_groups(groups: list[list[Benchmark]], profile, *, workers: int = 1) -> dict[str, dict]:
    """Every benchmark's run (module docstring), keyed by `Benchmark.key`."""
    if workers < 1:
        raise MoesimError(f"workers must be at least 1, got {workers}", field="--workers", fix="use 1 or more")
    order = sorted(range(len(groups)), key=lambda i: -_cost(groups[i]))   # largest first: the pool ends together
    out: dict[str, dict] = {}
    if workers == 1 or len(groups) <= 1:
        for i in order:
            out.update(run_group(groups[i], profile))
        return out
    with worker_pool(min(workers, len(groups))) as pool:
        for result in pool.map(run_group, [groups[i] for i in order], [profile] * len(order)):
            out.update(result)
    return out


def _cost(group: list[Benchmark]) -> float:
    """A rough relative cost of a group: decode tokens simulated, times the ranks stepped."""
    return sum(2 * b.concurrency * b.osl * (b.decode or b.pool).attn_dp for b in group)


def run_group(group: list[Benchmark], profile) -> dict[str, dict]:
    """One deployment's benchmarks in this process at the kernel profile's values (each run stands
    them in for the default itself: a pool worker does not inherit the caller's context)."""
    values = profile.values()
    return {b.key: run_benchmark(b, values) for b in group}


def run_benchmark(b: Benchmark, values: dict) -> dict:
    """One benchmark simulated at the parameter values `values` (the serving overheads through its policy,
    every other kernel parameter as the profile it runs under); `{"skip": reason}` when it cannot run."""
    from moesim.calibration.kernel_params import standing_in_for_default
    from moesim.cluster.scenario import load_scenario
    from moesim.serve.run import serve
    from moesim.serve.scheduler import Policy

    try:
        sc = load_scenario(None, scenario_overrides(b))
        family = moe_kernel_family(sc)
        c_ms, r_ms, h_ms, l_us, scale, mixed_scale = (values[name]
                                                     for name in serving_overhead_names(b.backend, family))
        with standing_in_for_default(profile_of(values)):
            default = Policy.of(sc)   # the serving overheads at `values`, as every other kernel parameter
            policy = replace(default, max_running=batch_limit(b), step_policy=step_policy(b, default.step_policy),
                             token_budget=step_token_budget(b, default.token_budget), graph_sizes=graph_sizes(b))
            result = serve(sc, load_for(b), disagg=disagg_for(b), policy=policy, trace=True)
        demand = kv_demand(b, sc)
    except MoesimError as exc:
        if exc.field in ("memory", "--isl/--osl"):
            return {"skip": f"KV cache does not fit per the VRAM ledger: {exc.problem}"}
        return {"skip": f"cannot model: {exc.one_line()}"}
    req, c = result["_requests"], b.concurrency
    ttft_s, e2e_s = np.asarray(req["ttft_s"]), np.asarray(req["e2e_s"])
    first, per_token, prefill_first, prefill_per_token, mixed_first, mixed_per_token = step_counts(
        result["_trace"], osl=b.osl, mode=b.mode)
    tpot_s = (e2e_s - ttft_s) / (b.osl - 1) if b.osl > 1 else np.full_like(ttft_s, math.nan)   # no TPOT of 1 token
    rounds = {"ttft_ms": round_means(ttft_s * MS, c), "tpot_ms": round_means(tpot_s * MS, c),
              "steps_before_first_token": round_means(first, c), "steps_per_output_token": round_means(per_token, c),
              "prefill_ms_before_first_token": round_means(prefill_first * MS, c),
              "prefill_ms_per_output_token": round_means(prefill_per_token * MS, c),
              "mixed_prefill_ms_before_first_token": round_means(mixed_first * MS, c),
              "mixed_prefill_ms_per_output_token": round_means(mixed_per_token * MS, c)}
    measured = values[ROUNDS]
    return {**{k: weighted_mean(v, measured) for k, v in rounds.items()}, "rounds": rounds, "profiled_rounds": measured,
            "step_cpu_ms": c_ms, "request_overhead_ms": r_ms, "disagg_handoff_ms": h_ms,
            "layer_overhead_us": l_us, "moe_kernels": family, "prefill_scale": scale,
            "mixed_prefill_scale": mixed_scale, "layers": rank_layers(sc), "kv_demand": demand}


def kv_demand(b: Benchmark, sc) -> float:
    """How many times over the benchmark's clients' KV fills the HBM its serving GPUs have beyond their weights,
    each client holding its prompt and on average half its output (the decode pool's GPUs where disaggregated;
    the memory fraction and every other reserve left out, so a bound: `serving_load.record_contradiction`)."""
    from moesim.costs.memory import memory_ledger
    serving = disagg_for(b).decode_scenario(sc) if b.decode is not None else sc
    ledger = memory_ledger(serving)
    pool = b.decode or b.pool
    clients_per_rank = b.concurrency / (pool.attn_dp * pool.workers)
    per_client = ((b.isl + b.osl / 2) * (ledger.kv_bytes_per_token_per_gpu or 0.0)
                  + (ledger.state_bytes_per_sequence_per_gpu or 0.0))
    free = ledger.per_gpu["capacity_bytes"] - ledger.per_gpu["weights_bytes"]
    return clients_per_rank * per_client / free if free > 0 else math.inf


def profile_of(values: dict):
    """A kernel profile that predicts with `values`: the parameters that differ from their sourced
    defaults as its fitted ones (so the defaults alone are the `spec` profile, as in `run_group`)."""
    from moesim.calibration.kernel_params import KernelProfile, definitions
    defaults = definitions()
    return KernelProfile(name="serving_load run", fitted={k: v for k, v in values.items()
                                                          if k not in defaults or v != defaults[k].value})


def step_counts(trace: dict, *, osl: int, mode: str) -> tuple[np.ndarray, ...]:
    """Per request, in request order: steps before its first token, steps per output token, and the
    step model's prefill time (`prefill_model_s` of the steps, seconds) in those steps before its first
    token and per output token, in prompt-only steps and then in mixed ones (steps that also decode,
    whose prompts `Policy.mixed_prefill_scale` scales). A request's `queue` phase starts when it is sent,
    which is when it joins its rank's queue (the request overhead is on the first token's way back,
    `serve.scheduler.Clients`)."""
    steps: dict[int, list[float]] = {}
    prefills: dict[int, list[float]] = {}
    mixeds: dict[int, list[float]] = {}
    phases: dict[int, dict[str, tuple[float, float]]] = {}
    for ev in trace["traceEvents"]:
        if ev.get("ph") != "X":
            continue
        start, end = ev["ts"] / US, (ev["ts"] + ev["dur"]) / US
        if ev["pid"] == 0:
            steps.setdefault(ev["tid"], []).append(end)
            mixed = ev["cat"] == "mixed"
            prefills.setdefault(ev["tid"], []).append(0.0 if mixed else ev["args"]["prefill_model_s"])
            mixeds.setdefault(ev["tid"], []).append(ev["args"]["prefill_model_s"] if mixed else 0.0)
        else:
            phases.setdefault(ev["tid"], {})[ev["name"]] = (start, end)
    engines = {}
    for e, v in steps.items():   # an instance's step ends, in order, and its prefill times summed up to each
        order = np.argsort(np.asarray(v), kind="stable")
        engines[e] = (np.asarray(v)[order], *(np.concatenate([[0.0], np.cumsum(np.asarray(times[e])[order])])
                                              for times in (prefills, mixeds)))

    def instance(t: float) -> Optional[tuple]:
        for eng in engines.values():
            arr = eng[0]
            i = np.searchsorted(arr, t - MATCH_S)
            if i < len(arr) and arr[i] <= t + MATCH_S:
                return eng
        return None

    def between(eng: Optional[tuple], a: float, b: float) -> tuple[int, float, float]:
        """Steps of the instance `eng` ending in (a, b], and their prefill time (prompt-only steps, mixed steps)."""
        if eng is None:
            return 0, 0.0, 0.0
        i, j = np.searchsorted(eng[0], a + MATCH_S), np.searchsorted(eng[0], b + MATCH_S)
        return int(j - i), float(eng[1][j] - eng[1][i]), float(eng[2][j] - eng[2][i])

    firsts, per_token, prefill_first, prefill_per_token, mixed_first, mixed_per_token = [], [], [], [], [], []
    for req in sorted(phases):
        ph = phases[req]
        arrival = ph["queue"][0]
        if mode == "agg":
            first, finish = ph["decode"]
            own = instance(finish) if osl > 1 else instance(first)
            n, pre, mix = between(own, arrival, first)
            firsts.append(n)
            prefill_first.append(pre)
            mixed_first.append(mix)
            n, pre, mix = between(own, first, finish)
            per_token.append(n / (osl - 1) if osl > 1 else math.nan)
            prefill_per_token.append(pre / (osl - 1) if osl > 1 else math.nan)
            mixed_per_token.append(mix / (osl - 1) if osl > 1 else math.nan)
        else:   # a decode instance runs no prompt tokens: the prefill time is the prefill instance's
            prompt_done = ph["prefill"][1]
            joined, finish = ph["decode"]
            decode_steps, _, _ = between(instance(finish), joined, finish)
            n, pre, mix = between(instance(prompt_done), arrival, prompt_done)
            firsts.append(n + max(decode_steps - (osl - 1), 0))
            prefill_first.append(pre)
            mixed_first.append(mix)
            per_token.append(1.0)
            prefill_per_token.append(0.0)
            mixed_per_token.append(0.0)
    return tuple(np.asarray(x, dtype=float) for x in (firsts, per_token, prefill_first, prefill_per_token,
                                                      mixed_first, mixed_per_token))


__all__ = ["kv_demand", "run_benchmark", "run_group", "run_groups", "step_counts"]
