"""Capacity planner: sweep a search space of deployments, prune what cannot run, simulate the
rest, and pick the best under SLOs.

Pipeline: `load_space(file)` -> `expand(space)` (one point per combination, deterministic
order) -> `prune(points)` (resolve each point with `load_scenario` and drop invalid splits and
points whose VRAM ledger does not fit, each with a one-line reason, before any simulation) ->
`run(kept, workers=, cache_dir=)` (simulate, in parallel processes if asked, caching each
finished point as JSON keyed by the sha256 of the resolved scenario so a rerun resumes) ->
`summarize(results, slo, objective, costs)` (metrics and cost per point, feasible set, binding
SLO when nothing is feasible, Pareto fronts, best point and why the runners-up lost).

A point is a plain dict: `{"id": int, "overrides": {dotted scenario path: value},
"simulate": {"overlap": ..., "skew": ...}}`; overrides are applied to the built-in default
scenario exactly as CLI flags are (`moesim.cluster.scenario.load_scenario`).
"""
from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from moesim import __version__
from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record
from moesim.costs.memory import memory_ledger
from moesim.specs.model import load_model
from moesim.specs.parallelism import ParallelInput, divisors, resolve_plan
from moesim.core.result import code_version, to_json, write_atomic
from moesim.cluster.scenario import load_scenario
from moesim.sim.simulate import OVERLAPS, check_simulatable, simulate

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
OBJECTIVES = ("max_tokens_per_s_per_gpu", "min_cost_per_million_tokens", "min_gpus")
TP_CHOICES = (1, 2, 4, 8)  # "all": powers of two up to one NVLink board


# ----------------------------------------------------------------------------- space records
class SystemChoice(Record):
    """A system with its own GPU counts (instead of crossing every system with `gpus`)."""

    name: str
    gpus: list[PositiveInt]


class SplitChoice(Record):
    """One explicit split; `ep: gpus` means expert parallelism over all GPUs of the stage."""

    tp: PositiveInt = 1
    ep: Union[PositiveInt, Literal["gpus"]] = 1
    pp: PositiveInt = 1
    dp: Optional[PositiveInt] = None


class SpaceDTypes(Record):
    weights: str = "bf16"
    kv_cache: str = "bf16"


class SLO(Record):
    tpot_ms_max: Optional[PositiveFloat] = None
    ttft_ms_max: Optional[PositiveFloat] = None
    min_tokens_per_s_per_gpu: Optional[PositiveFloat] = None


class Space(Record):
    name: str = "plan"
    description: Optional[str] = None
    models: list[str]
    systems: list[Union[str, SystemChoice]]
    gpus: list[PositiveInt] = Field(default_factory=list,
                                    description="GPU counts for systems given by name only")
    parallel: Union[Literal["all"], list[SplitChoice]] = "all"
    redundant_experts: list[Annotated[int, Field(ge=0)]] = [0]
    batch: list[PositiveInt] = Field(description="sequences per DP (attention) rank")
    input_len: PositiveInt
    output_len: PositiveInt
    phase: Literal["decode", "prefill"] = "decode"
    dtypes: SpaceDTypes = SpaceDTypes()
    overlap: list[Literal["none", "two_batch"]] = ["none"]
    skew: list[str] = ["uniform"]
    slo: SLO = SLO()
    objective: Literal["max_tokens_per_s_per_gpu", "min_cost_per_million_tokens", "min_gpus"] = \
        "max_tokens_per_s_per_gpu"
    costs: Optional[str] = Field(None, description="price file; default workloads/costs.yaml")


class SystemPrice(Record):
    price_per_gpu_hour: PositiveFloat
    source: str
    placeholder: bool = False


class CostTable(Record):
    currency: str = "USD"
    systems: dict[str, SystemPrice]


def load_space(path: str | Path) -> Space:
    return load_record(Space, Path(path))


def load_costs(path: Optional[str | Path] = None) -> CostTable:
    return load_record(CostTable, Path(path) if path else data_root() / "workloads" / "costs.yaml")


# ----------------------------------------------------------------------------- expansion
def all_splits(model: str, gpus: int, redundant: int) -> list[dict]:
    """Every valid single-stage split: tp a power of two <= 8 dividing the heads, pp = 1,
    dp = gpus / tp, ep dividing both the expert slots and the GPUs; then checked by resolve_plan."""
    spec = load_model(model)
    heads = spec.attention.num_attention_heads
    slots = spec.moe.num_experts + redundant
    out = []
    for tp in TP_CHOICES:
        if heads % tp or gpus % tp:
            continue
        for ep in divisors(gpus):
            if slots % ep:
                continue
            split = {"tp": tp, "ep": ep, "pp": 1, "dp": gpus // tp}
            try:
                resolve_plan(ParallelInput(**split), gpus, spec, redundant_experts=redundant)
            except MoesimError:
                continue
            out.append(split)
    return out


def _system_gpus(space: Space) -> list[tuple[str, list[int]]]:
    out = []
    for i, choice in enumerate(space.systems):
        if isinstance(choice, SystemChoice):
            if not choice.gpus:
                raise MoesimError("no GPU counts given", field=f"systems.{i}.gpus", fix="list at least one GPU count")
            out.append((choice.name, list(choice.gpus)))
        else:
            if not space.gpus:
                raise MoesimError(f"system {choice!r} has no GPU counts", field="gpus",
                                  fix="list GPU counts in gpus, or write the system as {name: ..., gpus: [...]}")
            out.append((choice, list(space.gpus)))
    return out


def expand(space: Space) -> list[dict]:
    """All points of the space, in a fixed order (model, system, gpus, redundant, split, batch,
    overlap, skew). Raises MoesimError naming the field when the space holds no point."""
    for field in ("models", "systems", "batch", "redundant_experts", "overlap", "skew"):
        if not getattr(space, field):
            raise MoesimError("the search space is empty", field=field, fix=f"list at least one value in {field}")
    if isinstance(space.parallel, list) and not space.parallel:
        raise MoesimError("the search space is empty", field="parallel", fix="list at least one split, or write 'all'")
    points: list[dict] = []
    for model in space.models:
        for system, counts in _system_gpus(space):
            for gpus in counts:
                for redundant in space.redundant_experts:
                    if space.parallel == "all":
                        splits = all_splits(model, gpus, redundant)
                    else:
                        splits = [dict(s.model_dump(exclude_none=True), ep=gpus // s.pp if s.ep == "gpus" else s.ep)
                                  for s in space.parallel]
                    for split in splits:
                        for batch in space.batch:
                            for overlap in space.overlap:
                                for skew in space.skew:
                                    overrides = {"model": model, "system": system, "gpus": gpus}
                                    overrides.update({f"parallel.{k}": v for k, v in split.items()})
                                    overrides.update({
                                        "experts.redundant": redundant,
                                        "dtypes.weights": space.dtypes.weights,
                                        "dtypes.kv_cache": space.dtypes.kv_cache,
                                        "workload": {"kind": "serving", "phase": space.phase, "batch": batch,
                                                     "input_len": space.input_len, "output_len": space.output_len}})
                                    points.append({"id": len(points), "overrides": overrides,
                                                   "simulate": {"overlap": overlap, "skew": skew}})
    if not points:
        field = "parallel" if space.parallel == "all" else "systems"
        raise MoesimError("the search space is empty: no valid split for any model and GPU count", field=field,
                          fix="add GPU counts that the models' experts and heads divide, or list splits explicitly")
    return points


def label(point: dict) -> str:
    o, s = point["overrides"], point["simulate"]
    w = o["workload"]
    dp = o.get("parallel.dp", o["gpus"] // (o.get("parallel.tp", 1) * o.get("parallel.pp", 1)))
    system = point.get("system_name", o["system"])
    text = (f"{o['model']} {system}x{o['gpus']} tp{o.get('parallel.tp', 1)} dp{dp} ep{o.get('parallel.ep', 1)}"
            f" pp{o.get('parallel.pp', 1)} r{o.get('experts.redundant', 0)} b{w['batch']}")
    if s["overlap"] != "none":
        text += f" {s['overlap']}"
    if s["skew"] != "uniform":
        text += f" {s['skew']}"
    return text


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
        from distributed import Client, as_completed as dask_completed
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


# ----------------------------------------------------------------------------- summary
def pareto_front(items: list[dict], axes: list[tuple[str, str]]) -> list[int]:
    """Indices of the items no other item dominates; axes are (key, "max" | "min"). Items with a
    missing (None) value on any axis are left out."""
    sign = {"max": -1.0, "min": 1.0}
    vals = [None if any(it.get(k) is None for k, _ in axes) else tuple(sign[d] * it[k] for k, d in axes)
            for it in items]

    def dominates(a, b) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [i for i, v in enumerate(vals) if v is not None
            and not any(w is not None and dominates(w, v) for j, w in enumerate(vals) if j != i)]


def _latency(phase: str) -> str:
    return "tpot_ms" if phase == "decode" else "ttft_ms"


def _violations(row: dict, slo: SLO) -> dict[str, float]:
    """Relative violation per SLO bound (0.1 = 10 % beyond the bound); bounds met are absent."""
    out = {}
    for name, metric in (("tpot_ms_max", "tpot_ms"), ("ttft_ms_max", "ttft_ms")):
        bound = getattr(slo, name)
        if bound is not None and row.get(metric) is not None and row[metric] > bound:
            out[name] = row[metric] / bound - 1.0
    bound = slo.min_tokens_per_s_per_gpu
    if bound is not None and row["tokens_per_s_per_gpu"] < bound:
        out["min_tokens_per_s_per_gpu"] = 1.0 - row["tokens_per_s_per_gpu"] / bound
    return out


_METRIC_OF = {"tpot_ms_max": "tpot_ms", "ttft_ms_max": "ttft_ms", "min_tokens_per_s_per_gpu": "tokens_per_s_per_gpu"}


def binding_constraint(rows: list[dict], slo: SLO) -> Optional[dict]:
    """The SLO bound that excludes the most points (ties: the one whose closest miss is larger),
    with the closest miss and the bound that would admit it."""
    stats: dict[str, dict] = {}
    for row in rows:
        for name, rel in row["violations"].items():
            s = stats.setdefault(name, {"constraint": name, "violated_by": 0, "closest_miss": None})
            s["violated_by"] += 1
            if s["closest_miss"] is None or rel < s["closest_miss"]["relative"]:
                s["closest_miss"] = {"id": row["id"], "label": row["label"], "relative": rel,
                                     "value": row[_METRIC_OF[name]]}
    if not stats:
        return None
    ranked = sorted(stats.values(), key=lambda s: (-s["violated_by"], -s["closest_miss"]["relative"], s["constraint"]))
    best = dict(ranked[0], points=len(rows), all=ranked)
    miss = best["closest_miss"]
    best["relax_to"] = miss["value"]
    best["text"] = (f"{best['constraint']} binds hardest: violated by {best['violated_by']} of {len(rows)} points; "
                    f"the closest ({miss['label']}) misses it by {miss['relative']:.1%} "
                    f"(relax the bound to {miss['value']:.4g} to admit it)")
    return best


def _objective_key(objective: str):
    if objective == "max_tokens_per_s_per_gpu":
        return lambda r: (-r["tokens_per_s_per_gpu"], r["latency_ms"], r["id"])
    if objective == "min_cost_per_million_tokens":
        return lambda r: (r["cost_per_million_tokens"], r["latency_ms"], r["id"])
    return lambda r: (r["gpus"], -r["tokens_per_s_per_gpu"], r["id"])


_PRIMARY = {"max_tokens_per_s_per_gpu": ("tokens_per_s_per_gpu", "max"),
            "min_cost_per_million_tokens": ("cost_per_million_tokens", "min"),
            "min_gpus": ("gpus", "min")}
_TIE = {"max_tokens_per_s_per_gpu": ("latency_ms", "min"), "min_cost_per_million_tokens": ("latency_ms", "min"),
        "min_gpus": ("tokens_per_s_per_gpu", "max")}


def _why_lost(best: dict, other: dict, objective: str) -> dict:
    for metric, direction in (_PRIMARY[objective], _TIE[objective]):
        a, b = best[metric], other[metric]
        if a != b:
            worse = b - a if direction == "min" else a - b
            return {"id": other["id"], "label": other["label"], "metric": metric, "best": a, "value": b,
                    "by": worse, "by_pct": 100.0 * worse / abs(a) if a else math.inf,
                    "text": f"{metric} {b:.4g} vs {a:.4g} ({'higher' if direction == 'min' else 'lower'} by "
                            f"{100.0 * worse / abs(a) if a else math.inf:.1f} %)"}
    return {"id": other["id"], "label": other["label"], "metric": None, "text": "tie; lost on order in the space"}


def summarize(results: list[dict], slo: SLO, objective: str, costs: Optional[CostTable] = None, *,
              runners_up: int = 3) -> dict:
    """Every point with metrics and cost, feasible set, binding SLO if none is feasible,
    Pareto fronts, the best point under the objective and why the runners-up lost."""
    if objective not in OBJECTIVES:
        raise MoesimError(f"unknown objective {objective!r}", field="objective", fix=f"use one of: {', '.join(OBJECTIVES)}")
    rows = []
    for rec in results:
        res = rec["result"]
        m = res["metrics"]
        lat = _latency(res["phase"])
        price = costs.systems.get(res["system"]) if costs else None
        tps = m["tokens_per_s_per_gpu"]
        cost = price.price_per_gpu_hour / 3600.0 / tps * 1e6 if price and tps > 0 else None
        row = {"id": rec["id"], "label": rec["label"], "model": res["model"], "system": res["system"],
               "gpus": res["gpus"], "parallel": res["parallel"], "phase": res["phase"],
               "overlap": rec["simulate"]["overlap"], "skew": rec["simulate"]["skew"],
               "batch": rec["overrides"]["workload"]["batch"],
               "redundant_experts": rec["overrides"].get("experts.redundant", 0),
               "tokens_per_s_per_gpu": tps, "tokens_per_s": tps * res["gpus"],
               "latency_metric": lat, "latency_ms": m[lat], lat: m[lat], "step_time_s": m["step_time_s"],
               "cost_per_million_tokens": cost, "cost_placeholder": bool(price and price.placeholder),
               "price_source": price.source if price else None}
        row["violations"] = _violations(row, slo)
        row["feasible"] = not row["violations"]
        rows.append(row)
    if objective == "min_cost_per_million_tokens":
        missing = sorted({r["system"] for r in rows if r["cost_per_million_tokens"] is None})
        if missing:
            raise MoesimError(f"no price for system(s) {', '.join(missing)}", field="costs.systems",
                              fix="add price_per_gpu_hour for them to the cost file, or use another objective")
    feasible = [r for r in rows if r["feasible"]]
    fronts = {
        "throughput_vs_latency": [rows[i]["id"] for i in
                                  pareto_front(rows, [("tokens_per_s_per_gpu", "max"), ("latency_ms", "min")])],
        "cost_vs_latency": [rows[i]["id"] for i in
                            pareto_front(rows, [("cost_per_million_tokens", "min"), ("latency_ms", "min")])],
    }
    out: dict[str, Any] = {"objective": objective, "slo": slo.model_dump(exclude_none=True), "points": rows,
                           "feasible": [r["id"] for r in feasible], "pareto": fronts,
                           "costs_are_placeholders": any(r["cost_placeholder"] for r in rows),
                           "binding_constraint": None, "best": None, "runners_up": []}
    if not feasible:
        out["binding_constraint"] = binding_constraint(rows, slo)
        return out
    ranked = sorted(feasible, key=_objective_key(objective))
    out["best"] = ranked[0]
    out["runners_up"] = [_why_lost(ranked[0], r, objective) for r in ranked[1:1 + runners_up]]
    return out


def apply_sets(points: list[dict], sets: list[str], folder: Path) -> list[dict]:
    """Apply `--set PATH=VALUE` changes to every point: scenario fields, `system.<field>` (a
    variant system file per base system, written to `folder`; see moesim.planning.whatif) and the
    simulation's `skew` / `overlap` / `placement`."""
    from moesim.planning.whatif import SIMULATE_KEYS, _system_variant, parse_set
    changes = dict(parse_set(s) for s in sets)
    for key, value in changes.items():  # an unknown scenario path is bad input, not a pruned point
        if key in SIMULATE_KEYS or key.startswith("system."):
            continue
        try:
            load_scenario(None, {key: value})
        except MoesimError as exc:
            if (exc.field or "").split(".")[0] == key.split(".")[0]:
                raise MoesimError(exc.problem, field=f"--set {key}", fix=exc.fix) from None
    system_changes = {k[len("system."):]: v for k, v in changes.items() if k.startswith("system.")}
    variants: dict[str, str] = {}
    out = []
    for point in points:
        overrides = dict(point["overrides"])
        sim = dict(point["simulate"])
        for key, value in changes.items():
            if key in SIMULATE_KEYS:
                sim[key] = value
            elif not key.startswith("system."):
                overrides[key] = value
        if system_changes:
            base = overrides["system"]
            if base not in variants:
                variants[base] = _system_variant(base, system_changes, folder)
            overrides["system"] = variants[base]
        out.append(dict(point, overrides=overrides, simulate=sim, system_name=point.get("system_name", base)
                        if system_changes else point.get("system_name", overrides["system"])))
    return out


def plan(space: Space, *, workers: int = 1, cache_dir: Optional[str | Path] = None,
         costs: Optional[CostTable] = None, dask: Optional[str] = None, progress: bool = False,
         sets: Optional[list[str]] = None) -> dict:
    """The whole pipeline for one search space (with optional `--set` changes on every point)."""
    if sets and cache_dir:  # variant systems beside the cache, named by their changes: resumable
        folder = Path(cache_dir) / "systems"
        folder.mkdir(parents=True, exist_ok=True)
        return _plan(space, apply_sets(expand(space), sets, folder), workers=workers, cache_dir=cache_dir,
                     costs=costs, dask=dask, progress=progress)
    if sets:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="moesim-plan-") as tmp:
            return _plan(space, apply_sets(expand(space), sets, Path(tmp)), workers=workers, cache_dir=cache_dir,
                         costs=costs, dask=dask, progress=progress)
    return _plan(space, expand(space), workers=workers, cache_dir=cache_dir, costs=costs, dask=dask,
                 progress=progress)


def _plan(space: Space, points: list[dict], *, workers: int, cache_dir, costs, dask, progress) -> dict:
    kept, pruned, reasons = prune(points)
    results = run(kept, workers=workers, cache_dir=cache_dir, dask=dask, progress=progress)
    costs = costs if costs is not None else load_costs(space.costs)
    summary = summarize(results, space.slo, space.objective, costs)
    summary.update({"space": space.name, "expanded": len(points), "pruned": pruned, "pruned_reasons": reasons,
                    "simulated": sum(not r["cached"] for r in results),
                    "from_cache": sum(r["cached"] for r in results), "provenance": {"code": code_version()}})
    return summary


__all__ = ["Space", "SLO", "CostTable", "load_space", "load_costs", "expand", "prune", "run", "summarize",
           "pareto_front", "binding_constraint", "all_splits", "plan", "OVERLAPS"]
