"""Numba kernels that count MoE dispatch traffic: (token, destination GPU) pairs between GPUs.

Conventions shared by every kernel here and its twin in `traffic_reference.py`:
- `choices[N, k]`: the k logical experts each token picked; `token_gpu[N]`: the GPU that holds
  the token (its DP/EP rank).
- Placement in CSR form (`moesim.costs.placement.Placement`): expert e's replicas are the slots
  `expert_slots[expert_slot_ptr[e]:expert_slot_ptr[e+1]]`; `slot_gpu[S]` gives their GPU.
- Replica choice: token t sends expert e to replica `t % r` of its r replicas, an even,
  deterministic split (what `placement.gpu_load` assumes).
- A token goes once to each destination GPU however many of its experts live there: DeepEP
  dispatches a token per rank, not per expert (github.com/deepseek-ai/DeepEP, `is_token_in_rank`).
- A negative choice (-1) is a dropped token-expert pair (over capacity) and goes nowhere.
- Combine is the mirror of dispatch: the combine matrix is the dispatch matrix transposed.
Indices are trusted (the caller validates), so no bounds are checked inside the loops.
"""
from __future__ import annotations

import numpy as np

from moesim.kernels import kernel


@kernel
def single_gpu(expert_slot_ptr, expert_slots, slot_gpu):
    """int64[E]: the GPU of each expert with one replica, -1 for replicated experts."""
    n_experts = expert_slot_ptr.shape[0] - 1
    out = np.empty(n_experts, dtype=np.int64)
    for e in range(n_experts):
        lo = expert_slot_ptr[e]
        out[e] = slot_gpu[expert_slots[lo]] if expert_slot_ptr[e + 1] - lo == 1 else -1
    return out


# The replica choice (only replica, else replica t % r) is written out in each loop rather than
# called: a call from one cached kernel to another inside a loop was not inlined and cost 13x.
# Hot loops index with unsigned integers, so Numba skips the negative-index wraparound test
# (1.7x). Measured on the DeepSeek-V3 shape, see bench_traffic.py.

@kernel
def dispatch_counts(choices, token_gpu, expert_slot_ptr, expert_slots, slot_gpu, n_gpus):
    """int64[G, G]: tokens each source GPU (row) sends to each destination GPU (column),
    deduplicated per (token, destination GPU); the diagonal counts tokens that stay local.

    Two loops, same result: with at most 64 GPUs and no replicated expert, a token's GPUs are
    deduplicated in a 64-bit register (1.3x faster); otherwise in a per-GPU "last token" array.
    """
    single = single_gpu(expert_slot_ptr, expert_slots, slot_gpu)
    if n_gpus <= 64 and single.min() >= 0:
        return dispatch_counts_bitmask(choices, token_gpu, single, n_gpus)
    return dispatch_counts_general(choices, token_gpu, single, expert_slot_ptr, expert_slots, slot_gpu, n_gpus)


@kernel
def dispatch_counts_bitmask(choices, token_gpu, expert_gpu, n_gpus):
    """`dispatch_counts` when every expert has one replica (`expert_gpu[E]`) and n_gpus <= 64."""
    counts = np.zeros(n_gpus * n_gpus, dtype=np.int64)
    one = np.uint64(1)
    for t in range(choices.shape[0]):
        row = np.uint64(token_gpu[t] * n_gpus)
        mask = np.uint64(0)  # bit g set once the token has reached GPU g
        for j in range(choices.shape[1]):
            e = choices[t, j]
            if e < 0:
                continue
            d = np.uint64(expert_gpu[np.uint64(e)])
            bit = one << d
            counts[row + d] += (mask & bit) == 0  # branch-free: a repeated GPU adds 0
            mask |= bit
    return counts.reshape(n_gpus, n_gpus)


@kernel
def dispatch_counts_general(choices, token_gpu, single, expert_slot_ptr, expert_slots, slot_gpu, n_gpus):
    """`dispatch_counts` for any GPU count and replicas; `single` from `single_gpu`."""
    counts = np.zeros(n_gpus * n_gpus, dtype=np.int64)
    seen = np.full(n_gpus, -1, dtype=np.int64)  # last token that reached each GPU
    for t in range(choices.shape[0]):
        row = np.uint64(token_gpu[t] * n_gpus)
        for j in range(choices.shape[1]):
            e = choices[t, j]
            if e < 0:
                continue
            dst = single[np.uint64(e)]
            if dst < 0:
                lo = expert_slot_ptr[e]
                dst = slot_gpu[expert_slots[lo + t % (expert_slot_ptr[e + 1] - lo)]]
            d = np.uint64(dst)
            counts[row + d] += seen[d] != t
            seen[d] = t
    return counts.reshape(n_gpus, n_gpus)


@kernel
def internode_counts(choices, token_gpu, expert_slot_ptr, expert_slots, slot_gpu, n_gpus, gpus_per_node):
    """(rdma int64[G, G], nvl_forward int64[G, G]): DeepEP internode (hierarchical) dispatch.

    For each token and each remote node holding at least one of its destination GPUs, one RDMA
    transfer goes from the source GPU to its rail peer there (same local index, DeepEP's
    `internode::dispatch`), then NVLink forwards from the rail peer to each other destination GPU
    of the token on that node. Destinations on the source's own node are direct NVLink traffic,
    counted only by `dispatch_counts`.
    """
    single = single_gpu(expert_slot_ptr, expert_slots, slot_gpu)
    rdma = np.zeros((n_gpus, n_gpus), dtype=np.int64)
    nvl = np.zeros((n_gpus, n_gpus), dtype=np.int64)
    seen = np.full(n_gpus, -1, dtype=np.int64)
    node_seen = np.full(n_gpus // gpus_per_node + 1, -1, dtype=np.int64)
    for t in range(choices.shape[0]):
        src = token_gpu[t]
        src_node = src // gpus_per_node
        local = src - src_node * gpus_per_node
        for j in range(choices.shape[1]):
            e = choices[t, j]
            if e < 0:
                continue
            dst = single[np.uint64(e)]
            if dst < 0:
                lo = expert_slot_ptr[e]
                dst = slot_gpu[expert_slots[lo + t % (expert_slot_ptr[e + 1] - lo)]]
            if seen[dst] == t:
                continue
            seen[dst] = t
            node = dst // gpus_per_node
            if node == src_node:
                continue
            rail = node * gpus_per_node + local
            if node_seen[node] != t:
                node_seen[node] = t
                rdma[src, rail] += 1
            if dst != rail:
                nvl[rail, dst] += 1
    return rdma, nvl
