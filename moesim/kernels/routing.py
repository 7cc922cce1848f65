"""MoE routing kernels: the k experts each token picks (loads and capacity: moesim.kernels.loads).

Two ways to pick experts, both optionally group-limited (DeepSeek `n_group`/`topk_group`
routing, or node-limited routing with group = node):

- `sample_topk`: each token draws k distinct experts successively without replacement, with
  probability proportional to `popularity` (the expert load share). With a group limit it first
  draws `topk_group` distinct groups the same way (weight = the group's total popularity), then
  the k experts among the experts of those groups. Per draw O(1): Walker/Vose alias tables (one
  over the groups, one inside each group) plus rejection of experts already chosen, with an
  exact O(E) draw over the remaining mass after `_MAX_REJECTIONS` consecutive rejections, so a
  skewed popularity (one expert with 99.9 % of the mass and k = 2) never loops for long. Any
  accepted draw has the exact conditional law, whichever branch produced it, so the mixture is
  exact.
- `score_topk`: DeepSeek-V3 aux-loss-free routing with sampled scores: score_e =
  log_popularity_e + Gumbel noise, selection key = score_e + bias_e; with a group limit a
  group's score is the sum of its top-2 keys (DeepSeek-V3 `noaux_tc`) and the `topk_group`
  best groups are kept; then the top-k keys among the kept experts. With bias = 0 and no limit
  this is the Gumbel-top-k trick, i.e. the same law as `sample_topk` (Vieira 2014; Kool et al.
  2019, "Stochastic Beams and Where to Find Them").

Randomness: every sampling kernel seeds numba's thread-local Mersenne Twister with
`np.random.seed(seed & 0xFFFFFFFF)` on entry (MT19937 takes a 32-bit seed), so its output depends
on the arguments only. Uniforms (one 32-bit draw each), the alias tables and the exact fallback
draws come from moesim.kernels.draws.

Output rows list the experts in draw order (`sample_topk`) or by decreasing key
(`score_topk`). Inputs are validated by the caller (moesim.costs.routing): k <= E, and k at most the
number of experts with non-zero popularity reachable under the limit. When that does not hold
the kernels still terminate: a row is completed with the lowest-index unchosen experts (of the
kept groups first), and with -1 only if k > E.
"""
from __future__ import annotations

import numpy as np

from moesim.kernels import kernel
from moesim.kernels.draws import (INV_2_32, alias_draw, alias_table, exact_draw, exact_draw_groups, packed_alias,
                                  packed_draw, uniform)

_MAX_REJECTIONS = 64
_MAX_SET_GROUPS = 16
_MAX_SET_ENTRIES = 1 << 18


@kernel
def _group_sets(group_mass, n_pick):
    """Every set of n_pick groups with its probability under successive draws ∝ group_mass.

    Bitmask DP over the 2**G subsets (G <= _MAX_SET_GROUPS): P(S + g) += P(S) * m_g / m(rest).
    Returns (in_set bool [S, G], probability float64 [S]) for the sets with probability > 0.
    """
    n_grp = group_mass.shape[0]
    n_mask = 1 << n_grp
    reach = np.zeros(n_mask, np.float64)
    size = np.zeros(n_mask, np.int64)
    reach[0] = 1.0
    n_sets = 0
    for mask in range(n_mask):
        if mask > 0:
            size[mask] = size[mask & (mask - 1)] + 1
        if reach[mask] <= 0.0:
            continue
        if size[mask] == n_pick:
            n_sets += 1
            continue
        rest = 0.0
        for g in range(n_grp):
            if not (mask >> g) & 1:
                rest += group_mass[g]
        if rest <= 0.0:
            continue
        for g in range(n_grp):
            if not (mask >> g) & 1 and group_mass[g] > 0.0:
                reach[mask | (1 << g)] += reach[mask] * group_mass[g] / rest
    in_set = np.zeros((n_sets, n_grp), np.bool_)
    probability = np.empty(n_sets, np.float64)
    j = 0
    for mask in range(n_mask):
        if size[mask] == n_pick and reach[mask] > 0.0:
            for g in range(n_grp):
                in_set[j, g] = (mask >> g) & 1
            probability[j] = reach[mask]
            j += 1
    return in_set, probability


@kernel
def _sample_with_sets(popularity, group_of, in_set, set_probability, n_tokens, k, seed):
    """Fast path: one alias draw picks a token's group set, then one per expert (+ rejection).

    in_set [S, G]: the possible group sets; each gets its own packed alias table over its
    experts, laid out back to back (requires E <= 2**16 and S <= 2**16).
    """
    n_exp = popularity.shape[0]
    n_sets = in_set.shape[0]
    set_start = np.zeros(n_sets + 1, np.int64)
    for s in range(n_sets):
        n = 0
        for e in range(n_exp):
            if in_set[s, group_of[e]]:
                n += 1
        set_start[s + 1] = set_start[s] + n
    n_entries = set_start[n_sets]
    ids = np.empty(n_entries, np.int64)
    weight = np.empty(n_entries, np.float64)
    table = np.empty(n_entries, np.int64)
    for s in range(n_sets):
        a, b = set_start[s], set_start[s + 1]
        j = a
        for e in range(n_exp):
            if in_set[s, group_of[e]]:
                ids[j] = e
                weight[j] = popularity[e]
                j += 1
        packed_alias(weight[a:b], ids[a:b], table[a:b])
    set_table = np.empty(n_sets, np.int64)
    packed_alias(set_probability, np.arange(n_sets), set_table)

    out = np.empty((n_tokens, k), np.int32)
    stamp = np.full(n_exp, -1, np.int64)
    everyone = np.arange(n_exp)
    np.random.seed(seed & 0xFFFFFFFF)
    for t in range(n_tokens):
        s = packed_draw(set_table, 0, n_sets) if n_sets > 1 else 0
        a = set_start[s]
        n = set_start[s + 1] - a
        slot = 0
        tries = 0
        while slot < k:
            e = packed_draw(table, a, n)
            if stamp[e] == t:
                tries += 1
                if tries < _MAX_REJECTIONS:
                    continue
                e = exact_draw(ids[a:a + n], weight[a:a + n], stamp, t)
                if e < 0:  # infeasible request: complete the row with the lowest unchosen
                    e = _lowest_unchosen(stamp, t, ids[a:a + n])
                if e < 0:
                    e = _lowest_unchosen(stamp, t, everyone)
                if e < 0:  # k > E
                    out[t, slot:] = -1
                    break
            stamp[e] = t
            out[t, slot] = e
            slot += 1
            tries = 0
    return out


@kernel
def _lowest_unchosen(stamp, t, candidates):
    """The first of candidates [n] (sorted) not yet chosen by token t, or -1."""
    for c in candidates:
        if stamp[c] != t:
            return c
    return -1


@kernel
def _sample_sequential(popularity, group_of, offset, members, group_mass, n_pick, n_tokens,
                       k, seed):
    """General path (too many group sets to tabulate): per token, draw n_pick groups by alias
    + rejection, then each expert as (kept group ∝ mass, then the group's own alias table)."""
    n_exp = popularity.shape[0]
    n_grp = group_mass.shape[0]
    member_weight = np.empty(n_exp, np.float64)
    for j in range(n_exp):
        member_weight[j] = popularity[members[j]]
    prob = np.empty(n_exp, np.float64)
    alias = np.empty(n_exp, np.int64)
    for g in range(n_grp):
        a, b = offset[g], offset[g + 1]
        alias_table(member_weight[a:b], prob[a:b], alias[a:b])
    group_prob = np.empty(n_grp, np.float64)
    group_alias = np.empty(n_grp, np.int64)
    alias_table(group_mass, group_prob, group_alias)

    out = np.full((n_tokens, k), -1, np.int32)
    chosen = np.empty(n_pick, np.int64)
    cum = np.empty(n_pick, np.float64)
    group_stamp = np.full(n_grp, -1, np.int64)
    expert_stamp = np.full(n_exp, -1, np.int64)
    np.random.seed(seed & 0xFFFFFFFF)
    for t in range(n_tokens):
        n_chosen = 0
        total = 0.0
        while n_chosen < n_pick:
            g = -1
            for _ in range(_MAX_REJECTIONS):
                c = alias_draw(uniform(), group_prob, group_alias, 0, n_grp)
                if group_stamp[c] != t:
                    g = c
                    break
            if g < 0:  # exact draw over the groups left
                rest = 0.0
                for c in range(n_grp):
                    if group_stamp[c] != t:
                        rest += group_mass[c]
                x = uniform() * rest
                acc = 0.0
                for c in range(n_grp):
                    if group_stamp[c] != t and group_mass[c] > 0.0:
                        g = c
                        acc += group_mass[c]
                        if x < acc:
                            break
            group_stamp[g] = t
            chosen[n_chosen] = g
            total += group_mass[g]
            cum[n_chosen] = total
            n_chosen += 1

        slot = 0
        tries = 0 if total > 0.0 else _MAX_REJECTIONS
        while slot < k:
            if tries < _MAX_REJECTIONS:
                x = uniform() * total
                j = 0
                for q in range(n_chosen - 1):
                    j += x >= cum[q]
                g = chosen[j]
                below = cum[j - 1] if j > 0 else 0.0
                r = max((x - below) / group_mass[g], 0.0)
                a = offset[g]
                e = members[a + alias_draw(r, prob, alias, a, offset[g + 1] - a)]
                if expert_stamp[e] == t:
                    tries += 1
                    continue
            else:
                e = exact_draw_groups(members, member_weight, offset, chosen[:n_chosen],
                                      expert_stamp, t)
                if e < 0:  # infeasible request: complete the row with the lowest unchosen
                    for c in range(n_exp):
                        if expert_stamp[c] != t and group_stamp[group_of[c]] == t:
                            e = c
                            break
                if e < 0:
                    e = _lowest_unchosen(expert_stamp, t, np.arange(n_exp))
                if e < 0:
                    break
            expert_stamp[e] = t
            out[t, slot] = e
            slot += 1
            tries = 0 if total > 0.0 else _MAX_REJECTIONS
    return out


@kernel
def _sample_topk(popularity, expert_group, topk_group, n_tokens, k, seed, max_set_entries):
    """sample_topk with the size limit of the group-set tables as an argument (tests force the
    general path with 0)."""
    n_exp = popularity.shape[0]
    if n_exp == 0 or n_tokens == 0 or k == 0:
        return np.full((n_tokens, k), -1, np.int32)
    n_grp = 1
    for e in range(n_exp):
        if expert_group[e] + 1 > n_grp:
            n_grp = expert_group[e] + 1
    limited = 0 < topk_group < n_grp
    group_of = np.zeros(n_exp, np.int64)
    if limited:
        for e in range(n_exp):
            group_of[e] = expert_group[e]
    else:
        n_grp = 1  # one group holding every expert
    group_mass = np.zeros(n_grp, np.float64)
    group_size = np.zeros(n_grp, np.int64)
    for e in range(n_exp):
        group_mass[group_of[e]] += popularity[e]
        group_size[group_of[e]] += 1
    n_positive = 0
    for g in range(n_grp):
        if group_mass[g] > 0.0:
            n_positive += 1
    n_pick = min(topk_group, n_positive) if limited else n_positive

    if n_positive == 0:  # no popularity at all: every row is the lowest k experts
        out = np.full((n_tokens, k), -1, np.int32)
        for j in range(min(k, n_exp)):
            out[:, j] = j
        return out
    if n_exp > 1 << 16:
        pass  # packed tables hold 16-bit ids: take the general path
    elif n_pick == n_positive:  # every group with mass is kept: one set for all tokens
        in_set = np.zeros((1, n_grp), np.bool_)
        for g in range(n_grp):
            in_set[0, g] = group_mass[g] > 0.0
        return _sample_with_sets(popularity, group_of, in_set, np.ones(1), n_tokens, k, seed)
    elif n_grp <= _MAX_SET_GROUPS:
        in_set, set_probability = _group_sets(group_mass, n_pick)
        entries = 0
        for s in range(in_set.shape[0]):
            for g in range(n_grp):
                if in_set[s, g]:
                    entries += group_size[g]
        if entries <= max_set_entries:
            return _sample_with_sets(popularity, group_of, in_set, set_probability, n_tokens, k,
                                     seed)

    offset = np.zeros(n_grp + 1, np.int64)
    for g in range(n_grp):
        offset[g + 1] = offset[g] + group_size[g]
    members = np.empty(n_exp, np.int64)
    fill = offset[:n_grp].copy()
    for e in range(n_exp):
        members[fill[group_of[e]]] = e
        fill[group_of[e]] += 1
    return _sample_sequential(popularity, group_of, offset, members, group_mass, n_pick,
                              n_tokens, k, seed)


@kernel
def sample_topk(popularity, expert_group, topk_group, n_tokens, k, seed):
    """k distinct experts per token, drawn successively without replacement ∝ popularity.

    popularity [E] float64 >= 0 (load share); expert_group [E] int, group id in 0..G-1;
    topk_group: groups a token may use (<= 0 or >= G: no limit). Returns int32 [n_tokens, k].
    When at most _MAX_SET_GROUPS groups make at most _MAX_SET_ENTRIES table entries (DeepSeek-V3:
    C(8, 4) = 70 sets x 128 experts), the token's group set is one alias draw from the exact
    law of the set under successive group draws; otherwise groups are drawn one by one.
    """
    return _sample_topk(popularity, expert_group, topk_group, n_tokens, k, seed,
                        np.int64(_MAX_SET_ENTRIES))


@kernel
def score_topk(log_popularity, bias, expert_group, topk_group, n_tokens, k, seed):
    """Top-k experts per token by key = log_popularity + Gumbel noise + bias (DeepSeek-V3).

    log_popularity, bias [E] float64; expert_group [E] int; with 0 < topk_group < G, only the
    topk_group groups with the largest sum of their top-2 keys compete. Ties go to the lower
    index. Returns int32 [n_tokens, k], each row by decreasing key.
    """
    n_exp = log_popularity.shape[0]
    out = np.full((n_tokens, k), -1, np.int32)
    if n_exp == 0 or n_tokens == 0 or k == 0:
        return out
    n_grp = 1
    for e in range(n_exp):
        if expert_group[e] + 1 > n_grp:
            n_grp = expert_group[e] + 1
    limited = 0 < topk_group < n_grp
    base = log_popularity + bias
    key = np.empty(n_exp, np.float64)
    top1 = np.empty(n_grp, np.float64)
    top2 = np.empty(n_grp, np.float64)
    size = np.zeros(n_grp, np.int64)
    for e in range(n_exp):
        size[expert_group[e]] += 1
    kept = np.ones(n_grp, np.bool_)
    best_g = np.empty(max(topk_group, 1), np.int64)
    best_s = np.empty(max(topk_group, 1), np.float64)
    best_e = np.empty(k, np.int64)
    best_k = np.empty(k, np.float64)

    np.random.seed(seed & 0xFFFFFFFF)
    for t in range(n_tokens):
        for e in range(n_exp):
            u = (np.random.randint(0, 4294967296) + 0.5) * INV_2_32  # in (0, 1)
            key[e] = base[e] - np.log(-np.log(u))
        if limited:
            top1[:] = -np.inf
            top2[:] = -np.inf
            for e in range(n_exp):
                g = expert_group[e]
                if key[e] > top1[g]:
                    top2[g] = top1[g]
                    top1[g] = key[e]
                elif key[e] > top2[g]:
                    top2[g] = key[e]
            n_best = 0
            for g in range(n_grp):
                if size[g] == 0:
                    s = -np.inf
                elif size[g] == 1:
                    s = top1[g]
                else:
                    s = top1[g] + top2[g]
                if n_best < topk_group or s > best_s[n_best - 1]:
                    j = n_best if n_best < topk_group else topk_group - 1
                    while j > 0 and s > best_s[j - 1]:
                        best_s[j] = best_s[j - 1]
                        best_g[j] = best_g[j - 1]
                        j -= 1
                    best_s[j] = s
                    best_g[j] = g
                    if n_best < topk_group:
                        n_best += 1
            kept[:] = False
            for j in range(n_best):
                kept[best_g[j]] = True
        n_top = 0
        for e in range(n_exp):
            if not kept[expert_group[e]]:
                continue
            v = key[e]
            if n_top < k or v > best_k[n_top - 1]:
                j = n_top if n_top < k else k - 1
                while j > 0 and v > best_k[j - 1]:
                    best_k[j] = best_k[j - 1]
                    best_e[j] = best_e[j - 1]
                    j -= 1
                best_k[j] = v
                best_e[j] = e
                if n_top < k:
                    n_top += 1
        for j in range(n_top):
            out[t, j] = best_e[j]
    return out
