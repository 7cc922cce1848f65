"""MoE model architectures: the spec record, exact parameter counts, and KV-cache size.

The formulas follow `models_check.md` of the project's reference notes (reproduced in
docs/models.md): attention (GQA/MHA or MLA), dense and expert FFNs, routers, norms, embeddings,
and the Llama 4 vision tower. Counts are exact integers so they can be tested to the parameter.

Active-parameter convention (stated once, used everywhere): `active_params` counts what one
token multiplies through: every layer with its top-k routed and its shared experts, plus the
LM head, but not the input embedding (a table lookup, no FLOPs). `active_params_with_embedding`
adds the input embedding, the convention some vendors publish.
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import model_validator

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, available, data_root, load_record, resolve
from moesim.specs.layersets import layer_indices

GATED = {"swiglu", "geglu", "swiglu_clamped"}
NORM_PARAMS_PER_DIM = {"rmsnorm": 1, "layernorm": 2, "layernorm_no_bias": 1}


class Attention(Record):
    type: Literal["mla", "gqa", "mha"]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: Optional[int] = None
    q_lora_rank: Optional[int] = None
    kv_lora_rank: Optional[int] = None
    qk_nope_head_dim: Optional[int] = None
    qk_rope_head_dim: Optional[int] = None
    v_head_dim: Optional[int] = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: Literal["none", "per_head_rmsnorm", "full_width_rmsnorm", "l2_no_weight"] = "none"
    sinks: bool = False
    output_gate: bool = False          # q_proj also emits a per-element sigmoid gate on the output (Qwen3.5)
    sliding_window: Optional[int] = None
    attention_chunk_size: Optional[int] = None
    layer_pattern: Optional[str] = None
    clip_qkv: Optional[float] = None
    logit_softcap: Optional[float] = None

    @model_validator(mode="after")
    def _complete(self) -> "Attention":
        if self.type == "mla":
            needed = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        else:
            needed = ("head_dim",)
        missing = [n for n in needed if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.type} attention needs {', '.join(missing)}; add them from config.json")
        if self.num_attention_heads <= 0 or self.num_key_value_heads <= 0:
            raise ValueError("head counts must be positive; use the config.json values")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads; check config.json")
        return self


class LayerSet(Record):
    rule: str
    count: int


class Layers(Record):
    dense_intermediate_size: Optional[int] = None
    dense_layers: LayerSet
    moe_layers: LayerSet


class Router(Record):
    scoring_func: str
    topk_method: Optional[str] = None
    expert_score_bias: bool = False
    norm_topk_prob: Optional[bool] = None
    routed_scaling_factor: Optional[float] = None
    n_group: Optional[int] = None
    topk_group: Optional[int] = None
    router_bias: bool = False
    note: Optional[str] = None


class MoE(Record):
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    num_shared_experts: int = 0
    shared_expert_intermediate_size: Optional[int] = None
    shared_expert_gate: bool = False
    expert_bias: bool = False
    expert_capacity_factor: Optional[dict[str, float]] = None
    router: Router

    @model_validator(mode="after")
    def _sane(self) -> "MoE":
        if self.num_experts <= 0 or self.moe_intermediate_size <= 0:
            raise ValueError("num_experts and moe_intermediate_size must be positive; use config.json values")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"num_experts_per_tok must be in 1..{self.num_experts}; use config.json values")
        if self.num_shared_experts and not self.shared_expert_intermediate_size:
            raise ValueError("shared experts need shared_expert_intermediate_size; add it")
        return self


class KVCache(Record):
    elements_per_token_per_layer: int
    decompressed_elements_per_token_per_layer: Optional[int] = None
    layers_with_kv: int
    note: Optional[str] = None


class KVWindow(Record):
    """Layers whose KV cache holds at most `tokens` tokens (sliding-window or chunked attention)."""

    layers: str
    tokens: int
    source: str


class LinearAttention(Record):
    """Linear-attention layers (Gated DeltaNet: Qwen3-Next, Qwen3.5). Each keeps, per sequence, a
    recurrent state of num_value_heads x key_head_dim x value_head_dim and a causal-conv state of
    conv_dim x (conv_kernel_dim - 1) whatever the context length: no KV cache that grows. Projections
    as transformers' Qwen3_5GatedDeltaNet: in_proj_qkv (d -> conv_dim), in_proj_z (d -> value_dim),
    in_proj_b / in_proj_a (d -> value heads), depthwise conv1d without bias, dt_bias and A_log per
    value head, a gated RMSNorm over value_head_dim, out_proj (value_dim -> d)."""

    kind: Literal["gated_deltanet"] = "gated_deltanet"
    layers: str
    count: int
    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel_dim: int
    state_dtype: Optional[str] = None   # the recurrent state's format (HF mamba_ssm_dtype); None: the KV-cache format
    source: str

    @model_validator(mode="after")
    def _sane(self) -> "LinearAttention":
        if min(self.num_key_heads, self.num_value_heads, self.key_head_dim, self.value_head_dim,
               self.conv_kernel_dim) <= 0:
            raise ValueError("linear_attention head counts, head dims and conv_kernel_dim must be positive; "
                             "use the config.json values")
        if self.num_value_heads % self.num_key_heads:
            raise ValueError("linear_attention.num_value_heads must be a multiple of num_key_heads; check config.json")
        return self

    @property
    def key_dim(self) -> int:
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.num_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def recurrent_state_elements(self) -> int:
        """One layer's delta-rule state for one sequence: a key x value matrix per value head."""
        return self.num_value_heads * self.key_head_dim * self.value_head_dim

    @property
    def conv_state_elements(self) -> int:
        """One layer's causal-conv window for one sequence: the last kernel - 1 inputs."""
        return self.conv_dim * (self.conv_kernel_dim - 1)

    def params(self, hidden: int) -> int:
        v_heads = self.num_value_heads
        proj = hidden * (self.conv_dim + self.value_dim + 2 * v_heads) + self.value_dim * hidden
        return proj + self.conv_dim * self.conv_kernel_dim + 2 * v_heads + self.value_head_dim

    def core_flops_per_token(self) -> float:
        """Per token and layer, whatever the context: the gated delta rule touches each value head's
        dk x dv state 7 times (decay 1, S^T k 2, rank-1 update 2, S^T q 2), and the depthwise conv
        costs 2 x conv_dim x kernel."""
        return 7.0 * self.recurrent_state_elements + 2.0 * self.conv_dim * self.conv_kernel_dim


class SparseAttention(Record):
    """Top-k sparse attention on every attention layer (DeepSeek Sparse Attention: DeepSeek-V3.2,
    GLM-5). A lightning indexer (index_n_heads x index_head_dim queries from the MLA q latent, one
    index_head_dim key per token that is cached beside the MLA latent) scores every cached token;
    the main attention attends only the index_topk best. Indexer weights as transformers'
    GlmMoeDsaIndexer: wq_b (q_lora_rank -> heads x dim), wk (d -> dim), k_norm LayerNorm(dim) with
    bias, weights_proj (d -> heads)."""

    kind: Literal["dsa"] = "dsa"
    index_topk: int
    index_n_heads: int
    index_head_dim: int
    source: str

    def indexer_params(self, hidden: int, q_lora_rank: int) -> int:
        h, dim = self.index_n_heads, self.index_head_dim
        return q_lora_rank * h * dim + hidden * dim + 2 * dim + hidden * h

    def indexer_flops_per_key(self) -> float:
        """Scoring one cached key for one query token (q.k per indexer head)."""
        return 2.0 * self.index_n_heads * self.index_head_dim


class VisionEncoder(Record):
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    pixel_shuffle_ratio: float
    projector_input_dim: int
    projector_output_dim: int
    vision_output_dim: int
    note: Optional[str] = None


class ReleaseFormats(Record):
    """The formats of the checkpoint a model was released in, where it was released quantised: its MoE
    experts' and every other GEMM's (workloads/dtypes.yaml names), with the config field that says so."""

    experts: str
    other: str
    source: str

    @model_validator(mode="after")
    def _known_formats(self) -> "ReleaseFormats":
        from moesim.specs import precision
        for name in (self.experts, self.other):
            if name not in precision.names():
                raise ValueError(f"release format {name!r} is not in workloads/dtypes.yaml; use one of "
                                 f"{', '.join(precision.names())}")
        return self


class ModelSpec(Record):
    """One MoE model as its Hugging Face config describes it, plus where each fact came from."""

    id: str
    name: str
    hf_id: Optional[str] = None
    also_covers: Optional[list[str]] = None
    note: Optional[str] = None
    model_type: str
    structure: Literal["decoder_only", "decoder_only_with_vision_encoder"]
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    max_position_embeddings: Optional[int] = None
    tie_word_embeddings: bool = False
    lm_head_bias: bool = False
    norm: Literal["rmsnorm", "layernorm", "layernorm_no_bias"]
    norms_per_layer: int = 2
    activation: Literal["swiglu", "geglu", "swiglu_clamped", "relu"]
    rope: Optional[dict[str, Any]] = None
    attention: Attention
    kv_cache: KVCache
    kv_window: Optional[KVWindow] = None
    linear_attention: Optional[LinearAttention] = None
    sparse_attention: Optional[SparseAttention] = None
    layers: Layers
    moe: MoE
    mtp: Optional[dict[str, Any]] = None
    vision_encoder: Optional[VisionEncoder] = None
    quantization_of_release: Optional[str] = None
    release_formats: Optional[ReleaseFormats] = None
    published: dict[str, Any]
    source: dict[str, Any]

    @model_validator(mode="after")
    def _layers_consistent(self) -> "ModelSpec":
        if self.hidden_size <= 0 or self.num_hidden_layers <= 0 or self.vocab_size <= 0:
            raise ValueError("hidden_size, num_hidden_layers and vocab_size must be positive; use config.json values")
        dense = layer_indices(self.layers.dense_layers.rule, self.num_hidden_layers,
                              field="layers.dense_layers.rule")
        moe = layer_indices(self.layers.moe_layers.rule, self.num_hidden_layers,
                            field="layers.moe_layers.rule")
        if len(dense) != self.layers.dense_layers.count or len(moe) != self.layers.moe_layers.count:
            raise ValueError("layer rules select a different number of layers than 'count' says; "
                             "fix the rule or the count")
        if sorted(dense + moe) != list(range(self.num_hidden_layers)):
            raise ValueError("dense_layers and moe_layers must together cover every layer exactly once; "
                             "fix the rules")
        if dense and not self.layers.dense_intermediate_size:
            raise ValueError("dense layers need layers.dense_intermediate_size; add it")
        lin = self.linear_attention
        if lin is not None:
            linear = layer_indices(lin.layers, self.num_hidden_layers, field="linear_attention.layers")
            if len(linear) != lin.count:
                raise ValueError("linear_attention.layers selects a different number of layers than its "
                                 "'count' says; fix the rule or the count")
            if self.kv_cache.layers_with_kv != self.num_hidden_layers - lin.count:
                raise ValueError("kv_cache.layers_with_kv must count only the layers that are not linear "
                                 f"attention ({self.num_hidden_layers - lin.count}); fix it")
            if set(linear) & set(self.windowed_layer_indices):
                raise ValueError("a layer cannot be both linear attention and windowed; fix kv_window.layers")
        elif self.kv_cache.layers_with_kv != self.num_hidden_layers:
            raise ValueError(f"kv_cache.layers_with_kv must be num_hidden_layers ({self.num_hidden_layers}) "
                             "when no layer is linear attention; fix it")
        if self.sparse_attention is not None and self.attention.type != "mla":
            raise ValueError("sparse_attention (DSA) needs MLA attention (its indexer reads the q latent)")
        if self.sparse_attention is not None and not self.attention.q_lora_rank:
            raise ValueError("sparse_attention (DSA) needs attention.q_lora_rank; add it from config.json")
        return self

    # ---------------------------------------------------------------- layer structure
    @cached_property
    def moe_layer_indices(self) -> tuple[int, ...]:
        return layer_indices(self.layers.moe_layers.rule, self.num_hidden_layers)

    @cached_property
    def dense_layer_indices(self) -> tuple[int, ...]:
        return layer_indices(self.layers.dense_layers.rule, self.num_hidden_layers)

    @cached_property
    def linear_layer_indices(self) -> tuple[int, ...]:
        if self.linear_attention is None:
            return ()
        return layer_indices(self.linear_attention.layers, self.num_hidden_layers)

    def attention_kind(self, index: int) -> Literal["full", "window", "linear", "sparse"]:
        """What layer `index` attends with: linear (fixed state), window (KV capped), sparse (top-k
        keys of a full KV cache) or full."""
        if index in self._linear_set:
            return "linear"
        if index in self._windowed_set:
            return "window"
        return "sparse" if self.sparse_attention is not None else "full"

    @cached_property
    def _linear_set(self) -> frozenset[int]:
        return frozenset(self.linear_layer_indices)

    @cached_property
    def _windowed_set(self) -> frozenset[int]:
        return frozenset(self.windowed_layer_indices)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_indices)

    @property
    def is_gated(self) -> bool:
        return self.activation in GATED

    # ---------------------------------------------------------------- parameter counts
    def ffn_params(self, intermediate: int, *, with_bias: bool = False) -> int:
        """One FFN (an expert or a dense MLP): gated = 3 matrices, ReLU = 2; optional biases."""
        d = self.hidden_size
        weights = (3 if self.is_gated else 2) * d * intermediate
        return weights + (2 * intermediate + d if with_bias else 0)

    @cached_property
    def attention_params(self) -> int:
        """Per layer: projections, biases, QK-norms, sinks (MLA incl. its two latent norms)."""
        a, d = self.attention, self.hidden_size
        h, k = a.num_attention_heads, a.num_key_value_heads
        if a.type == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            if a.q_lora_rank:
                q = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * h * qk
            else:
                q = d * h * qk
            kv = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
            kv += a.kv_lora_rank * h * (a.qk_nope_head_dim + a.v_head_dim)
            return q + kv + h * a.v_head_dim * d
        hd = a.head_dim
        n = d * hd * (2 * h + 2 * k)
        if a.qkv_bias:
            n += (h + 2 * k) * hd
        if a.o_bias:
            n += d
        n += {"none": 0, "l2_no_weight": 0, "per_head_rmsnorm": 2 * hd,
              "full_width_rmsnorm": (h + k) * hd}[a.qk_norm]
        if a.sinks:
            n += h
        if a.output_gate:
            n += d * h * hd
        return n

    @cached_property
    def routed_expert_params(self) -> int:
        return self.ffn_params(self.moe.moe_intermediate_size, with_bias=self.moe.expert_bias)

    @cached_property
    def shared_experts_params(self) -> int:
        m = self.moe
        return m.num_shared_experts * self.ffn_params(m.shared_expert_intermediate_size or 0)

    @cached_property
    def router_params(self) -> int:
        m, d = self.moe, self.hidden_size
        n = d * m.num_experts
        n += m.num_experts if m.router.router_bias else 0
        n += m.num_experts if m.router.expert_score_bias else 0
        n += d if m.shared_expert_gate else 0
        return n

    @cached_property
    def norm_params_per_layer(self) -> int:
        return self.norms_per_layer * NORM_PARAMS_PER_DIM[self.norm] * self.hidden_size

    @cached_property
    def final_norm_params(self) -> int:
        return NORM_PARAMS_PER_DIM[self.norm] * self.hidden_size

    @cached_property
    def dense_mlp_params(self) -> int:
        return self.ffn_params(self.layers.dense_intermediate_size or 0)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.head_matmul_params

    @cached_property
    def vision_params(self) -> int:
        """Llama 4 vision tower: ViT layers with biases, patch/class/position embeddings,
        pre/post LayerNorms, pixel-shuffle MLP and the projector to the text width
        (structure of transformers' Llama4VisionModel and Llama4MultiModalProjector)."""
        v = self.vision_encoder
        if v is None:
            return 0
        w, inner = v.hidden_size, v.intermediate_size
        layer = 4 * (w * w + w) + (w * inner + inner) + (inner * w + w) + 2 * (2 * w)
        patches = (v.image_size // v.patch_size) ** 2
        embed = 3 * v.patch_size**2 * w + w + (patches + 1) * w
        shuffled = int(w / v.pixel_shuffle_ratio**2)
        adapter = shuffled * v.projector_input_dim + v.projector_input_dim * v.projector_output_dim
        projector = v.vision_output_dim * self.hidden_size
        return v.num_hidden_layers * layer + embed + 2 * (2 * w) + adapter + projector

    def moe_block_params(self, *, active: bool) -> int:
        experts = self.moe.num_experts_per_tok if active else self.moe.num_experts
        return experts * self.routed_expert_params + self.shared_experts_params + self.router_params

    @cached_property
    def indexer_params(self) -> int:
        """Per layer: the DSA lightning indexer's weights (0 without sparse attention)."""
        s = self.sparse_attention
        return s.indexer_params(self.hidden_size, self.attention.q_lora_rank or 0) if s else 0

    @cached_property
    def linear_attention_params(self) -> int:
        """Per linear-attention layer: the Gated DeltaNet block (0 without linear layers)."""
        lin = self.linear_attention
        return lin.params(self.hidden_size) if lin else 0

    def layer_attention_params(self, index: int) -> int:
        """The token mixer of layer `index`: linear attention, or attention (+ the DSA indexer)."""
        if index in self._linear_set:
            return self.linear_attention_params
        return self.attention_params + self.indexer_params

    def layer_params(self, index: int, *, active: bool = False) -> int:
        body = self.moe_block_params(active=active) if index in self.moe_layer_indices \
            else self.dense_mlp_params
        return self.layer_attention_params(index) + body + self.norm_params_per_layer

    @property
    def head_matmul_params(self) -> int:
        """Weights the LM head multiplies through, also when they are tied to the embedding."""
        return self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)

    def _total(self, *, active: bool) -> int:
        layers = sum(self.layer_params(i, active=active) for i in range(self.num_hidden_layers))
        head = self.head_matmul_params if active else self.head_params
        return layers + self.final_norm_params + head

    @cached_property
    def total_params(self) -> int:
        """Every stored parameter of the main model (vision tower included, MTP excluded)."""
        return self.embedding_params + self._total(active=False) + self.vision_params

    @cached_property
    def active_params(self) -> int:
        """Parameters one text token passes through, LM head included, input embedding excluded."""
        return self._total(active=True)

    @property
    def active_params_with_embedding(self) -> int:
        """Active count with the input embedding too (a tied matrix is counted once)."""
        return self.active_params + (0 if self.tie_word_embeddings else self.embedding_params)

    # ---------------------------------------------------------------- KV cache
    @cached_property
    def main_kv_elements_per_token_per_layer(self) -> int:
        """What the main attention caches per token per layer: MLA latent + rope key, or K and V."""
        a = self.attention
        if a.type == "mla":
            return a.kv_lora_rank + a.qk_rope_head_dim
        return 2 * a.num_key_value_heads * a.head_dim

    @cached_property
    def kv_elements_per_token_per_layer(self) -> int:
        """Cached scalars per token per layer that has a KV cache: the main attention's, plus the
        DSA indexer's key (index_head_dim) with sparse attention."""
        s = self.sparse_attention
        return self.main_kv_elements_per_token_per_layer + (s.index_head_dim if s else 0)

    @cached_property
    def windowed_layer_indices(self) -> tuple[int, ...]:
        if self.kv_window is None:
            return ()
        return layer_indices(self.kv_window.layers, self.num_hidden_layers, field="kv_window.layers")

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """KV bytes one token adds over all layers when no window caps it (the table figure);
        linear-attention layers add none (their state is per sequence: `state_bytes_per_sequence`)."""
        return self.kv_elements_per_token_per_layer * self.kv_cache.layers_with_kv * bytes_per_element

    def kv_tokens_held(self, context_len: int) -> tuple[int, ...]:
        """Tokens of KV each decoder layer holds for one sequence of `context_len` tokens (0 on a
        linear-attention layer, at most the window on a windowed one)."""
        cap = self.kv_window.tokens if self.kv_window else 0
        return tuple(0 if i in self._linear_set else min(context_len, cap) if i in self._windowed_set
                     else context_len for i in range(self.num_hidden_layers))

    def layer_state_bytes(self, kv_bytes_per_element: float, state_bytes_per_element: Optional[float] = None) -> float:
        """One linear-attention layer's fixed state for one sequence (0 without linear layers): the
        recurrent state in `state_bytes_per_element` (default: the KV format), the conv window in
        the KV format."""
        lin = self.linear_attention
        if lin is None:
            return 0.0
        state_b = kv_bytes_per_element if state_bytes_per_element is None else state_bytes_per_element
        return lin.recurrent_state_elements * state_b + lin.conv_state_elements * kv_bytes_per_element

    def state_bytes_per_sequence(self, kv_bytes_per_element: float,
                                 state_bytes_per_element: Optional[float] = None) -> float:
        """Fixed bytes one sequence holds over all linear-attention layers, whatever its length."""
        return len(self.linear_layer_indices) * self.layer_state_bytes(kv_bytes_per_element,
                                                                        state_bytes_per_element)


def models_dir() -> Path:
    return data_root() / "workloads" / "models"


@lru_cache(maxsize=64)
def load_model(name_or_path: str) -> ModelSpec:
    path = resolve("model", name_or_path, models_dir())
    spec = load_record(ModelSpec, path)
    if spec.kv_elements_per_token_per_layer != spec.kv_cache.elements_per_token_per_layer:
        raise MoesimError(
            f"kv_cache.elements_per_token_per_layer is {spec.kv_cache.elements_per_token_per_layer} but the "
            f"attention fields give {spec.kv_elements_per_token_per_layer}", file=str(path),
            field="kv_cache.elements_per_token_per_layer", fix="make them agree (see docs/models.md)")
    return spec


def model_names() -> list[str]:
    return available(models_dir())
