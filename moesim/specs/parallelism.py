"""The parallel split of a job and the divisibility rules it must obey.

Conventions (one set for serving and training, matching vLLM/SGLang/Megatron):
- `tp` tensor-parallel size of attention and dense layers; `pp` pipeline stages;
  `dp` data-parallel ranks of the dense part, so GPUs = tp x pp x dp. For serving, `dp` ranks
  are DP-attention ranks (SGLang `--enable-dp-attention`, vLLM `--data-parallel-size`); `attn_dp`
  is accepted as another name for it.
- Inside one pipeline stage the same tp x dp GPUs hold the experts as `ep` x `etp` x `edp`:
  `ep` expert-parallel ranks, `etp` tensor-parallel split of each expert, and `edp` the derived
  number of expert replicas (Megatron's expert data parallelism). vLLM's `--enable-expert-parallel`
  is ep = tp x dp, etp = 1.
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field, model_validator

from moesim.core.errors import MoesimError
from moesim.core.loader import Record
from moesim.specs.model import ModelSpec


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _options(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


Size = Annotated[int, Field(ge=1)]


class ParallelInput(Record):
    """The split as the user writes it; unset sizes are derived by `resolve_plan`."""

    tp: Size = 1
    pp: Size = 1
    dp: Optional[Size] = None
    attn_dp: Optional[Size] = None
    ep: Size = 1
    etp: Optional[Size] = None

    @model_validator(mode="after")
    def _one_dp(self) -> "ParallelInput":
        if self.dp and self.attn_dp and self.dp != self.attn_dp:
            raise ValueError(f"dp={self.dp} and attn_dp={self.attn_dp} name the same thing; give one of them")
        return self


class ParallelPlan(Record):
    """A fully resolved split: every size known and checked against GPUs and model."""

    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    edp: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def stage_gpus(self) -> int:
        return self.tp * self.dp


def resolve_plan(raw: ParallelInput, gpus: int, model: ModelSpec, *, redundant_experts: int = 0,
                 field: str = "parallel") -> ParallelPlan:
    """Fill derived sizes and enforce every divisibility rule, naming the field and valid values."""
    if gpus < 1:
        raise MoesimError(f"GPU count must be positive, got {gpus}", field="gpus", fix="give at least 1 GPU")
    tp, pp = raw.tp, raw.pp
    if gpus % (tp * pp):
        raise MoesimError(f"tp x pp = {tp * pp} does not divide {gpus} GPUs", field=f"{field}.tp",
                          fix=f"use tp x pp among: {_options(divisors(gpus))}")
    dp = raw.dp or raw.attn_dp or gpus // (tp * pp)
    if tp * pp * dp != gpus:
        raise MoesimError(f"tp x pp x dp = {tp}x{pp}x{dp} = {tp * pp * dp} but the job has {gpus} GPUs",
                          field=f"{field}.dp", fix=f"set dp to {gpus // (tp * pp)} or change gpus")
    stage = tp * dp
    ep = raw.ep
    etp = raw.etp if raw.etp is not None else (tp if ep == 1 else 1)
    if stage % (ep * etp):
        raise MoesimError(f"ep x etp = {ep * etp} does not divide the {stage} GPUs of a pipeline stage",
                          field=f"{field}.ep", fix=f"use ep x etp among: {_options(divisors(stage))}")
    heads = model.attention.num_attention_heads
    if heads % tp:
        raise MoesimError(f"tp {tp} does not divide the model's {heads} attention heads", field=f"{field}.tp",
                          fix=f"use tp among: {_options(divisors(heads))}")
    kv_heads = model.attention.num_key_value_heads
    if model.attention.type != "mla" and kv_heads % tp and tp % kv_heads:
        raise MoesimError(f"tp {tp} neither divides nor is a multiple of the {kv_heads} KV heads",
                          field=f"{field}.tp", fix="use a tp that divides the KV heads or is a multiple of them")
    slots = model.moe.num_experts + redundant_experts
    if slots % ep:
        fits = [e for e in divisors(slots) if stage % e == 0]
        pad = (-model.moe.num_experts) % ep
        raise MoesimError(
            f"ep {ep} does not divide {model.moe.num_experts} experts + {redundant_experts} redundant = {slots}",
            field=f"{field}.ep",
            fix=f"use ep among: {_options(fits)}, or set experts.redundant (--redundant-experts) to {pad} (or more, in steps of {ep})")
    inter = model.moe.moe_intermediate_size
    if inter % etp:
        origin = "" if raw.etp is not None else " (etp defaults to tp when ep = 1)"
        raise MoesimError(f"etp {etp}{origin} does not divide moe_intermediate_size {inter}",
                          field=f"{field}.etp",
                          fix=f"use etp among: {_options(divisors(inter))}")
    layers = model.num_hidden_layers
    if pp > layers:
        raise MoesimError(f"pp {pp} exceeds the model's {layers} layers", field=f"{field}.pp",
                          fix=f"use pp <= {layers}")
    return ParallelPlan(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, edp=stage // (ep * etp))


def stage_layers(num_layers: int, pp: int) -> list[range]:
    """Split layers into pp contiguous stages, the first stages taking the remainder
    (Megatron's even split when it divides; otherwise one extra layer on the early stages)."""
    base, extra = divmod(num_layers, pp)
    stages, start = [], 0
    for s in range(pp):
        size = base + (1 if s < extra else 0)
        stages.append(range(start, start + size))
        start += size
    return stages
