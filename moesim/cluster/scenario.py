"""The validated scenario: one YAML naming model, system, GPUs, split, dtypes and workload.

Names are resolved once here (model spec, system + GPU spec, number formats, framework
overheads) and the parallel split is checked against GPUs and model, so later stages receive a
`Scenario` they never need to re-validate.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record, parse_record, read_yaml
from moesim.specs import precision
from moesim.specs.hardware import Sourced, System, load_system
from moesim.specs.model import ModelSpec, load_model
from moesim.specs.parallelism import ParallelInput, ParallelPlan, resolve_plan

PositiveInt = Annotated[int, Field(gt=0)]


class Experts(Record):
    redundant: Annotated[int, Field(ge=0)] = 0


class DTypes(Record):
    """Storage formats. `weights` covers every linear layer (attention, dense MLP, shared and
    routed experts); embeddings, LM head, norms and routers stay BF16, as the FP8/FP4 releases of
    DeepSeek-V3, Qwen3 and gpt-oss do. `expert_weights` / `attention_weights` override per part."""

    weights: str = "bf16"
    expert_weights: Optional[str] = None
    attention_weights: Optional[str] = None
    kv_cache: str = "bf16"
    activations: str = "bf16"


class Serving(Record):
    kind: Literal["serving"]
    phase: Literal["prefill", "decode"]
    batch: PositiveInt = Field(description="concurrent sequences per data-parallel (attention) rank")
    input_len: PositiveInt
    output_len: PositiveInt
    prefill_chunk_tokens: Optional[PositiveInt] = None

    @property
    def context_len(self) -> int:
        return self.input_len + self.output_len


class Training(Record):
    kind: Literal["training"]
    seq_len: PositiveInt
    micro_batch: PositiveInt
    global_batch: PositiveInt = Field(description="sequences per optimizer step over all DP ranks")
    optimizer: Literal["adam", "sgd"] = "adam"
    recompute: Literal["none", "selective", "full"] = "none"
    zero_stage: Literal[0, 1, 2, 3] = 1


class Runtime(Record):
    framework: str = "sglang"
    memory_fraction: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    profile: Optional[str] = Field(None, description="calibration profile (path or name in topologies/calibration/)")
    kernel_profile: Optional[str] = Field(None, description="kernel-model parameters: a profile from `moesim calibrate "
                                                             "--cases`, `spec` for sourced defaults; default: the "
                                                             "shipped topologies/calibration/kernels.yaml")
    ep_exchange: Literal["all_to_all", "allgather_reducescatter"] = Field(
        "all_to_all", description="how MoE layers with attention DP move tokens between the EP group's ranks: an "
                                  "all-to-all EP library (DeepEP and its kin: each token to the ranks of its experts), "
                                  "or the frameworks' out-of-the-box exchange (every rank all-gathers every token, "
                                  "then reduce-scatters the outputs: vLLM --all2all-backend allgather_reducescatter, "
                                  "SGLang without --moe-a2a-backend, TensorRT-LLM without MNNVL)")


class ScenarioInput(Record):
    """A scenario file as written by a user."""

    name: str = "unnamed"
    description: Optional[str] = None
    model: str
    system: str
    gpus: PositiveInt
    parallel: ParallelInput = ParallelInput()
    experts: Experts = Experts()
    dtypes: DTypes = DTypes()
    workload: Annotated[Union[Serving, Training], Field(discriminator="kind")]
    runtime: Runtime = Runtime()
    seed: Annotated[int, Field(ge=0)] = 0


class GraphSizes(Record):
    """Decode batch sizes a framework captures CUDA graphs for, written as its source code builds
    them: listed sizes plus an inclusive `range: [start, stop, step]` (e.g. vLLM's
    `[1, 2, 4] + range(8, 513, 8)`)."""

    listed: list[Annotated[int, Field(gt=0)]] = []
    range: Optional[tuple[PositiveInt, PositiveInt, PositiveInt]] = None

    def sizes(self) -> tuple[int, ...]:
        extra = tuple(range(self.range[0], self.range[1] + 1, self.range[2])) if self.range else ()
        return tuple(sorted(set(self.listed) | set(extra)))


class Batching(Record):
    """A serving framework's continuous-batching policy at its defaults (`moesim serve`): how many
    requests one attention-DP rank runs at once, how many tokens one step may process (the chunked
    prefill size), whether a step mixes decode and prefill tokens or runs prefill first, the batch
    sizes a decode step is padded to (CUDA graphs). The CPU time a step adds on the GPU's critical
    path is a serving parameter of the kernel profile (topologies/kernels/serving.yaml)."""

    max_running_requests_per_rank: Sourced[PositiveInt]
    step_token_budget: Sourced[PositiveInt]
    step_policy: Sourced[Literal["prefill_first", "mixed"]]
    cuda_graph_batch_sizes: Sourced[GraphSizes]
    # Recorded where a framework's scheduler departs from what `moesim serve` runs (the notes say
    # how); null or absent: not recorded. `moesim serve` does not read them yet.
    versions: Optional[Sourced[str]] = Field(None, description="releases these defaults were checked for")
    chunked_prefill: Optional[Sourced[bool]] = Field(None, description="a prompt may be split over steps")
    kv_admission: Optional[Sourced[Literal["whole_request", "incremental"]]] = Field(
        None, description="whole_request: a request's prompt + output KV reserved at admission, never preempted")
    kv_block_tokens: Optional[Sourced[PositiveInt]] = Field(None, description="KV cache block (page) size")
    cuda_graph_padding: Optional[Sourced[bool]] = Field(
        None, description="false: a decode batch between captured sizes runs eagerly at its own size")
    overlap_scheduler: Optional[Sourced[bool]] = Field(
        None, description="the next step is scheduled while the current one runs, on one-step-old state")


KV_BUDGET_RULES = ("of_total", "static_of_free_before_load", "of_free_after_load")


class Framework(Record):
    memory_fraction: Sourced[float]
    cuda_context_bytes: Sourced[float]
    non_torch_bytes: Sourced[float]
    cuda_graph_bytes: Sourced[float]
    # How the framework sizes its KV cache from memory_fraction (costs.memory.kv_room_bytes); absent:
    # the fraction of total memory holds everything the ledger counts (training frameworks)
    kv_budget_rule: Optional[Sourced[Literal[KV_BUDGET_RULES]]] = None
    batching: Optional[Batching] = Field(None, description="serving frameworks only (moesim serve)")
    # Where the framework's code lives ("owner/name" on GitHub): a measurement whose source is that
    # repository ran this framework (`validation.serving_mixed.engine_of`).
    repository: Optional[Sourced[str]] = None


class DeepEPLowLatency(Record):
    max_dispatch_tokens_per_rank: Sourced[int]
    layout_source: str


class DeepEPNormal(Record):
    nvl_bytes: Sourced[float]
    rdma_bytes: Sourced[float]


class EPBuffers(Record):
    deepep_low_latency: DeepEPLowLatency
    deepep_normal: DeepEPNormal


class FrameworkTable(Record):
    frameworks: dict[str, Framework]
    ep_buffers: EPBuffers


@lru_cache(maxsize=1)
def framework_table() -> FrameworkTable:
    return load_record(FrameworkTable, data_root() / "workloads" / "frameworks.yaml")


class Scenario(Record):
    """A scenario with every name resolved and every rule checked."""

    input: ScenarioInput
    model: ModelSpec
    system: System
    plan: ParallelPlan
    framework: Framework
    source_file: Optional[str] = None

    @property
    def memory_fraction(self) -> float:
        return self.input.runtime.memory_fraction or self.framework.memory_fraction.value

    @property
    def gpus(self) -> int:
        return self.input.gpus


def default_scenario_path() -> Path:
    return data_root() / "workloads" / "scenarios" / "default.yaml"


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


PARALLEL_FLAGS = ("tp", "pp", "dp", "attn_dp", "ep", "etp")


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Apply flag overrides (dotted paths).

    If any parallel size, the GPU count or the model is given, the split is rebuilt from the
    given flags alone (others take their defaults), so a flag never combines with a stale size
    from the file; a new model also drops the file's redundant-expert count. The scenario is
    renamed after what the flags made of it.
    """
    data = copy.deepcopy(data)
    given = {k: v for k, v in overrides.items() if v is not None}
    if any(f"parallel.{f}" in given for f in PARALLEL_FLAGS) or "gpus" in given or "model" in given:
        data["parallel"] = {}
    if "model" in given and isinstance(data.get("experts"), dict):
        data["experts"].pop("redundant", None)
    for path, value in given.items():
        _set_path(data, path, value)
    if {"model", "system", "gpus"} & set(given):
        data["name"] = f"{data.get('model')}-{data.get('gpus')}x-{data.get('system')}"
    return data


def _from_flags(exc: MoesimError, overrides: dict[str, Any]) -> MoesimError:
    """Blame the command line, not the file, when the bad value came from a flag."""
    field = exc.field or ""
    rebuilt = "parallel" if any(k.startswith("parallel.") or k in ("gpus", "model") for k in overrides) else None
    if field in overrides or field.split(".")[0] == rebuilt or field.split(".")[0] in overrides:
        return MoesimError(exc.problem, field=field, file="command-line flags", fix=exc.fix)
    return exc


def load_scenario(path: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> Scenario:
    """Read a scenario file (default: the built-in one), apply overrides, resolve and check."""
    file = Path(path) if path else default_scenario_path()
    data, node = read_yaml(file)
    if not isinstance(data, dict):
        raise MoesimError("expected a mapping of scenario fields", file=str(file), field="(top level)",
                          fix="see workloads/scenarios/default.yaml for the format")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        data = apply_overrides(data, given)
    try:
        raw = parse_record(ScenarioInput, data, file=str(file), node=node)
        return resolve_scenario(raw, source_file=str(file))
    except MoesimError as exc:
        raise _from_flags(exc, given) if given else exc from None


def resolve_scenario(raw: ScenarioInput, *, source_file: Optional[str] = None) -> Scenario:
    try:
        model = load_model(raw.model)
        system = load_system(raw.system)
    except MoesimError as exc:
        raise exc.located(file=exc.file or source_file) from None
    for name in ("weights", "expert_weights", "attention_weights", "kv_cache", "activations"):
        value = getattr(raw.dtypes, name)
        if value is not None:
            try:
                precision.canonical(value, field=f"dtypes.{name}")
            except MoesimError as exc:
                raise exc.located(file=source_file) from None
    for name in ("kv_cache", "activations"):  # a weight-only format stores weights, never a tensor that is computed
        if precision.get(getattr(raw.dtypes, name), field=f"dtypes.{name}").weight_only:
            raise MoesimError(f"{getattr(raw.dtypes, name)} is a weight-only format: it stores weights, not a "
                              f"{name.replace('_', ' ')}", file=source_file, field=f"dtypes.{name}",
                              fix="use bf16 or fp8 (or nvfp4 for the KV cache on Blackwell)")
    kv_family = precision.get(raw.dtypes.kv_cache, field="dtypes.kv_cache").family
    if kv_family is not None and system.gpu.peak_flops(kv_family) is None:
        usable = [n for n in ("bf16", "fp8", "nvfp4")
                  if system.gpu.peak_flops(precision.get(n).family) is not None]
        raise MoesimError(f"{system.gpu.id} cannot read a {raw.dtypes.kv_cache} KV cache (no {kv_family} "
                          f"tensor cores: dense_TFLOPs.{kv_family} is null)", file=source_file,
                          field="dtypes.kv_cache", fix=f"use one of: {', '.join(usable)}, or a GPU with {kv_family} support")
    frameworks = framework_table().frameworks
    if raw.runtime.framework not in frameworks:
        raise MoesimError(f"unknown framework {raw.runtime.framework!r}", file=source_file,
                          field="runtime.framework", fix=f"use one of: {', '.join(sorted(frameworks))}")
    try:
        plan = resolve_plan(raw.parallel, raw.gpus, model, redundant_experts=raw.experts.redundant)
    except MoesimError as exc:
        raise exc.located(file=source_file) from None
    most = model.moe.num_experts * (plan.ep - 1) if model.moe else 0
    if raw.experts.redundant > most:
        raise MoesimError(f"{raw.experts.redundant:,} redundant experts is more than EP {plan.ep} can hold apart "
                          f"({most:,}: every expert once on every GPU)", file=source_file, field="experts.redundant",
                          fix=f"give at most {most:,} replica slots")
    return Scenario(input=raw, model=model, system=system, plan=plan,
                    framework=frameworks[raw.runtime.framework], source_file=source_file)


def with_redundant_experts(sc: Scenario, redundant: int, *, field: str) -> Scenario:
    """The scenario with `redundant` EPLB replica slots, re-resolved: the slots cost VRAM and must
    divide over the EP group like the file's own `experts.redundant` (a placement such as
    `eplb:R` asks for them)."""
    if redundant == sc.input.experts.redundant:
        return sc
    raw = sc.input.model_copy(update={"experts": sc.input.experts.model_copy(update={"redundant": redundant})})
    try:
        return resolve_scenario(raw, source_file=sc.source_file)
    except MoesimError as exc:
        raise MoesimError(exc.problem, field=field, fix=exc.fix) from None
