"""The load a deployment serves: which requests arrive when, and how long they are.

Two ways benchmarks drive a server, both here:
- closed loop (`concurrency` C): C clients, each sends its next request the moment the previous
  one finishes (no think time) - how vLLM/SGLang `bench_serving --max-concurrency` and every
  benchmark in shared/validation/serving_load.yaml were run;
- open loop (`rate` R): requests arrive as a Poisson process of R requests/s, whatever the server
  does - the arrival times are drawn up front from the seed tree (`core.rng`), so the same seed
  gives the same arrivals.

Input and output lengths are fixed (ISL/OSL) in this increment. The first `warmup` requests run
like any other but are left out of every statistic, as benchmark clients leave out theirs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from moesim.core.errors import MoesimError
from moesim.core.rng import stream


@dataclass(frozen=True)
class Load:
    """One run's load. Request i (0-based, in the order clients send them) is a warm-up request
    when i < warmup; `requests` more are measured."""

    isl: int
    osl: int
    requests: int
    warmup: int = 0
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    seed: int = 0

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def total(self) -> int:
        return self.requests + self.warmup

    def to_json(self) -> dict:
        out = {"mode": self.mode, "isl": self.isl, "osl": self.osl, "requests": self.requests,
               "warmup": self.warmup, "seed": self.seed}
        out["concurrency" if self.mode == "closed" else "rate_per_s"] = \
            self.concurrency if self.mode == "closed" else self.rate
        return out


def _positive_int(value, name: str, prefix: str, *, zero_ok: bool = False) -> int:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise MoesimError(f"must be a whole number {'>= 0' if zero_ok else '> 0'}, got {value!r}",
                          field=f"{prefix}{name}", fix=f"give {prefix}{name} {'0 or more' if zero_ok else '1 or more'}")
    return int(value)


def make_load(*, isl: int, osl: int, requests: int, concurrency: Optional[int] = None,
              rate: Optional[float] = None, warmup: int = 0, seed: int = 0, prefix: str = "") -> Load:
    """A checked Load. `prefix` is how the caller spells its options in errors (the CLI: `--`)."""
    if (concurrency is None) == (rate is None):
        both = concurrency is not None
        raise MoesimError("both a concurrency and a rate were given" if both else "no load was given",
                          field=f"{prefix}concurrency/{prefix}rate",
                          fix=f"give exactly one: {prefix}concurrency C (closed loop) or {prefix}rate R (requests/s)")
    if concurrency is not None:
        concurrency = _positive_int(concurrency, "concurrency", prefix)
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise MoesimError(f"must be a positive, finite number of requests per second, got {rate!r}",
                              field=f"{prefix}rate", fix=f"give {prefix}rate above 0")
        rate = float(rate)
    return Load(isl=_positive_int(isl, "isl", prefix), osl=_positive_int(osl, "osl", prefix),
                requests=_positive_int(requests, "requests", prefix),
                warmup=_positive_int(warmup, "warmup", prefix, zero_ok=True),
                concurrency=concurrency, rate=rate, seed=_positive_int(seed, "seed", prefix, zero_ok=True))


def open_loop_arrivals(load: Load) -> np.ndarray:
    """Arrival times (s) of all requests of an open-loop load: a Poisson process, i.e.
    exponential gaps of mean 1/rate, the first request at its first gap."""
    gaps = stream(load.seed, "serve-arrivals").exponential(1.0 / load.rate, size=load.total)
    return np.cumsum(gaps)


__all__ = ["Load", "make_load", "open_loop_arrivals"]
