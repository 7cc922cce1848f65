"""The fast paths of request-level serving give the reference paths' results, float for float.

- lockstep decoding (`serve.scheduler.Lockstep`, `LOCKSTEP`) against every step through the
  per-rank path;
- coasting decode instances (`serve.disagg.Coasting`, `COASTING`) against one event per step, and
  a run that meets a tie (`_Tie`) made again without coasting;
- a lockstep run's step times (`StepFunction.decode_columns`) against `decode_many`, marking the
  same grid points used;
- the timeline's sums formed at the end (`serve.run.Timeline`), the gaps' array (`ItlSamples`),
  KV-transfer rates kept per set of routes (`serve.disagg.Transfers`) against what they replace;
- the planner's workers sharing step times through a folder (`planning.sweep`);
- the plan benchmark's: the lockstep look-ahead's row paths (`StepFunction.decode_rows_used`, plain
  Python `decode_rows_slowest_used`) against `decode_columns`, and whole runs on each; the step grid's
  routed-expert parts reused across contexts; the engine's one-addition makespan against SimPy;
  percentiles read in one call; the KV capacity kept per scenario.
"""
from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.scenario import load_scenario
from moesim.core.result import to_json
from moesim.costs.collectives import build_fabric
from moesim.costs.network import solve_rates
from moesim.serve import disagg as disagg_module
from moesim.serve import scheduler, step_function
from moesim.serve.disagg import Transfers, make_disagg
from moesim.serve.load import make_load
from moesim.serve.run import Timeline, serve
from moesim.serve.scheduler import EventQueue, ItlSamples
from moesim.serve.step_function import build_step_function
from moesim.sim.provenance import hardware_for

CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}   # 2-GPU instances of two attention-DP ranks


def _public(result: dict) -> str:
    return to_json({k: v for k, v in result.items() if not k.startswith("_")}, indent=None)


def _runs(monkeypatch, sc, load, disagg=None, trace=False) -> dict:
    """The run with each fast path off and on: {(LOCKSTEP, COASTING): (public JSON, _requests, _trace)}."""
    out = {}
    for lockstep, coasting in ((False, False), (True, False), (True, True)):
        monkeypatch.setattr(scheduler, "LOCKSTEP", lockstep)
        monkeypatch.setattr(disagg_module, "COASTING", coasting)
        r = serve(sc, load, disagg=disagg, trace=trace)
        out[(lockstep, coasting)] = (_public(r), to_json(r["_requests"], indent=None),
                                     to_json(r.get("_trace"), indent=None))
    return out


CASES = [
    ("sglang", dict(isl=256, osl=64, requests=120, concurrency=24), None),
    ("sglang", dict(isl="uniform:64:512", osl="uniform:8:96", requests=150, concurrency=32, warmup=10), None),
    ("vllm", dict(isl=256, osl=48, requests=100, rate=60.0), None),
    ("trtllm", dict(isl=200, osl=40, requests=80, concurrency=16), None),
    ("sglang", dict(isl=256, osl=64, requests=120, concurrency=24), (1, 3, None)),
    ("sglang", dict(isl="uniform:64:512", osl="uniform:8:96", requests=150, concurrency=32, warmup=10), (2, 2, None)),
    ("sglang", dict(isl=256, osl=64, requests=120, rate=40.0), (1, 2, None)),
    ("vllm", dict(isl=256, osl=64, requests=120, concurrency=24), (1, 3, None)),
    ("sglang", dict(isl=300, osl=48, requests=100, concurrency=40), (1, 4, {"tp": 1, "ep": 2})),
]


@pytest.mark.parametrize("framework, load, pools", CASES)
def test_fast_paths_give_the_reference_run(monkeypatch, framework, load, pools):
    """Aggregated and disaggregated runs (closed and open loops, varied lengths, a warm-up, a decode
    pool of its own split) are the same bytes with lockstep decoding and coasting on or off: the
    Result (metrics, scheduler counts, timeline, pools' busy time, step function's used points)
    and every request's times."""
    over = dict(CHEAP, **{"runtime.framework": framework})
    if pools and pools[2]:
        over.update({"gpus": 4, "parallel.ep": 4})
    disagg = make_disagg("disagg", pools[0], pools[1], decode_parallel=pools[2]) if pools else None
    runs = _runs(monkeypatch, load_scenario(None, over), make_load(**load), disagg)
    assert runs[(False, False)] == runs[(True, False)] == runs[(True, True)]


def test_trace_is_the_reference_trace(monkeypatch):
    """A run's Chrome trace (one event per engine step, written as the run makes them) is the same
    with lockstep decoding (coasting is off in a traced run)."""
    runs = _runs(monkeypatch, load_scenario(None, CHEAP), make_load(isl=256, osl=32, requests=60, concurrency=16),
                 make_disagg("disagg", 1, 2), trace=True)
    assert runs[(False, False)] == runs[(True, True)]


def test_decode_instances_coast(monkeypatch):
    """Busy decode instances side by side do take their single steps without an event each."""
    coasts = []
    single = disagg_module.Coasting.single

    def counted(self, *args):
        plan = single(self, *args)
        coasts.append(plan.coast)
        return plan
    monkeypatch.setattr(disagg_module.Coasting, "single", counted)
    serve(load_scenario(None, CHEAP), make_load(isl=256, osl=64, requests=120, concurrency=24),
          disagg=make_disagg("disagg", 1, 3))
    assert sum(coasts) > 50


def test_a_tie_runs_again_without_coasting(monkeypatch):
    """A coasting step end that ties with another event (forced here at the 40th horizon) makes
    the run start again without coasting: the reference run."""
    sc, load, disagg = load_scenario(None, CHEAP), make_load(isl=256, osl=64, requests=80, concurrency=16), \
        make_disagg("disagg", 1, 2)
    monkeypatch.setattr(disagg_module, "COASTING", False)
    reference = _public(serve(sc, load, disagg=disagg))
    monkeypatch.setattr(disagg_module, "COASTING", True)
    calls, horizon = [0], disagg_module.Coasting.horizon

    def tie_once(self, now):
        calls[0] += 1
        if calls[0] == 40:
            raise disagg_module._Tie
        return horizon(self, now)
    monkeypatch.setattr(disagg_module.Coasting, "horizon", tie_once)
    assert _public(serve(sc, load, disagg=disagg)) == reference and calls[0] > 40


def test_lockstep_columns_are_the_element_path():
    """`decode_columns` over columns of growing contexts (inside one grid interval, or across grid
    points, where it takes the element path) gives `decode_many`'s floats, marks the same grid
    points used, and with `used_only` reads only used points (NaN elsewhere), marking none."""
    sc = load_scenario(None, CHEAP)
    rng = np.random.default_rng(3)
    columns = build_step_function(sc, isl=300, osl=60, max_batch=64, max_prefill_tokens=2048)
    elements = build_step_function(sc, isl=300, osl=60, max_batch=64, max_prefill_tokens=2048)
    elements.times = step_function.StepTimes(sc, columns.times.key, None)   # its own points
    for _ in range(30):
        width, steps = int(rng.integers(1, 9)), int(rng.integers(1, 40))
        batch = rng.integers(1, 65, width)
        on_grid = rng.random(width) < 0.3
        batch[on_grid] = rng.choice(columns.batches, int(on_grid.sum()))
        start = rng.uniform(2, 360 - steps, width)
        start[rng.random(width) < 0.2] = 301.0   # on a grid point
        context = start + np.arange(steps)[:, None] * rng.uniform(0.05, 1.0, width)
        ahead = columns.decode_columns(batch, context, used_only=True)
        assert np.array_equal(np.isnan(ahead), np.isnan(elements.decode_many(
            np.broadcast_to(batch, context.shape).ravel(), context.ravel(), used_only=True).reshape(context.shape)))
        got = columns.decode_columns(batch, context)
        want = elements.decode_many(np.broadcast_to(batch, context.shape).ravel(), context.ravel())
        assert got.ravel().tolist() == want.tolist()
        assert np.array_equal(np.isnan(columns.decode_s), np.isnan(elements.decode_s))
        assert ahead[~np.isnan(ahead)].tolist() == got[~np.isnan(ahead)].tolist()


def test_timeline_sums_are_the_running_totals():
    """The timeline's rows formed at the end are the running totals the per-step sums gave: after
    each step of any instance, the sum of every instance's latest totals (steps given out of
    time order, as coasting instances record theirs)."""
    rng = np.random.default_rng(7)

    class Fake:
        def __init__(self):
            self.now = (0, 0, 0)

        def totals(self):
            return self.now
    engines = [Fake() for _ in range(3)]
    timeline = Timeline(engines)
    events = sorted((float(t), int(e), tuple(int(x) for x in rng.integers(0, 100, 3)))
                    for t, e in zip(np.cumsum(rng.uniform(0, 1, 300)), rng.integers(0, 3, 300)))
    expected, totals, last = [], [0, 0, 0], [(0, 0, 0)] * 3
    for t, e, now in events:
        totals = [a + b - c for a, b, c in zip(totals, now, last[e])]
        last[e] = now
        expected.append(tuple(totals))
    for e in (2, 0, 1):   # one instance after another: each in its own time order
        for t, e2, now in events:
            if e2 == e:
                engines[e].now = now
                timeline.step(e, t)
    times, rows = timeline.rows()
    assert times.tolist() == [t for t, _, _ in events]
    assert [tuple(r) for r in rows.tolist()] == expected


def test_gaps_array_is_every_gap_sorted():
    rng = np.random.default_rng(1)
    itl = ItlSamples()
    for value, count in zip(rng.choice(rng.uniform(0, 1, 40), 500), rng.integers(1, 9, 500)):
        itl.add(float(value), int(count))
    itl.add_gaps([0.5, 0.75, 1.5, 1.625], 3)
    reference = np.sort(np.repeat(np.asarray(itl.values), np.asarray(itl.counts)))
    assert itl.array().tolist() == reference.tolist()


def test_cancelled_events_never_come():
    events = EventQueue()
    keep = events.push(2.0, 0, "b")
    drop = events.push(1.0, 0, "a")
    events.push(3.0, 1, "c")
    events.cancel(drop)
    assert keep != drop and events.next_time() == 2.0
    assert [events.pop_next()[3] for _ in range(2)] == ["b", "c"] and events.pop_next() is None


def test_transfer_rates_are_solve_rates():
    """Rates kept per set of routes in flight and the plain divisions give what `solve_rates` and
    numpy's divisions give, flow set after flow set."""
    sc = load_scenario(None, dict(CHEAP, gpus=16))
    fabric = build_fabric(sc.system, 16, hardware_for(sc)[2])
    net = Transfers(fabric)
    rng = np.random.default_rng(5)
    for req in range(40):
        pairs = [(int(a), int(b)) for a, b in rng.integers(0, 16, (int(rng.integers(1, 4)), 2)) if a != b]
        if not pairs:
            continue
        for _, fid in net.open(req, pairs, [float(x) for x in rng.uniform(1e6, 1e8, len(pairs))]):
            net.start(float(req), fid)
            ptr = np.concatenate([[0], np.cumsum([len(net.links[f]) for f in net.active])])
            want = solve_rates(fabric.capacity_Bps, ptr, np.concatenate([net.links[f] for f in net.active]))
            assert net.rates == want.tolist()
            left = np.array([net.remaining[f] for f in net.active]) / want
            first = left.min()   # below zero for a flow this loop, which never checks, let send past its end
            assert net.due == [f for f, x in zip(net.active, left.tolist()) if x <= first + abs(first) * 1e-12]
            assert net.due   # the flow that ends first is always due


def test_workers_share_step_times_through_a_folder(tmp_path, monkeypatch):
    """A grid point one process simulated into the shared folder is read, not simulated again, by
    another that has the deployment's step times already (`StepTimes._known`)."""
    sc = load_scenario(None, CHEAP)
    step_function._CACHE.clear()
    first = step_function.step_times(sc, tmp_path)
    step_function._CACHE.clear()
    second = step_function.step_times(sc, tmp_path)
    assert first is not second
    value = first.decode_s(4, 100)
    monkeypatch.setattr(step_function, "simulate_decode", lambda *a: pytest.fail("simulated again"))
    assert second.decode_s(4, 100) == value
    step_function._CACHE.clear()


def test_pieces_start_on_different_deployments():
    """Of equal pieces, every group's first comes before any group's second (`sweep._balanced`)."""
    from moesim.planning.sweep import PIECES_PER_WORKER, _balanced
    groups = [[(g, i) for i in range(12)] for g in range(3)]
    pieces = _balanced(groups, 2)
    size = 12 // (2 * PIECES_PER_WORKER)
    assert [piece[0] for piece in pieces] == [(g, k * size) for k in range(2 * PIECES_PER_WORKER) for g in range(3)]
    assert sorted(point for piece in pieces for point in piece) == sorted(p for group in groups for p in group)


# ----------------------------------------------------------------------------- the plan benchmark's fast paths
def _rows(rng, fn, width: int, steps: int):
    """Random lockstep look-ahead rows: (CUDA-graph batches, context sums, request counts, ticks), each
    row's contexts (sum + count x tick) / count; some rows start on a grid point, some cross one."""
    counts = [int(c) for c in rng.integers(1, 40, width)]
    batch = [int(rng.choice(fn.batches)) if rng.random() < 0.4 else int(rng.integers(1, fn.batches[-1] + 1))
             for _ in range(width)]
    start = int(rng.integers(0, 50))
    sums = []
    for count in counts:
        first = fn.contexts[1] if rng.random() < 0.2 else float(rng.uniform(2, fn.contexts[-1] - steps - 1))
        sums.append(int(first * count) - count * start)
    return batch, sums, counts, range(start, start + steps)


def test_look_ahead_rows_are_decode_columns():
    """The lockstep look-ahead's row paths (`StepFunction.decode_rows_used`, numpy over a span table;
    `decode_rows_slowest_used`, plain Python) give `decode_columns(..., used_only=True)`'s floats and
    NaNs wherever they answer, grid points used or not yet, and mark nothing used."""
    sc = load_scenario(None, CHEAP)
    rng = np.random.default_rng(11)
    fn = build_step_function(sc, isl=300, osl=60, max_batch=64, max_prefill_tokens=2048)
    answered = plain_answered = 0
    for trial in range(300):
        if trial % 60 == 30:   # use some more grid points as a run would: the span table is made again
            fn.decode_many(rng.integers(1, 65, 3), rng.uniform(2, 360, 3))
        batch, sums, counts, ticks = _rows(rng, fn, int(rng.integers(1, 9)), int(rng.integers(1, 40)))
        used = np.isnan(fn.decode_s).copy()
        context = (np.array(sums)[:, None] + np.array(counts)[:, None] * np.arange(ticks.start, ticks.stop)) \
            / np.array(counts)[:, None]
        want = fn.decode_columns(np.array(batch), context.T, used_only=True).T
        rows = fn.decode_rows_used(np.array(batch), context)
        if rows is not None:
            answered += 1
            assert rows.tobytes() == want.tobytes()
        slowest = fn.decode_rows_slowest_used(batch, sums, counts, ticks)
        if slowest is not None:
            plain_answered += 1
            assert np.array(slowest).tobytes() == want.max(axis=0).tobytes()
        assert np.array_equal(np.isnan(fn.decode_s), used)   # nothing simulated or marked
    assert answered > 100 and plain_answered > 100


def test_lockstep_runs_are_the_same_on_every_look_ahead_path(monkeypatch):
    """A run whose look-ahead is read in plain Python, by numpy over the span table, or by
    `decode_columns` alone is the same bytes."""
    sc = load_scenario(None, dict(CHEAP, **{"gpus": 4, "parallel.ep": 4}))
    load = make_load(isl="uniform:64:512", osl="uniform:8:96", requests=150, concurrency=32)
    disagg = make_disagg("disagg", 1, 3)
    runs = []
    for plain, rows in ((128, True), (0, True), (0, False)):
        monkeypatch.setattr(scheduler.Lockstep, "PLAIN_ELEMENTS", plain)
        if not rows:
            monkeypatch.setattr(step_function.StepFunction, "decode_rows_used", lambda self, b, c: None)
        for mode in (None, disagg):
            r = serve(sc, load, disagg=mode)
            runs.append((_public(r), to_json(r["_requests"], indent=None)))
    assert runs[0::2] == [runs[0]] * 3 and runs[1::2] == [runs[1]] * 3


def test_routed_parts_reused_across_contexts_are_the_same_ops():
    """Steps of one batch at other contexts reuse the routed-expert part (`serving_layers`'
    `routed_cache`): the same op durations as a step made without the cache."""
    from moesim.serve.step_function import _variant
    from moesim.sim.layer_ops import serving_layers
    sc = load_scenario(None, CHEAP)
    cache: dict = {}
    for phase, context in (("decode", 20), ("decode", 500), ("prefill", 300), ("prefill", 700)):
        w = step_function.Serving(kind="serving", phase=phase, batch=8 if phase == "decode" else 1,
                                  input_len=context - 1 if phase == "decode" else context, output_len=1,
                                  prefill_chunk_tokens=None if phase == "decode" else 256)
        variant = _variant(sc, w)
        kept, _, _ = serving_layers(variant, microbatches=1, skew="uniform", placement=None, routed_cache=cache)
        fresh, _, _ = serving_layers(variant, microbatches=1, skew="uniform", placement=None)
        assert [[op.durations for op in ops] for ops in kept] == [[op.durations for op in ops] for ops in fresh]
    assert len(cache) == 2   # one per (phase, tokens per rank)


def test_makespan_shortcut_is_the_engine():
    """`_one_microbatch_makespan` (one addition while every GPU's clock and op are the same) and the
    fused ops' sums (`_summed`) give the SimPy engine's float on random layers of uniform and per-GPU
    ops."""
    from moesim.sim.engine import Op, _one_microbatch_makespan, fuse, run_step
    rng = np.random.default_rng(4)
    for _ in range(40):
        gpus = int(rng.integers(1, 9))
        layers = []
        for _ in range(int(rng.integers(1, 6))):
            ops = []
            for _ in range(int(rng.integers(1, 6))):
                kind = rng.choice(["uniform", "per_gpu", "comm", "fused"])
                if kind == "comm":
                    ops.append(Op("c", "comm", "comm", (float(rng.uniform(0, 1e-3)),)))
                elif kind == "fused":
                    parts = [Op("p", "x", "compute", (float(rng.uniform(0, 1e-3)),) * gpus),
                             Op("q", "x", "compute", tuple(rng.uniform(0, 1e-3, gpus).tolist()))]
                    ops.append(fuse(parts[:int(rng.integers(1, 3))]))
                else:
                    same, each = (float(rng.uniform(0, 1e-3)),) * gpus, tuple(rng.uniform(0, 1e-3, gpus).tolist())
                    ops.append(Op("o", "x", "compute", same if kind == "uniform" else each))
            layers.append(ops)
        want = run_step(layers, gpus, microbatches=1, record=True).makespan_s
        assert run_step(layers, gpus, microbatches=1, record=False).makespan_s == want
        fused = [[Op(op.name, op.op_class, op.kind, tuple(sum(p) for p in zip(*(x.durations for x in op.parts))))
                  if hasattr(op, "parts") else op for op in ops] for ops in layers]
        assert _one_microbatch_makespan(fused, gpus) == _one_microbatch_makespan(layers, gpus)


def test_percentiles_in_one_call_are_each_percentile():
    """`summary_ms` reads its percentiles in one `np.percentile` call: each the float a call of its own gives."""
    from moesim.serve.metrics import PERCENTILES, summary_ms
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 10, 101, 5000):
        for values in (rng.lognormal(size=n), np.repeat(rng.uniform(0, 1, 3), n)[:n]):
            got = summary_ms(values)
            assert [got[f"p{q}"] for q in PERCENTILES] == [float(np.percentile(values, q) * 1e3) for q in PERCENTILES]


def test_kv_capacity_kept_per_scenario_is_the_ledgers():
    """The KV capacity kept per resolved scenario and step size is what the ledgers give anew, and
    the check of the longest request still runs on every call."""
    from moesim.core.errors import MoesimError
    sc = load_scenario(None, CHEAP)
    scheduler._KV_TOKENS.clear()
    first = scheduler.kv_capacity_tokens(sc, isl=300, osl=60, max_batch=32, prefill_tokens=2048)
    assert scheduler.kv_capacity_tokens(sc, isl=300, osl=60, max_batch=32, prefill_tokens=2048) == first
    scheduler._KV_TOKENS.clear()
    assert scheduler.kv_capacity_tokens(sc, isl=300, osl=60, max_batch=32, prefill_tokens=2048) == first
    with pytest.raises(MoesimError, match="never fit"):
        scheduler.kv_capacity_tokens(sc, isl=300, osl=60, max_batch=32, prefill_tokens=2048, longest=(first, 1))
