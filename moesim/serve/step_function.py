"""Step time of one engine step as a function of what the step holds, from moesim's step model.

A request-level run takes thousands of engine steps, each a different mix of decode tokens (with
their context lengths) and prefill tokens; simulating each through `sim.simulate` would take
minutes. So the step model is run once per point of a small grid and interpolated:

- decode part `T_dec(B, L)`: a decode step of B sequences per attention-DP rank at context L,
  on a doubling grid of B (`workloads/serve.yaml`) and at contexts {2, the sliding window if the
  model has one, ISL + 1, ISL + OSL}; linear in B between grid batches (a decode step is close to
  affine in B between doublings: weights are read once, per-token work is linear; log-linear
  would bend a linear stretch by up to ~6 %), piecewise linear in L (attention reads the KV of
  every held token: linear in L, with a kink where a sliding window caps it).
- prefill part `T_pre(P)`: a prefill step of P tokens per rank, of prompts of length ISL (the
  step model's attention then uses the mean causal context over a whole prompt, (ISL + 1) / 2,
  which is what chunks of a prompt see on average), on a doubling grid of P, linear between.

A mixed step (B decode and P prefill tokens on a rank, vLLM's chunked prefill) is not a phase
the step model simulates. It is composed as

    T(B, L, P) = T_pre(P + B) + [T_dec(B, L) - T_dec(B, 2)]          (P > 0, B > 0)

ASSUMPTION: every token of the step passes the linear layers, the router and the EP exchange
together (one weight read, one all-to-all: T_pre of all P + B tokens), and the decode tokens add
their attention over their contexts (the context-dependent part of the decode step, measured
against a context of 2 tokens). It is exact at P = 0 and at B = 0 by construction; mixed steps
are checked against measurements in the serving-fidelity work that follows (issue 16).

Functions are cached in memory per resolved scenario, ISL/OSL, grid bounds and the digest of
moesim's code and data (`core.digest`), so a sweep over loads builds each one once.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from moesim.cluster.scenario import Scenario, Serving
from moesim.core.digest import code_and_data_digest
from moesim.core.loader import Record, data_root, load_record

# The shortest context a decode step can be simulated at (input 1 + output 1 token): the
# reference for "attention over (almost) no context" in the mixed-step composition above.
MIN_CONTEXT = 2


class StepGrid(Record):
    """`workloads/serve.yaml` step_function: grid spacing (see the comments there for why)."""

    batch_ratio: float
    prefill_ratio: float


class ServeSettings(Record):
    step_function: StepGrid


@lru_cache(maxsize=1)
def serve_settings() -> ServeSettings:
    return load_record(ServeSettings, data_root() / "workloads" / "serve.yaml")


def geometric_grid(top: int, ratio: float) -> tuple[int, ...]:
    """1, ratio, ratio^2, ... (rounded, distinct) up to and including `top`."""
    points, x = {1, int(top)}, 1.0
    while x < top:
        points.add(min(int(round(x)), int(top)))
        x *= ratio
    return tuple(sorted(points))


def context_grid(sc: Scenario, isl: int, osl: int) -> tuple[int, ...]:
    """Decode contexts to simulate: the shortest, ISL + 1 (first decode), ISL + OSL (last), and a
    sliding window's cap between them (where attention time stops growing on windowed layers)."""
    points = {MIN_CONTEXT, isl + 1, isl + osl}
    window = sc.model.kv_window.tokens if sc.model.kv_window else None
    if window and MIN_CONTEXT < window < isl + osl:
        points.add(window)
    return tuple(sorted(points))


def _interp(xs: tuple[int, ...], ys: np.ndarray, x: float) -> float:
    """Piecewise-linear interpolation on a sorted grid; refuses to extrapolate (a caller asking
    outside the grid is a bug in how the grid was sized, not something to guess)."""
    if not xs[0] <= x <= xs[-1]:
        raise ValueError(f"{x} outside the step-function grid [{xs[0]}, {xs[-1]}]")
    i = min(bisect.bisect_right(xs, x), len(xs) - 1)
    if i == 0 or xs[i - 1] == x:
        return float(ys[max(i - 1, 0)])
    x0, x1 = xs[i - 1], xs[i]
    return float(ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0))


@dataclass(frozen=True)
class StepFunction:
    """Step time (seconds) from the grid of step-model runs; plain data, see the module docstring."""

    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    prefill_tokens: tuple[int, ...]
    decode_s: np.ndarray        # [len(batches), len(contexts)]
    prefill_s: np.ndarray       # [len(prefill_tokens)]

    def decode(self, batch: float, context: float) -> float:
        """T_dec: a decode step of `batch` sequences per rank at mean context `context`."""
        per_batch = np.array([_interp(self.contexts, row, context) for row in self.decode_s])
        return _interp(self.batches, per_batch, batch)

    def prefill(self, tokens: float) -> float:
        """T_pre: a prefill step of `tokens` prompt tokens per rank."""
        return _interp(self.prefill_tokens, self.prefill_s, tokens)

    def step(self, decode_batch: int, decode_context: float, prefill_tokens: int) -> float:
        """Seconds of one step with `decode_batch` decode sequences (mean context
        `decode_context`) and `prefill_tokens` prefill tokens on the busiest rank."""
        if prefill_tokens <= 0:
            return self.decode(decode_batch, decode_context) if decode_batch > 0 else 0.0
        if decode_batch <= 0:
            return self.prefill(prefill_tokens)
        attention = self.decode(decode_batch, decode_context) - self.decode(decode_batch, MIN_CONTEXT)
        return self.prefill(prefill_tokens + decode_batch) + attention

    def to_json(self) -> dict:
        """The grid and its step times (ms), for the Result: a reader sees what was simulated."""
        return {"decode_batches": list(self.batches), "decode_contexts": list(self.contexts),
                "prefill_tokens": list(self.prefill_tokens),
                "decode_step_ms": [[round(v * 1e3, 6) for v in row] for row in self.decode_s.tolist()],
                "prefill_step_ms": [round(v * 1e3, 6) for v in self.prefill_s.tolist()]}


def _variant(sc: Scenario, workload: Serving) -> Scenario:
    """The scenario with another serving workload: only the workload changes, so nothing needs
    resolving again (model, system, split and framework stay the resolved ones)."""
    return sc.model_copy(update={"input": sc.input.model_copy(update={"workload": workload})})


def simulate_decode(sc: Scenario, batch: int, context: int) -> float:
    """Seconds of one decode step of `batch` sequences per rank at context `context`, simulated."""
    from moesim.sim.simulate import simulate
    w = Serving(kind="serving", phase="decode", batch=batch, input_len=context - 1, output_len=1)
    # The step's time does not depend on whether the grid corner fits in VRAM (the run's KV
    # admission keeps every real step inside it), so the memory check is skipped here.
    return simulate(_variant(sc, w), ignore_memory=True)["metrics"]["step_time_s"]


def simulate_prefill(sc: Scenario, tokens: int, isl: int) -> float:
    """Seconds of one prefill step of `tokens` tokens per rank of prompts of `isl` tokens, simulated."""
    from moesim.sim.simulate import simulate
    w = Serving(kind="serving", phase="prefill", batch=1, input_len=isl, output_len=1, prefill_chunk_tokens=tokens)
    return simulate(_variant(sc, w), ignore_memory=True)["metrics"]["step_time_s"]


_CACHE: dict = {}


def build_step_function(sc: Scenario, *, isl: int, osl: int, max_batch: int, max_prefill_tokens: int,
                        grid: Optional[StepGrid] = None) -> StepFunction:
    """The step function of a deployment for requests of `isl`/`osl` tokens, covering decode
    batches up to `max_batch` and prefill steps up to `max_prefill_tokens` tokens per rank."""
    grid = grid or serve_settings().step_function
    key = (sc.model_dump_json(), isl, osl, max_batch, max_prefill_tokens, grid.model_dump_json(),
           code_and_data_digest())
    if key in _CACHE:
        return _CACHE[key]
    batches = geometric_grid(max_batch, grid.batch_ratio)
    contexts = context_grid(sc, isl, osl)
    prefill = geometric_grid(max_prefill_tokens, grid.prefill_ratio)
    decode_s = np.array([[simulate_decode(sc, b, c) for c in contexts] for b in batches])
    prefill_s = np.array([simulate_prefill(sc, p, isl) for p in prefill])
    fn = StepFunction(batches, contexts, prefill, decode_s, prefill_s)
    _CACHE[key] = fn
    return fn


__all__ = ["StepFunction", "build_step_function", "simulate_decode", "simulate_prefill", "serve_settings"]
