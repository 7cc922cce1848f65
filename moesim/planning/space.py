"""The search space of a capacity plan, read from its file and crossed into points in a fixed order.

`load_space(file)` reads the space (models, systems and GPU counts, splits, batches, overlap,
skew, SLOs, objective) and checks that every name in it resolves (`check_names`);
`expand(space)` crosses it into one point per combination. A point is a plain dict: `{"id": int,
"overrides": {dotted scenario path: value}, "simulate": {"overlap": ..., "skew": ...}}`; overrides
are applied to the built-in default scenario exactly as CLI flags are
(`moesim.cluster.scenario.load_scenario`). `load_costs` reads the price file the summary uses.

A space with `load:` (issue 16, "Planner and what-if") is served, not stepped: each point is a
deployment (model, system, GPUs, split, redundant experts) in one `mode` (agg, or disagg with
`prefill_workers` x `decode_workers` engine instances), run under the load by
`moesim.serve.run.serve`; `batch`, `overlap` and `skew` are not crossed (the scheduler forms the
batches; serving runs without overlap and with uniform routing). Such a point also holds `serve:
{load, mode, prefill_workers, decode_workers}` and `group`: the deployment's key, the same for all
its modes and worker ratios, so the sweep runs them in one process and they share one step-time
function (`moesim.serve.step_function`). Percentile SLOs (`ttft_p90_ms`, `tpot_p90_ms`,
`min_tokens_per_s_per_user`) apply to such spaces only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record
from moesim.specs.model import load_model
from moesim.specs.parallelism import ParallelInput, divisors, resolve_plan

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
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
    # percentile SLOs of a space under load (`load:`), on the served requests
    ttft_p90_ms: Optional[PositiveFloat] = None
    tpot_p90_ms: Optional[PositiveFloat] = None
    min_tokens_per_s_per_user: Optional[PositiveFloat] = None


LOAD_SLOS = ("ttft_p90_ms", "tpot_p90_ms", "min_tokens_per_s_per_user")


class SpaceLoad(Record):
    """The load every point serves (as `moesim serve` takes it); checked by `serve.load.make_load`,
    so a bad value is one error naming `load.<field>`. Values are kept loose here on purpose."""

    concurrency: Optional[Any] = None
    rate: Optional[Any] = None
    isl: Optional[Any] = None
    osl: Optional[Any] = None
    requests: Any = 1000        # bench_serving's --num-prompts default, as `moesim serve`
    warmup: Any = 0
    seed: Any = 0

    def make(self):
        """The checked `serve.load.Load` (MoesimError naming `load.<field>` when a value is bad)."""
        from moesim.serve.load import make_load
        return make_load(**self.model_dump(), prefix="load.")


class Space(Record):
    name: str = "plan"
    description: Optional[str] = None
    models: list[str]
    systems: list[Union[str, SystemChoice]]
    gpus: list[PositiveInt] = Field(default_factory=list,
                                    description="GPU counts for systems given by name only")
    parallel: Union[Literal["all"], list[SplitChoice]] = "all"
    redundant_experts: list[Annotated[int, Field(ge=0)]] = [0]
    batch: list[PositiveInt] = Field(default_factory=list,
                                     description="sequences per DP (attention) rank (not with load)")
    input_len: Optional[PositiveInt] = Field(None, description="not with load (its isl gives it)")
    output_len: Optional[PositiveInt] = Field(None, description="not with load (its osl gives it)")
    phase: Literal["decode", "prefill"] = "decode"
    dtypes: SpaceDTypes = SpaceDTypes()
    overlap: list[Literal["none", "two_batch"]] = ["none"]
    skew: list[str] = ["uniform"]
    slo: SLO = SLO()
    load: Optional[SpaceLoad] = Field(None, description="serve every point under this load (issue 16)")
    mode: list[Literal["agg", "disagg"]] = ["agg"]
    prefill_workers: list[PositiveInt] = [1]
    decode_workers: list[PositiveInt] = [1]
    max_running_requests_per_rank: list[PositiveInt] = Field(
        default_factory=list, description="batch limits per attention-DP rank to search (with load; "
                                          "default: the framework's)")
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
    """Read a space file and check that every name in it resolves (`check_names`)."""
    space = load_record(Space, Path(path))
    check_load(space, file=str(path))
    check_names(space, file=str(path))
    return space


def check_load(space: Space, *, file: Optional[str] = None) -> None:
    """A space's load and the fields that go with it are consistent: the load itself
    (`serve.load.make_load`, errors naming `load.<field>`); percentile SLOs, modes other than agg
    and worker counts only with a load; no `batch`, `overlap` or `skew` choices with one."""
    def bad(problem: str, field: str, fix: str) -> MoesimError:
        return MoesimError(problem, field=field, file=file, fix=fix)

    if space.load is None:
        for name in ("input_len", "output_len"):
            if getattr(space, name) is None:
                raise bad("required field is missing", name,
                          f"add {name}: N (tokens), or give a load: {{concurrency: C, isl: N, osl: M}} instead")
        for name in LOAD_SLOS:
            if getattr(space.slo, name) is not None:
                raise bad("a percentile SLO needs a load", f"slo.{name}",
                          "add load: {concurrency: C, isl: N, osl: M} or use tpot_ms_max / ttft_ms_max")
        if space.mode != ["agg"]:
            raise bad("serving modes need a load", "mode", "add load: {concurrency: C, isl: N, osl: M}")
        if space.max_running_requests_per_rank:
            raise bad("batch limits are searched only under a load", "max_running_requests_per_rank",
                      "add load: {concurrency: C, isl: N, osl: M}, or search batch instead")
        return
    try:
        space.load.make()
    except MoesimError as exc:
        raise MoesimError(exc.problem, field=exc.field, file=exc.file or file, fix=exc.fix) from None
    for name, other in (("input_len", "isl"), ("output_len", "osl")):
        if getattr(space, name) is not None:
            raise bad(f"{name} is given by the load under a load", name, f"leave {name} out; give load.{other}")
    if space.batch:
        raise bad("batch is not searched under a load: the scheduler forms the batches", "batch",
                  "leave batch out of a space with load")
    if space.overlap != ["none"] or space.skew != ["uniform"]:
        field = "overlap" if space.overlap != ["none"] else "skew"
        raise bad(f"{field} is not searched under a load (serving runs without overlap, uniform routing)", field,
                  f"leave {field} out of a space with load")
    if not space.mode:
        raise bad("the search space is empty", "mode", "list agg and/or disagg")
    if "disagg" in space.mode:
        for field in ("prefill_workers", "decode_workers"):
            if not getattr(space, field):
                raise bad("the search space is empty", field, f"list at least one count in {field}")


def _system_field(space: Space, i: int) -> str:
    return f"systems.{i}.name" if isinstance(space.systems[i], SystemChoice) else f"systems.{i}"


def check_names(space: Space, *, file: Optional[str] = None) -> None:
    """Every name the space gives resolves, before any point is expanded: models, systems, dtypes,
    skews, the price file (and, under the cost objective, a price for every system). A misspelt
    name is bad input (MoesimError naming the space field and the valid names), not a reason to
    prune every point. An error inside a named model or system file is raised as that file's."""
    from moesim.costs.routing import parse_skew
    from moesim.specs import precision
    from moesim.specs.hardware import load_system

    def at(exc: MoesimError, field: str) -> MoesimError:
        return MoesimError(exc.problem, field=field, file=file, fix=exc.fix)

    for i, model in enumerate(space.models):
        try:
            load_model(model)
        except MoesimError as exc:
            raise (exc if exc.file else at(exc, f"models.{i}")) from None
    system_ids = []
    for i, choice in enumerate(space.systems):
        name = choice.name if isinstance(choice, SystemChoice) else choice
        try:
            system_ids.append(load_system(name).id)
        except MoesimError as exc:
            raise (exc if exc.file else at(exc, _system_field(space, i))) from None
    for name in ("weights", "kv_cache"):
        try:
            precision.canonical(getattr(space.dtypes, name), field=f"dtypes.{name}")
        except MoesimError as exc:
            raise at(exc, f"dtypes.{name}") from None
    for i, skew in enumerate(space.skew):
        try:
            parse_skew(skew, field=f"skew.{i}")
        except MoesimError as exc:
            raise at(exc, f"skew.{i}") from None
    if space.costs is not None and not Path(space.costs).is_file():
        raise MoesimError(f"no such price file {space.costs!r}", field="costs", file=file,
                          fix="give the path of a price file like workloads/costs.yaml, or leave costs out "
                              "for the default")
    if space.objective == "min_cost_per_million_tokens":
        prices = load_costs(space.costs).systems
        for i, system_id in enumerate(system_ids):
            if system_id not in prices:
                raise MoesimError(f"no price for system {system_id!r} in the price file "
                                  f"{space.costs or 'workloads/costs.yaml'}", field=_system_field(space, i),
                                  file=file, fix=f"add price_per_gpu_hour for {system_id} to the price file (field "
                                                 "costs), or use another objective")


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
    if space.load is not None:
        return _expand_served(space)
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


def _splits(space: Space, model: str, gpus: int, redundant: int) -> list[dict]:
    if space.parallel == "all":
        return all_splits(model, gpus, redundant)
    return [dict(s.model_dump(exclude_none=True), ep=gpus // s.pp if s.ep == "gpus" else s.ep) for s in space.parallel]


def _expand_served(space: Space) -> list[dict]:
    """The points of a space with a load (module docstring): model, system, gpus, redundant,
    split, then mode (agg, then disagg with every prefill x decode worker count)."""
    for field in ("models", "systems", "redundant_experts", "mode"):
        if not getattr(space, field):
            raise MoesimError("the search space is empty", field=field, fix=f"list at least one value in {field}")
    if isinstance(space.parallel, list) and not space.parallel:
        raise MoesimError("the search space is empty", field="parallel", fix="list at least one split, or write 'all'")
    load = space.load.make()
    modes = [("agg", None, None)] if "agg" in space.mode else []
    if "disagg" in space.mode:
        modes += [("disagg", p, d) for p in space.prefill_workers for d in space.decode_workers]
    load_json = space.load.model_dump()
    limits = list(space.max_running_requests_per_rank) or [None]   # None: the framework's own limit
    points: list[dict] = []
    seen_instances: set = set()   # a disagg deployment is P + D copies of one EP group, whatever the GPU count
    for model in space.models:
        for system, counts in _system_gpus(space):
            for gpus in counts:
                for redundant in space.redundant_experts:
                    for split in _splits(space, model, gpus, redundant):
                        overrides = {"model": model, "system": system, "gpus": gpus}
                        overrides.update({f"parallel.{k}": v for k, v in split.items()})
                        overrides.update({
                            "experts.redundant": redundant,
                            "dtypes.weights": space.dtypes.weights, "dtypes.kv_cache": space.dtypes.kv_cache,
                            # the serve run replaces the workload; this one only sizes the VRAM check
                            "workload": {"kind": "serving", "phase": "decode", "batch": 1,
                                         "input_len": load.isl, "output_len": load.osl}})
                        group = len(points)
                        instance = (model, system, redundant, split.get("tp", 1), split.get("ep", 1),
                                    split.get("etp", 1), split.get("pp", 1))
                        for mode, prefill, decode in modes:
                            for limit in limits:
                                if mode == "disagg" and (instance, prefill, decode, limit) in seen_instances:
                                    continue   # the same pools of the same EP group as a point before
                                seen_instances.add((instance, prefill, decode, limit))
                                points.append({"id": len(points), "overrides": overrides, "group": group,
                                               "simulate": {"overlap": "none", "skew": "uniform"},
                                               "serve": {"load": load_json, "mode": mode, "prefill_workers": prefill,
                                                         "decode_workers": decode, "max_running": limit}})
    if not points:
        raise MoesimError("the search space is empty: no valid split for any model and GPU count",
                          field="parallel" if space.parallel == "all" else "systems",
                          fix="add GPU counts that the models' experts and heads divide, or list splits explicitly")
    return points


def label(point: dict) -> str:
    o, s = point["overrides"], point["simulate"]
    w = o["workload"]
    dp = o.get("parallel.dp", o["gpus"] // (o.get("parallel.tp", 1) * o.get("parallel.pp", 1)))
    system = point.get("system_name", o["system"])
    served = point.get("serve")
    limit = f" mr{served['max_running']}" if served is not None and served.get("max_running") else ""
    if served is not None and served["mode"] == "disagg":   # P + D engine instances of one EP group
        group = o.get("parallel.ep", 1) * o.get("parallel.etp", 1)
        pools = served["prefill_workers"] + served["decode_workers"]
        return (f"{o['model']} {pools * group} GPUs of {system} tp{o.get('parallel.tp', 1)} "
                f"dp{group // o.get('parallel.tp', 1)} ep{o.get('parallel.ep', 1)} pp{o.get('parallel.pp', 1)} "
                f"r{o.get('experts.redundant', 0)} disagg {served['prefill_workers']}P:{served['decode_workers']}D"
                + limit)
    text = (f"{o['model']} {o['gpus']} GPUs of {system} tp{o.get('parallel.tp', 1)} dp{dp} ep{o.get('parallel.ep', 1)}"
            f" pp{o.get('parallel.pp', 1)} r{o.get('experts.redundant', 0)}")
    if served is not None:
        return text + " agg" + limit
    text += f" b{w['batch']}"
    if s["overlap"] != "none":
        text += f" {s['overlap']}"
    if s["skew"] != "uniform":
        text += f" {s['skew']}"
    return text


__all__ = ["Space", "SLO", "SpaceLoad", "CostTable", "load_space", "check_load", "check_names", "load_costs", "expand",
           "all_splits", "LOAD_SLOS"]
