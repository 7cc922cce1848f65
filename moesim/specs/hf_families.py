"""One converter per supported HF `model_type`, so each family's field mapping reads in one place.

Each converter fills the attention, KV-cache, layer-set and MoE blocks of a model dict from one
family's config.json fields, with the same rules as transformers' modeling code for that family
(the mapping the built-in files in workloads/models/ document in their comments). `SUPPORTED`
lists the model types that have a converter; `moesim.specs.hf_import.convert` dispatches to them.
"""
from __future__ import annotations

from typing import Any, Optional

from moesim.specs.hf_fields import Cfg, Flow, activation, gqa_attention, kv_window, layer_rule, layers, windowed


# ---------------------------------------------------------------- per model family
def deepseek(c: Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    heads = c.req("num_attention_heads")
    rope_dim, nope_dim = c.req("qk_rope_head_dim"), c.req("qk_nope_head_dim")
    kv_rank, v_dim = c.req("kv_lora_rank"), c.req("v_head_dim")
    out["attention"] = {
        "type": "mla",
        "num_attention_heads": heads,
        "num_key_value_heads": c.opt("num_key_value_heads", heads),
        "q_lora_rank": c.opt("q_lora_rank"),
        "kv_lora_rank": kv_rank,
        "qk_nope_head_dim": nope_dim,
        "qk_rope_head_dim": rope_dim,
        "v_head_dim": v_dim,
        "qkv_bias": c.opt("attention_bias", False, kind="bool"),
    }
    out["kv_cache"] = {
        "elements_per_token_per_layer": kv_rank + rope_dim,
        "decompressed_elements_per_token_per_layer": heads * (nope_dim + rope_dim + v_dim),
        "layers_with_kv": n,
    }
    # DeepSeek modeling: MoE iff layer >= first_k_dense_replace and layer % moe_layer_freq == 0
    # required: the DeepSeek-V2 remote code defaults it to 0, transformers' DeepseekV3Config to 3
    first_dense = c.req("first_k_dense_replace")
    freq = c.opt("moe_layer_freq", 1)
    if freq <= 0:
        raise c.error("moe_layer_freq", "must be at least 1", "use the config.json value")
    moe = [i for i in range(n) if i >= first_dense and i % freq == 0]
    dense = [i for i in range(n) if i not in set(moe)]
    out["layers"] = layers(dense, moe, n, c.opt("intermediate_size"),
                           field=c.name("intermediate_size"), source=c.source)
    moe_size = c.req("moe_intermediate_size")
    shared = c.opt("n_shared_experts", 0)
    topk_method = c.opt("topk_method", "greedy", kind="str")
    router: dict[str, Any] = {
        "scoring_func": c.opt("scoring_func", "softmax", kind="str"),
        "topk_method": topk_method,
        "expert_score_bias": topk_method == "noaux_tc",
        "norm_topk_prob": c.opt("norm_topk_prob", False, kind="bool"),
        "routed_scaling_factor": c.opt("routed_scaling_factor", 1.0, kind="float"),
        "n_group": c.opt("n_group", 1),
        "topk_group": c.opt("topk_group", 1),
    }
    out["moe"] = {
        "num_experts": c.req("n_routed_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": moe_size,
        "num_shared_experts": shared,
        **({"shared_expert_intermediate_size": moe_size} if shared else {}),
        "router": router,
    }
    if c.has("num_nextn_predict_layers"):
        out["mtp"] = Flow(num_nextn_predict_layers=c.req("num_nextn_predict_layers"))


def glm_moe_dsa(c: Cfg, out: dict) -> None:
    """GLM-5: DeepSeek-V3 layout (MLA, noaux_tc router) with DeepSeek Sparse Attention on every
    layer; the indexer caches its own key (index_head_dim) per token beside the MLA latent."""
    deepseek(c, out)
    dim = c.req("index_head_dim")
    out["sparse_attention"] = {"kind": "dsa", "index_topk": c.req("index_topk"),
                               "index_n_heads": c.req("index_n_heads"), "index_head_dim": dim,
                               "source": f"{c.source}: index_topk / index_n_heads / index_head_dim"}
    out["kv_cache"]["elements_per_token_per_layer"] += dim


def minimax_m2(c: Cfg, out: dict) -> None:
    """MiniMax-M2 family: GQA with RMSNorm over the whole q and k widths (qk_norm_type per_layer),
    sigmoid router with a score-correction bias, no shared expert; MTP modules not counted."""
    n = c.req("num_hidden_layers")
    use_norm = c.opt("use_qk_norm", False, kind="bool")
    per_head = c.opt("qk_norm_type", "per_layer", kind="str") == "per_head"
    att = gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
                        qk_norm=("per_head_rmsnorm" if per_head else "full_width_rmsnorm") if use_norm else "none")
    out["attention"] = att
    out["layers"] = layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"), source=c.source)
    if c.opt("shared_intermediate_size", 0):
        raise c.error("shared_intermediate_size", "shared experts are not mapped for minimax_m2",
                      "write the model file by hand")
    out["moe"] = {
        "num_experts": c.req("num_local_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "router": Flow(scoring_func=c.opt("scoring_func", "softmax", kind="str"),
                       expert_score_bias=c.opt("use_routing_bias", False, kind="bool")),
    }
    if c.opt("use_mtp", False, kind="bool"):
        out["mtp"] = Flow(num_mtp_modules=c.opt("num_mtp_modules", 0))


def qwen3_5_moe(c: Cfg, out: dict) -> None:
    """Qwen3.5 / Qwen3-Next hybrid: `layer_types` linear_attention layers are Gated DeltaNet (a fixed
    state per sequence), full_attention layers gated GQA with per-head QK norm; MoE with a gated
    shared expert on every layer not in mlp_only_layers."""
    n = c.req("num_hidden_layers")
    if c.has("layer_types"):
        kinds = c.req("layer_types", kind="list")
        if len(kinds) != n:
            raise c.error("layer_types", f"lists {len(kinds)} layers, the model has {n}",
                          "give one entry per decoder layer")
        linear = [i for i, k in enumerate(kinds) if k == "linear_attention"]
    else:  # transformers default: every full_attention_interval-th layer is full attention
        interval = c.opt("full_attention_interval", 4)
        if interval <= 0:
            raise c.error("full_attention_interval", "must be at least 1", "use the config.json value")
        linear = [i for i in range(n) if (i + 1) % interval]
    att = gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"), qk_norm="per_head_rmsnorm")
    att["output_gate"] = c.opt("attn_output_gate", True, kind="bool")
    out["attention"] = att
    out["kv_cache"] = {"elements_per_token_per_layer": 2 * att["num_key_value_heads"] * att["head_dim"],
                       "layers_with_kv": n - len(linear)}
    if linear:
        ssm = c.opt("mamba_ssm_dtype", None, kind="str")
        out["linear_attention"] = {
            "kind": "gated_deltanet",
            "layers": layer_rule(linear, n, field=c.name("layer_types"), source=c.source),
            "count": len(linear),
            "num_key_heads": c.req("linear_num_key_heads"),
            "num_value_heads": c.req("linear_num_value_heads"),
            "key_head_dim": c.req("linear_key_head_dim"),
            "value_head_dim": c.req("linear_value_head_dim"),
            "conv_kernel_dim": c.req("linear_conv_kernel_dim"),
            **({"state_dtype": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(ssm, ssm)}
               if ssm else {}),
            "source": f"{c.source}: layer_types and linear_* fields",
        }
    dense, moe = _qwen_layers(c, n)
    out["layers"] = layers(dense, moe, n, c.opt("intermediate_size"),
                           field=c.name("intermediate_size"), source=c.source)
    shared = c.opt("shared_expert_intermediate_size", 0)
    block: dict[str, Any] = {
        "num_experts": c.req("num_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("moe_intermediate_size"),
        "num_shared_experts": 0,
    }
    if shared:
        block.update(num_shared_experts=1, shared_expert_intermediate_size=shared, shared_expert_gate=True)
    block["router"] = Flow(scoring_func="softmax", expert_score_bias=False)
    out["moe"] = block


def mixtral(c: Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    att = gqa_attention(c)
    window = c.opt("sliding_window")
    att["sliding_window"] = window
    out["attention"] = att
    # MixtralAttention applies sliding_window (when set) on every layer
    out["kv_window"] = kv_window(list(range(n)), window, n, source=c.source,
                                 why="HF config.json sliding_window (all layers)")
    out["layers"] = layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"),
                           source=c.source)
    out["moe"] = {
        "num_experts": c.req("num_local_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "router": Flow(scoring_func="softmax_topk", norm_topk_prob=True, expert_score_bias=False),
    }


def _qwen_layers(c: Cfg, n: int) -> tuple[list[int], list[int]]:
    # Qwen2/3-MoE modeling: MoE iff layer not in mlp_only_layers and (layer + 1) % step == 0
    step = c.opt("decoder_sparse_step", 1)
    if step <= 0:
        raise c.error("decoder_sparse_step", "must be at least 1", "use the config.json value")
    mlp_only = set(c.opt("mlp_only_layers", [], kind="list"))
    moe = [i for i in range(n) if i not in mlp_only and (i + 1) % step == 0]
    dense = [i for i in range(n) if i not in set(moe)]
    return dense, moe


def _qwen_window(c: Cfg, n: int) -> Optional[dict]:
    if c.has("layer_types"):
        layers = windowed(c, n)
    elif c.opt("use_sliding_window", False, kind="bool"):
        layers = list(range(c.opt("max_window_layers", 0), n))
    else:
        return None
    return kv_window(layers, c.opt("sliding_window"), n, source=c.source,
                     why="HF config.json use_sliding_window / max_window_layers / layer_types")


def qwen(c: Cfg, out: dict, *, qwen3: bool) -> None:
    n = c.req("num_hidden_layers")
    if qwen3:
        att = gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
                            qk_norm="per_head_rmsnorm")
    else:
        # Qwen2 attention: bias on q/k/v (newer transformers: qkv_bias, default true), none on o
        att = gqa_attention(c, qkv_bias=c.opt("qkv_bias", True, kind="bool"))
    out["attention"] = att
    out["kv_window"] = _qwen_window(c, n)
    if out["kv_window"]:
        att["sliding_window"] = out["kv_window"]["tokens"]
    dense, moe = _qwen_layers(c, n)
    out["layers"] = layers(dense, moe, n, c.opt("intermediate_size"),
                           field=c.name("intermediate_size"), source=c.source)
    block: dict[str, Any] = {
        "num_experts": c.req("num_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("moe_intermediate_size"),
        "num_shared_experts": 0,
    }
    shared = 0 if qwen3 else c.opt("shared_expert_intermediate_size", 0)
    if shared:
        block.update(num_shared_experts=1, shared_expert_intermediate_size=shared,
                     shared_expert_gate=True)  # sigmoid(Linear(d, 1)) scales the shared expert
    block["router"] = Flow(scoring_func="softmax",
                           norm_topk_prob=c.opt("norm_topk_prob", False, kind="bool"),
                            expert_score_bias=False)
    out["moe"] = block


def llama4(c: Cfg, out: dict, vision: Optional[Cfg]) -> None:
    n = c.req("num_hidden_layers")
    att = gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
                        qk_norm="l2_no_weight" if c.opt("use_qk_norm", True, kind="bool") else "none")
    # no_rope_layers[i] == 1 means layer i USES RoPE (transformers Llama4TextAttention.use_rope);
    # an absent or empty list means a NoPE layer every no_rope_layer_interval layers.
    flags = c.opt("no_rope_layers", None, kind="list")
    if flags:
        if len(flags) < n:
            raise c.error("no_rope_layers", f"lists {len(flags)} layers, the model has {n}",
                          "give one entry per decoder layer")
        rope_layers = [i for i in range(n) if flags[i]]
    else:
        interval = c.opt("no_rope_layer_interval", 4)
        if interval <= 0:
            raise c.error("no_rope_layer_interval", "must be at least 1", "use the config.json value")
        rope_layers = [i for i in range(n) if (i + 1) % interval != 0]
    chunked = windowed(c, n, sliding_value="chunked_attention") if c.has("layer_types") \
        else rope_layers
    # transformers' default is 8192 when the field is absent; an explicit null turns chunking off
    chunk = c.opt("attention_chunk_size") if "attention_chunk_size" in c.data else 8192
    if chunk and chunked:
        att["attention_chunk_size"] = chunk
        if len(chunked) < n:
            glob = [i for i in range(n) if i not in set(chunked)]
            rule = layer_rule(glob, n, field=c.name("no_rope_layers"), source=c.source)
            att["layer_pattern"] = f"{rule} -> global NoPE; others -> chunked({chunk}) RoPE"
    out["attention"] = att
    out["kv_window"] = kv_window(chunked, chunk, n, source=c.source,
                                 why="HF text_config attention_chunk_size on the RoPE layers "
                                      "(no_rope_layers / layer_types)")
    if c.has("moe_layers"):
        moe = sorted(set(c.req("moe_layers", kind="list")))
    else:
        step = c.opt("interleave_moe_layer_step", 1)
        if step <= 0:
            raise c.error("interleave_moe_layer_step", "must be at least 1", "use the config.json value")
        moe = list(range(step - 1, n, step))
    dense = [i for i in range(n) if i not in set(moe)]
    out["layers"] = layers(dense, moe, n, c.opt("intermediate_size_mlp"),
                           field=c.name("intermediate_size_mlp"), source=c.source)
    size = c.req("intermediate_size")
    out["moe"] = {
        "num_experts": c.req("num_local_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": size,
        "num_shared_experts": 1,
        "shared_expert_intermediate_size": size,
        "router": {"scoring_func": "sigmoid", "norm_topk_prob": False, "expert_score_bias": False,
                   "note": "top-1 on logits, sigmoid of the chosen logit scales the expert input"},
    }
    if vision is not None:
        out["vision_encoder"] = {key: vision.req(key, kind) for key, kind in (
            ("hidden_size", "int"), ("num_hidden_layers", "int"), ("num_attention_heads", "int"),
            ("intermediate_size", "int"), ("image_size", "int"), ("patch_size", "int"),
            ("pixel_shuffle_ratio", "float"), ("projector_input_dim", "int"),
            ("projector_output_dim", "int"), ("vision_output_dim", "int"))}


def gpt_oss(c: Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    bias = c.opt("attention_bias", True, kind="bool")
    att = gqa_attention(c, qkv_bias=bias, o_bias=bias)
    att["sinks"] = True  # one learned sink logit per head per layer
    window = c.opt("sliding_window")
    if c.has("layer_types"):
        sliding = windowed(c, n)
    else:  # transformers GptOssConfig default: even layers sliding, odd layers full
        sliding = [i for i in range(n) if (i + 1) % 2]
    if window and sliding:
        att["sliding_window"] = window
    out["attention"] = att
    out["kv_window"] = kv_window(sliding, window, n, source=c.source,
                                 why="HF config.json layer_types (sliding_attention) and sliding_window")
    out["layers"] = layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"),
                           source=c.source)
    per_tok = c.opt("num_experts_per_tok") or c.req("experts_per_token")
    out["moe"] = {
        "num_experts": c.req("num_local_experts"),
        "num_experts_per_tok": per_tok,
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "expert_bias": True,  # biases on both expert projections
        "router": Flow(scoring_func="softmax_topk", router_bias=True, norm_topk_prob=True,
                       expert_score_bias=False),
    }


def dbrx(c: Cfg, out: dict) -> None:
    n = c.req("n_layers")
    attn = c.sub("attn_config", required=False)
    ffn = c.sub("ffn_config")
    kv = attn.opt("kv_n_heads", 1)  # transformers DbrxAttentionConfig default
    att = gqa_attention(c, heads_key="n_heads", kv_heads=kv, hidden_key="d_model")
    if attn.has("clip_qkv"):
        att["clip_qkv"] = attn.req("clip_qkv", kind="float")
    out["attention"] = att
    out["layers"] = layers([], list(range(n)), n, None, field=c.name("n_layers"), source=c.source)
    act = ffn.get("ffn_act_fn")
    act_name = act.get("name", "silu") if isinstance(act, dict) else "silu"
    out["activation"] = activation(Cfg({"name": act_name}, ffn.name("ffn_act_fn"), c.source), "name")
    normalize = ffn.get("moe_normalize_expert_weights", 1)
    out["moe"] = {
        "num_experts": ffn.req("moe_num_experts"),
        "num_experts_per_tok": ffn.req("moe_top_k"),
        "moe_intermediate_size": ffn.req("ffn_hidden_size"),
        "num_shared_experts": 0,
        "router": Flow(scoring_func="softmax", norm_topk_prob=bool(normalize),
                       expert_score_bias=False),
    }


def olmoe(c: Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    att = gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
                        qk_norm="full_width_rmsnorm")
    if c.has("clip_qkv"):
        att["clip_qkv"] = c.req("clip_qkv", kind="float")
    out["attention"] = att
    out["layers"] = layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"),
                           source=c.source)
    out["moe"] = {
        "num_experts": c.req("num_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "router": Flow(scoring_func="softmax",
                       norm_topk_prob=c.opt("norm_topk_prob", False, kind="bool"),
                        expert_score_bias=False),
    }


SUPPORTED = ("deepseek_v2", "deepseek_v3", "kimi_k2", "kimi_k25", "glm_moe_dsa", "minimax_m2", "mixtral",
             "qwen2_moe", "qwen3_moe", "qwen3_5_moe", "llama4", "llama4_text", "gpt_oss", "dbrx", "olmoe")
