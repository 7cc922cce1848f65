"""FLOPs and bytes of each operator class for one token through the model (forward pass).

The compute model multiplies these by token counts and divides by roofline throughputs; keeping
them per token and per operator class makes the breakdown ("where does the time go") exact.

Conventions: a matmul with P weights costs 2P FLOPs per token; attention-score FLOPs are
4 x heads x head_dim x attended tokens (QK^T and AV), with MLA either non-absorbed (prefill,
per-head 192/128 dims) or absorbed into the latent (decode, FlashMLA style: 576/512 dims).
`models_check.md` defines "matmul FLOPs per token" as 2 x active parameters; the sum of the
weight ops below reproduces it (tested).
"""
from __future__ import annotations

from typing import Literal

from moesim.core.loader import Record
from moesim.specs.model import ModelSpec

OpClass = Literal["embedding", "attention_proj", "attention_core", "norm", "router",
                  "routed_experts", "shared_experts", "dense_mlp", "lm_head"]


class OpCost(Record):
    """One operator class, summed over the layers it appears in; all values per token."""

    op_class: OpClass
    layers: int
    flops: float
    weight_params: float          # parameters this op reads per token (routed: the k chosen experts)
    activation_elements: float    # elements read + written per token (input and output tensors)
    kv_elements: float            # KV-cache elements read per token (attention core only)


def attention_core_flops(model: ModelSpec, attended: float, *, absorbed: bool) -> float:
    """Score + value FLOPs of one query token over `attended` keys in one layer."""
    a = model.attention
    h = a.num_attention_heads
    if a.type == "mla":
        if absorbed:
            return 2 * h * (a.kv_lora_rank + a.qk_rope_head_dim) * attended + 2 * h * a.kv_lora_rank * attended
        return 2 * h * (a.qk_nope_head_dim + a.qk_rope_head_dim) * attended + 2 * h * a.v_head_dim * attended
    return 4 * h * a.head_dim * attended


def token_ops(model: ModelSpec, context_len: int, *, absorbed_mla: bool) -> list[OpCost]:
    """Per-token costs of every operator class for a token that attends `context_len` tokens."""
    d = model.hidden_size
    moe_n = model.num_moe_layers
    dense_n = model.num_hidden_layers - moe_n
    n = model.num_hidden_layers
    held = model.kv_tokens_held(context_len)
    kv_per_layer = model.kv_elements_per_token_per_layer
    attended = sum(held) if held else 0
    k, m = model.moe.num_experts_per_tok, model.moe
    ops = [
        OpCost(op_class="embedding", layers=1, flops=0.0, weight_params=d, activation_elements=d,
               kv_elements=0.0),
        OpCost(op_class="attention_proj", layers=n, flops=2.0 * n * model.attention_params,
               weight_params=n * model.attention_params, activation_elements=n * 2 * d, kv_elements=0.0),
        OpCost(op_class="attention_core", layers=n,
               flops=sum(attention_core_flops(model, t, absorbed=absorbed_mla) for t in held),
               weight_params=0.0, activation_elements=n * 2 * d, kv_elements=attended * kv_per_layer),
        OpCost(op_class="norm", layers=n, flops=4.0 * (n * model.norm_params_per_layer + model.final_norm_params),
               weight_params=n * model.norm_params_per_layer + model.final_norm_params,
               activation_elements=2.0 * d * (n * model.norms_per_layer + 1), kv_elements=0.0),
        OpCost(op_class="router", layers=moe_n, flops=2.0 * moe_n * model.router_params,
               weight_params=moe_n * model.router_params, activation_elements=moe_n * (d + m.num_experts),
               kv_elements=0.0),
        OpCost(op_class="routed_experts", layers=moe_n, flops=2.0 * moe_n * k * model.routed_expert_params,
               weight_params=moe_n * k * model.routed_expert_params,
               activation_elements=moe_n * k * (2 * d + 3 * m.moe_intermediate_size), kv_elements=0.0),
        OpCost(op_class="shared_experts", layers=moe_n, flops=2.0 * moe_n * model.shared_experts_params,
               weight_params=moe_n * model.shared_experts_params,
               activation_elements=moe_n * m.num_shared_experts * (2 * d + 3 * (m.shared_expert_intermediate_size or 0)),
               kv_elements=0.0),
        OpCost(op_class="dense_mlp", layers=dense_n, flops=2.0 * dense_n * model.dense_mlp_params,
               weight_params=dense_n * model.dense_mlp_params,
               activation_elements=dense_n * (2 * d + 3 * (model.layers.dense_intermediate_size or 0)),
               kv_elements=0.0),
        OpCost(op_class="lm_head", layers=1, flops=2.0 * model.head_matmul_params,
               weight_params=model.head_matmul_params, activation_elements=d + model.vocab_size, kv_elements=0.0),
    ]
    return ops


def matmul_flops_per_token(model: ModelSpec) -> float:
    """2 x the weights a token multiplies through (attention scores excluded)."""
    return sum(op.flops for op in token_ops(model, 0, absorbed_mla=False)
               if op.op_class not in ("attention_core", "norm"))
