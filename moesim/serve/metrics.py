"""Per-request latencies and run throughput, defined as the serving benchmarks define them.

Definitions follow vLLM/SGLang `bench_serving` so that predictions compare with their output, at the
client (`serve.scheduler.Clients`: it sees the first token the request overhead after the engine made it,
the last one as the engine made it, or with the first if that comes later):
- TTFT: first output token time - arrival time;
- TPOT: (E2E - TTFT) / (OSL - 1) per request, with the request's own OSL (undefined for one-token
  outputs, left out): the request overhead / (OSL - 1) shorter than the engine's mean gap;
- ITL: every gap between consecutive output tokens of a request as the engine makes them, pooled over requests;
- E2E: last output token time - arrival time;
- statistics: mean and the 50th, 90th and 99th percentiles (numpy's linear interpolation, as the
  benchmark scripts compute them);
- duration: first measured arrival to last measured finish; requests/s and output tokens/s
  over it; output tokens/s per GPU divides by the deployment's GPUs; output tokens/s per user is
  1 / mean TPOT (how fast one user sees tokens stream, the x axis of throughput-interactivity
  fronts);
- goodput (with SLOs): requests/s and output tokens/s of the requests whose own TTFT, TPOT (and
  E2E) meet the SLOs, and the fraction that do (DistServe's definition, `goodput`).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from moesim.core.errors import MoesimError

PERCENTILES = (50, 90, 99)   # the output contract: {mean, p50, p90, p99} (issue 16)
MS = 1e3


def summary_ms(values_s) -> Optional[dict]:
    """{mean, p50, p90, p99} in milliseconds, or None when there is nothing to summarise."""
    v = np.asarray(values_s, dtype=float)
    if v.size == 0:
        return None
    out = {"mean": float(v.mean() * MS)}
    # all percentiles in one call: one partition of the values, each percentile the same float
    for q, value in zip(PERCENTILES, np.percentile(v, PERCENTILES).tolist()):
        out[f"p{q}"] = float(value * MS)
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


SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")   # the per-request bounds goodput counts against


def check_slo(slo: Optional[Mapping[str, Optional[float]]], *, prefix: str = "slo.") -> Optional[dict]:
    """The SLOs of a goodput count, checked: a dict of `SLO_KEYS` to a positive, finite number of
    milliseconds (None values left out), or None when none is given. `prefix` spells the options
    in errors (`--slo-` on the command line, whose keys read `--slo-ttft-ms`)."""
    if not slo:
        return None
    out = {}
    for key, value in slo.items():
        name = f"{prefix}{key.replace('_', '-')}" if prefix.startswith("--") else f"{prefix}{key}"
        if key not in SLO_KEYS:
            raise MoesimError(f"unknown SLO {key!r}", field=name, fix=f"give one of: {', '.join(SLO_KEYS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise MoesimError(f"an SLO must be a positive number of milliseconds, got {value!r}", field=name,
                              fix=f"give {name} a number > 0, e.g. {name} 200")
        out[key] = float(value)
    return out or None


def request_tpot_s(e2e_s, ttft_s, osl) -> np.ndarray:
    """Every request's TPOT in seconds, (E2E - TTFT) / (OSL - 1); NaN for a one-token output (it
    has none, module docstring)."""
    e2e, ttft = np.asarray(e2e_s, dtype=float), np.asarray(ttft_s, dtype=float)
    outs = np.broadcast_to(np.asarray(osl, dtype=np.int64), e2e.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(outs > 1, (e2e - ttft) / np.maximum(outs - 1, 1), math.nan)


def goodput(*, ttft_s, e2e_s, osl, duration_s: float, gpus: int, slo: Mapping[str, float]) -> dict:
    """Goodput under per-request SLOs, over the measured requests (arrays of equal length, as
    `run_metrics` takes them; `duration_s` and `gpus` are its `duration_s` and `gpus`).

    Goodput is DistServe's measure of serving quality (Zhong et al., "DistServe: Disaggregating
    Prefill and Decoding for Goodput-optimized Large Language Model Serving", OSDI 2024,
    arXiv:2401.09670): only requests that meet the latency SLOs count. A request is good when its
    own TTFT, its own TPOT (`request_tpot_s`) and its own E2E are each at or below the SLOs given
    (`slo`: ms, keys of `SLO_KEYS`; a missing key is no bound); a one-token output has no TPOT and
    passes a TPOT SLO. That is how vLLM's `benchmark_serving.py --goodput ttft:MS tpot:MS e2el:MS`
    counts it (citing DistServe), so the numbers compare with its `request_goodput`. Rates are over
    the run's duration: requests/s and output tokens/s of the good requests alone (per GPU: over
    the deployment's GPUs); `fraction` is the share of measured requests that are good (DistServe's
    SLO attainment)."""
    ttft = np.asarray(ttft_s, dtype=float)
    e2e = np.asarray(e2e_s, dtype=float)
    outs = np.broadcast_to(np.asarray(osl, dtype=np.int64), ttft.shape)
    good = np.ones(ttft.shape, dtype=bool)
    if slo.get("ttft_ms") is not None:
        good &= ttft * MS <= slo["ttft_ms"]
    if slo.get("tpot_ms") is not None:
        tpot = request_tpot_s(e2e, ttft, outs)
        good &= np.isnan(tpot) | (tpot * MS <= slo["tpot_ms"])
    if slo.get("e2e_ms") is not None:
        good &= e2e * MS <= slo["e2e_ms"]
    n, count = int(ttft.size), int(good.sum())
    tokens = int(outs[good].sum())
    rate = (lambda v: v / duration_s) if duration_s > 0 else (lambda v: 0.0)
    return {"slo_ms": {k: float(slo[k]) for k in SLO_KEYS if slo.get(k) is not None},
            "requests_per_s": rate(count), "output_tokens_per_s": rate(tokens),
            "output_tokens_per_s_per_gpu": rate(tokens) / gpus, "fraction": count / n if n else 0.0,
            "good_requests": count, "requests": n, "good_output_tokens": tokens}


def latency_samples_ms(requests: Mapping) -> dict:
    """Per-request TTFT, TPOT and E2E in ms (lists) from a serve run's `_requests` (`ttft_s`,
    `e2e_s`, `osl` over the measured requests): what a report draws the latency distributions
    from. TPOT leaves out one-token outputs, as `run_metrics` does."""
    ttft = np.asarray(requests["ttft_s"], dtype=float)
    e2e = np.asarray(requests["e2e_s"], dtype=float)
    tpot = request_tpot_s(e2e, ttft, requests["osl"])
    return {"ttft_ms": (ttft * MS).tolist(), "tpot_ms": (tpot[~np.isnan(tpot)] * MS).tolist(),
            "e2e_ms": (e2e * MS).tolist()}


__all__ = ["PERCENTILES", "SLO_KEYS", "check_slo", "goodput", "latency_samples_ms", "request_tpot_s", "run_metrics",
           "summary_ms"]
