"""NumPy twins of the moesim kernels: same names and signatures, written plainly.

Each twin states the kernel's contract in vectorised NumPy so tests can compare the two:
exactly for the deterministic kernels, statistically at a fixed seed for the samplers (the
twins draw from `np.random.Generator(np.random.PCG64(seed))`, the kernels from numba's
Mersenne Twister, so sampled outputs agree in law, not value by value). Tokens are processed
in chunks of `_CHUNK` rows to bound memory ([chunk, E] float64 arrays).
"""
from __future__ import annotations

import numpy as np

_CHUNK = 8192


def _generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _n_groups(expert_group: np.ndarray) -> int:
    return int(expert_group.max()) + 1 if expert_group.size else 1


def _draw_without_replacement(weights: np.ndarray, n_draws: int,
                              rng: np.random.Generator) -> np.ndarray:
    """Successive draws ∝ weights [n, m] without replacement, row by row: column ids [n, n_draws].

    Inverse CDF on the remaining weights; -1 once a row has no weight left.
    """
    w = np.array(weights, dtype=np.float64, order="C")
    n, m = w.shape
    rows = np.arange(n)
    cum = np.empty_like(w)
    out = np.full((n, n_draws), -1, np.int64)
    for d in range(n_draws):
        np.cumsum(w, axis=1, out=cum)
        total = cum[:, -1]
        x = rng.random(n) * total
        pick = (cum <= x[:, None]).sum(axis=1)  # first column whose cumulative weight exceeds x
        over = pick >= m  # x rounded up to the total: take the last column with weight
        if over.any():
            pick[over] = m - 1 - np.argmax(w[over, ::-1] > 0, axis=1)
        live = total > 0
        out[live, d] = pick[live]
        w[rows[live], pick[live]] = 0.0
    return out


def _complete_rows(chosen: np.ndarray, eligible: np.ndarray) -> None:
    """Fill -1 slots (infeasible request) with the lowest unchosen eligible, then any, expert."""
    for i in np.flatnonzero((chosen < 0).any(axis=1)):
        taken = set(chosen[i][chosen[i] >= 0].tolist())
        order = list(np.flatnonzero(eligible[i])) + list(range(eligible.shape[1]))
        spare = [e for e in dict.fromkeys(order) if e not in taken]
        for j in np.flatnonzero(chosen[i] < 0):
            chosen[i, j] = spare.pop(0) if spare else -1


def sample_topk(popularity, expert_group, topk_group, n_tokens, k, seed):
    """k distinct experts per token, drawn successively without replacement ∝ popularity.

    popularity [E] float64 (load share); expert_group [E] int in 0..G-1; with
    0 < topk_group < G each token first draws topk_group distinct groups successively ∝ the
    groups' total popularity and then draws its experts among those groups' experts.
    Returns int32 [n_tokens, k] in draw order.
    """
    p = np.asarray(popularity, dtype=np.float64)
    group = np.asarray(expert_group, dtype=np.int64)
    n_exp = p.size
    out = np.full((n_tokens, k), -1, np.int32)
    if n_exp == 0 or n_tokens == 0 or k == 0:
        return out
    rng = _generator(seed)
    n_grp = _n_groups(group)
    limited = 0 < topk_group < n_grp
    group_mass = np.bincount(group, weights=p, minlength=n_grp)
    n_pick = min(topk_group, int((group_mass > 0).sum()))
    for start in range(0, n_tokens, _CHUNK):
        n = min(_CHUNK, n_tokens - start)
        if limited:
            groups = _draw_without_replacement(np.tile(group_mass, (n, 1)), n_pick, rng)
            kept = np.zeros((n, n_grp + 1), dtype=bool)  # column n_grp swallows the -1s
            kept[np.arange(n)[:, None], groups] = True
            eligible = kept[:, group]
        else:
            eligible = np.ones((n, n_exp), dtype=bool)
        chosen = _draw_without_replacement(np.where(eligible, p, 0.0), k, rng)
        _complete_rows(chosen, eligible)
        out[start:start + n] = chosen
    return out


def score_topk(log_popularity, bias, expert_group, topk_group, n_tokens, k, seed):
    """Top-k experts per token by key = log_popularity + Gumbel noise + bias (DeepSeek-V3).

    With 0 < topk_group < G only the topk_group groups with the largest sum of their top-2
    keys compete. Ties go to the lower index. Returns int32 [n_tokens, k] by decreasing key.
    """
    base = np.asarray(log_popularity, dtype=np.float64) + np.asarray(bias, dtype=np.float64)
    group = np.asarray(expert_group, dtype=np.int64)
    n_exp = base.size
    out = np.full((n_tokens, k), -1, np.int32)
    if n_exp == 0 or n_tokens == 0 or k == 0:
        return out
    rng = _generator(seed)
    n_grp = _n_groups(group)
    limited = 0 < topk_group < n_grp
    members = [np.flatnonzero(group == g) for g in range(n_grp)]
    for start in range(0, n_tokens, _CHUNK):
        n = min(_CHUNK, n_tokens - start)
        key = base + rng.gumbel(size=(n, n_exp))
        eligible = np.ones((n, n_exp), dtype=bool)
        if limited:
            group_score = np.full((n, n_grp), -np.inf)
            for g, cols in enumerate(members):
                if cols.size:
                    top = np.sort(key[:, cols], axis=1)[:, -2:]
                    group_score[:, g] = top.sum(axis=1)
            best = np.argsort(-group_score, axis=1, kind="stable")[:, :topk_group]
            kept = np.zeros((n, n_grp), dtype=bool)
            kept[np.arange(n)[:, None], best] = True
            eligible = kept[:, group]
        ranked = np.where(eligible, -key, np.nan)  # NaN sorts last: ineligible never ranks
        order = np.argsort(ranked, axis=1, kind="stable")[:, :k]
        order[np.isnan(np.take_along_axis(ranked, order, axis=1))] = -1
        out[start:start + n] = order
    return out


def expert_counts(choices, n_experts):
    """Token-expert pairs per expert: int64 [n_experts] from choices [N, k] (-1 is skipped)."""
    flat = np.asarray(choices).ravel()
    flat = flat[(flat >= 0) & (flat < n_experts)]
    return np.bincount(flat, minlength=n_experts).astype(np.int64)


def apply_capacity(choices, n_experts, capacity):
    """GShard/Switch capacity: each expert keeps its first `capacity` pairs in row-major order.

    choices [N, k] -> (kept bool [N, k], dropped = pairs not kept).
    """
    choices = np.asarray(choices)
    flat = choices.ravel()
    order = np.argsort(flat, kind="stable")  # pairs of one expert, in token order
    by_expert = flat[order]
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size) - np.searchsorted(by_expert, by_expert, side="left")
    kept = (flat >= 0) & (flat < n_experts) & (rank < capacity)
    return kept.reshape(choices.shape), int(flat.size - kept.sum())


def rng_floor(n_tokens, k, seed):
    """Sum of n_tokens * k uniforms: the cost floor of drawing k experts per token."""
    rng = _generator(seed)
    total = 0.0
    n = n_tokens * k
    for start in range(0, n, 1 << 20):
        total += rng.random(min(1 << 20, n - start)).sum()
    return total
