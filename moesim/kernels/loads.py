"""Per-expert loads and capacity drops of routed choices, counted apart from how they were picked.

`expert_counts` turns the expert choices of moesim.kernels.routing into per-expert loads;
`apply_capacity` applies a GShard/Switch expert capacity to them.
"""
from __future__ import annotations

import numpy as np

from moesim.kernels import kernel


@kernel
def expert_counts(choices, n_experts):
    """Token-expert pairs per expert: int64 [n_experts] from choices [N, k] (-1 is skipped)."""
    counts = np.zeros(n_experts, np.int64)
    for i in range(choices.shape[0]):
        for j in range(choices.shape[1]):
            e = choices[i, j]
            if 0 <= e < n_experts:
                counts[e] += 1
    return counts


@kernel
def apply_capacity(choices, n_experts, capacity):
    """GShard/Switch capacity: each expert keeps its first `capacity` pairs in row-major order.

    choices [N, k] -> (kept bool [N, k], dropped = pairs not kept). Entries outside
    0..n_experts-1 are dropped.
    """
    n, k = choices.shape
    kept = np.zeros((n, k), np.bool_)
    used = np.zeros(n_experts, np.int64)
    dropped = 0
    for i in range(n):
        for j in range(k):
            e = choices[i, j]
            if 0 <= e < n_experts and used[e] < capacity:
                used[e] += 1
                kept[i, j] = True
            else:
                dropped += 1
    return kept, dropped
