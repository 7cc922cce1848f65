"""The load a deployment serves: which requests arrive when, and how long they are.

Two ways benchmarks drive a server, both here:
- closed loop (`concurrency` C): C clients, each sends its next request the moment the previous
  one finishes (no think time) - how vLLM/SGLang `bench_serving --max-concurrency` and every
  benchmark in shared/validation/serving_load.yaml were run;
- open loop (`rate` R): requests arrive as a Poisson process of R requests/s, whatever the server
  does - the arrival times are drawn up front from the seed tree (`core.rng`), so the same seed
  gives the same arrivals.

and a trace (`arrivals` FILE, `read_arrivals`): each row an arrival time and the request's input and
output lengths, replayed as given.

Input and output lengths are fixed or drawn per request from a distribution (`parse_lengths`:
`N`, `fixed:N`, `uniform:LO:HI`, `lognormal:MEAN:SIGMA[:MAX]`), each from its own seeded stream, so
the same seed gives the same lengths and changing one never shifts the other. `Load.isl`/`osl`
are the nominal (mean) lengths; `request_lengths(load)` gives every request's.

Closed loop start (`closed_loop_starts`): vLLM's `bench serve` with `--max-concurrency C` and its
default `--request-rate inf` gives every request a send delay of 0 and gates them on a semaphore
of C (`vllm/benchmarks/serve.py`, `get_request`: `delay_ts.append(0)` when the rate is inf), so its
C clients all send their first request at t = 0 ("burst"); SGLang's `bench_serving` does the same.
On a real server that lockstep does not last (lengths, scheduling and timing jitter spread the
clients out), but in a deterministic simulation with fixed lengths it would last forever, every
request seeing the same batch history (p50 = p99). So the default, "staggered", sends client c's
first request at a uniform random offset in [0, one mean request time): the clients' phases
spread over one request cycle as in the desynchronised steady state a long benchmark reaches.
"burst" keeps the benchmark clients' literal t = 0 start.

The first `warmup` requests run like any other but are left out of every statistic, as benchmark
clients leave out theirs.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from moesim.core.errors import MoesimError
from moesim.core.rng import stream

LENGTHS_FIX = "give N, fixed:N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX] (tokens; SIGMA of log-length)"


@dataclass(frozen=True)
class Lengths:
    """Token lengths of requests: `fixed` (a = N), `uniform` (integers a..b, both included, like
    vLLM's random dataset with `--random-range-ratio`), or `lognormal` (mean a tokens, sigma b of the
    log-length, so mu = ln(a) - b^2 / 2; rounded to whole tokens, at least 1, at most `cap`)."""

    kind: str
    a: float
    b: float = 0.0
    cap: Optional[int] = None

    @property
    def mean(self) -> float:
        """The distribution's mean (before rounding and capping)."""
        return (self.a + self.b) / 2 if self.kind == "uniform" else float(self.a)

    @property
    def nominal(self) -> int:
        """The whole-token length that stands for the distribution where one number is needed."""
        return max(int(round(self.mean)), 1)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` lengths (int64) from `rng`."""
        if self.kind == "fixed":
            return np.full(n, int(self.a), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(self.a), int(self.b) + 1, size=n, dtype=np.int64)
        mu = math.log(self.a) - self.b ** 2 / 2
        out = np.maximum(np.rint(rng.lognormal(mu, self.b, size=n)), 1).astype(np.int64)
        return np.minimum(out, self.cap) if self.cap is not None else out

    def to_json(self):
        if self.kind == "fixed":
            return int(self.a)
        out = {"distribution": self.kind}
        out.update({"low": int(self.a), "high": int(self.b)} if self.kind == "uniform" else
                   {"mean": self.a, "sigma": self.b, "max": self.cap})
        return out


def fixed_lengths(n: int) -> Lengths:
    return Lengths("fixed", int(n))


def parse_lengths(text: Union[str, int], field: str) -> Lengths:
    """Lengths from `N`, `fixed:N`, `uniform:LO:HI` or `lognormal:MEAN:SIGMA[:MAX]`; anything else
    is one MoesimError line naming `field` (e.g. `--isl`)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        text = str(int(text))
    if not isinstance(text, str):
        raise MoesimError(f"cannot read {text!r} as lengths", field=field, fix=LENGTHS_FIX)
    parts = [p.strip() for p in text.strip().split(":")]
    kind = "fixed" if len(parts) == 1 else parts[0].lower()
    args = parts if len(parts) == 1 else parts[1:]

    def whole(v: str, what: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise MoesimError(f"{what} must be a whole number of tokens > 0, got {v!r} in {text!r}", field=field,
                              fix=LENGTHS_FIX) from None
        if n < 1:
            raise MoesimError(f"{what} must be a whole number of tokens > 0, got {n} in {text!r}", field=field,
                              fix=LENGTHS_FIX)
        return n

    def real(v: str, what: str, *, zero_ok: bool) -> float:
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
            raise MoesimError(f"{what} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {v!r} in {text!r}",
                              field=field, fix=LENGTHS_FIX)
        return x

    arity = {"fixed": (1,), "uniform": (2,), "lognormal": (2, 3)}
    if kind not in arity:
        raise MoesimError(f"unknown length distribution {parts[0]!r} in {text!r}", field=field, fix=LENGTHS_FIX)
    if len(args) not in arity[kind]:
        raise MoesimError(f"{kind} takes {' or '.join(map(str, arity[kind]))} number(s) after it, got {text!r}",
                          field=field, fix=LENGTHS_FIX)
    if kind == "fixed":
        return Lengths("fixed", whole(args[0], "the length"))
    if kind == "uniform":
        lo, hi = whole(args[0], "LO"), whole(args[1], "HI")
        if lo > hi:
            raise MoesimError(f"LO {lo} is above HI {hi} in {text!r}", field=field,
                              fix="give uniform:LO:HI with LO <= HI")
        return Lengths("uniform", lo, hi) if lo < hi else Lengths("fixed", lo)
    mean = real(args[0], "MEAN", zero_ok=False)
    if mean < 1:
        raise MoesimError(f"MEAN must be at least 1 token, got {args[0]!r} in {text!r}", field=field, fix=LENGTHS_FIX)
    sigma = real(args[1], "SIGMA", zero_ok=True)
    cap = whole(args[2], "MAX") if len(args) == 3 else None
    if sigma == 0:
        return Lengths("fixed", min(max(int(round(mean)), 1), cap or math.inf))
    return Lengths("lognormal", mean, sigma, cap)


@dataclass(frozen=True)
class Arrivals:
    """A trace of requests: arrival times (s, non-decreasing) and input/output lengths, one per
    request in the order they are sent; `source` names the file."""

    times: tuple
    isl: tuple
    osl: tuple
    source: str

    def __len__(self) -> int:
        return len(self.times)


TIME_COLUMNS = ("arrival_s", "arrival", "time_s", "time", "timestamp")
ISL_COLUMNS = ("input_tokens", "input_len", "input_length", "isl", "prompt_tokens", "prompt_len")
OSL_COLUMNS = ("output_tokens", "output_len", "output_length", "osl")
ARRIVALS_FIX = ("give one row per request with arrival_s (seconds), input_tokens and output_tokens: a CSV with "
                "that header, or JSONL objects with those keys")


def read_arrivals(path: Union[str, Path], *, field: str = "arrivals") -> Arrivals:
    """Read a trace file: `.csv` (a header row naming the columns) or `.jsonl` (one object a line).

    Columns (first of each list found): time - arrival_s, arrival, time_s, time, timestamp (seconds,
    finite, >= 0); input - input_tokens, input_len, input_length, isl, prompt_tokens, prompt_len;
    output - output_tokens, output_len, output_length, osl (whole numbers > 0). Rows are sorted by
    time (stably, so equal times keep file order) and shifted so the first arrival is at 0 (a trace
    of Unix timestamps replays from its start). A bad row is
    one MoesimError line naming the file, the row (1-based data row; a CSV's header is row 0) and
    the column."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise MoesimError(f"cannot read the arrivals file ({exc.strerror})", field=field, file=name,
                          fix="give an existing CSV or JSONL file") from None
    suffix = p.suffix.lower()
    rows: list[tuple[int, dict]] = []
    if suffix == ".csv":
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if not header:
            raise MoesimError("the file is empty", field=field, file=name, fix=ARRIVALS_FIX)
        header = [h.strip().lower() for h in header]
        for n, values in enumerate(reader, start=1):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise MoesimError(f"{len(values)} values for {len(header)} columns", field=f"row {n}", file=name,
                                  fix=ARRIVALS_FIX)
            rows.append((n, dict(zip(header, (v.strip() for v in values)))))
    elif suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise MoesimError("not a JSON object", field=f"row {n}", file=name, fix=ARRIVALS_FIX) from None
            if not isinstance(obj, dict):
                raise MoesimError("not a JSON object", field=f"row {n}", file=name, fix=ARRIVALS_FIX)
            rows.append((n, {str(k).lower(): v for k, v in obj.items()}))
    else:
        raise MoesimError(f"unknown arrivals file type {p.suffix or '(none)'!r}", field=field, file=name,
                          fix="give a .csv or .jsonl file")
    if not rows:
        raise MoesimError("the file has no requests", field=field, file=name, fix=ARRIVALS_FIX)

    def column(n: int, row: dict, names: tuple) -> tuple[str, object]:
        for c in names:
            if c in row:
                return c, row[c]
        raise MoesimError(f"no {names[0]} column (or {', '.join(names[1:])})", field=f"row {n}", file=name,
                          fix=ARRIVALS_FIX)

    times, isl, osl = [], [], []
    for n, row in rows:
        c, v = column(n, row, TIME_COLUMNS)
        try:
            t = float(v) if not isinstance(v, bool) and v is not None else math.nan
        except (TypeError, ValueError):
            t = math.nan
        if not math.isfinite(t) or t < 0:
            raise MoesimError(f"must be a finite number of seconds >= 0, got {v!r}", field=f"row {n}, {c}", file=name,
                              fix=ARRIVALS_FIX)
        times.append(t)
        for names, out in ((ISL_COLUMNS, isl), (OSL_COLUMNS, osl)):
            c, v = column(n, row, names)
            length = _whole_tokens(v)
            if length is None:
                raise MoesimError(f"must be a whole number of tokens > 0, got {v!r}", field=f"row {n}, {c}", file=name,
                                  fix=ARRIVALS_FIX)
            out.append(length)
    order = sorted(range(len(times)), key=lambda i: times[i])
    start = times[order[0]]
    return Arrivals(times=tuple(times[i] - start for i in order), isl=tuple(isl[i] for i in order),
                    osl=tuple(osl[i] for i in order), source=name)


def _whole_tokens(v) -> Optional[int]:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        n = int(v)
    elif isinstance(v, float):
        n = int(v) if v.is_integer() else 0
    else:
        try:
            n = int(str(v).strip())
        except ValueError:
            return None
    return n if n >= 1 else None


CLOSED_LOOP_STARTS = ("staggered", "burst")


@dataclass(frozen=True)
class Load:
    """One run's load. Request i (0-based, in the order clients send them) is a warm-up request
    when i < warmup; `requests` more are measured. `isl`/`osl` are the nominal (mean) lengths;
    `input_lengths`/`output_lengths` their distributions (None: fixed at isl/osl); with
    `arrivals` (a trace), every request's time and lengths come from the trace."""

    isl: int
    osl: int
    requests: int
    warmup: int = 0
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    seed: int = 0
    input_lengths: Optional[Lengths] = None
    output_lengths: Optional[Lengths] = None
    arrivals: Optional[Arrivals] = None
    closed_loop_start: str = "staggered"

    @property
    def mode(self) -> str:
        if self.concurrency is not None:
            return "closed"
        return "trace" if self.arrivals is not None else "open"

    @property
    def total(self) -> int:
        return self.requests + self.warmup

    @property
    def all_fixed(self) -> bool:
        """Every request has exactly isl/osl tokens."""
        return self.arrivals is None and all(d is None or d.kind == "fixed"
                                             for d in (self.input_lengths, self.output_lengths))

    def to_json(self) -> dict:
        out = {"mode": self.mode, "isl": self.isl, "osl": self.osl, "requests": self.requests,
               "warmup": self.warmup, "seed": self.seed}
        if self.mode == "closed":
            out["concurrency"] = self.concurrency
            out["closed_loop_start"] = self.closed_loop_start
        elif self.mode == "open":
            out["rate_per_s"] = self.rate
        else:
            out["arrivals"] = Path(self.arrivals.source).name
        for key, d in (("input_lengths", self.input_lengths), ("output_lengths", self.output_lengths)):
            if d is not None and d.kind != "fixed":
                out[key] = d.to_json()
        return out


def _positive_int(value, name: str, prefix: str, *, zero_ok: bool = False) -> int:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise MoesimError(f"must be a whole number {'>= 0' if zero_ok else '> 0'}, got {value!r}",
                          field=f"{prefix}{name}", fix=f"give {prefix}{name} {'0 or more' if zero_ok else '1 or more'}")
    return int(value)


def _lengths(value, name: str, prefix: str) -> Lengths:
    if isinstance(value, Lengths):
        return value
    if isinstance(value, str):
        return parse_lengths(value, f"{prefix}{name}")
    return fixed_lengths(_positive_int(value, name, prefix))


def make_load(*, isl=None, osl=None, requests: Optional[int] = None, concurrency: Optional[int] = None,
              rate: Optional[float] = None, arrivals: Optional[Arrivals] = None, warmup: int = 0, seed: int = 0,
              closed_loop_start: str = "staggered", prefix: str = "") -> Load:
    """A checked Load. `prefix` is how the caller spells its options in errors (the CLI: `--`).

    `isl`/`osl`: a whole number, a `parse_lengths` text or a `Lengths` (not with `arrivals`, whose
    rows give them). Exactly one of `concurrency`, `rate`, `arrivals`. `requests` is required except
    with `arrivals`, where None means every row after the warm-up ones."""
    given = [n for n, v in (("concurrency", concurrency), ("rate", rate), ("arrivals", arrivals)) if v is not None]
    if len(given) != 1:
        raise MoesimError(f"{' and '.join(given)} were given together" if given else "no load was given",
                          field="/".join(f"{prefix}{n}" for n in ("concurrency", "rate", "arrivals")),
                          fix=f"give exactly one: {prefix}concurrency C (closed loop), {prefix}rate R (requests/s) "
                              f"or {prefix}arrivals FILE (a trace)")
    if concurrency is not None:
        concurrency = _positive_int(concurrency, "concurrency", prefix)
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise MoesimError(f"must be a positive, finite number of requests per second, got {rate!r}",
                              field=f"{prefix}rate", fix=f"give {prefix}rate above 0")
        rate = float(rate)
    if closed_loop_start not in CLOSED_LOOP_STARTS:
        raise MoesimError(f"unknown closed-loop start {closed_loop_start!r}", field=f"{prefix}closed-loop-start",
                          fix=f"give one of {', '.join(CLOSED_LOOP_STARTS)}")
    warmup = _positive_int(warmup, "warmup", prefix, zero_ok=True)
    seed = _positive_int(seed, "seed", prefix, zero_ok=True)
    if arrivals is not None:
        for name, v in (("isl", isl), ("osl", osl)):
            if v is not None:
                raise MoesimError("the arrivals file gives every request's lengths", field=f"{prefix}{name}",
                                  fix=f"leave out {prefix}isl and {prefix}osl with {prefix}arrivals")
        rows = len(arrivals)
        if requests is None:
            requests = rows - warmup
            if requests < 1:
                raise MoesimError(f"{rows} rows leave no request after {warmup} warm-up ones", field=f"{prefix}warmup",
                                  file=arrivals.source, fix="give fewer warm-up requests or a longer trace")
        requests = _positive_int(requests, "requests", prefix)
        if requests + warmup > rows:
            raise MoesimError(f"{requests} requests + {warmup} warm-up need {requests + warmup} rows; the trace has "
                              f"{rows}", field=f"{prefix}requests", file=arrivals.source,
                              fix=f"give at most {rows - warmup} requests, or leave {prefix}requests out")
        used = requests + warmup
        return Load(isl=max(int(round(float(np.mean(arrivals.isl[:used])))), 1),
                    osl=max(int(round(float(np.mean(arrivals.osl[:used])))), 1), requests=requests, warmup=warmup,
                    seed=seed, arrivals=arrivals, closed_loop_start=closed_loop_start)
    if isl is None or osl is None:
        missing = "isl" if isl is None else "osl"
        raise MoesimError("no length was given", field=f"{prefix}{missing}",
                          fix=f"give {prefix}{missing} N (or a distribution: {LENGTHS_FIX})")
    ins, outs = _lengths(isl, "isl", prefix), _lengths(osl, "osl", prefix)
    return Load(isl=ins.nominal, osl=outs.nominal, requests=_positive_int(requests, "requests", prefix),
                warmup=warmup, concurrency=concurrency, rate=rate, seed=seed,
                input_lengths=None if ins.kind == "fixed" else ins,
                output_lengths=None if outs.kind == "fixed" else outs, closed_loop_start=closed_loop_start)


def request_lengths(load: Load) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) tokens of every request (int64 arrays of `load.total`, in send order): the
    trace's, or drawn from the load's distributions - input lengths from the seed's
    `serve-lengths/input` stream, output lengths from `serve-lengths/output` - or fixed."""
    n = load.total
    if load.arrivals is not None:
        return (np.asarray(load.arrivals.isl[:n], dtype=np.int64), np.asarray(load.arrivals.osl[:n], dtype=np.int64))
    ins = load.input_lengths or fixed_lengths(load.isl)
    outs = load.output_lengths or fixed_lengths(load.osl)
    return (ins.draw(n, stream(load.seed, "serve-lengths", "input")),
            outs.draw(n, stream(load.seed, "serve-lengths", "output")))


def closed_loop_starts(load: Load, mean_request_s: float) -> np.ndarray:
    """Send times (s) of the closed-loop clients' first requests, sorted (request i is the i-th
    sent), one per client (`min(concurrency, total)`): "staggered" - uniform in [0, mean_request_s)
    from the seed's `serve-closed-loop-starts` stream; "burst" - all at 0, as bench_serving's
    clients start (module docstring). `mean_request_s` is the caller's estimate of one request's
    time at this load (e.g. `StepFunction.request_s`)."""
    if load.concurrency is None:
        raise ValueError("closed_loop_starts needs a closed-loop load")
    clients = min(load.concurrency, load.total)
    if load.closed_loop_start == "burst" or not mean_request_s > 0:
        return np.zeros(clients)
    if not math.isfinite(mean_request_s):
        raise ValueError(f"mean request time must be finite, got {mean_request_s}")
    offsets = stream(load.seed, "serve-closed-loop-starts").uniform(0.0, mean_request_s, size=clients)
    return np.sort(offsets)


def open_loop_arrivals(load: Load) -> np.ndarray:
    """Arrival times (s) of all requests of an open-loop load: a Poisson process, i.e.
    exponential gaps of mean 1/rate, the first request at its first gap; or a trace's times."""
    if load.arrivals is not None:
        return np.asarray(load.arrivals.times[:load.total], dtype=float)
    gaps = stream(load.seed, "serve-arrivals").exponential(1.0 / load.rate, size=load.total)
    return np.cumsum(gaps)


__all__ = ["Arrivals", "Lengths", "Load", "closed_loop_starts", "make_load", "open_loop_arrivals", "parse_lengths",
           "read_arrivals", "request_lengths"]
