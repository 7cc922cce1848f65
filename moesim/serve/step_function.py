"""Step time of one engine step as a function of what the step holds, from moesim's step model.

A request-level run takes thousands of engine steps, each a different mix of decode tokens (with
their context lengths) and prefill tokens; simulating each through `sim.simulate` would take
minutes. So the step model is run once per point of a small grid and interpolated:

- decode part `T_dec(B, L)`: a decode step of B sequences per attention-DP rank at context L,
  on a doubling grid of B (`workloads/serve.yaml`) and at contexts {2, the sliding window if the
  model has one, ISL + 1, ISL + OSL, and the longest request's ISL + OSL when lengths vary};
  linear in B between grid batches (a decode step is close to
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

Grid points are simulated lazily: a point is simulated the first time a step needs it (a
decode step needs at most the 2 x 2 points around its batch and context, a prefill step the 2
around its size), so a run pays only for the corner of the grid it reaches (DeepSeek-V3 on
8 x B200 at concurrency 256, ISL/OSL 1k: 6 of 41 points). Simulated points are shared in memory
by every function built for the same resolved scenario and digest of moesim's code and data
(`core.digest`), and, given a cache folder, kept on disk under that key for later runs. A
point's value does not depend on when or in what order it is simulated, so lazy, eager (`fill`)
and cached functions give the same floats (tests/test_serve_step_function.py).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import time
from functools import lru_cache
from pathlib import Path
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


def _bracket(xs: tuple[int, ...], x: float) -> int:
    """Index i of the grid interval [xs[i-1], xs[i]] holding x (as `_interp` picks it); refuses to
    extrapolate (a caller asking outside the grid is a bug in how the grid was sized, not something
    to guess)."""
    if not xs[0] <= x <= xs[-1]:
        raise ValueError(f"{x} outside the step-function grid [{xs[0]}, {xs[-1]}]")
    return min(bisect.bisect_right(xs, x), len(xs) - 1)


@lru_cache(maxsize=64)
def _grid(xs: tuple[int, ...]) -> np.ndarray:
    """A grid as an array, made once (the `*_many` paths index it at every call)."""
    grid = np.asarray(xs)
    grid.flags.writeable = False
    return grid


def _interp(xs: tuple[int, ...], ys, x: float) -> float:
    """Piecewise-linear interpolation on a sorted grid (`ys` indexable, or a function of the index:
    only the one or two values used are asked for)."""
    get = ys if callable(ys) else ys.__getitem__
    i = _bracket(xs, x)
    if i == 0 or xs[i - 1] == x:
        return float(get(max(i - 1, 0)))
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = get(i - 1), get(i)
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def _span_unused(span: list) -> bool:
    """A `_span_table` row (as plain floats) with a grid point not used yet: its values are NaN."""
    return math.isnan(span[2] + span[3] + span[4] + span[5])


def _span_lerp(total: int, count: int, ticks: range, span: list) -> list:
    """`StepFunction.decode_rows_used`'s arithmetic for one row of contexts (total + count x tick) /
    count, element by element, from its `_span_table` row."""
    x0, _, low0, low_rise, high0, high_rise, width, batch_dx, batch_dw = span
    if batch_dx == 0.0:   # a batch on a grid point: high is low, and low + 0.0 is low
        return [low0 + low_rise * ((total + count * tick) / count - x0) / width for tick in ticks]
    out = []
    for tick in ticks:
        dx = (total + count * tick) / count - x0
        low = low0 + low_rise * dx / width
        out.append(low + (high0 + high_rise * dx / width - low) * batch_dx / batch_dw)
    return out


def _variant(sc: Scenario, workload: Serving) -> Scenario:
    """The scenario with another serving workload: only the workload changes, so nothing needs
    resolving again (model, system, split and framework stay the resolved ones)."""
    return sc.model_copy(update={"input": sc.input.model_copy(update={"workload": workload})})


def step_time_s(sc: Scenario) -> float:
    """Seconds of one step of the (serving) scenario: the number `sim.simulate(sc, ignore_memory=True)`
    gives as `metrics.step_time_s` - the serving layers (`sim.layer_ops`) run through the engine
    (`sim.engine.run_step`), no overlap, uniform routing, the scenario's placement - without what
    `simulate` adds around it (breakdown, VRAM ledger, error bands, timeline), which a grid point
    does not use and which doubles its cost. tests/test_serve_step_function.py checks the two are
    the same float. The step's time does not depend on whether the grid corner fits in VRAM (the
    run's KV admission keeps every real step inside it), so no memory check is made. The routed-expert
    part of a step (routing, dispatch/combine, expert GEMMs) does not depend on the context, so the
    grid's decode points of one batch at other contexts reuse it (`_ROUTED`: the same floats)."""
    from moesim.sim.engine import run_step
    from moesim.sim.layer_ops import serving_layers
    layers, group, _ = serving_layers(sc, microbatches=1, skew="uniform", placement=None, routed_cache=_ROUTED)
    return run_step(layers, group, microbatches=1, record=False).makespan_s


_ROUTED: dict = {}   # `sim.layer_ops.serving_layers`' routed-expert parts of the grid points, for this process


def simulate_decode(sc: Scenario, batch: int, context: int) -> float:
    """Seconds of one decode step of `batch` sequences per rank at context `context`, simulated."""
    return step_time_s(_variant(sc, Serving(kind="serving", phase="decode", batch=batch, input_len=context - 1,
                                            output_len=1)))


def simulate_prefill(sc: Scenario, tokens: int, isl: int) -> float:
    """Seconds of one prefill step of `tokens` tokens per rank of prompts of `isl` tokens, simulated."""
    return step_time_s(_variant(sc, Serving(kind="serving", phase="prefill", batch=1, input_len=isl, output_len=1,
                                            prefill_chunk_tokens=tokens)))


CACHE_FORMAT = 1


class StepTimes:
    """The simulated step times of one deployment (resolved scenario, code and data digest), shared
    by every StepFunction built for it: a grid point is simulated once per process, or once per
    cache folder. Each value is exactly what `simulate_decode` / `simulate_prefill` return (a step
    simulation depends only on its scenario and seed, not on what was simulated before), so the
    order points are asked in cannot change a value, and a cached value is the same float (JSON
    writes floats with repr, which reads back exactly)."""

    def __init__(self, sc: Scenario, key: str, path: Optional[Path]):
        self.sc, self.key, self.path = sc, key, path
        self.decode: dict[tuple[int, int], float] = {}
        self.prefill: dict[tuple[int, int], float] = {}
        self.simulated = 0          # points simulated by this process
        self.simulate_s = 0.0       # wall seconds spent simulating them
        if path is not None:
            self._merge(path)

    def _merge(self, path: Path) -> None:
        """Add the points of a cache file written for this key; a missing, unreadable or foreign
        file adds nothing (its points are simulated again and the file rewritten)."""
        try:
            data = json.loads(path.read_text())
            if data.get("format") != CACHE_FORMAT or data.get("key") != self.key:
                return
            for b, c, v in data["decode"]:
                self.decode.setdefault((int(b), int(c)), float(v))
            for p, i, v in data["prefill"]:
                self.prefill.setdefault((int(p), int(i)), float(v))
        except (OSError, ValueError, KeyError, TypeError):
            return

    def _simulated(self, fn, *args) -> float:
        start = time.perf_counter()
        value = fn(self.sc, *args)
        self.simulate_s += time.perf_counter() - start
        self.simulated += 1
        return value

    def decode_s(self, batch: int, context: int) -> float:
        value = self._known(self.decode, (batch, context))
        if value is None:
            value = self.decode[(batch, context)] = self._simulated(simulate_decode, batch, context)
            self._save()
        return value

    def prefill_s(self, tokens: int, isl: int) -> float:
        value = self._known(self.prefill, (tokens, isl))
        if value is None:
            value = self.prefill[(tokens, isl)] = self._simulated(simulate_prefill, tokens, isl)
            self._save()
        return value

    def _known(self, table: dict, key: tuple) -> Optional[float]:
        """A point's time if this process has it, or another process sharing the cache file has
        written it since (the planner's workers share one, `planning.sweep.run`); else None."""
        value = table.get(key)
        if value is None and self.path is not None:
            self._merge(self.path)
            value = table.get(key)
        return value

    def _save(self) -> None:
        """Write every known point, with those another process wrote meanwhile, all-or-nothing
        (`core.output.write_atomic`): an interrupted run keeps what it simulated."""
        if self.path is None:
            return
        from moesim.core.output import write_atomic
        self._merge(self.path)
        write_atomic(self.path, json.dumps({
            "format": CACHE_FORMAT, "key": self.key, "code_and_data": code_and_data_digest(),
            "decode": [[b, c, v] for (b, c), v in sorted(self.decode.items())],
            "prefill": [[p, i, v] for (p, i), v in sorted(self.prefill.items())]}, indent=0))


class StepFunction:
    """Step time (seconds) from the grid of step-model runs, see the module docstring.

    Grid points are simulated when a step first needs them (`StepTimes`), so a run pays only for
    the corner of the grid its steps reach; `fill()` simulates the whole grid (what an eager build
    does). Values are the same floats either way. `to_json` shows the points this function used."""

    def __init__(self, batches: tuple[int, ...], contexts: tuple[int, ...], prefill_tokens: tuple[int, ...],
                 isl: int, times: StepTimes):
        self.batches, self.contexts, self.prefill_tokens, self.isl, self.times = \
            batches, contexts, prefill_tokens, isl, times
        self._decode = [[None] * len(contexts) for _ in batches]   # filled as used
        self._prefill = [None] * len(prefill_tokens)
        self._decode_table = np.full((len(batches), len(contexts)), math.nan)   # the same, for `*_many`
        self._prefill_table = np.full(len(prefill_tokens), math.nan)
        self._batch_cache: dict = {}   # `_batch_pairs`
        self._spans: Optional[np.ndarray] = None   # `_span_table`, made again when a decode point is used
        self._span_rows: dict = {}   # its rows as plain floats, (batch, interval) -> list (`decode_rows_slowest_used`)

    def _decode_at(self, i: int, j: int) -> float:
        row = self._decode[i]
        value = row[j]
        if value is None:
            value = row[j] = self._decode_table[i, j] = self.times.decode_s(self.batches[i], self.contexts[j])
            self._spans, self._span_rows = None, {}
        return value

    def _prefill_at(self, k: int) -> float:
        value = self._prefill[k]
        if value is None:
            value = self._prefill[k] = self._prefill_table[k] = self.times.prefill_s(self.prefill_tokens[k], self.isl)
        return value

    def fill(self) -> "StepFunction":
        """Simulate every grid point now (an eager build)."""
        for i in range(len(self.batches)):
            for j in range(len(self.contexts)):
                self._decode_at(i, j)
        for k in range(len(self.prefill_tokens)):
            self._prefill_at(k)
        return self

    @property
    def decode_s(self) -> np.ndarray:
        """[len(batches), len(contexts)] seconds, NaN where not simulated (yet)."""
        return np.array([[math.nan if v is None else v for v in row] for row in self._decode], dtype=float)

    @property
    def prefill_s(self) -> np.ndarray:
        return np.array([math.nan if v is None else v for v in self._prefill], dtype=float)

    def decode(self, batch: float, context: float) -> float:
        """T_dec: a decode step of `batch` sequences per rank at mean context `context`."""
        # `_interp` over batches of `_interp` over contexts, written out: the run's hot path. Only
        # the (up to) two bracketing batch rows are evaluated, each at its (up to) two bracketing
        # contexts, with the same arithmetic as interpolating every row, so the same floats.
        xs, bs = self.contexts, self.batches
        j, i = _bracket(xs, context), _bracket(bs, batch)
        at = self._decode_at
        if j == 0 or xs[j - 1] == context:
            jj = max(j - 1, 0)

            def row(r: int) -> float:
                return float(at(r, jj))
        else:
            x0, x1 = xs[j - 1], xs[j]

            def row(r: int) -> float:
                y0, y1 = at(r, j - 1), at(r, j)
                return float(y0 + (y1 - y0) * (context - x0) / (x1 - x0))
        if i == 0 or bs[i - 1] == batch:
            return row(max(i - 1, 0))
        b0, b1 = bs[i - 1], bs[i]
        y0, y1 = row(i - 1), row(i)
        return float(y0 + (y1 - y0) * (batch - b0) / (b1 - b0))

    def prefill(self, tokens: float) -> float:
        """T_pre: a prefill step of `tokens` prompt tokens per rank."""
        return _interp(self.prefill_tokens, self._prefill_at, tokens)

    def step(self, decode_batch: int, decode_context: float, prefill_tokens: int) -> float:
        """Seconds of one step with `decode_batch` decode sequences (mean context
        `decode_context`) and `prefill_tokens` prefill tokens on the busiest rank."""
        if prefill_tokens <= 0:
            return self.decode(decode_batch, decode_context) if decode_batch > 0 else 0.0
        if decode_batch <= 0:
            return self.prefill(prefill_tokens)
        attention = self.decode(decode_batch, decode_context) - self.decode(decode_batch, MIN_CONTEXT)
        return self.prefill(prefill_tokens + decode_batch) + attention

    # ------------------------------------------------------------------ many ranks at once
    @staticmethod
    def _pairs(xs: tuple[int, ...], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per x, the grid indices (lo, hi) `_interp` reads: the bracketing pair, or the point
        itself twice where x is on it (where `_interp` reads only that one: so no neighbour is
        simulated that the scalar path would not simulate). Refuses x outside the grid."""
        if x.size and (x.min() < xs[0] or x.max() > xs[-1]):
            bad = x[(x < xs[0]) | (x > xs[-1])][0]
            raise ValueError(f"{bad} outside the step-function grid [{xs[0]}, {xs[-1]}]")
        if len(xs) == 1:
            zero = np.zeros(len(x), dtype=np.int64)
            return zero, zero
        grid = _grid(xs)
        hi = np.minimum(np.searchsorted(grid, x, side="right"), len(xs) - 1)
        lo = hi - 1
        return lo, np.where(grid[lo] == x, lo, hi)

    @staticmethod
    def _weights(xs: tuple[int, ...], lo: np.ndarray, hi: np.ndarray, x: np.ndarray):
        """(x - x0, x1 - x0) of `_interp`'s arithmetic with the bracketing grid values (x - x0 is 0
        where x is on a grid point); None on a one-point grid. Computed once per axis and shared
        by every `_lerp` along it: the same values as computing them in each."""
        if len(xs) == 1:
            return None
        grid = _grid(xs)
        x0 = grid[lo]
        return x - x0, grid[np.maximum(hi, lo + 1)] - x0

    @staticmethod
    def _lerp(y0, y1, weights):
        """`_interp`'s arithmetic element by element: y0 + (y1 - y0) * (x - x0) / (x1 - x0), or y0
        where x is on a grid point (y1 is then y0 and x - x0 is 0, so y0 + 0 = y0): the floats
        the scalar path gives."""
        if weights is None:
            return y0
        dx, dw = weights
        return y0 + (y1 - y0) * dx / dw

    def _corners(self, blo, bhi, clo, chi, used_only: bool) -> list:
        """The four grid values around each (batch, context) pair, simulating the missing points first
        unless `used_only` (then NaN where a point was never used)."""
        table = self._decode_table
        corners = [table[blo, clo], table[blo, chi], table[bhi, clo], table[bhi, chi]]
        if not used_only and any(np.isnan(y).any() for y in corners):
            rows, cols = np.concatenate([blo, blo, bhi, bhi]), np.concatenate([clo, chi, clo, chi])
            for r, c in set(zip(rows.tolist(), cols.tolist())):
                if self._decode[r][c] is None:
                    self._decode_at(r, c)
            corners = [table[blo, clo], table[blo, chi], table[bhi, clo], table[bhi, chi]]
        return corners

    def decode_many(self, batch: np.ndarray, context: np.ndarray, *, used_only: bool = False) -> np.ndarray:
        """`decode` of every (batch, context) pair; grid points not simulated yet are simulated
        first, only those the scalar path would read. `used_only`: read only the points this
        function has used already, NaN where a pair needs another (nothing is simulated or marked
        used: a caller may look ahead without changing what `to_json` shows)."""
        blo, bhi = self._pairs(self.batches, batch)
        clo, chi = self._pairs(self.contexts, context)
        corners = self._corners(blo, bhi, clo, chi, used_only)
        along = self._weights(self.contexts, clo, chi, context)
        low, high = self._lerp(corners[0], corners[1], along), self._lerp(corners[2], corners[3], along)
        return self._lerp(low, high, self._weights(self.batches, blo, bhi, batch))

    def decode_columns(self, batch: np.ndarray, context: np.ndarray, *, used_only: bool = False) -> np.ndarray:
        """`decode_many` of a [steps, columns] matrix of contexts, column j at batch `batch[j]`, its
        contexts growing down the column (the ranks of a lockstep decode run over its coming steps,
        `serve.scheduler.Lockstep`). When every column stays inside one interval of the context
        grid, off its left end, each column reads the same four grid points all the way down: they
        are read once per column, with the same arithmetic (the same floats) and no gather per
        element. Otherwise (a column reaches a grid point) `decode_many` element by element."""
        grid = _grid(self.contexts)
        first, last = context[0], context[-1]
        chi = np.searchsorted(grid, first, side="right")
        clo = chi - 1
        top = len(grid) - 1
        if not (0 <= clo.min() and chi.max() <= top and (grid[clo] != first).all()
                and ((last < grid[chi]) | ((chi == top) & (last <= grid[-1]))).all()):
            flat = self.decode_many(np.broadcast_to(batch, context.shape).ravel(), context.ravel(), used_only=used_only)
            return flat.reshape(context.shape)
        blo, bhi, across = self._batch_pairs(batch)
        corners = self._corners(blo, bhi, clo, chi, used_only)
        x0 = grid[clo]
        along = (context - x0, grid[chi] - x0)   # `_weights` of every element of a column
        low, high = self._lerp(corners[0], corners[1], along), self._lerp(corners[2], corners[3], along)
        return self._lerp(low, high, across)

    # Columns of `_span_table`: the context interval's left end and the bound the last context must
    # stay below, the grid values and differences `_lerp` uses along contexts, the interval's width,
    # and the batch weights (x - x0, x1 - x0) across the two bracketing batch rows.
    SPAN_FIELDS = ("x0", "below", "low0", "low_rise", "high0", "high_rise", "width", "batch_dx", "batch_dw")
    SPAN_MAX_BATCH = 1 << 16   # larger decode grids are not tabulated (the table has a row per batch)

    def _span_table(self) -> Optional[np.ndarray]:
        """Per (CUDA-graph batch b, context interval k, as `np.searchsorted(contexts, c, "right")`
        numbers it) the numbers `decode_columns` computes for a column at batch b whose contexts stay
        inside interval k, from the grid points used so far (NaN where one is not): one gather per
        call instead of the bracketing and reads of every call. Rows of batches or intervals outside
        the grid have a NaN left end, so no context passes them. None for a one-batch grid or one
        too large to tabulate. Made when first asked, and again after a decode point is used."""
        if self._spans is None and 1 < len(self.batches) and self.batches[-1] <= self.SPAN_MAX_BATCH:
            self._spans = self._make_span_table()
        return self._spans

    def _make_span_table(self) -> np.ndarray:
        grid, n = _grid(self.contexts), len(self.contexts)
        values = np.arange(1, self.batches[-1] + 1)
        blo, bhi = self._pairs(self.batches, values)
        batch_dx, batch_dw = self._weights(self.batches, blo, bhi, values)
        out = np.full((len(values) + 1, n + 1, len(self.SPAN_FIELDS)), math.nan)
        table = self._decode_table
        for chi in range(1, n):
            clo = chi - 1
            x0, x1 = float(grid[clo]), float(grid[chi])
            low0, high0 = table[blo, clo], table[bhi, clo]
            span = out[1:, chi]
            span[:, 0] = x0
            span[:, 1] = x1 if chi < n - 1 else np.nextafter(x1, math.inf)   # the last interval holds its right end
            span[:, 2], span[:, 3] = low0, table[blo, chi] - low0
            span[:, 4], span[:, 5] = high0, table[bhi, chi] - high0
            span[:, 6] = grid[chi] - grid[clo]
            span[:, 7], span[:, 8] = batch_dx, batch_dw
        return out

    def decode_rows_used(self, batch: np.ndarray, context: np.ndarray) -> Optional[np.ndarray]:
        """`decode_columns(batch, context.T, used_only=True).T`, the same floats, for a [columns,
        steps] matrix of contexts (each row one column of `decode_columns`, contexts growing along
        it): when every row stays inside one context interval (`decode_columns`' fast path), its
        numbers come from `_span_table` in one gather and the interpolation is the same arithmetic,
        element by element (the rises y1 - y0 are the same differences of the same grid values;
        integer grid values and weights are exact as floats; where every batch is on a grid point
        the value is the lower row's, which is what adding (y1 - y0) x 0 gives). None otherwise
        (then ask `decode_columns`). Rows, not columns: a reduction over the columns of each step
        is then one pass over contiguous rows."""
        table = self._span_table()
        if table is None:
            return None
        first, last = context[:, 0], context[:, -1]
        try:
            spans = table[batch, np.searchsorted(_grid(self.contexts), first, side="right")].T
        except IndexError:   # a batch beyond the grid: `decode_columns` says so
            return None
        if not ((first > spans[0]) & (last < spans[1])).all() and not self._starts_on_grid_used(spans, first, last):
            return None   # a row leaves its interval, or starts on a grid point next to one not used yet
        x0, _, low0, low_rise, high0, high_rise, width, batch_dx, batch_dw = spans[:, :, None]
        dx = context - x0
        low = low0 + low_rise * dx / width
        if not batch_dx.any():
            return low
        high = high0 + high_rise * dx / width
        return low + (high - low) * batch_dx / batch_dw

    @staticmethod
    def _starts_on_grid_used(spans: np.ndarray, first: np.ndarray, last: np.ndarray) -> bool:
        """Every row inside its interval, some starting on its left grid point, and every grid point
        of the intervals used: `decode_columns` reads a context on a grid point as that point's
        value (`decode_many`), which the interpolation gives too (y0 + rise x 0 / width = y0), so
        the same floats; only with a point not used yet do the two differ (NaN or not)."""
        return bool(((first >= spans[0]) & (last < spans[1])).all() and not np.isnan(spans[2:6]).any())

    def decode_rows_slowest_used(self, batch: list, totals: list, counts: list, ticks: range) -> Optional[list]:
        """Per tick, the largest over the rows of `decode_rows_used(batch, contexts)`, where row r's
        contexts are (totals[r] + counts[r] x tick) / counts[r]: the same arithmetic in plain
        Python (the same doubles: an integer quotient is rounded once either way, and a maximum
        does not depend on order), for the few rows and ticks where numpy's cost per call is
        larger than the work. Every tick NaN when a row's grid points are not all used yet (as
        numpy's maximum over such a row gives); None where `decode_rows_used` is."""
        table = self._span_table()
        if table is None:
            return None
        grid, rows_of = self.contexts, self._span_rows
        spans = []
        for b, total, count in zip(batch, totals, counts):
            first, last = (total + count * ticks[0]) / count, (total + count * ticks[-1]) / count
            key = (b, bisect.bisect_right(grid, first))   # `np.searchsorted(..., side="right")`
            span = rows_of.get(key)
            if span is None:
                if b >= len(table):
                    return None
                span = rows_of[key] = table[key].tolist()
            if not (first > span[0] and last < span[1]) and not (  # as `_starts_on_grid_used`
                    first == span[0] and last < span[1] and not _span_unused(span)):
                return None
            spans.append(span)
        if any(map(_span_unused, spans)):
            return [math.nan] * len(ticks)
        rows = [_span_lerp(total, count, ticks, span) for total, count, span in zip(totals, counts, spans)]
        return rows[0] if len(rows) == 1 else list(map(max, *rows))

    def _batch_pairs(self, batch: np.ndarray) -> tuple:
        """(`_pairs`, `_weights`) of decode batches, kept for the batches asked again (a lockstep
        run's batches change only when a request joins or finishes)."""
        key = batch.tobytes()
        found = self._batch_cache.get(key)
        if found is None:
            if len(self._batch_cache) > 256:
                self._batch_cache.clear()
            lo, hi = self._pairs(self.batches, batch)
            found = self._batch_cache[key] = (lo, hi, self._weights(self.batches, lo, hi, batch))
        return found

    def prefill_many(self, tokens: np.ndarray) -> np.ndarray:
        lo, hi = self._pairs(self.prefill_tokens, tokens)
        values = self._prefill_table
        if np.isnan(values[lo]).any() or np.isnan(values[hi]).any():
            for k in set(np.concatenate([lo, hi]).tolist()):
                self._prefill_at(k)
        return self._lerp(values[lo], values[hi], self._weights(self.prefill_tokens, lo, hi, tokens))

    def step_many(self, decode_batch: np.ndarray, decode_context: np.ndarray, prefill_tokens: np.ndarray) -> np.ndarray:
        """`step` of every rank's (batch, mean context, prefill tokens) at once: one numpy pass
        instead of a Python call per rank (a step of an EP-64 instance has 64 ranks). The same
        floats as `step` element by element (tests/test_serve_step_function.py)."""
        out = np.zeros(len(decode_batch), dtype=float)
        dec, pre = decode_batch > 0, prefill_tokens > 0
        only_decode, only_prefill, mixed = dec & ~pre, pre & ~dec, dec & pre
        if only_decode.any():
            out[only_decode] = self.decode_many(decode_batch[only_decode], decode_context[only_decode])
        if only_prefill.any():
            out[only_prefill] = self.prefill_many(prefill_tokens[only_prefill])
        if mixed.any():
            b, c = decode_batch[mixed], decode_context[mixed]
            attention = self.decode_many(b, c) - self.decode_many(b, np.full(len(b), float(MIN_CONTEXT)))
            out[mixed] = self.prefill_many(prefill_tokens[mixed] + b) + attention
        return out

    def request_s(self, isl: int, osl: int, batch: int) -> float:
        """Rough seconds of one request among `batch` per rank: its prompt as prefill steps of at
        most the grid's largest step, then OSL - 1 decode steps of `batch` at its mean context. A
        time scale (e.g. for `load.closed_loop_starts`), not a prediction: the run simulates the
        real mix of steps."""
        return self.prompt_s(isl) + self.decoding_s(isl, osl, batch)

    def prompt_s(self, isl: int) -> float:
        """`request_s`'s prompt: prefill steps of at most the grid's largest step."""
        top = self.prefill_tokens[-1]
        full, rest = divmod(int(isl), top)
        return full * self.prefill(top) + (self.prefill(rest) if rest else 0.0)

    def decoding_s(self, isl: int, osl: int, batch: int) -> float:
        """`request_s`'s decode: OSL - 1 steps of `batch` (within the grid) at the mean context."""
        batch = min(max(int(batch), 1), self.batches[-1])
        context = min(max(isl + osl / 2, self.contexts[0]), self.contexts[-1])
        return max(int(osl) - 1, 0) * self.decode(batch, context)

    def to_json(self) -> dict:
        """The grid and the step times (ms) this function used, null where a point was not needed:
        a reader sees what was simulated. It depends only on this function's inputs and the steps
        asked of it, not on what the shared `StepTimes` held before."""
        def ms(v):
            return None if v is None else round(v * 1e3, 6)
        return {"decode_batches": list(self.batches), "decode_contexts": list(self.contexts),
                "prefill_tokens": list(self.prefill_tokens), "prefill_prompt_tokens": self.isl,
                "decode_step_ms": [[ms(v) for v in row] for row in self._decode],
                "prefill_step_ms": [ms(v) for v in self._prefill]}


_CACHE: dict = {}   # (scenario, digest, cache file) -> StepTimes, for this process


def forget() -> None:
    """Drop every step time and routed-expert part this process keeps: a benchmark's cold start."""
    _CACHE.clear()
    _ROUTED.clear()


def step_times(sc: Scenario, cache_dir: Optional[str | Path]) -> StepTimes:
    """The shared step times of the deployment; with `cache_dir`, backed by a file in it named by
    the hash of the resolved scenario, the kernel-parameter values in force and
    `core.digest.code_and_data_digest()`."""
    from moesim.sim.provenance import kernel_values_key
    key = hashlib.sha256(f"{sc.model_dump_json()}\n{kernel_values_key(sc)}\n{code_and_data_digest()}".encode()).hexdigest()
    path = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        if not folder.is_dir():
            from moesim.core.output import check_output_folder
            check_output_folder(folder, field="cache")  # one error line if its parent is missing or a file
            folder.mkdir(exist_ok=True)  # the folder the user named, as `moesim plan --cache` does
        path = folder / f"step-times-{key[:32]}.json"
    cache_key = (key, str(path))
    times = _CACHE.get(cache_key)
    if times is None:
        times = _CACHE[cache_key] = StepTimes(sc, key, path)
    return times


def build_step_function(sc: Scenario, *, isl: int, osl: int, max_batch: int, max_prefill_tokens: int,
                        grid: Optional[StepGrid] = None, max_context: Optional[int] = None,
                        cache_dir: Optional[str | Path] = None, lazy: bool = True) -> StepFunction:
    """The step function of a deployment for requests of `isl`/`osl` tokens, covering decode
    batches up to `max_batch`, decode contexts up to `max_context` (default ISL + OSL; give the
    longest request's ISL + OSL when lengths vary) and prefill steps up to `max_prefill_tokens`
    tokens per rank. Grid points are simulated as steps need them (`lazy`), or all now; with
    `cache_dir` (a folder the user named), simulated points are kept on disk and reused by later
    runs of the same deployment, code and data."""
    grid = grid or serve_settings().step_function
    contexts = context_grid(sc, isl, osl)
    if max_context is not None and max_context > contexts[-1]:
        contexts = tuple(sorted(set(context_grid(sc, isl, max_context - isl)) | set(contexts)))
    fn = StepFunction(geometric_grid(max_batch, grid.batch_ratio), contexts,
                      geometric_grid(max_prefill_tokens, grid.prefill_ratio), isl, step_times(sc, cache_dir))
    return fn if lazy else fn.fill()


__all__ = ["StepFunction", "StepTimes", "build_step_function", "serve_settings", "simulate_decode", "simulate_prefill",
           "step_time_s", "step_times"]
