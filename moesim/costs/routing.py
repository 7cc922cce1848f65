"""Which experts each token picks: expert popularity → Numba samplers → a RoutingSample.

Skews (`--skew`): `uniform`; `zipf:S` (popularity ∝ rank^-S, ranks shuffled per layer so hot
experts are scattered as in real routers); `dirichlet:A` (each batch draws its popularity from a
Dirichlet with mean = the base popularity and concentration A per expert: batch-to-batch drift);
`file:PATH` (CSV or NPY, layers × experts load shares, e.g. measured from a real router; one
row applies to every layer); `trace:PATH` (NPY of expert ids, tokens × k or layers × tokens × k,
replayed as is). Group-limited routing follows the model's router (DeepSeek-V3: 8 groups, top-4),
node-limited routing caps the nodes a token reaches; shared experts are never routed.

The aux-loss-free balancing of DeepSeek-V3 (arXiv 2412.19437, Sec 2.1.2) is simulated batch after
batch by `balance_over_batches`: selection uses score + bias, and after each batch every expert's
bias moves by a fixed speed against its over/under-load.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from moesim.core import rng as seeds
from moesim.core.errors import MoesimError
from moesim.core.loader import Record
from moesim.kernels import routing as kernels
from moesim.kernels.loads import apply_capacity, expert_counts
from moesim.specs.model import ModelSpec

SkewKind = Literal["uniform", "zipf", "dirichlet", "file", "trace"]

CHOICE_BYTES = 8  # int32 expert id per (token, choice) + work arrays: 6.4 GB measured for 1e8 tokens x top-8
MAX_SAMPLE_BYTES = 4 * 2**30  # keeps a sample well inside a 24 GiB machine


class Skew(Record):
    kind: SkewKind
    value: float = 0.0
    path: Optional[str] = None

    def label(self) -> str:
        if self.kind in ("zipf", "dirichlet"):
            return f"{self.kind}:{self.value:g}"
        return f"{self.kind}:{self.path}" if self.path else self.kind


def parse_skew(text: str, *, field: str = "routing.skew") -> Skew:
    """Read `uniform`, `zipf:S`, `dirichlet:A`, `file:PATH` or `trace:PATH`."""
    kind, _, arg = text.partition(":")
    usage = "use uniform, zipf:S (S >= 0), dirichlet:A (A > 0), file:PATH or trace:PATH"
    if kind == "uniform" and not arg:
        return Skew(kind="uniform")
    if kind in ("zipf", "dirichlet"):
        try:
            value = float(arg)
        except ValueError:
            raise MoesimError(f"{text!r} has no number after '{kind}:'", field=field, fix=usage) from None
        if not np.isfinite(value) or value < 0 or (kind == "dirichlet" and value == 0):
            bound = ">= 0" if kind == "zipf" else "> 0"
            raise MoesimError(f"{kind} parameter must be {bound}, got {value:g}", field=field, fix=usage)
        return Skew(kind=kind, value=value)
    if kind in ("file", "trace") and arg:
        if not Path(arg).is_file():
            raise MoesimError(f"no such file {arg!r}", field=field, fix="give an existing CSV/NPY file")
        return Skew(kind=kind, path=arg)
    raise MoesimError(f"unknown skew {text!r}", field=field, fix=usage)


class RoutingSample(Record):
    """Routing of one batch through the simulated MoE layers.

    `choices[l]` is int32[tokens, k] for layer `layers[l]` (index among MoE layers);
    `expert_load` is int64[layers, experts]; `dropped[l]` counts token-expert pairs dropped by
    the capacity factor (0 without one).
    """

    model_config = {"arbitrary_types_allowed": True, "frozen": True, "extra": "forbid"}
    layers: list[int]
    choices: list[np.ndarray]
    kept: Optional[list[np.ndarray]] = None
    expert_load: np.ndarray
    dropped: list[int]
    skew: str


def _load_table(path: str, n_layers: int, n_experts: int, field: str) -> np.ndarray:
    try:
        table = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as exc:
        raise MoesimError(f"cannot read popularity table ({exc})", field=field, file=path,
                          fix="give a CSV or NPY of layers x experts load shares") from None
    table = np.atleast_2d(np.asarray(table, dtype=np.float64))
    if table.shape[1] != n_experts or table.shape[0] not in (1, n_layers):
        raise MoesimError(f"popularity table has shape {table.shape}, model needs (1 or {n_layers}, {n_experts})",
                          field=field, file=path, fix="give one row per MoE layer and one column per routed expert")
    if (table < 0).any() or (table.sum(axis=1) <= 0).any() or not np.isfinite(table).all():
        raise MoesimError("popularity table has negative, non-finite or all-zero rows", field=field, file=path,
                          fix="give non-negative load shares")
    table = np.broadcast_to(table, (n_layers, n_experts))
    return table / table.sum(axis=1, keepdims=True)


def base_popularity(model: ModelSpec, skew: Skew, seed: int, *, field: str = "routing.skew") -> np.ndarray:
    """Expected load share per [moe_layer, expert] before any per-batch drift."""
    n_layers, n_experts = model.num_moe_layers, model.moe.num_experts
    if skew.kind == "file":
        return _load_table(skew.path, n_layers, n_experts, field)
    pop = np.full((n_layers, n_experts), 1.0 / n_experts)
    if skew.kind == "zipf":
        ranks = np.arange(1, n_experts + 1, dtype=np.float64) ** -skew.value
        for layer in range(n_layers):
            order = seeds.stream(seed, "zipf-order", layer).permutation(n_experts)
            pop[layer, order] = ranks / ranks.sum()
    return pop


def batch_popularity(base: np.ndarray, skew: Skew, seed: int, batch: int) -> np.ndarray:
    """Popularity of one batch: the base, or a Dirichlet draw around it (drift)."""
    if skew.kind != "dirichlet":
        return base
    gen = seeds.stream(seed, "dirichlet-drift", batch)
    alpha = skew.value * base.shape[1] * base
    return np.vstack([gen.dirichlet(np.maximum(row, 1e-12)) for row in alpha])


def expert_groups(model: ModelSpec, *, node_limit: Optional[int], nodes: int) -> tuple[np.ndarray, int]:
    """Group id per expert and how many groups a token may use (0 = no limit).

    Node-limited routing (at most `node_limit` nodes per token) takes precedence over the
    router's own groups and assumes experts are laid out contiguously over `nodes` nodes.
    """
    n_experts = model.moe.num_experts
    router = model.moe.router
    if node_limit:
        return (np.arange(n_experts) * nodes // n_experts).astype(np.int32), int(node_limit)
    if router.n_group and router.n_group > 1 and router.topk_group:
        return (np.arange(n_experts) * router.n_group // n_experts).astype(np.int32), int(router.topk_group)
    return np.zeros(n_experts, dtype=np.int32), 0


def check_reachable(model: ModelSpec, groups: np.ndarray, limit: int, *, field: str) -> None:
    k, n_experts = model.moe.num_experts_per_tok, model.moe.num_experts
    if k > n_experts:
        raise MoesimError(f"top-k {k} exceeds the {n_experts} experts", field="moe.num_experts_per_tok",
                          fix="k must be at most the number of routed experts")
    if limit:
        n_groups = int(groups.max()) + 1
        reachable = int(np.sort(np.bincount(groups, minlength=n_groups))[::-1][:limit].sum())
        if k > reachable:
            raise MoesimError(f"top-k {k} exceeds the {reachable} experts reachable in {limit} of {n_groups} groups",
                              field=field, fix=f"raise the limit to at least {int(np.ceil(k * n_groups / n_experts))}")


def _trace_choices(path: str, model: ModelSpec, layers: list[int], field: str) -> list[np.ndarray]:
    try:
        trace = np.load(path)
    except (OSError, ValueError) as exc:
        raise MoesimError(f"cannot read trace ({exc})", field=field, file=path,
                          fix="give an NPY array of expert ids, tokens x k or layers x tokens x k") from None
    k, n_experts = model.moe.num_experts_per_tok, model.moe.num_experts
    if trace.ndim == 2:
        trace = np.broadcast_to(trace, (model.num_moe_layers,) + trace.shape)
    if trace.ndim != 3 or trace.shape[2] != k or trace.shape[0] != model.num_moe_layers:
        raise MoesimError(f"trace has shape {trace.shape}, model needs (tokens, {k}) or ({model.num_moe_layers}, tokens, {k})",
                          field=field, file=path, fix="record k expert ids per token (per MoE layer)")
    if not np.issubdtype(trace.dtype, np.integer) or trace.min() < 0 or trace.max() >= n_experts:
        raise MoesimError(f"trace holds expert ids outside 0..{n_experts - 1}", field=field, file=path,
                          fix="use integer expert ids of this model")
    return [np.ascontiguousarray(trace[layer], dtype=np.int32) for layer in layers]


def check_sample_size(tokens: int, layers: int, topk: int) -> None:
    """Refuse, before allocating, a routing sample larger than `MAX_SAMPLE_BYTES` of expert choices
    (int32 per token and choice, per layer; the kernels' work arrays are of the same order)."""
    need = tokens * max(layers, 1) * topk * CHOICE_BYTES
    if need > MAX_SAMPLE_BYTES:
        most = MAX_SAMPLE_BYTES // (max(layers, 1) * topk * CHOICE_BYTES)
        raise MoesimError(f"routing {tokens:,} tokens over {layers} MoE layer(s) would hold {need / 2**30:,.1f} GiB of "
                          f"expert choices, over the {MAX_SAMPLE_BYTES / 2**30:g} GiB limit", field="tokens",
                          fix=f"route at most {most:,} tokens at once (a smaller --tokens or --batch)")


def sample_routing(model: ModelSpec, skew: Skew, tokens: int, *, seed: int, layers: Optional[list[int]] = None,
                   batch: int = 0, node_limit: Optional[int] = None, nodes: int = 1,
                   capacity_factor: Optional[float] = None, field: str = "routing.skew") -> RoutingSample:
    """Sample (or replay) the expert choices of `tokens` tokens in the given MoE layers."""
    if tokens <= 0:
        raise MoesimError(f"token count must be positive, got {tokens}", field="tokens", fix="give at least 1 token")
    layers = list(range(model.num_moe_layers)) if layers is None else layers
    check_sample_size(tokens, len(layers), model.moe.num_experts_per_tok)
    if node_limit is not None and node_limit < 1:
        raise MoesimError(f"node limit must be >= 1, got {node_limit}", field="routing.node_limit",
                          fix="give the most nodes a token may reach, or leave it unset")
    groups, limit = expert_groups(model, node_limit=node_limit, nodes=nodes)
    check_reachable(model, groups, limit, field="routing.node_limit" if node_limit else "moe.router.topk_group")
    k, n_experts = model.moe.num_experts_per_tok, model.moe.num_experts
    if skew.kind == "trace":
        choices = [c[:tokens] for c in _trace_choices(skew.path, model, layers, field)]
    else:
        pop = batch_popularity(base_popularity(model, skew, seed, field=field), skew, seed, batch)
        choices = []
        for layer in layers:
            layer_seed = int(seeds.stream(seed, "routing", batch, layer).integers(0, 2**62))
            choices.append(kernels.sample_topk(pop[layer], groups, limit, tokens, k, layer_seed))
    kept, dropped = None, [0] * len(layers)
    if capacity_factor is not None:
        if not math.isfinite(capacity_factor) or capacity_factor <= 0:
            raise MoesimError(f"capacity factor must be positive, got {capacity_factor}", field="capacity_factor",
                              fix="use e.g. 1.25 (GShard/Switch) or leave it unset for dropless routing")
        capacity = int(np.ceil(capacity_factor * len(choices[0]) * k / n_experts))
        kept = []
        for i, c in enumerate(choices):
            mask, n_dropped = apply_capacity(c, n_experts, capacity)
            kept.append(mask)
            dropped[i] = int(n_dropped)
    load = np.vstack([expert_counts(c, n_experts) for c in choices]).astype(np.int64)
    if kept is not None:
        load = np.vstack([np.bincount(c[m], minlength=n_experts) for c, m in zip(choices, kept)]).astype(np.int64)
    return RoutingSample(layers=layers, choices=choices, kept=kept, expert_load=load, dropped=dropped,
                         skew=skew.label())


def balance_over_batches(model: ModelSpec, skew: Skew, tokens: int, batches: int, *, seed: int, layer: int = 0,
                         bias_speed: float = 0.001) -> np.ndarray:
    """Imbalance (max/mean expert load) per batch under aux-loss-free bias balancing.

    Selection uses log-popularity + Gumbel noise + bias (score mode); after each batch the bias of
    an overloaded expert drops by `bias_speed` and that of an underloaded one rises (DeepSeek-V3
    Sec 2.1.2, bias update speed gamma; 0.001 in its pre-training).
    """
    groups, limit = expert_groups(model, node_limit=None, nodes=1)
    check_reachable(model, groups, limit, field="moe.router.topk_group")
    k, n_experts = model.moe.num_experts_per_tok, model.moe.num_experts
    base = base_popularity(model, skew, seed)
    bias = np.zeros(n_experts)
    out = np.empty(batches)
    for b in range(batches):
        pop = batch_popularity(base, skew, seed, b)[layer]
        batch_seed = int(seeds.stream(seed, "balance", b, layer).integers(0, 2**62))
        choices = kernels.score_topk(np.log(np.maximum(pop, 1e-300)), bias, groups, limit, tokens, k, batch_seed)
        load = expert_counts(choices, n_experts).astype(np.float64)
        out[b] = load.max() / load.mean()
        bias = bias + bias_speed * np.sign(load.mean() - load)
    return out
