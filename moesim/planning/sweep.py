"""Simulate the points of a plan once each: prune what cannot run, then run the rest, resumably.

`prune(points)` resolves each point with `load_scenario` and drops invalid splits and points whose
VRAM ledger does not fit, each with a one-line reason, before any simulation. `run(kept,
workers=, cache_dir=, dask=)` simulates the rest in this process, a local process pool or on a
Dask cluster, caching each finished point as JSON keyed by the sha256 of the resolved scenario and
of the code and data that compute it (`cache_key`) so a rerun resumes, and a code or data change
recomputes. Pool workers die with the planner process (`core.pools.worker_init`); a SIGINT or SIGTERM of
the planner tears the pool down (`_run_pool`).

A point with `serve` (a space with a load, `planning.space`) is run by `serve.run.serve` instead
of one `simulate` step (`serve_point`); pruning also asks what a serve run needs (one engine
instance's shape, the framework's batching policy, a request that fits the KV cache). Points of
one `group` (one deployment in its modes and worker ratios) run in the same process one after the
other, so they share the deployment's step-time function (`serve.step_function._CACHE`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import signal
import tempfile
import threading
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any, Optional

from moesim import __version__
from moesim.cluster.scenario import load_scenario, with_redundant_experts
from moesim.core.digest import code_and_data_digest
from moesim.core.errors import MoesimError
from moesim.core.output import write_atomic
from moesim.core.pools import worker_pool
from moesim.core.result import to_json
from moesim.costs.feasibility import fit_problem
from moesim.costs.placement import parse_placement
from moesim.planning.space import label
from moesim.sim.layer_ops import check_simulatable
from moesim.sim.simulate import simulate

DASK_CONNECT_TIMEOUT_S = 5  # an unreachable scheduler is an error after this long, not a hang


# ----------------------------------------------------------------------------- pruning
def _reason(exc: MoesimError) -> str:
    head = f"{exc.field}: {exc.problem}" if exc.field else exc.problem
    return f"{head}; {exc.fix}" if exc.fix else head


def cache_key(point: dict, scenario_dump: dict, code: Optional[str] = None) -> str:
    """sha256 of the fully resolved scenario, the simulate arguments (with the bytes of a skew
    file they name) and the digest of the code and data that compute the point
    (`core.digest.code_and_data_digest`, or `code` when the caller has it): a cached point is
    served only to the code and data that computed it."""
    fields = {"scenario": scenario_dump, "overrides": point["overrides"], "simulate": point["simulate"],
              "skew_file": _skew_file_digest(point["simulate"].get("skew")),
              "version": __version__, "code": code or code_and_data_digest()}
    if point.get("serve") is not None:
        fields["serve"] = point["serve"]
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _skew_file_digest(skew: Any) -> Optional[str]:
    """sha256 of the file a `file:PATH` / `trace:PATH` skew reads (None for other skews)."""
    kind, _, arg = str(skew or "").partition(":")
    if kind not in ("file", "trace") or not arg:
        return None
    try:
        stat = Path(arg).stat()
    except OSError:
        return None
    return _file_digest(str(Path(arg).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prune(points: list[dict]) -> tuple[list[dict], int, list[dict]]:
    """Resolve every point and keep those that are valid and fit in VRAM, before any simulation.

    Returns (kept points, each with its cache `key`; number pruned; one {id, label, reason} per
    pruned point)."""
    kept, reasons = [], []
    code = code_and_data_digest()  # once per prune, not per point
    resolved: dict = {}   # group -> scenario: the modes of one deployment resolve it once
    facts: dict = {}   # scenario JSON -> (its fit problem, its dump): the points of a deployment share them
    for point in points:
        try:
            group = point.get("group")
            sc = resolved.get(group) if group is not None else None
            if sc is None:
                sc = load_scenario(None, point["overrides"])
                if group is not None:
                    resolved[group] = sc
            placement = point["simulate"].get("placement")
            if placement:  # `eplb:R` replica slots cost VRAM and must divide, as simulate will ask
                _, redundant = parse_placement(placement, sc.input.experts.redundant)
                sc = with_redundant_experts(sc, redundant, field="placement")
            check_simulatable(sc)
        except MoesimError as exc:
            reasons.append({"id": point["id"], "label": label(point), "reason": _reason(exc)})
            continue
        problem, dump = _scenario_facts(sc, facts)
        if not problem and point.get("serve") is not None:
            problem = serve_problem(sc, point["serve"])
        if problem:
            reasons.append({"id": point["id"], "label": label(point), "reason": problem})
            continue
        kept.append(dict(point, key=cache_key(point, dump, code)))
    return kept, len(reasons), reasons


def _scenario_facts(sc, facts: dict) -> tuple[Optional[str], dict]:
    """(`fit_problem(sc)`, the check simulate and whatif make; `sc.model_dump(mode="json")`, for
    the cache key), once per resolved scenario in `facts` (a dict the caller keeps)."""
    key = sc.model_dump_json()
    if key not in facts:
        facts[key] = (fit_problem(sc), sc.model_dump(mode="json"))
    return facts[key]


def _serve_args(served: dict):
    from moesim.serve.disagg import make_disagg
    from moesim.serve.load import make_load
    load = make_load(**served["load"], prefix="load.")
    return load, make_disagg(served["mode"], served["prefill_workers"], served["decode_workers"])


def serve_policy(sc, served: dict):
    """The batching policy a served point runs: the framework's, with the point's batch limit per
    attention-DP rank when the space searches one (`max_running_requests_per_rank`)."""
    import dataclasses

    from moesim.serve.scheduler import Policy
    policy = Policy.of(sc)
    limit = served.get("max_running")
    return dataclasses.replace(policy, max_running=int(limit)) if limit else policy


def serve_problem(sc, served: dict) -> Optional[str]:
    """Why a serve run of this deployment cannot start (the checks `serve.run.serve` makes before
    its event loop: engine-instance shape, batching policy, a request that fits the KV cache), or
    None."""
    import numpy as np

    from moesim.serve.load import request_lengths
    from moesim.serve.run import _reachable_batch, deployment_shape
    from moesim.serve.scheduler import kv_capacity_tokens
    try:
        load, disagg = _serve_args(served)
        deployment_shape(sc)
        policy = serve_policy(sc, served)
        isl_of, osl_of = request_lengths(load)
        longest = int(np.argmax(isl_of + osl_of))
        kv_capacity_tokens(sc, isl=load.isl, osl=load.osl, max_batch=_reachable_batch(policy, load),
                           prefill_tokens=policy.token_budget, where="one decode rank" if disagg else "one rank",
                           longest=(int(isl_of[longest]), int(osl_of[longest])))
    except MoesimError as exc:
        return _reason(exc)
    return None


# ----------------------------------------------------------------------------- running
# results of a served point keep what a plan reads; the step function's grid stays with `moesim serve`
_SERVE_DROP = ("step_function", "provenance")


def serve_point(point: dict, step_cache: Optional[str] = None) -> dict:
    """Serve the load on one point's deployment (`serve.run.serve`). The scenario and its step
    times are shared by the points of a group run in this process (`serve.step_function._CACHE`),
    and with `step_cache` (a folder) by the processes of a pool: a grid point one of them has
    simulated is read by the others (the same float, `serve.step_function.StepTimes`)."""
    from moesim.serve.run import serve
    load, disagg = _serve_args(point["serve"])
    sc = _scenario(point["overrides"])
    out = serve(sc, load, disagg=disagg, policy=serve_policy(sc, point["serve"]), cache_dir=step_cache)
    out = {k: v for k, v in out.items() if not k.startswith("_") and k not in _SERVE_DROP}
    return json.loads(to_json(out, indent=None))


_SCENARIOS: dict = {}   # overrides (JSON) -> resolved scenario, for the points of a group in this process


def _scenario(overrides: dict):
    key = json.dumps(overrides, sort_keys=True, default=str)
    sc = _SCENARIOS.get(key)
    if sc is None:
        if len(_SCENARIOS) > 64:
            _SCENARIOS.clear()
        sc = _SCENARIOS[key] = load_scenario(None, overrides)
    return sc


def simulate_point(point: dict, step_cache: Optional[str] = None) -> dict:
    """Simulate one point (top-level so worker processes can pickle it); `step_cache`: see
    `serve_point`."""
    if point.get("serve") is not None:
        return serve_point(point, step_cache)
    sc = load_scenario(None, point["overrides"])
    out = simulate(sc, **point["simulate"])
    out.pop("_trace", None)
    return json.loads(to_json(out, indent=None))


def simulate_group(points: list[dict], step_cache: Optional[str] = None) -> list[dict]:
    """Simulate the points of one group in order, in one process (top-level for worker pools)."""
    return [simulate_point(point, step_cache) for point in points]


def _record(point: dict, result: dict, cached: bool) -> dict:
    out = {"id": point["id"], "label": label(point), "key": point.get("key"), "overrides": point["overrides"],
           "simulate": point["simulate"], "result": result, "cached": cached}
    if point.get("serve") is not None:
        out["serve"] = point["serve"]
    return out


def run(points: list[dict], *, workers: int = 1, cache_dir: Optional[str | Path] = None,
        dask: Optional[str] = None, progress: bool = False) -> list[dict]:
    """Simulate every (kept) point; results in the points' order. With a cache folder, a point
    whose `<key>.json` exists is read, not simulated, and each new result is written atomically
    as soon as it finishes, so an interrupted sweep resumes where it stopped. Execution: in this
    process (workers=1), a local process pool (workers>1), or a Dask cluster (`dask` = scheduler
    address, e.g. tcp://host:8786). `progress` shows a rich progress bar with ETA."""
    if workers < 1:
        raise MoesimError(f"workers must be at least 1, got {workers}", field="workers", fix="use 1 or more")
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:
        cache.mkdir(exist_ok=True)  # the folder the user named; its parent was checked (core.output)
    done: dict[int, dict] = {}
    todo = []
    for point in points:
        path = cache / f"{point['key']}.json" if cache and point.get("key") else None
        if path is not None and path.is_file():
            cached = _cached_result(path, point["key"])
            if cached is not None:
                done[point["id"]] = _record(point, cached, True)
                continue  # a corrupt entry, or one of another shape or key, is recomputed and overwritten
        todo.append((point, path))

    def finish(point: dict, path: Optional[Path], result: dict) -> None:
        if path is not None:
            entry = {"key": point["key"], "overrides": point["overrides"], "simulate": point["simulate"],
                     "version": __version__, "code_and_data": code_and_data_digest(), "result": result}
            if point.get("serve") is not None:
                entry["serve"] = point["serve"]
            write_atomic(path, to_json(entry))
        done[point["id"]] = _record(point, result, False)

    with _progress(progress, len(todo)) as advance:
        if dask is not None:
            _run_dask(dask, todo, finish, advance)
        elif workers == 1 or len(todo) <= 1:
            for point, path in todo:
                finish(point, path, simulate_point(point))
                advance()
        else:
            _run_pool(workers, todo, finish, advance)
    return [done[p["id"]] for p in points]


_RESULT_KEYS = ("model", "system", "gpus", "parallel", "phase", "metrics")
_LATENCY = {"decode": "tpot_ms", "prefill": "ttft_ms"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cached_result(path: Path, key: str) -> Optional[dict]:
    """The result a cache entry holds, or None when the entry cannot be used: unreadable, not
    JSON, JSON of another shape, another point's key, or a result without what a plan reads."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    result = entry.get("result")
    if isinstance(result, dict) and "load" in result:
        return result if _served_result_ok(result) else None
    if not isinstance(result, dict) or any(k not in result for k in _RESULT_KEYS):
        return None
    metrics, latency = result["metrics"], _LATENCY.get(result["phase"])
    if not isinstance(metrics, dict) or latency is None or not isinstance(result["parallel"], dict):
        return None
    if not all(_number(metrics.get(k)) for k in ("tokens_per_s_per_gpu", "step_time_s", latency)):
        return None
    return result


def _served_result_ok(result: dict) -> bool:
    """A served point's cached result holds what the plan reads."""
    metrics = result.get("metrics")
    if any(k not in result for k in ("model", "system", "gpus", "parallel", "mode")) or not isinstance(metrics, dict):
        return False
    if not all(isinstance(metrics.get(k), dict) and _number(metrics[k].get("p90")) for k in ("ttft_ms", "tpot_ms")):
        return False
    return all(_number(metrics.get(k)) for k in ("output_tokens_per_s_per_gpu", "output_tokens_per_s_per_user"))


# ----------------------------------------------------------------------------- local pool
class _Terminated(BaseException):
    """SIGTERM arrived while the pool ran (a BaseException, like KeyboardInterrupt: no `except
    Exception` on the way may swallow it)."""


@contextlib.contextmanager
def _sigterm_raises():
    """While the pool runs, SIGTERM raises in the main thread (so the pool is torn down and the
    `finally`s run) instead of killing this process at once; then this process exits 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        yield
        return

    def handler(signum, frame):
        raise _Terminated()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        raise SystemExit(128 + int(signal.SIGTERM)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_pool(workers: int, todo: list, finish, advance) -> None:
    """Simulate `todo` in a local process pool; finished points are cached as they arrive. Any
    exception here (a failed point, Ctrl-C, SIGTERM) stops the workers at once instead of waiting
    for the rest of the sweep. The workers share served deployments' step times through a folder
    that lives as long as the pool (`serve_point`)."""
    with _sigterm_raises(), tempfile.TemporaryDirectory(prefix="moesim-step-times-") as step_cache, \
            worker_pool(workers) as pool:
        futures = {pool.submit(simulate_group, [p for p, _ in items], step_cache): items
                   for items in _balanced(_groups(todo), workers)}
        for future in as_completed(futures):
            for (point, path), result in zip(futures[future], future.result()):
                finish(point, path, result)
                advance()


def _groups(todo: list) -> list[list]:
    """`todo` split into the units a worker runs: the points of one `group` together (in their
    order), every other point alone."""
    out: list[list] = []
    index: dict = {}
    for item in todo:
        group = item[0].get("group")
        if group is None:
            out.append([item])
        elif group in index:
            out[index[group]].append(item)
        else:
            index[group] = len(out)
            out.append([item])
    return out


# Pieces per group and worker (`_balanced`): small enough that the pool's last pieces end together.
PIECES_PER_WORKER = 2


def _balanced(groups: list[list], workers: int) -> list[list]:
    """Groups cut into at most PIECES_PER_WORKER x `workers` pieces each, largest first: a group
    (one deployment's points) run whole keeps the pool's last worker busy long after the others
    are done when a few deployments are slow (wide disaggregated pools); in pieces the pool stays
    full to the end. Of pieces of one size, every group's first comes before any group's second,
    so workers start on different deployments and a later piece finds its deployment's step times
    simulated by the worker that ran an earlier one (in its process, `serve.step_function._CACHE`,
    or in the pool's folder, `_run_pool`). Which worker runs a point does not change its result."""
    pieces = []
    for group in groups:
        size = -(-len(group) // max(PIECES_PER_WORKER * workers, 1))
        pieces += [(k, group[i:i + size]) for k, i in enumerate(range(0, len(group), size))]
    return [piece for _, piece in sorted(pieces, key=lambda kp: (-len(kp[1]), kp[0]))]


def check_dask_address(address: str) -> None:
    """A Dask scheduler address that can be dialled (`tcp://HOST:PORT`, also tls://, ws://, wss://
    or HOST:PORT), checked before any work; MoesimError naming --dask otherwise."""
    try:
        from distributed.comm.addressing import parse_address
        from distributed.comm.registry import get_backend
    except ImportError:
        raise MoesimError("dask.distributed is not installed", field="--dask",
                          fix="pip install 'dask[distributed]' or run with --workers") from None
    fix = "give the scheduler's address as tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786"

    def bad(why: str) -> MoesimError:
        return MoesimError(f"{address!r} is not a Dask scheduler address: {why}", field="--dask", fix=fix)
    try:
        scheme, location = parse_address(address.strip(), strict=False)
    except (ValueError, TypeError):
        raise bad("cannot read it") from None
    try:
        backend = get_backend(scheme)
    except (ValueError, ImportError):
        raise bad(f"unknown scheme {scheme!r} (use tcp://, tls://, ws:// or wss://)") from None
    try:
        host, port = backend.get_address_host_port(location)
    except NotImplementedError:  # inproc:// and the like have no host and port
        return
    except (ValueError, TypeError):
        port_text = location.rpartition(":")[2] if ":" in location else ""
        raise bad(f"the port {port_text!r} is not a number" if port_text else "no port after the host") from None
    if not host:
        raise bad("no host before the port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise bad(f"port {port} is not in 1..65535")


def _run_dask(address: str, todo: list, finish, advance) -> None:
    """Submit every point to a Dask scheduler; finished points are cached as they arrive."""
    check_dask_address(address)
    from distributed import Client
    from distributed import as_completed as dask_completed
    try:
        client = Client(address.strip(), timeout=DASK_CONNECT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 -- whatever stops the connect (refused, timeout, no such backend)
        raise MoesimError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__})", field="--dask",
                          fix="start one (dask scheduler) or check the address, e.g. tcp://127.0.0.1:8786") from None
    try:
        futures = {client.submit(simulate_point, point, pure=False): (point, path) for point, path in todo}
        for future in dask_completed(list(futures)):
            point, path = futures[future]
            finish(point, path, future.result())
            advance()
    finally:
        client.close()


class _progress:
    """A rich progress bar with ETA on a terminal; nothing otherwise (context manager)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled and total > 0, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        self.bar = Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeRemainingColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task("plan", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


__all__ = ["prune", "run", "cache_key", "check_dask_address", "serve_point", "serve_problem", "simulate_group"]
