"""The step-time function of `moesim serve` against direct step simulation (issue 16).

The run evaluates thousands of steps through an interpolated grid of step-model runs; these
tests show that grid stays within 2 % of simulating the step directly at random batch sizes,
contexts and prefill sizes off the grid, and that a mixed step meets its two ends exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from moesim.cluster.scenario import load_scenario
from moesim.serve.step_function import (MIN_CONTEXT, build_step_function, context_grid, geometric_grid, simulate_decode,
                                        simulate_prefill)

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
    assert build_step_function(sc, isl=ISL, osl=OSL, max_batch=MAX_BATCH, max_prefill_tokens=MAX_PREFILL) is fn
