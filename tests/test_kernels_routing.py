"""Routing kernels (moesim.kernels.routing, draws, loads) against their NumPy twins (reference).

Statistical tests run at fixed seeds, so each either always passes or always fails. They use
Pearson chi-square tests at significance level ALPHA = 1e-3 per test, split evenly
(Bonferroni) over the k slots of a row, with critical values from the Wilson–Hilferty
approximation (scipy is not a dependency). The unit is one slot across tokens: the expert a
token puts in slot j is i.i.d. over tokens, so slot j's per-expert load is exactly multinomial,
whereas the k experts of one token are dependent (distinct; same groups), which would make a
chi-square test on total loads only approximate. Both samplers list experts in draw order
(`score_topk` by decreasing key, the same order by the Gumbel-top-k trick), so each slot has
the same law in the kernel and in the twin.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from moesim.kernels import draws
from moesim.kernels import loads as load_kernels
from moesim.kernels import reference, routing

ALPHA = 1e-3
IMPLS = {"numba": routing, "numpy": reference}
COUNTS = {"numba": load_kernels, "numpy": reference}  # expert_counts / apply_capacity
FLOORS = {"numba": draws, "numpy": reference}  # rng_floor


def zipf(n: int, s: float = 1.0, seed: int = 0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return np.random.default_rng(seed).permutation(w / w.sum())


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def blocks(n: int, n_groups: int) -> np.ndarray:
    return (np.arange(n) // (n // n_groups)).astype(np.int32)


def sparse(n: int) -> np.ndarray:
    p = zipf(n, 0.7, seed=3)
    p[::4] = 0.0
    return p / p.sum()


# name: (popularity [E], expert_group [E], topk_group, k)
CASES = {
    "uniform": (uniform(64), np.zeros(64, np.int32), 0, 6),
    "zipf": (zipf(64), np.zeros(64, np.int32), 0, 4),
    "deepseek-v3": (uniform(256), blocks(256, 8), 4, 8),
    "deepseek-v3-zipf": (zipf(256, 0.8), blocks(256, 8), 4, 8),
    "node-limited": (zipf(64, 0.6, seed=1), blocks(64, 8), 2, 6),
    "mixtral": (uniform(8), np.zeros(8, np.int32), 0, 2),
    "k1": (zipf(16, 1.2, seed=2), np.zeros(16, np.int32), 0, 1),
    "sparse-groups": (sparse(32), blocks(32, 4), 2, 4),
    "32-groups": (zipf(64, 0.5, seed=4), blocks(64, 32), 4, 6),  # > 16 groups: general path
}
GENERAL_PATH = 0  # max_set_entries that forces routing._sample_topk's group-by-group path


def log_of(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def sample(impl, case, n_tokens, seed, mode="sample"):
    p, group, topk_group, k = case
    if mode == "sample":
        return impl.sample_topk(p, group, topk_group, n_tokens, k, seed)
    if mode == "general":
        return routing._sample_topk(p, group, topk_group, n_tokens, k, seed, GENERAL_PATH)
    return impl.score_topk(log_of(p), np.zeros_like(p), group, topk_group, n_tokens, k, seed)


def slot_loads(choices: np.ndarray, n_experts: int) -> np.ndarray:
    """[k, E]: how often each expert sits in each slot."""
    return np.stack([np.bincount(choices[:, j], minlength=n_experts)
                     for j in range(choices.shape[1])])


def chi2_critical(df: int, alpha: float) -> float:
    """Upper alpha quantile of chi-square(df), Wilson–Hilferty: (chi2/df)^(1/3) ~ normal."""
    z = NormalDist().inv_cdf(1.0 - alpha)
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def assert_same_law(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> None:
    """Two-sample chi-square per slot on [k, E] loads with equal totals per slot."""
    for j in range(a.shape[0]):
        used = (a[j] + b[j]) > 0
        stat = float((((a[j] - b[j]) ** 2)[used] / (a[j] + b[j])[used]).sum())
        df = int(used.sum()) - 1
        if df > 0:
            assert stat < chi2_critical(df, alpha / a.shape[0]), (j, stat, df)


def assert_law(observed: np.ndarray, law: np.ndarray, alpha: float = ALPHA) -> None:
    """One-sample chi-square per slot of loads [k, E] against the exact law [k, E]."""
    for j in range(observed.shape[0]):
        n = observed[j].sum()
        assert observed[j][law[j] == 0].sum() == 0
        used = law[j] > 0
        expected = n * law[j][used]
        stat = float(((observed[j][used] - expected) ** 2 / expected).sum())
        df = int(used.sum()) - 1
        if df > 0:
            assert stat < chi2_critical(df, alpha / observed.shape[0]), (j, stat, df)


def exact_slot_law(p, group, topk_group, k) -> np.ndarray:
    """[k, E] law of each slot, enumerating every draw sequence (small cases only)."""
    p = np.asarray(p, float)
    n_exp, n_grp = p.size, int(group.max()) + 1
    law = np.zeros((k, n_exp))

    def experts(weights, prefix, prob):
        if len(prefix) == k:
            for j, e in enumerate(prefix):
                law[j, e] += prob
            return
        rest = sum(weights[e] for e in range(n_exp) if e not in prefix)
        for e in range(n_exp):
            if e not in prefix and weights[e] > 0:
                experts(weights, prefix + [e], prob * weights[e] / rest)

    if not 0 < topk_group < n_grp:
        experts(p, [], 1.0)
        return law
    mass = np.bincount(group, weights=p, minlength=n_grp)

    def groups(prefix, prob):
        if len(prefix) == topk_group:
            experts(np.where(np.isin(group, prefix), p, 0.0), [], prob)
            return
        rest = sum(mass[g] for g in range(n_grp) if g not in prefix)
        for g in range(n_grp):
            if g not in prefix and mass[g] > 0:
                groups(prefix + [g], prob * mass[g] / rest)

    groups([], 1.0)
    return law


def assert_valid(choices, case, n_tokens):
    p, group, topk_group, k = case
    assert choices.shape == (n_tokens, k)
    assert choices.dtype == np.int32
    assert choices.min() >= 0 and choices.max() < p.size
    ordered = np.sort(choices, axis=1)
    assert (np.diff(ordered, axis=1) != 0).all(), "an expert twice in one row"
    assert (p[choices] > 0).all(), "an expert with zero popularity"
    if 0 < topk_group <= group.max():
        spans = 1 + (np.diff(np.sort(group[choices], axis=1), axis=1) != 0).sum(axis=1)
        assert spans.max() <= topk_group
    loads = load_kernels.expert_counts(choices, p.size)
    assert loads.sum() == n_tokens * k


@pytest.mark.parametrize("mode", ["sample", "general", "score"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("name", list(CASES))
def test_invariants_and_determinism(name, impl, mode):
    if mode == "general" and impl == "numpy":
        pytest.skip("the general path is a numba-only code path")
    case = CASES[name]
    n = 3000
    first = sample(IMPLS[impl], case, n, seed=11, mode=mode)
    assert_valid(first, case, n)
    assert np.array_equal(first, sample(IMPLS[impl], case, n, seed=11, mode=mode))
    assert not np.array_equal(first, sample(IMPLS[impl], case, n, seed=12, mode=mode))


@pytest.mark.parametrize("name", list(CASES))
def test_sample_topk_kernel_matches_twin(name):
    case = CASES[name]
    n = 50_000 if case[0].size >= 256 else 100_000
    kernel = slot_loads(sample(routing, case, n, seed=5), case[0].size)
    twin = slot_loads(sample(reference, case, n, seed=5), case[0].size)
    assert_same_law(kernel, twin)
    general = slot_loads(sample(routing, case, n, seed=6, mode="general"), case[0].size)
    assert_same_law(kernel, general)


def test_marginals_are_exact():
    """k = 1: the load share is the popularity; uniform (also group-limited): N k / E."""
    p, group, _, _ = case = CASES["k1"]
    n = 200_000
    for impl in IMPLS.values():
        loads = slot_loads(sample(impl, case, n, seed=7), p.size)
        assert_law(loads, p[None, :])
    for name in ("uniform", "deepseek-v3", "mixtral"):
        p, _, _, k = case = CASES[name]
        for impl in IMPLS.values():
            choices = sample(impl, case, 50_000, seed=8)
            assert_law(slot_loads(choices, p.size), np.tile(p, (k, 1)))
            total = load_kernels.expert_counts(choices, p.size)
            assert np.abs(total / (50_000 * k / p.size) - 1).max() < 0.1


SMALL = {  # exact law by enumeration
    "skewed": (np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]), np.zeros(6, np.int32), 0, 3),
    "groups": (np.array([0.3, 0.05, 0.2, 0.1, 0.15, 0.0, 0.12, 0.08]),
               np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32), 2, 3),
    "one-hog": (np.array([0.999] + [0.001 / 7] * 7), np.zeros(8, np.int32), 0, 2),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_cases_match_exact_law(name):
    case = SMALL[name]
    p, group, topk_group, k = case
    law = exact_slot_law(p, group, topk_group, k)
    modes = [(routing, "sample"), (routing, "general"), (reference, "sample")]
    if not 0 < topk_group <= group.max():
        modes.append((routing, "score"))
    for impl, mode in modes:
        assert_law(slot_loads(sample(impl, case, 100_000, seed=9, mode=mode), p.size), law)


def test_group_sets_law():
    """Each set of groups gets the probability of drawing it group by group (any order)."""
    mass = np.array([0.35, 0.05, 0.2, 0.0, 0.25, 0.15])
    for n_pick in (1, 2, 3):
        in_set, probability = routing._group_sets(mass, n_pick)
        law = exact_slot_law(mass, np.zeros(mass.size, np.int64), 0, n_pick)  # groups as experts
        assert probability.sum() == pytest.approx(1.0, abs=1e-12)
        for row, prob in zip(in_set, probability):
            ids = np.flatnonzero(row)
            assert ids.size == n_pick and mass[ids].min() > 0
        # P(group g in set) = sum over slots of its slot law
        assert np.allclose(in_set.T.astype(float) @ probability, law.sum(axis=0), atol=1e-12)


def test_alias_table_is_exact():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 64, 300):
        w = rng.random(n) * (rng.random(n) < 0.7)
        w[0] = max(w[0], 0.1)
        prob, alias = np.empty(n), np.empty(n, np.int64)
        draws.alias_table(w, prob, alias)
        implied = prob / n
        np.add.at(implied, alias, (1.0 - prob) / n)
        assert np.allclose(implied, w / w.sum(), atol=1e-12, rtol=0)
        assert (implied[w == 0] == 0).all()


def test_pathological_rejection_terminates():
    """One expert with 99.9 % of the mass: rejection would loop; the exact fallback finishes."""
    p = np.array([0.999] + [0.001 / 7] * 7)
    group = np.zeros(8, np.int32)
    for k in (2, 8):
        for impl in IMPLS.values():
            choices = impl.sample_topk(p, group, 0, 20_000, k, 3)
            assert_valid(choices, (p, group, 0, k), 20_000)
        choices = routing._sample_topk(p, group, 0, 20_000, k, 3, GENERAL_PATH)
        assert_valid(choices, (p, group, 0, k), 20_000)
    hog = np.array([0.9991, 0.0001, 0.0004, 0.0004])  # one hog group, topk_group 2
    hog_groups = np.array([0, 1, 1, 2], np.int32)
    for impl, mode in ((routing, "sample"), (routing, "general"), (reference, "sample")):
        choices = sample(impl, (hog, hog_groups, 2, 2), 20_000, seed=4, mode=mode)
        assert_valid(choices, (hog, hog_groups, 2, 2), 20_000)


def test_infeasible_rows_are_completed_the_same_way():
    """More experts asked than have popularity: rows end with the lowest unchosen experts."""
    p = np.array([0.0, 0.5, 0.0, 0.5])
    group = np.zeros(4, np.int32)
    for impl in IMPLS.values():
        choices = impl.sample_topk(p, group, 0, 100, 3, 1)
        assert (np.sort(choices[:, :2], axis=1) == [1, 3]).all()
        assert (choices[:, 2] == 0).all()
        assert (impl.sample_topk(np.zeros(4), group, 0, 5, 2, 1) == [0, 1]).all()
        limited = impl.sample_topk(p, np.array([0, 0, 1, 1], np.int32), 1, 100, 2, 1)
        rows = np.sort(limited, axis=1)
        assert ((rows == [0, 1]).all(axis=1) | (rows == [2, 3]).all(axis=1)).all()
        assert (limited[:, 0] % 2 == 1).all()  # the expert with popularity comes first


def test_score_topk_zero_bias_is_sampling_without_replacement():
    case = (zipf(16, 1.0, seed=5), np.zeros(16, np.int32), 0, 4)
    n = 200_000
    scored = slot_loads(sample(routing, case, n, seed=21, mode="score"), 16)
    sampled = slot_loads(sample(routing, case, n, seed=22), 16)
    assert_same_law(scored, sampled)
    twin = slot_loads(sample(reference, case, n, seed=23, mode="score"), 16)
    assert_same_law(scored, twin)


def test_score_topk_kernel_matches_twin_with_groups_and_bias():
    p, group, topk_group, k = CASES["node-limited"]
    bias = np.linspace(-0.5, 0.5, p.size)
    n = 50_000
    args = (log_of(p), bias, group, topk_group, n, k, 31)
    assert_same_law(slot_loads(routing.score_topk(*args), p.size),
                    slot_loads(reference.score_topk(*args), p.size))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_score_topk_bias_raises_load(impl):
    for p, group, topk_group, k in (CASES["zipf"], CASES["node-limited"]):
        e = int(np.argmin(p))
        bias = np.zeros_like(p)
        before = COUNTS[impl].expert_counts(
            IMPLS[impl].score_topk(log_of(p), bias, group, topk_group, 20_000, k, 2), p.size)
        bias[e] = 2.0
        after = COUNTS[impl].expert_counts(
            IMPLS[impl].score_topk(log_of(p), bias, group, topk_group, 20_000, k, 2), p.size)
        assert after[e] > 2 * before[e] and after.sum() == before.sum()


def random_choices(rng, n, k, n_experts, with_invalid=False):
    choices = np.argsort(rng.random((n, n_experts)), axis=1)[:, :k].astype(np.int32)
    if with_invalid:
        choices[rng.random(choices.shape) < 0.05] = -1
    return choices


def test_expert_counts_equals_twin():
    rng = np.random.default_rng(0)
    for n, k, n_experts in ((1, 1, 1), (500, 2, 8), (2000, 8, 256), (0, 4, 16)):
        for invalid in (False, True):
            c = random_choices(rng, n, k, n_experts, invalid)
            got = load_kernels.expert_counts(c, n_experts)
            assert got.dtype == np.int64
            assert np.array_equal(got, reference.expert_counts(c, n_experts))


def test_apply_capacity_equals_twin():
    rng = np.random.default_rng(1)
    for n, k, n_experts in ((500, 2, 8), (2000, 8, 256), (0, 4, 16)):
        for capacity in (0, 1, 7, n * k // n_experts, 10**9):
            for invalid in (False, True):
                c = random_choices(rng, n, k, n_experts, invalid)
                kept, dropped = load_kernels.apply_capacity(c, n_experts, capacity)
                twin_kept, twin_dropped = reference.apply_capacity(c, n_experts, capacity)
                assert kept.dtype == np.bool_ and kept.shape == c.shape
                assert np.array_equal(kept, twin_kept) and dropped == twin_dropped
                assert dropped == c.size - kept.sum()
                per_expert = np.bincount(c[kept], minlength=n_experts)
                assert per_expert.max(initial=0) <= capacity


def test_apply_capacity_by_hand():
    choices = np.array([[0, 1], [0, 2], [1, 0], [2, 1]], np.int32)
    expected = np.array([[True, True], [True, True], [True, False], [True, False]])
    for impl in COUNTS.values():
        kept, dropped = impl.apply_capacity(choices, 3, 2)
        assert np.array_equal(kept, expected) and dropped == 2


def test_rng_floor():
    n, k = 100_000, 4
    for impl in FLOORS.values():
        total = impl.rng_floor(n, k, 1)
        assert total == impl.rng_floor(n, k, 1) != impl.rng_floor(n, k, 2)
        assert abs(total - n * k / 2) < 6 * math.sqrt(n * k / 12)
