"""Per-request latencies and run throughput, defined as the serving benchmarks define them.

Definitions follow vLLM/SGLang `bench_serving` so that predictions compare with their output:
- TTFT: first output token time - arrival time;
- TPOT: (E2E - TTFT) / (OSL - 1) per request, with the request's own OSL (undefined for one-token
  outputs, left out);
- ITL: every gap between consecutive output tokens of a request, pooled over requests;
- E2E: last output token time - arrival time;
- statistics: mean and the 50th, 90th and 99th percentiles (numpy's linear interpolation, as the
  benchmark scripts compute them);
- duration: first measured arrival to last measured finish; requests/s and output tokens/s
  over it; output tokens/s per GPU divides by the deployment's GPUs; output tokens/s per user is
  1 / mean TPOT (how fast one user sees tokens stream, the x axis of throughput-interactivity
  fronts).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

PERCENTILES = (50, 90, 99)   # the output contract: {mean, p50, p90, p99} (issue 16)
MS = 1e3


def summary_ms(values_s) -> Optional[dict]:
    """{mean, p50, p90, p99} in milliseconds, or None when there is nothing to summarise."""
    v = np.asarray(values_s, dtype=float)
    if v.size == 0:
        return None
    out = {"mean": float(v.mean() * MS)}
    for q in PERCENTILES:
        out[f"p{q}"] = float(np.percentile(v, q) * MS)
    return out


def run_metrics(*, arrival: np.ndarray, first_token: np.ndarray, finish: np.ndarray, osl,
                itl_s: np.ndarray, gpus: int) -> dict:
    """The `metrics` block of a serve Result over the measured requests (arrays of equal length).
    `osl` is every measured request's output length (an array of the same length), or one number
    for all: each request's TPOT divides by its own OSL - 1, and the output tokens are their sum."""
    ttft = first_token - arrival
    e2e = finish - arrival
    outs = np.broadcast_to(np.asarray(osl, dtype=np.int64), arrival.shape)
    many = outs > 1   # a one-token output has no TPOT (bench_serving leaves it out)
    tpot = (e2e[many] - ttft[many]) / (outs[many] - 1)
    duration = float(finish.max() - arrival.min())
    n = len(arrival)
    tokens = int(outs.sum())
    tpot_ms = summary_ms(tpot)
    return {"ttft_ms": summary_ms(ttft), "tpot_ms": tpot_ms, "itl_ms": summary_ms(itl_s), "e2e_ms": summary_ms(e2e),
            "output_tokens_per_s_per_gpu": tokens / duration / gpus,
            "output_tokens_per_s_per_user": (MS / tpot_ms["mean"]) if tpot_ms and tpot_ms["mean"] > 0 else None,
            "requests_per_s": n / duration, "output_tokens_per_s": tokens / duration, "gpus": gpus,
            "requests": n, "output_tokens": tokens, "duration_s": duration}


__all__ = ["PERCENTILES", "run_metrics", "summary_ms"]
