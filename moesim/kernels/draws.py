"""The draws both routing samplers are built from, so they share one generator and one alias method.

Uniforms come from one 32-bit draw each (`uniform`) of numba's thread-local Mersenne Twister,
which the calling kernel seeds: numba's `np.random.random()` costs ~7.5 ns against ~1.6 ns for
`np.random.randint(0, 2**32)` (measured on the dev machine, numba 0.6x); 32 bits move any
expert's probability by at most E * 2**-32. Weighted draws are O(1) with Walker/Vose alias tables
(`alias_table` / `alias_draw`, or `packed_alias` / `packed_draw` with one int64 word per column);
`exact_draw` and `exact_draw_groups` are the O(E) draws over the mass a token has not used yet,
the samplers' fallback after too many rejections. `rng_floor` draws uniforms alone: the cost
floor the routing benchmark (moesim.bench.routing_kernels) compares the samplers against.
"""
from __future__ import annotations

import numpy as np

from moesim.kernels import kernel

INV_2_32 = 2.0**-32
_THRESHOLD_MAX = (1 << 31) - 1


@kernel
def uniform():
    """A uniform float in [0, 1) with 32-bit resolution from numba's np.random state."""
    return np.random.randint(0, 4294967296) * INV_2_32


@kernel
def alias_table(weights, prob, alias):
    """Vose's alias table for `weights` [n] >= 0, written into prob [n] and alias [n].

    Draw: x = u * n, i = int(x); pick i if x - i < prob[i] else alias[i]. An all-zero segment
    gets prob = 1 (never drawn by the callers, which skip zero-mass groups).
    """
    n = weights.shape[0]
    total = 0.0
    best = 0
    for i in range(n):
        total += weights[i]
        if weights[i] > weights[best]:
            best = i
    if n == 0:
        return
    if total <= 0.0:
        for i in range(n):
            prob[i] = 1.0
            alias[i] = i
        return
    scaled = np.empty(n, np.float64)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    n_small = 0
    n_large = 0
    for i in range(n):
        scaled[i] = weights[i] * n / total
        if scaled[i] < 1.0:
            small[n_small] = i
            n_small += 1
        else:
            large[n_large] = i
            n_large += 1
    while n_small > 0 and n_large > 0:
        n_small -= 1
        s = small[n_small]
        n_large -= 1
        g = large[n_large]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            small[n_small] = g
            n_small += 1
        else:
            large[n_large] = g
            n_large += 1
    for j in range(n_large):
        prob[large[j]] = 1.0
        alias[large[j]] = large[j]
    for j in range(n_small):  # left over by rounding only; a zero weight must stay undrawable
        s = small[j]
        if weights[s] > 0.0:
            prob[s] = 1.0
            alias[s] = s
        else:
            prob[s] = 0.0
            alias[s] = best


@kernel
def alias_draw(u, prob, alias, start, n):
    """Local index in [0, n) drawn with the alias segment prob/alias[start:start + n] and u."""
    x = u * n
    col = int(x)
    if col >= n:
        col = n - 1
    if x - col < prob[start + col]:
        return col
    return alias[start + col]


@kernel
def packed_alias(weights, ids, table):
    """Alias table over weights [n] written as int64 words into table [n] for `packed_draw`.

    word = threshold << 32 | ids[column] << 16 | ids[alias], threshold = floor(prob * 2**31):
    one load per draw and integer arithmetic only (ids < 2**16).
    """
    n = weights.shape[0]
    prob = np.empty(n, np.float64)
    alias = np.empty(n, np.int64)
    alias_table(weights, prob, alias)
    for j in range(n):
        if prob[j] >= 1.0:
            table[j] = (_THRESHOLD_MAX << 32) | (ids[j] << 16) | ids[j]
        else:
            threshold = min(int(prob[j] * 2147483648.0), _THRESHOLD_MAX)
            table[j] = (threshold << 32) | (ids[j] << 16) | ids[alias[j]]


@kernel
def packed_draw(table, start, n):
    """An id drawn from the packed alias segment table[start:start + n], one 32-bit draw."""
    r = np.random.randint(0, 4294967296) * n
    word = table[start + (r >> 32)]
    if ((r & 0xFFFFFFFF) >> 1) < (word >> 32):
        return (word >> 16) & 0xFFFF
    return word & 0xFFFF


@kernel
def exact_draw(ids, weights, stamp, t):
    """Exact draw ∝ weights [n] among ids [n] not yet chosen by token t (stamp[id] == t).

    The fallback after _MAX_REJECTIONS rejections; -1 when no weight is left.
    """
    rest = 0.0
    for j in range(ids.shape[0]):
        if stamp[ids[j]] != t:
            rest += weights[j]
    if rest <= 0.0:
        return -1
    x = uniform() * rest
    acc = 0.0
    pick = -1
    for j in range(ids.shape[0]):
        if stamp[ids[j]] != t and weights[j] > 0.0:
            pick = ids[j]
            acc += weights[j]
            if x < acc:
                break
    return pick


@kernel
def exact_draw_groups(members, member_weight, offset, chosen, stamp, t):
    """exact_draw over the experts of the groups `chosen` (members[offset[g]:offset[g+1]])."""
    rest = 0.0
    for g in chosen:
        for m in range(offset[g], offset[g + 1]):
            if stamp[members[m]] != t:
                rest += member_weight[m]
    if rest <= 0.0:
        return -1
    x = uniform() * rest
    acc = 0.0
    pick = -1
    for g in chosen:
        for m in range(offset[g], offset[g + 1]):
            if stamp[members[m]] != t and member_weight[m] > 0.0:
                pick = members[m]
                acc += member_weight[m]
                if x < acc:
                    return pick
    return pick


@kernel
def rng_floor(n_tokens, k, seed):
    """Sum of n_tokens * k uniforms from the samplers' generator: the cost floor of routing."""
    np.random.seed(seed & 0xFFFFFFFF)
    total = 0.0
    for _ in range(n_tokens * k):
        total += uniform()
    return total
