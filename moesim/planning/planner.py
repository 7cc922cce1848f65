"""Capacity planner: sweep a search space of deployments, prune what cannot run, simulate the
rest, and pick the best under SLOs.

Pipeline: `load_space(file)` -> `expand(space)` (one point per combination, deterministic
order; moesim.planning.space) -> `prune(points)` (resolve each point with `load_scenario` and
drop invalid splits and points whose VRAM ledger does not fit, each with a one-line reason,
before any simulation) -> `run(kept, workers=, cache_dir=)` (simulate, in parallel processes if
asked, caching each finished point as JSON keyed by the sha256 of the resolved scenario and of
the code and data that compute it, so a rerun resumes and a code change recomputes; both
moesim.planning.sweep) -> `summarize(results, slo, objective, costs)`
(here: metrics and cost per point, feasible set, binding SLO when nothing is feasible, Pareto
fronts, best point and why the runners-up lost). `plan` runs the whole pipeline, with optional
`--set` changes on every point (`apply_sets`).

A space with a load (issue 16) serves each point (`sweep.serve_point`); its rows carry TTFT and
TPOT p90, output tokens/s per GPU and per user, GPUs (both pools under disagg), cost per million
output tokens and whether the percentile SLOs are met, and the summary gains the
throughput-interactivity front (`pareto.throughput_vs_interactivity`: tokens/s per GPU against
tokens/s per user) overall and per system (`fronts_by_system`), which `present.plots.front_figure`
draws. A space without a load gives exactly the rows and keys it gave before.

A point is a plain dict: `{"id": int, "overrides": {dotted scenario path: value},
"simulate": {"overlap": ..., "skew": ...}}`; overrides are applied to the built-in default
scenario exactly as CLI flags are (`moesim.cluster.scenario.load_scenario`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from moesim.cluster.scenario import load_scenario
from moesim.core.digest import code_and_data_digest
from moesim.core.errors import MoesimError
from moesim.core.result import code_version
from moesim.planning.space import SLO, CostTable, Space, expand, load_costs
from moesim.planning.sweep import check_dask_address, prune, run
from moesim.sim.simulate import OVERLAPS

OBJECTIVES = ("max_tokens_per_s_per_gpu", "min_cost_per_million_tokens", "min_gpus")


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
    for name in ("ttft_p90_ms", "tpot_p90_ms"):   # percentile SLOs: rows of a served point only
        bound = getattr(slo, name)
        if bound is not None and row.get(name) is not None and row[name] > bound:
            out[name] = row[name] / bound - 1.0
    bound = slo.min_tokens_per_s_per_user
    if bound is not None and row.get("tokens_per_s_per_user") is not None and row["tokens_per_s_per_user"] < bound:
        out["min_tokens_per_s_per_user"] = 1.0 - row["tokens_per_s_per_user"] / bound
    return out


_METRIC_OF = {"tpot_ms_max": "tpot_ms", "ttft_ms_max": "ttft_ms", "min_tokens_per_s_per_gpu": "tokens_per_s_per_gpu",
              "ttft_p90_ms": "ttft_p90_ms", "tpot_p90_ms": "tpot_p90_ms",
              "min_tokens_per_s_per_user": "tokens_per_s_per_user"}


def _served_row(rec: dict, costs: Optional[CostTable]) -> dict:
    """The row of a served point (module docstring): latency is TPOT p90."""
    res = rec["result"]
    m = res["metrics"]
    served = rec["serve"]
    price = costs.systems.get(res["system"]) if costs else None
    tps = m["output_tokens_per_s_per_gpu"]
    cost = price.price_per_gpu_hour / 3600.0 / tps * 1e6 if price and tps > 0 else None
    return {"id": rec["id"], "label": rec["label"], "model": res["model"], "system": res["system"],
            "gpus": res["gpus"], "parallel": res["parallel"], "phase": "serve", "mode": res["mode"],
            "prefill_workers": served.get("prefill_workers"), "decode_workers": served.get("decode_workers"),
            "redundant_experts": rec["overrides"].get("experts.redundant", 0),
            "tokens_per_s_per_gpu": tps, "tokens_per_s": tps * res["gpus"],
            "tokens_per_s_per_user": m["output_tokens_per_s_per_user"],
            "ttft_p90_ms": m["ttft_ms"]["p90"], "tpot_p90_ms": m["tpot_ms"]["p90"],
            "ttft_ms": m["ttft_ms"]["mean"], "tpot_ms": m["tpot_ms"]["mean"],
            "requests_per_s": m.get("requests_per_s"),
            "latency_metric": "tpot_p90_ms", "latency_ms": m["tpot_ms"]["p90"],
            "cost_per_million_tokens": cost, "cost_placeholder": bool(price and price.placeholder),
            "price_source": price.source if price else None,
            # the error bands of its mean TTFT and TPOT from the validated serving benchmarks (`moesim serve`'s)
            "uncertainty": res.get("uncertainty")}


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


def _interactivity_front(rows: list[dict]) -> list[int]:
    """Ids of the throughput-interactivity Pareto front (tokens/s per GPU and per user, both
    higher better), ordered by tokens/s per user."""
    axes = [("tokens_per_s_per_gpu", "max"), ("tokens_per_s_per_user", "max")]
    front = [rows[i] for i in pareto_front(rows, axes)]
    return [r["id"] for r in sorted(front, key=lambda r: (r["tokens_per_s_per_user"], r["id"]))]


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
        if rec.get("serve") is not None:
            row = _served_row(rec, costs)
            row["violations"] = _violations(row, slo)
            row["feasible"] = row["meets_slo"] = not row["violations"]
            rows.append(row)
            continue
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
    served = any(r["phase"] == "serve" for r in rows)
    if served:
        fronts["throughput_vs_interactivity"] = _interactivity_front(rows)
    out: dict[str, Any] = {"objective": objective, "slo": slo.model_dump(exclude_none=True), "points": rows,
                           "feasible": [r["id"] for r in feasible], "pareto": fronts,
                           "costs_are_placeholders": any(r["cost_placeholder"] for r in rows),
                           "binding_constraint": None, "best": None, "runners_up": []}
    if served:
        out["fronts_by_system"] = {system: _interactivity_front([r for r in rows if r["system"] == system])
                                   for system in sorted({r["system"] for r in rows})}
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
    from moesim.planning.whatif import SIMULATE_KEYS, parse_set, system_variant
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
                variants[base] = system_variant(base, system_changes, folder)
            overrides["system"] = variants[base]
        out.append(dict(point, overrides=overrides, simulate=sim, system_name=point.get("system_name", base)
                        if system_changes else point.get("system_name", overrides["system"])))
    return out


def plan(space: Space, *, workers: int = 1, cache_dir: Optional[str | Path] = None,
         costs: Optional[CostTable] = None, dask: Optional[str] = None, progress: bool = False,
         sets: Optional[list[str]] = None) -> dict:
    """The whole pipeline for one search space (with optional `--set` changes on every point)."""
    if dask is not None:
        check_dask_address(dask)  # a bad address is an error before any work, not after pruning
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
                    "from_cache": sum(r["cached"] for r in results),
                    "provenance": {"code": dict(code_version(), code_and_data=code_and_data_digest())}})
    return summary


__all__ = ["summarize", "pareto_front", "binding_constraint", "plan", "OVERLAPS"]
