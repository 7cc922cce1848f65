"""FLOPs and bytes of each operator class for one token through the model (forward pass).

The compute model multiplies these by token counts and divides by roofline throughputs; keeping
them per token and per operator class makes the breakdown ("where does the time go") exact.

Conventions: a matmul with P weights costs 2P FLOPs per token; attention-score FLOPs are
4 x heads x head_dim x attended tokens (QK^T and AV), with MLA either non-absorbed (prefill,
per-head 192/128 dims) or absorbed into the latent (decode, FlashMLA style: 576/512 dims).
`models_check.md` defines "matmul FLOPs per token" as 2 x active parameters; the sum of the
weight ops below reproduces it (tested).

Per-layer attention kinds (`ModelSpec.attention_kind`): a linear-attention layer (Gated DeltaNet)
costs O(1) per token, whatever the context, and reads its fixed state instead of KV; a sparse (DSA)
layer attends at most `index_topk` keys, plus the indexer's scoring of every cached key (its
small key cache is read in full); full and windowed layers attend every token they hold.
"""
from __future__ import annotations

from typing import Literal, Optional

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


def attention_core_flops(model: ModelSpec, attended: float, *, absorbed: bool,
                         layer: Optional[int] = None) -> float:
    """Score + value FLOPs of one query token over `attended` held keys in one layer. With sparse
    attention the main attention sees at most `index_topk` of them and the indexer scores all;
    given `layer`, a linear-attention layer costs its fixed recurrence whatever `attended` is."""
    if layer is not None and model.attention_kind(layer) == "linear":
        return model.linear_attention.core_flops_per_token()
    a = model.attention
    h = a.num_attention_heads
    sparse = model.sparse_attention
    indexer = sparse.indexer_flops_per_key() * attended if sparse else 0.0
    if sparse:
        attended = min(attended, sparse.index_topk)
    if a.type == "mla":
        if absorbed:
            core = 2 * h * (a.kv_lora_rank + a.qk_rope_head_dim) * attended + 2 * h * a.kv_lora_rank * attended
        else:
            core = 2 * h * (a.qk_nope_head_dim + a.qk_rope_head_dim) * attended + 2 * h * a.v_head_dim * attended
        return core + indexer
    return 4 * h * a.head_dim * attended + indexer


def attention_kv_elements_read(model: ModelSpec, layer: int, held: float) -> float:
    """Cache elements one decode token reads in `layer` when it holds `held` tokens of KV: all of
    them on full / windowed layers; on a sparse layer the indexer keys of all and the main KV of at
    most `index_topk`; on a linear layer its fixed state (recurrent + conv), whatever the context."""
    kind = model.attention_kind(layer)
    if kind == "linear":
        lin = model.linear_attention
        return float(lin.recurrent_state_elements + lin.conv_state_elements)
    if kind == "sparse":
        sparse = model.sparse_attention
        return held * sparse.index_head_dim + min(held, sparse.index_topk) * model.main_kv_elements_per_token_per_layer
    return held * model.kv_elements_per_token_per_layer


def token_ops(model: ModelSpec, context_len: int, *, absorbed_mla: bool) -> list[OpCost]:
    """Per-token costs of every operator class for a token that attends `context_len` tokens."""
    d = model.hidden_size
    moe_n = model.num_moe_layers
    dense_n = model.num_hidden_layers - moe_n
    n = model.num_hidden_layers
    held = model.kv_tokens_held(context_len)
    attention_params = sum(model.layer_attention_params(i) for i in range(n))
    k, m = model.moe.num_experts_per_tok, model.moe
    ops = [
        OpCost(op_class="embedding", layers=1, flops=0.0, weight_params=d, activation_elements=d,
               kv_elements=0.0),
        OpCost(op_class="attention_proj", layers=n, flops=2.0 * attention_params,
               weight_params=attention_params, activation_elements=n * 2 * d, kv_elements=0.0),
        OpCost(op_class="attention_core", layers=n,
               flops=sum(attention_core_flops(model, t, absorbed=absorbed_mla, layer=i) for i, t in enumerate(held)),
               weight_params=0.0, activation_elements=n * 2 * d,
               kv_elements=sum(attention_kv_elements_read(model, i, t) for i, t in enumerate(held))),
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
