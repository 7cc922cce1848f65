"""Routing kernel throughput: tokens/s of the Numba sampler, its NumPy twin and the RNG floor.

All numbers of one call are measured in the same process, so the ratios compare like with like
(one core: the kernels are single-threaded). `python -m moesim.bench.routing_kernels` prints the JSON.
"""
from __future__ import annotations

import json

import numpy as np

from moesim.core.timing import best_seconds
from moesim.kernels import draws, reference, routing

# name: (experts, k, groups, topk_group); uniform popularity
SHAPES = {
    "deepseek-v3": (256, 8, 8, 4),
    "mixtral": (8, 2, 1, 0),
}
NUMPY_TOKENS = 100_000  # the twin is timed on at most this many tokens; tokens/s is a rate
_SEED = 1



def routing_benchmark(n_tokens: int = 1_000_000, repeats: int = 3) -> dict:
    """Best-of-`repeats` throughput of `sample_topk` for the DeepSeek-V3 and Mixtral shapes.

    Returns {shape: {tokens_per_s, numpy_tokens_per_s, speedup_vs_numpy, rng_floor_tokens_per_s,
    ratio_to_rng_floor}}; ratio_to_rng_floor = floor tokens/s / kernel tokens/s, the floor
    being k uniform draws per token from the kernels' generator (`rng_floor`).
    """
    results = {}
    for name, (n_experts, k, n_groups, topk_group) in SHAPES.items():
        popularity = np.full(n_experts, 1.0 / n_experts)
        group = (np.arange(n_experts) // (n_experts // n_groups)).astype(np.int32)
        twin_tokens = min(n_tokens, NUMPY_TOKENS)
        routing.sample_topk(popularity, group, topk_group, 16, k, _SEED)  # compile (or load)
        draws.rng_floor(16, k, _SEED)
        kernel_s = best_seconds(
            lambda: routing.sample_topk(popularity, group, topk_group, n_tokens, k, _SEED), repeats)
        twin_s = best_seconds(
            lambda: reference.sample_topk(popularity, group, topk_group, twin_tokens, k, _SEED),
            repeats)
        floor_s = best_seconds(lambda: draws.rng_floor(n_tokens, k, _SEED), repeats)
        tokens_per_s = n_tokens / kernel_s
        numpy_tokens_per_s = twin_tokens / twin_s
        floor_tokens_per_s = n_tokens / floor_s
        results[name] = {
            "tokens_per_s": tokens_per_s,
            "numpy_tokens_per_s": numpy_tokens_per_s,
            "speedup_vs_numpy": tokens_per_s / numpy_tokens_per_s,
            "rng_floor_tokens_per_s": floor_tokens_per_s,
            "ratio_to_rng_floor": floor_tokens_per_s / tokens_per_s,
        }
    return results


if __name__ == "__main__":
    print(json.dumps(routing_benchmark(), indent=2))
