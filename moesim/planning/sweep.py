"""Simulate the points of a plan once each: prune what cannot run, then run the rest, resumably.

`prune(points)` resolves each point with `load_scenario` and drops invalid splits and points whose
VRAM ledger does not fit, each with a one-line reason, before any simulation. `run(kept,
workers=, cache_dir=, dask=)` simulates the rest in this process, a local process pool or on a
Dask cluster, caching each finished point as JSON keyed by the sha256 of the resolved scenario
(`cache_key`) so a rerun resumes.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

from moesim import __version__
from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.core.output import write_atomic
from moesim.core.result import to_json
from moesim.costs.memory import memory_ledger
from moesim.planning.space import label
from moesim.sim.layer_ops import check_simulatable
from moesim.sim.simulate import simulate


# ----------------------------------------------------------------------------- pruning
def _reason(exc: MoesimError) -> str:
    head = f"{exc.field}: {exc.problem}" if exc.field else exc.problem
    return f"{head}; {exc.fix}" if exc.fix else head


def cache_key(point: dict, scenario_dump: dict) -> str:
    """sha256 of the fully resolved scenario, the simulate arguments and the moesim version."""
    blob = json.dumps({"scenario": scenario_dump, "overrides": point["overrides"], "simulate": point["simulate"],
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def prune(points: list[dict]) -> tuple[list[dict], int, list[dict]]:
    """Resolve every point and keep those that are valid and fit in VRAM, before any simulation.

    Returns (kept points, each with its cache `key`; number pruned; one {id, label, reason} per
    pruned point)."""
    kept, reasons = [], []
    for point in points:
        try:
            sc = load_scenario(None, point["overrides"])
            check_simulatable(sc)
        except MoesimError as exc:
            reasons.append({"id": point["id"], "label": label(point), "reason": _reason(exc)})
            continue
        ledger = memory_ledger(sc)
        if not ledger.fits:
            gib = 2.0 ** 30
            reasons.append({"id": point["id"], "label": label(point), "reason": (
                f"does not fit in VRAM: {ledger.per_gpu['total_bytes'] / gib:.1f} GiB per GPU needed, budget "
                f"{ledger.budget_bytes / gib:.1f} GiB ({ledger.memory_fraction:.0%} of "
                f"{ledger.per_gpu['capacity_bytes'] / gib:.1f} GiB)")})
            continue
        kept.append(dict(point, key=cache_key(point, sc.model_dump(mode="json"))))
    return kept, len(reasons), reasons


# ----------------------------------------------------------------------------- running
def simulate_point(point: dict) -> dict:
    """Simulate one point (top-level so worker processes can pickle it)."""
    sc = load_scenario(None, point["overrides"])
    out = simulate(sc, **point["simulate"])
    out.pop("_trace", None)
    return json.loads(to_json(out, indent=None))


def _record(point: dict, result: dict, cached: bool) -> dict:
    return {"id": point["id"], "label": label(point), "key": point.get("key"), "overrides": point["overrides"],
            "simulate": point["simulate"], "result": result, "cached": cached}


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
            try:
                done[point["id"]] = _record(point, json.loads(path.read_text())["result"], True)
                continue
            except (ValueError, KeyError):
                pass  # a corrupt cache entry is recomputed
        todo.append((point, path))

    def finish(point: dict, path: Optional[Path], result: dict) -> None:
        if path is not None:
            write_atomic(path, to_json({"key": point["key"], "overrides": point["overrides"],
                                        "simulate": point["simulate"], "version": __version__, "result": result}))
        done[point["id"]] = _record(point, result, False)

    with _progress(progress, len(todo)) as advance:
        if dask:
            _run_dask(dask, todo, finish, advance)
        elif workers == 1 or len(todo) <= 1:
            for point, path in todo:
                finish(point, path, simulate_point(point))
                advance()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(simulate_point, point): (point, path) for point, path in todo}
                for future in as_completed(futures):
                    point, path = futures[future]
                    finish(point, path, future.result())
                    advance()
    return [done[p["id"]] for p in points]


def _run_dask(address: str, todo: list, finish, advance) -> None:
    """Submit every point to a Dask scheduler; finished points are cached as they arrive."""
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise MoesimError("dask.distributed is not installed", field="--dask",
                          fix="pip install 'dask[distributed]' or run with --workers") from None
    try:
        client = Client(address, timeout=10)
    except (OSError, TimeoutError) as exc:
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


__all__ = ["prune", "run"]
