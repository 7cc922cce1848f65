"""Throughput of the dispatch-count kernel against its NumPy twin and the RNG floor, in one run.

DeepSeek-V3 shape: 256 experts, top-8, 64 GPUs in 8 nodes, contiguous placement (4 experts per
GPU), tokens spread evenly over GPUs, expert choices uniform (drawn with replacement, so a token
may repeat an expert; the kernel deduplicates either way). The RNG floor is the time PCG64 takes
to draw the N x k uniforms a routing sample needs: a kernel faster than that is not the bottleneck.
Run: `python -m moesim.bench.traffic_kernels` (prints JSON).
"""
from __future__ import annotations

import json

import numpy as np

from moesim.core.timing import best_seconds
from moesim.kernels import traffic, traffic_reference

N_EXPERTS, TOP_K, N_GPUS, GPUS_PER_NODE = 256, 8, 64, 8
NUMPY_MAX_TOKENS = 1_000_000  # the twin runs on at most this many tokens; its rate is per token




def traffic_benchmark(n_tokens: int = 1_000_000, repeats: int = 3) -> dict:
    """Tokens per second of `dispatch_counts` (Numba, NumPy twin) and of drawing the routing.

    This shape takes the kernel's fast loop (<= 64 GPUs, no replicas); `general_loop_tokens_per_s`
    times the loop that replicas or more GPUs take, on the same input.

    The twin runs on min(n_tokens, 1 000 000) tokens and its rate is reported per token (it is
    linear in N); both results are checked equal on those tokens before anything is timed.
    """
    rng = np.random.Generator(np.random.PCG64(0))
    choices = rng.integers(0, N_EXPERTS, (n_tokens, TOP_K), dtype=np.int32)
    token_gpu = (np.arange(n_tokens, dtype=np.int64) * N_GPUS // max(n_tokens, 1)).astype(np.int32)
    ptr = np.arange(N_EXPERTS + 1, dtype=np.int32)
    slots = np.arange(N_EXPERTS, dtype=np.int32)
    slot_gpu = (slots // (N_EXPERTS // N_GPUS)).astype(np.int32)
    args = (ptr, slots, slot_gpu, N_GPUS)

    n_numpy = min(n_tokens, NUMPY_MAX_TOKENS)
    small = (choices[:n_numpy], token_gpu[:n_numpy])
    if not np.array_equal(traffic.dispatch_counts(*small, *args), traffic_reference.dispatch_counts(*small, *args)):
        raise RuntimeError("dispatch_counts differs from its NumPy twin")

    numba_s = best_seconds(lambda: traffic.dispatch_counts(choices, token_gpu, *args), repeats)
    single = traffic.single_gpu(ptr, slots, slot_gpu)
    general_s = best_seconds(lambda: traffic.dispatch_counts_general(choices, token_gpu, single, *args), repeats)
    numpy_s = best_seconds(lambda: traffic_reference.dispatch_counts(*small, *args), repeats)
    rng_s = best_seconds(lambda: rng.random(n_tokens * TOP_K), repeats)

    tokens_per_s = n_tokens / numba_s
    numpy_tokens_per_s = n_numpy / numpy_s
    rng_floor_tokens_per_s = n_tokens / rng_s
    return {
        "n_tokens": n_tokens, "numpy_n_tokens": n_numpy, "n_experts": N_EXPERTS, "top_k": TOP_K,
        "n_gpus": N_GPUS, "gpus_per_node": GPUS_PER_NODE, "repeats": repeats,
        "tokens_per_s": tokens_per_s,
        "general_loop_tokens_per_s": n_tokens / general_s,
        "numpy_tokens_per_s": numpy_tokens_per_s,
        "speedup_vs_numpy": tokens_per_s / numpy_tokens_per_s,
        "rng_floor_tokens_per_s": rng_floor_tokens_per_s,
        "ratio_to_rng_floor": rng_floor_tokens_per_s / tokens_per_s,  # < 1: faster than drawing the routing
    }


if __name__ == "__main__":
    print(json.dumps(traffic_benchmark(), indent=2))
