"""EP traffic: from expert choices, placement and token sources to dispatch/combine byte matrices.

Matrices are [src GPU, dst GPU] over the GPUs of one EP group; the diagonal is local traffic
(kept, but counted apart from link traffic). A token is sent once to each GPU that holds one of
its chosen experts (DeepEP deduplicates per rank). The hierarchical (internode) form follows
DeepEP's normal kernels: a token crosses the scale-out network once per destination node, to the
GPU with the same local index (its rail peer), then fans out over NVLink inside that node.

Bytes per token (DeepEP README / tests): FP8 dispatch = hidden bytes + one FP32 scale per 128
channels; BF16 dispatch or combine = 2 x hidden.
"""
from __future__ import annotations

import numpy as np

from moesim.core.errors import MoesimError
from moesim.core.loader import Record
from moesim.costs.placement import Placement
from moesim.kernels import traffic as kernels


def dispatch_bytes_per_token(hidden: int, dtype: str) -> float:
    if dtype in ("fp8", "fp8_block128"):
        return hidden + 4 * hidden / 128
    if dtype in ("bf16", "fp16"):
        return 2.0 * hidden
    raise MoesimError(f"unsupported dispatch dtype {dtype!r}", field="dispatch_dtype", fix="use fp8 or bf16")


def combine_bytes_per_token(hidden: int) -> float:
    return 2.0 * hidden


def token_source_gpus(tokens: int, n_gpus: int) -> np.ndarray:
    """Token t comes from GPU t * G // N: each EP rank owns an equal, contiguous share (DP ranks)."""
    return (np.arange(tokens, dtype=np.int64) * n_gpus // tokens).astype(np.int32)


class Traffic(Record):
    """One MoE layer's dispatch and combine traffic in bytes ([src, dst] matrices over EP GPUs)."""

    model_config = {"arbitrary_types_allowed": True, "frozen": True, "extra": "forbid"}
    dispatch_bytes: np.ndarray
    combine_bytes: np.ndarray
    rdma_bytes: np.ndarray
    nvlink_forward_bytes: np.ndarray
    gpus_per_node: int

    def totals(self) -> dict[str, float]:
        """Dispatch bytes per link class; combine mirrors dispatch with its own bytes per token."""
        g = self.dispatch_bytes.shape[0]
        node = np.arange(g) // self.gpus_per_node
        same_node = node[:, None] == node[None, :]
        diag = np.eye(g, dtype=bool)
        d = self.dispatch_bytes
        return {
            "local_bytes": float(d[diag].sum()),
            "nvlink_direct_bytes": float(d[same_node & ~diag].sum()),
            "scale_out_direct_bytes": float(d[~same_node].sum()),
            "scale_out_dedup_bytes": float(self.rdma_bytes.sum()),
            "nvlink_forward_bytes": float(self.nvlink_forward_bytes.sum()),
        }


def ep_traffic(choices: np.ndarray, token_gpu: np.ndarray, placement: Placement, *, gpus_per_node: int,
               hidden: int, dispatch_dtype: str) -> Traffic:
    """Dispatch and combine byte matrices of one layer (combine is dispatch reversed, BF16)."""
    g = placement.n_gpus
    per_node = min(gpus_per_node, g)
    args = (np.ascontiguousarray(choices, dtype=np.int32), np.ascontiguousarray(token_gpu, dtype=np.int32),
            placement.expert_slot_ptr, placement.expert_slots, placement.slot_gpu)
    counts = kernels.dispatch_counts(*args, g)
    if g <= per_node:   # one node: no token leaves it, nothing to count (saves a pass over every pair)
        rdma = forward = np.zeros((g, g), dtype=np.int64)
    else:
        rdma, forward = kernels.internode_counts(*args, g, per_node)
    per_token = dispatch_bytes_per_token(hidden, dispatch_dtype)
    return Traffic(dispatch_bytes=counts * per_token, combine_bytes=counts.T * combine_bytes_per_token(hidden),
                   rdma_bytes=rdma * per_token, nvlink_forward_bytes=forward * per_token, gpus_per_node=per_node)
