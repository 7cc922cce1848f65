"""The step-time function of `moesim serve` against direct step simulation (issue 16).

The run evaluates thousands of steps through an interpolated grid of step-model runs; these
tests show that grid stays within 2 % of simulating the step directly at random batch sizes,
contexts and prefill sizes off the grid, that a mixed step meets its two ends exactly, and that
simulating grid points lazily, or reading them from a disk cache, gives the same floats as
simulating the whole grid up front.
"""
from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.core.result import to_json
from moesim.serve import step_function
from moesim.serve.step_function import (MIN_CONTEXT, _variant, build_step_function, context_grid, geometric_grid,
                                        simulate_decode, simulate_prefill, step_time_s)

# A cheap deployment: Qwen3-30B-A3B FP8 over 2 H100s with EP2 (two attention-DP ranks, a real
# all-to-all across GPUs) - each step simulates in tens of milliseconds.
CHEAP = {"model": "qwen3-30b-a3b", "gpus": 2, "parallel.ep": 2}
ISL, OSL, MAX_BATCH, MAX_PREFILL = 512, 128, 64, 2048
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def sc():
    return load_scenario(None, CHEAP)


@pytest.fixture(scope="module")
def fn(sc):
    return build_step_function(sc, isl=ISL, osl=OSL, max_batch=MAX_BATCH, max_prefill_tokens=MAX_PREFILL)


def test_grids_cover_their_ranges(sc):
    assert geometric_grid(64, 2) == (1, 2, 4, 8, 16, 32, 64)
    assert geometric_grid(100, 2)[-1] == 100 and geometric_grid(1, 2) == (1,)
    assert context_grid(sc, ISL, OSL) == (MIN_CONTEXT, ISL + 1, ISL + OSL)


def test_sliding_window_is_a_grid_context():
    """gpt-oss caps half its layers' KV at 128 tokens: the kink must be a grid point."""
    sc = load_scenario(None, {"model": "gpt-oss-20b", "gpus": 1})
    assert 128 in context_grid(sc, 1000, 100)


def test_decode_interpolation_within_2_percent_of_direct_simulation(sc, fn):
    rng = np.random.default_rng(16)
    for _ in range(6):
        batch = int(rng.integers(1, MAX_BATCH + 1))
        context = int(rng.integers(ISL + 1, ISL + OSL + 1))
        direct = simulate_decode(sc, batch, context)
        assert fn.decode(batch, context) == pytest.approx(direct, rel=TOLERANCE), (batch, context)


def test_prefill_interpolation_within_2_percent_of_direct_simulation(sc, fn):
    rng = np.random.default_rng(17)
    for _ in range(6):
        tokens = int(rng.integers(1, MAX_PREFILL + 1))
        direct = simulate_prefill(sc, tokens, ISL)
        assert fn.prefill(tokens) == pytest.approx(direct, rel=TOLERANCE), tokens


def test_grid_points_are_the_simulation_itself(sc, fn):
    assert fn.decode(16, ISL + OSL) == simulate_decode(sc, 16, ISL + OSL)
    assert fn.prefill(256) == simulate_prefill(sc, 256, ISL)


def test_mixed_step_meets_both_pure_ends(fn):
    assert fn.step(8, ISL + 10, 0) == fn.decode(8, ISL + 10)
    assert fn.step(0, 0.0, 300) == fn.prefill(300)
    mixed = fn.step(8, ISL + 10, 300)
    assert fn.prefill(300) < mixed < fn.prefill(308) + fn.decode(8, ISL + 10)


def test_no_extrapolation(fn):
    with pytest.raises(ValueError):
        fn.decode(MAX_BATCH + 1, ISL + 1)
    with pytest.raises(ValueError):
        fn.prefill(MAX_PREFILL + 1)


def test_cached_per_scenario_and_lengths(sc, fn):
    """A second build of the same deployment shares the simulated points: nothing is simulated again."""
    fn.step(8, ISL + 10, 0)
    again = build_step_function(sc, isl=ISL, osl=OSL, max_batch=MAX_BATCH, max_prefill_tokens=MAX_PREFILL)
    assert again.times is fn.times
    before = fn.times.simulated
    assert again.step(8, ISL + 10, 0) == fn.step(8, ISL + 10, 0) and fn.times.simulated == before


def test_step_time_is_what_simulate_gives(sc):
    """The grid's shortcut around `simulate` (no breakdown, ledger, bands) returns the same float."""
    from moesim.cluster.scenario import Serving
    from moesim.sim.simulate import simulate
    for w in (Serving(kind="serving", phase="decode", batch=5, input_len=700, output_len=1),
              Serving(kind="serving", phase="prefill", batch=1, input_len=ISL, output_len=1, prefill_chunk_tokens=300)):
        variant = _variant(sc, w)
        assert step_time_s(variant) == simulate(variant, ignore_memory=True)["metrics"]["step_time_s"]


def _reference_decode(batches, contexts, decode_s, batch, context):
    """The first increment's eager interpolation (every row over contexts, then over batches)."""
    per_batch = np.array([step_function._interp(contexts, row, context) for row in decode_s])
    return step_function._interp(batches, per_batch, batch)


def test_lazy_step_function_gives_the_same_bytes_as_the_eager_one(sc):
    """Points simulated on demand, in another order, give the same floats as the whole grid simulated
    up front, and the same floats as the first increment's dense interpolation."""
    kwargs = dict(isl=ISL, osl=OSL, max_batch=MAX_BATCH, max_prefill_tokens=MAX_PREFILL)
    step_function._CACHE.clear()
    eager = build_step_function(sc, lazy=False, **kwargs)
    assert eager.times.simulated == len(eager.batches) * len(eager.contexts) + len(eager.prefill_tokens)
    step_function._CACHE.clear()
    lazy = build_step_function(sc, **kwargs)
    assert lazy.times.simulated == 0 and lazy.times is not eager.times
    rng = np.random.default_rng(1600)
    mixes = [(int(rng.integers(0, MAX_BATCH + 1)), float(rng.uniform(MIN_CONTEXT, ISL + OSL)),
              int(rng.integers(0, MAX_PREFILL - MAX_BATCH))) for _ in range(200)]
    mixes += [(b, float(c), 0) for b in eager.batches for c in eager.contexts]   # grid points exactly
    for b, c, p in reversed(mixes):
        assert lazy.step(b, c, p) == eager.step(b, c, p), (b, c, p)
        if b > 0:
            assert lazy.decode(b, c) == _reference_decode(eager.batches, eager.contexts, eager.decode_s, b, c)
    assert 0 < lazy.times.simulated < eager.times.simulated   # only what the mixes needed...
    used = to_json(lazy.to_json())
    assert "null" in used
    assert to_json(lazy.fill().to_json()) == to_json(eager.to_json())   # ...and the same grid when filled
    step_function._CACHE.clear()


def test_disk_cache_serves_the_same_floats(sc, tmp_path):
    kwargs = dict(isl=ISL, osl=OSL, max_batch=8, max_prefill_tokens=256)
    folder = tmp_path / "steps"   # the folder the user names is made; its parent must exist
    step_function._CACHE.clear()
    first = build_step_function(sc, cache_dir=folder, **kwargs).fill()
    files = list(folder.glob("step-times-*.json"))
    assert len(files) == 1 and first.times.simulated > 0
    step_function._CACHE.clear()
    second = build_step_function(sc, cache_dir=folder, **kwargs).fill()
    assert second.times.simulated == 0 and to_json(second.to_json()) == to_json(first.to_json())
    files[0].write_text("{not json")   # a corrupt file is recomputed and rewritten, never trusted
    step_function._CACHE.clear()
    third = build_step_function(sc, cache_dir=folder, **kwargs).fill()
    assert third.times.simulated == first.times.simulated and to_json(third.to_json()) == to_json(first.to_json())
    step_function._CACHE.clear()
    with pytest.raises(MoesimError, match="cache"):
        build_step_function(sc, cache_dir=tmp_path / "missing" / "steps", **kwargs)
    assert not (tmp_path / "missing").exists()


def test_longest_request_context_is_a_grid_point(sc):
    fn = build_step_function(sc, isl=ISL, osl=OSL, max_batch=4, max_prefill_tokens=64, max_context=ISL + 3 * OSL)
    assert fn.contexts[-1] == ISL + 3 * OSL and ISL + OSL in fn.contexts
    assert fn.request_s(ISL, OSL, 4) > fn.prefill(64) * (ISL // 64) > 0


def test_bench_serve_json_contract_and_table(monkeypatch):
    """`moesim bench serve` on a cheap deployment (the issue's one takes seconds, not a test's time)."""
    import json

    from click.testing import CliRunner

    from moesim.bench import serve as bench
    from moesim.cli import main
    monkeypatch.setattr(bench, "SCENARIO", CHEAP)
    monkeypatch.setattr(bench, "LOAD", {"isl": 128, "osl": 16, "concurrency": 8, "requests": 40})
    monkeypatch.setattr(bench, "PLAN_SPACE", None)   # the plan benchmark is timed in tests/test_plan_serve.py
    out = CliRunner().invoke(main, ["bench", "serve", "--json"])
    assert out.exit_code == 0, out.output
    s = json.loads(out.stdout)["serve"]
    for key in ("step_function_build_s", "request_sim_wall_s", "requests_per_wall_s"):
        assert s[key] > 0, key
    assert s["plan_points_per_min"] is None and s["plan_points_per_min_reason"] == bench.PLAN_SKIPPED
    assert 0 < s["grid_points_simulated"] <= s["grid_points_total"] and s["requests"] == 40
    table = CliRunner().invoke(main, ["bench", "serve"])
    assert table.exit_code == 0 and "step-function build" in table.stdout and bench.PLAN_SKIPPED in table.stdout


def test_many_ranks_at_once_is_the_scalar_path(sc):
    """`step_many` (one numpy call for every rank of an instance) gives the floats `step` gives
    rank by rank, simulates only the grid points `step` would, and refuses what it refuses."""
    rng = np.random.default_rng(11)
    lazy_many = build_step_function(sc, isl=300, osl=60, max_batch=64, max_prefill_tokens=4096)
    lazy_one = build_step_function(sc, isl=300, osl=60, max_batch=64, max_prefill_tokens=4096)
    lazy_one.times = step_function.StepTimes(sc, lazy_many.times.key, None)   # its own points
    for _ in range(20):
        n = int(rng.integers(1, 40))
        batch = rng.integers(0, 65, n)
        batch[rng.random(n) < 0.2] = 0
        on_grid = rng.random(n) < 0.3
        batch[on_grid] = rng.choice(lazy_many.batches, int(on_grid.sum()))
        context = np.where(batch > 0, rng.uniform(MIN_CONTEXT, 360, n), 0.0)
        context[rng.random(n) < 0.2] = 301.0
        tokens = rng.integers(0, 4097 - 64, n) * (rng.random(n) < 0.4)
        tokens[(batch == 0) & (tokens == 0)] = 128
        many = lazy_many.step_many(batch, context, tokens)
        one = [lazy_one.step(int(b), float(c), int(t)) for b, c, t in zip(batch, context, tokens)]
        assert many.tolist() == one
    assert np.array_equal(np.isnan(lazy_many.decode_s), np.isnan(lazy_one.decode_s))
    assert np.array_equal(np.isnan(lazy_many.prefill_s), np.isnan(lazy_one.prefill_s))
    with pytest.raises(ValueError, match="outside"):
        lazy_many.step_many(np.array([1]), np.array([1e6]), np.array([0]))
