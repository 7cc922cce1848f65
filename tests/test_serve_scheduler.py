"""The scheduler's per-rank decode bookkeeping (`serve.scheduler`, module docstring) gives what a
per-token loop gives: the same token gaps, finishes and KV use; and the request overhead."""
from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.serve.load import make_load
from moesim.serve.run import serve
from moesim.serve.scheduler import Instance, ItlSamples, Policy
from moesim.serve.step_function import build_step_function

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}


@pytest.mark.parametrize("step_policy", ["prefill_first", "mixed"])
def test_counted_gaps_equal_per_token_gaps(step_policy):
    """Two instances fed the same requests, one recording every token through `on_token` (as a
    per-token loop does), one through `ItlSamples`: the same gaps (as multisets), the same finish
    times and the same generated tokens."""
    sc = load_scenario(None, CHEAP)
    policy = Policy(**dict(Policy.of(sc).__dict__, step_policy=step_policy))
    rng = np.random.default_rng(5)
    n, warmup = 40, 6
    isl = [int(x) for x in rng.integers(20, 200, n)]
    osl = [int(x) for x in rng.integers(1, 40, n)]
    fn = build_step_function(sc, isl=100, osl=20, max_batch=64, max_prefill_tokens=policy.token_budget,
                             max_context=max(a + b for a, b in zip(isl, osl)))
    runs = []
    for counted in (False, True):
        prefilled, generated = [0] * n, [0] * n
        engine = Instance(2, policy, fn, isl=isl, osl=osl, kv_capacity=2_000, prefilled=prefilled,
                          generated=generated, warmup=warmup)
        last, gaps, finish = [math.nan] * n, [], {}
        itl = ItlSamples() if counted else None

        def on_token(req, now):
            if not math.isnan(last[req]) and req >= warmup:
                gaps.append(now - last[req])
            last[req] = now

        arrivals = iter(range(n))
        t = 0.0
        while True:
            for _ in range(3):   # a few arrivals between steps, over both ranks
                req = next(arrivals, None)
                if req is not None:
                    engine.ranks[req % 2].waiting.append(req)
            plan = engine.plan()
            if plan is None:
                break
            t += plan.duration_s
            engine.apply(plan, t, on_token, lambda req, now: finish.setdefault(req, now), itl)
            for rank in engine.ranks:
                assert rank.kv_used <= engine.kv_capacity
        all_gaps = np.sort(np.asarray(gaps + (itl.array().tolist() if counted else [])))
        runs.append((all_gaps, finish, list(generated)))
    (gaps_a, finish_a, gen_a), (gaps_b, finish_b, gen_b) = runs
    assert gen_a == gen_b == osl
    assert finish_a == finish_b and len(finish_a) == n
    assert len(gaps_a) == sum(o - 1 for o in osl[warmup:]) and np.array_equal(gaps_a, gaps_b)


def test_request_overhead_delays_the_first_token_seen_not_the_engine():
    # the client sees the first token r later; the last one when the engine made it; the engine's schedule
    # (every request joins the queue as it is sent) does not move
    sc = load_scenario(None, CHEAP)
    load = make_load(isl=256, osl=16, requests=40, concurrency=4)
    base = Policy.of(sc)
    plain = serve(sc, load, policy=Policy(**dict(base.__dict__, request_overhead_s=0.0)))
    decode_s = min(plain["_requests"]["e2e_s"] - plain["_requests"]["ttft_s"])
    r = 0.5 * decode_s
    slow = serve(sc, load, policy=Policy(**dict(base.__dict__, request_overhead_s=r)))
    assert slow["scheduler"]["steps"] == plain["scheduler"]["steps"]
    np.testing.assert_allclose(slow["_requests"]["ttft_s"], plain["_requests"]["ttft_s"] + r, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(slow["_requests"]["e2e_s"], plain["_requests"]["e2e_s"])
    assert slow["metrics"]["tpot_ms"]["mean"] == pytest.approx(plain["metrics"]["tpot_ms"]["mean"] - r * 1e3 / 15)


def test_a_first_token_seen_after_the_last_one_was_made_holds_the_client_back():
    sc = load_scenario(None, CHEAP)
    load = make_load(isl=256, osl=4, requests=6, concurrency=1)
    base = Policy.of(sc)
    plain = serve(sc, load, policy=Policy(**dict(base.__dict__, request_overhead_s=0.0)))
    r = 10 * max(plain["_requests"]["e2e_s"])
    slow = serve(sc, load, policy=Policy(**dict(base.__dict__, request_overhead_s=r)))
    np.testing.assert_array_equal(slow["_requests"]["e2e_s"], slow["_requests"]["ttft_s"])   # seen together
    # one client, sending each request when it saw the last one: a request now takes its TTFT, r beyond the
    # engine's first token, where it took its engine's decode to the last token
    decodes = sum(plain["_requests"]["e2e_s"] - plain["_requests"]["ttft_s"])
    assert slow["metrics"]["duration_s"] == pytest.approx(plain["metrics"]["duration_s"] + 6 * r - decodes)


def test_a_batch_limit_beyond_the_step_budget_is_refused():
    base = Policy.of(load_scenario(None, dict(CHEAP, **{"runtime.framework": "vllm"})))
    with pytest.raises(MoesimError, match="cannot decode within"):
        Policy(**dict(base.__dict__, max_running=base.token_budget + 1))


def test_timeline_stays_within_capacity():
    sc = load_scenario(None, CHEAP)
    r = serve(sc, make_load(isl=256, osl=32, requests=200, concurrency=24))
    tl = r["timeline"]
    assert 0 < len(tl["t_s"]) <= 200 and tl["t_s"] == sorted(tl["t_s"])
    assert max(tl["kv_used_tokens"]) <= tl["kv_capacity_tokens"]
    assert max(tl["running_requests"]) <= 24 and max(tl["running_requests"]) > 1


def _incremental_run(stretch: bool):
    """vLLM V1's KV policy on a rank that holds ~3 whole requests: more run at once, decode tokens
    that no longer fit preempt the newest decoding request, which is recomputed later; every
    request still ends once with its output, KV use never exceeds capacity, every measured token
    after the first has a gap, and stretched decode runs (`stretch`) give the same run."""
    sc = load_scenario(None, dict(CHEAP, **{"runtime.framework": "vllm"}))
    policy = Policy(**dict(Policy.of(sc).__dict__, kv_admission="incremental"))
    isl, osl, n, warmup = 64, 40, 12, 2
    fn = build_step_function(sc, isl=isl, osl=osl, max_batch=16, max_prefill_tokens=policy.token_budget,
                             max_context=2 * (isl + osl))
    prefilled, generated = [0] * n, [0] * n
    engine = Instance(1, policy, fn, isl=isl, osl=osl, kv_capacity=3 * (isl + osl), prefilled=prefilled,
                      generated=generated, warmup=warmup, kv_admission="incremental")
    engine.ranks[0].waiting.extend(range(n))
    itl, finish, t, steps = ItlSamples(), {}, 0.0, 0
    while engine.has_work():
        plan = engine.plan(t)
        if stretch:
            plan = engine.stretch(plan, t, math.inf)
        end = plan.end_s(t)
        engine.apply(plan, end, lambda req, now: None, lambda req, now: finish.setdefault(req, now), itl)
        t, steps = end, steps + plan.steps
        assert engine.ranks[0].kv_used <= engine.kv_capacity
        assert engine.ranks[0].kv_used <= engine.ranks[0].kv_reserved <= engine.kv_capacity
    assert sorted(finish) == list(range(n)) and generated == [osl] * n
    assert engine.preemptions > 0 and engine.peak_running > 3
    gaps = itl.array()
    assert len(gaps) == (n - warmup) * (osl - 1)
    # a recomputed request waits a whole prefill and more for its next token: the longest gaps
    assert gaps.max() > 2 * np.median(gaps)
    return finish, gaps.tolist(), steps


def test_incremental_admission_preempts_and_recomputes():
    stepped = _incremental_run(False)
    stretched = _incremental_run(True)
    assert stretched[:2] == stepped[:2] and stretched[2] == stepped[2]
