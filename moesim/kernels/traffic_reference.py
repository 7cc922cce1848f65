"""NumPy twins of `moesim.kernels.traffic`: same names, same arguments, same results, vectorized.

They exist to be read and to check the kernels (tests compare them exactly); see the kernel
module for the conventions (replica `t % r`, one transfer per token and destination GPU).
"""
from __future__ import annotations

import numpy as np


def _destinations(choices, expert_slot_ptr, expert_slots, slot_gpu):
    """(dst int64[N, k] sorted per row, -1 for dropped choices; first bool[N, k]: first
    occurrence of each GPU in its row, never a dropped choice)."""
    choices = np.asarray(choices, dtype=np.int64)
    kept = choices >= 0
    e = np.where(kept, choices, 0)
    t = np.arange(choices.shape[0], dtype=np.int64)[:, None]
    lo = expert_slot_ptr[e].astype(np.int64)
    r = expert_slot_ptr[e + 1] - lo
    dst = np.where(kept, slot_gpu[expert_slots[lo + t % r]], -1).astype(np.int64)
    dst.sort(axis=1)
    first = dst >= 0
    first[:, 1:] &= dst[:, 1:] != dst[:, :-1]
    return dst, first


def _pair_counts(rows, cols, n_gpus):
    return np.bincount(rows * n_gpus + cols, minlength=n_gpus * n_gpus).reshape(n_gpus, n_gpus).astype(np.int64)


def dispatch_counts(choices, token_gpu, expert_slot_ptr, expert_slots, slot_gpu, n_gpus):
    """int64[G, G]: tokens per (source GPU, destination GPU), deduplicated per token and GPU."""
    dst, first = _destinations(choices, expert_slot_ptr, expert_slots, slot_gpu)
    src = np.broadcast_to(np.asarray(token_gpu, dtype=np.int64)[:, None], dst.shape)
    return _pair_counts(src[first], dst[first], n_gpus)


def internode_counts(choices, token_gpu, expert_slot_ptr, expert_slots, slot_gpu, n_gpus, gpus_per_node):
    """(rdma int64[G, G], nvl_forward int64[G, G]): DeepEP hierarchical dispatch, see the kernel."""
    dst, first = _destinations(choices, expert_slot_ptr, expert_slots, slot_gpu)
    src = np.broadcast_to(np.asarray(token_gpu, dtype=np.int64)[:, None], dst.shape)
    node = dst // gpus_per_node
    src_node = src // gpus_per_node
    rail = node * gpus_per_node + (src - src_node * gpus_per_node)
    remote = first & (node != src_node)
    # rows are sorted, so one node's GPUs are adjacent: its first remote GPU opens the RDMA transfer
    node_first = remote.copy()
    node_first[:, 1:] &= node[:, 1:] != node[:, :-1]
    forward = remote & (dst != rail)
    return (_pair_counts(src[node_first], rail[node_first], n_gpus),
            _pair_counts(rail[forward], dst[forward], n_gpus))
