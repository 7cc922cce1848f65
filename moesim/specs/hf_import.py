"""Turn a Hugging Face `config.json` into a moesim model file (`moesim import-hf`).

`convert` maps the HF field names of each supported `model_type` onto `ModelSpec` (the same
mapping the built-in files in workloads/models/ document in their comments) and validates the
result, so a bad or incomplete config fails here, at import time, with a `MoesimError` that names
the HF field to fix. `to_yaml` writes the result as a model file that `load_model` reads back.

Layer sets (dense / MoE layers, windowed-KV layers) are first worked out as explicit index lists
with the same rules as transformers' modeling code, then written as the shortest rule of the
layer-set grammar (moesim/layersets.py) that selects exactly those layers.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel

from moesim.core.errors import MoesimError
from moesim.specs.layersets import layer_indices
from moesim.core.loader import inner_model, parse_record
from moesim.specs.model import ModelSpec

FIX_ADD = "add it from the model's config.json"


# ---------------------------------------------------------------- reading HF fields
class _Cfg:
    """One (sub-)dict of config.json; errors name fields with their dotted path."""

    def __init__(self, data: Any, prefix: str, source: str):
        if not isinstance(data, dict):
            raise MoesimError("expected a JSON object", field=prefix or "(top level)", file=source,
                              fix="give the model's config.json (a JSON object of fields)")
        self.data, self.prefix, self.source = data, prefix, source

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def sub(self, key: str, *, required: bool = True) -> Optional["_Cfg"]:
        if not self.has(key):
            if required:
                raise self.error(key, "required field is missing", FIX_ADD)
            return _Cfg({}, self.name(key), self.source)
        return _Cfg(self.data[key], self.name(key), self.source)

    def error(self, key: str, problem: str, fix: str) -> MoesimError:
        return MoesimError(problem, field=self.name(key), file=self.source, fix=fix)

    def _typed(self, key: str, value: Any, kind: str) -> Any:
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok and isinstance(value, float) and value.is_integer():
                value, ok = int(value), True
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "bool":
            ok = isinstance(value, bool) or value in (0, 1)
            value = bool(value) if ok else value
        elif kind == "str":
            ok = isinstance(value, str)
        else:  # list
            ok = isinstance(value, list)
        if not ok:
            article = "an" if kind == "int" else "a"
            raise self.error(key, f"expected {article} {kind}, got {value!r}"[:120],
                             "correct the value in config.json")
        return value

    def req(self, key: str, kind: str = "int") -> Any:
        if not self.has(key):
            raise self.error(key, "required field is missing", FIX_ADD)
        return self._typed(key, self.data[key], kind)

    def opt(self, key: str, default: Any = None, kind: str = "int") -> Any:
        if not self.has(key):
            return default
        return self._typed(key, self.data[key], kind)


# ---------------------------------------------------------------- layer sets as rules
def layer_rule(indices: list[int] | set[int], num_layers: int, *, field: str,
               source: str) -> str:
    """The simplest rule of the layer-set grammar that selects exactly `indices`."""
    wanted = sorted(set(indices))
    if not wanted:
        return "none"
    if wanted[0] < 0 or wanted[-1] >= num_layers:
        raise MoesimError(f"layer index out of range 0..{num_layers - 1}: {wanted}", field=field,
                          file=source, fix="check the layer list against num_hidden_layers")
    candidates = []
    step = wanted[1] - wanted[0] if len(wanted) > 1 else 1
    if all(b - a == step for a, b in zip(wanted, wanted[1:])):
        stop = num_layers if wanted[-1] + step >= num_layers else wanted[-1] + 1
        candidates.append(f"range({wanted[0]}, {stop})" if step == 1
                          else f"range({wanted[0]}, {stop}, {step})")
    for mod in range(2, min(num_layers, 64) + 1):
        for rem in range(mod):
            candidates += [f"i % {mod} == {rem}", f"i % {mod} != {rem}"]
    for rule in candidates:
        if list(layer_indices(rule, num_layers)) == wanted:
            return rule
    shown = ", ".join(map(str, wanted[:12])) + (", ..." if len(wanted) > 12 else "")
    raise MoesimError(f"layers [{shown}] cannot be written as one layer rule", field=field,
                      file=source, fix="moesim supports layer sets of the form 'range(a, b, s)', "
                                       "'i % m == r' or 'i % m != r'; write the model file by hand")


class _Flow(dict):
    """A mapping written on one line in the YAML output (layer sets, rope, router)."""


def _layers(dense: list[int], moe: list[int], n: int, dense_size: Optional[int], *,
            field: str, source: str) -> dict:
    out: dict[str, Any] = {}
    if dense_size:
        out["dense_intermediate_size"] = dense_size
    elif dense:
        raise MoesimError(f"layers {dense} are dense but no dense MLP size is given", field=field,
                          file=source, fix=FIX_ADD)
    out["dense_layers"] = _Flow(rule=layer_rule(dense, n, field=field, source=source),
                                count=len(dense))
    out["moe_layers"] = _Flow(rule=layer_rule(moe, n, field=field, source=source), count=len(moe))
    return out


# ---------------------------------------------------------------- shared pieces
def _activation(c: _Cfg, key: str = "hidden_act") -> str:
    act = c.opt(key, "silu", kind="str").lower()
    if act in ("silu", "swish", "swiglu"):
        return "swiglu"
    if act.startswith("gelu") or act == "geglu":
        return "geglu"
    raise c.error(key, f"unsupported activation {act!r} for a gated MoE expert",
                  "moesim models gated experts with silu (SwiGLU) or gelu (GeGLU)")


def _rope(c: _Cfg, *, theta_key: str = "rope_theta") -> Optional[dict]:
    params = c.get("rope_parameters") if isinstance(c.get("rope_parameters"), dict) else {}
    scaling = c.get("rope_scaling") if isinstance(c.get("rope_scaling"), dict) else {}
    theta = c.get(theta_key, params.get("rope_theta"))
    merged = {**params, **scaling}
    kind = merged.get("rope_type") or merged.get("type")
    if kind == "default":
        kind = None
    rope: dict[str, Any] = _Flow()
    if theta is not None:
        rope["theta"] = theta
    if kind:
        rope["scaling"] = kind
        for key in ("factor", "original_max_position_embeddings"):
            if merged.get(key) is not None:
                rope[key] = merged[key]
    return rope or None


def _quantization(c: _Cfg) -> Optional[str]:
    q = c.get("quantization_config")
    if not isinstance(q, dict) or not q.get("quant_method"):
        return None
    text = " ".join(str(p) for p in (q.get("quant_method"), q.get("fmt")) if p)
    block = q.get("weight_block_size")
    if isinstance(block, list) and block:
        text += f", block {'x'.join(str(b) for b in block)} (weights)"
    return text


def _hf_id(config: dict) -> Optional[str]:
    name = config.get("_name_or_path")
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip().rstrip("/")
    if name.startswith(("/", "./", "../", "~")) or "\\" in name:
        return None  # a local checkout path, not a hub id
    return name


def _gqa_attention(c: _Cfg, *, qkv_bias: bool = False, o_bias: bool = False,
                   qk_norm: str = "none", heads_key: str = "num_attention_heads",
                   kv_heads: Optional[int] = None, hidden_key: str = "hidden_size") -> dict:
    heads = c.req(heads_key)
    if heads <= 0:
        raise c.error(heads_key, "must be positive", "use the config.json value")
    if kv_heads is None:
        kv_heads = c.opt("num_key_value_heads", heads)
    head_dim = c.opt("head_dim") or c.req(hidden_key) // heads
    att: dict[str, Any] = {
        "type": "mha" if kv_heads == heads else "gqa",
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "qkv_bias": qkv_bias,
        "o_bias": o_bias,
    }
    if qk_norm != "none":
        att["qk_norm"] = qk_norm
    return att


def _windowed(c: _Cfg, n: int, *, sliding_value: str = "sliding_attention") -> list[int]:
    """Layers whose `layer_types` entry is a sliding/chunked type ([] when not given)."""
    types = c.opt("layer_types", None, kind="list")
    if types is None:
        return []
    if len(types) < n:
        raise c.error("layer_types", f"lists {len(types)} layers, the model has {n}",
                      "give one entry per decoder layer")
    return [i for i in range(n) if types[i] == sliding_value]


def _kv_window(layers: list[int], tokens: Optional[int], n: int, *, why: str, source: str) -> Optional[dict]:
    if not layers or not tokens:
        return None
    return {"layers": layer_rule(layers, n, field="kv_window.layers", source=source),
            "tokens": tokens, "source": why}


# ---------------------------------------------------------------- per model family
def _deepseek(c: _Cfg, out: dict) -> None:
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
    out["layers"] = _layers(dense, moe, n, c.opt("intermediate_size"),
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
        out["mtp"] = _Flow(num_nextn_predict_layers=c.req("num_nextn_predict_layers"))


def _mixtral(c: _Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    att = _gqa_attention(c)
    window = c.opt("sliding_window")
    att["sliding_window"] = window
    out["attention"] = att
    # MixtralAttention applies sliding_window (when set) on every layer
    out["kv_window"] = _kv_window(list(range(n)), window, n, source=c.source,
                                  why="HF config.json sliding_window (all layers)")
    out["layers"] = _layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"),
                            source=c.source)
    out["moe"] = {
        "num_experts": c.req("num_local_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "router": _Flow(scoring_func="softmax_topk", norm_topk_prob=True, expert_score_bias=False),
    }


def _qwen_layers(c: _Cfg, n: int) -> tuple[list[int], list[int]]:
    # Qwen2/3-MoE modeling: MoE iff layer not in mlp_only_layers and (layer + 1) % step == 0
    step = c.opt("decoder_sparse_step", 1)
    if step <= 0:
        raise c.error("decoder_sparse_step", "must be at least 1", "use the config.json value")
    mlp_only = set(c.opt("mlp_only_layers", [], kind="list"))
    moe = [i for i in range(n) if i not in mlp_only and (i + 1) % step == 0]
    dense = [i for i in range(n) if i not in set(moe)]
    return dense, moe


def _qwen_window(c: _Cfg, n: int) -> Optional[dict]:
    if c.has("layer_types"):
        layers = _windowed(c, n)
    elif c.opt("use_sliding_window", False, kind="bool"):
        layers = list(range(c.opt("max_window_layers", 0), n))
    else:
        return None
    return _kv_window(layers, c.opt("sliding_window"), n, source=c.source,
                      why="HF config.json use_sliding_window / max_window_layers / layer_types")


def _qwen(c: _Cfg, out: dict, *, qwen3: bool) -> None:
    n = c.req("num_hidden_layers")
    if qwen3:
        att = _gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
                             qk_norm="per_head_rmsnorm")
    else:
        # Qwen2 attention: bias on q/k/v (newer transformers: qkv_bias, default true), none on o
        att = _gqa_attention(c, qkv_bias=c.opt("qkv_bias", True, kind="bool"))
    out["attention"] = att
    out["kv_window"] = _qwen_window(c, n)
    if out["kv_window"]:
        att["sliding_window"] = out["kv_window"]["tokens"]
    dense, moe = _qwen_layers(c, n)
    out["layers"] = _layers(dense, moe, n, c.opt("intermediate_size"),
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
    block["router"] = _Flow(scoring_func="softmax",
                            norm_topk_prob=c.opt("norm_topk_prob", False, kind="bool"),
                            expert_score_bias=False)
    out["moe"] = block


def _llama4(c: _Cfg, out: dict, vision: Optional[_Cfg]) -> None:
    n = c.req("num_hidden_layers")
    att = _gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
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
    chunked = _windowed(c, n, sliding_value="chunked_attention") if c.has("layer_types") \
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
    out["kv_window"] = _kv_window(chunked, chunk, n, source=c.source,
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
    out["layers"] = _layers(dense, moe, n, c.opt("intermediate_size_mlp"),
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


def _gpt_oss(c: _Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    bias = c.opt("attention_bias", True, kind="bool")
    att = _gqa_attention(c, qkv_bias=bias, o_bias=bias)
    att["sinks"] = True  # one learned sink logit per head per layer
    window = c.opt("sliding_window")
    if c.has("layer_types"):
        sliding = _windowed(c, n)
    else:  # transformers GptOssConfig default: even layers sliding, odd layers full
        sliding = [i for i in range(n) if (i + 1) % 2]
    if window and sliding:
        att["sliding_window"] = window
    out["attention"] = att
    out["kv_window"] = _kv_window(sliding, window, n, source=c.source,
                                  why="HF config.json layer_types (sliding_attention) and sliding_window")
    out["layers"] = _layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"),
                            source=c.source)
    per_tok = c.opt("num_experts_per_tok") or c.req("experts_per_token")
    out["moe"] = {
        "num_experts": c.req("num_local_experts"),
        "num_experts_per_tok": per_tok,
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "expert_bias": True,  # biases on both expert projections
        "router": _Flow(scoring_func="softmax_topk", router_bias=True, norm_topk_prob=True,
                        expert_score_bias=False),
    }


def _dbrx(c: _Cfg, out: dict) -> None:
    n = c.req("n_layers")
    attn = c.sub("attn_config", required=False)
    ffn = c.sub("ffn_config")
    kv = attn.opt("kv_n_heads", 1)  # transformers DbrxAttentionConfig default
    att = _gqa_attention(c, heads_key="n_heads", kv_heads=kv, hidden_key="d_model")
    if attn.has("clip_qkv"):
        att["clip_qkv"] = attn.req("clip_qkv", kind="float")
    out["attention"] = att
    out["layers"] = _layers([], list(range(n)), n, None, field=c.name("n_layers"), source=c.source)
    act = ffn.get("ffn_act_fn")
    act_name = act.get("name", "silu") if isinstance(act, dict) else "silu"
    out["activation"] = _activation(_Cfg({"name": act_name}, ffn.name("ffn_act_fn"), c.source), "name")
    normalize = ffn.get("moe_normalize_expert_weights", 1)
    out["moe"] = {
        "num_experts": ffn.req("moe_num_experts"),
        "num_experts_per_tok": ffn.req("moe_top_k"),
        "moe_intermediate_size": ffn.req("ffn_hidden_size"),
        "num_shared_experts": 0,
        "router": _Flow(scoring_func="softmax", norm_topk_prob=bool(normalize),
                        expert_score_bias=False),
    }


def _olmoe(c: _Cfg, out: dict) -> None:
    n = c.req("num_hidden_layers")
    att = _gqa_attention(c, qkv_bias=c.opt("attention_bias", False, kind="bool"),
                         qk_norm="full_width_rmsnorm")
    if c.has("clip_qkv"):
        att["clip_qkv"] = c.req("clip_qkv", kind="float")
    out["attention"] = att
    out["layers"] = _layers([], list(range(n)), n, None, field=c.name("num_hidden_layers"),
                            source=c.source)
    out["moe"] = {
        "num_experts": c.req("num_experts"),
        "num_experts_per_tok": c.req("num_experts_per_tok"),
        "moe_intermediate_size": c.req("intermediate_size"),
        "num_shared_experts": 0,
        "router": _Flow(scoring_func="softmax",
                        norm_topk_prob=c.opt("norm_topk_prob", False, kind="bool"),
                        expert_score_bias=False),
    }


SUPPORTED = ("deepseek_v2", "deepseek_v3", "kimi_k2", "mixtral", "qwen2_moe", "qwen3_moe",
             "llama4", "llama4_text", "gpt_oss", "dbrx", "olmoe")


# ---------------------------------------------------------------- entry points
def convert(config: dict, *, model_id: str, source: str) -> dict:
    """A Hugging Face config.json (parsed) as a dict that validates as `ModelSpec`."""
    top = _Cfg(config, "", source)
    model_type = top.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED:
        problem = ("required field is missing" if model_type is None
                   else f"unsupported model_type {model_type!r}")
        raise MoesimError(problem, field="model_type", file=source,
                          fix=f"moesim imports model_type {', '.join(SUPPORTED)}; "
                              "write other models' YAML by hand (see workloads/models/)")
    vision = None
    if model_type == "llama4":
        text = top.sub("text_config")
        if top.has("vision_config"):
            vision = top.sub("vision_config")
    else:
        text = top
    dbrx = model_type == "dbrx"
    hf_id = _hf_id(config)
    out: dict[str, Any] = {
        "id": model_id,
        "name": hf_id.rsplit("/", 1)[-1] if hf_id else model_id,
        "hf_id": hf_id,
        "model_type": model_type,
        "structure": "decoder_only_with_vision_encoder" if vision is not None else "decoder_only",
        "hidden_size": text.req("d_model" if dbrx else "hidden_size"),
        "num_hidden_layers": text.req("n_layers" if dbrx else "num_hidden_layers"),
        "vocab_size": text.req("vocab_size"),
        "max_position_embeddings": text.opt("max_seq_len" if dbrx else "max_position_embeddings"),
        "tie_word_embeddings": bool(text.opt("tie_word_embeddings",
                                             top.opt("tie_word_embeddings", False, kind="bool"),
                                             kind="bool")),
        "norm": "layernorm_no_bias" if dbrx else "rmsnorm",
        "activation": "swiglu_clamped" if model_type == "gpt_oss" else _activation(text),
        "rope": _rope(text.sub("attn_config", required=False) if dbrx else text),
    }
    if out["hidden_size"] <= 0:
        raise text.error("d_model" if dbrx else "hidden_size", "must be positive",
                         "use the config.json value")
    families: dict[str, Callable[[], None]] = {
        "deepseek_v2": lambda: _deepseek(text, out),
        "deepseek_v3": lambda: _deepseek(text, out),
        "kimi_k2": lambda: _deepseek(text, out),
        "mixtral": lambda: _mixtral(text, out),
        "qwen2_moe": lambda: _qwen(text, out, qwen3=False),
        "qwen3_moe": lambda: _qwen(text, out, qwen3=True),
        "llama4": lambda: _llama4(text, out, vision),
        "llama4_text": lambda: _llama4(text, out, None),
        "gpt_oss": lambda: _gpt_oss(text, out),
        "dbrx": lambda: _dbrx(text, out),
        "olmoe": lambda: _olmoe(text, out),
    }
    families[model_type]()
    n = out["num_hidden_layers"]
    if "kv_cache" not in out:
        att = out["attention"]
        kv: dict[str, Any] = {"elements_per_token_per_layer":
                              2 * att["num_key_value_heads"] * att["head_dim"],
                              "layers_with_kv": n}
        window = out.get("kv_window")
        if window:
            held = len(layer_indices(window["layers"], n))
            kv["note"] = f"{held} windowed layers need at most {window['tokens']} tokens of KV"
        out["kv_cache"] = kv
    quant = _quantization(top) or (_quantization(text) if text is not top else None)
    if quant:
        out["quantization_of_release"] = quant
    out["published"] = {}
    out["source"] = {"config": source}
    out = {k: v for k, v in out.items() if v is not None}
    parse_record(ModelSpec, _plain(out), file=source)
    return out


def _plain(value: Any) -> Any:
    """Nested plain dicts/lists (drops the _Flow marker type)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- YAML output
def _ordered(value: Any, model: Any) -> Any:
    """Reorder a dict's keys to the field order of its record class (readable, like the built-ins)."""
    if not isinstance(value, dict):
        return value
    fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
    keys = [k for k in fields if k in value] + [k for k in value if k not in fields]
    out = _Flow() if isinstance(value, _Flow) else {}
    for key in keys:
        inner = inner_model(fields[key].annotation) if key in fields else None
        out[key] = _ordered(value[key], inner)
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)


def _represent_flow(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(_Flow, _represent_flow)


def to_yaml(spec: dict) -> str:
    """The model file text for a converted spec (loads back with `load_model`)."""
    source = str(spec.get("source", {}).get("config", "a Hugging Face config.json"))
    source = " ".join(source.split())  # one comment line, whatever the path holds
    header = (f"# Imported by `moesim import-hf` from {source}\n"
              f"# {spec.get('id', 'model')}: architecture facts for moesim.\n"
              "# Fields map from config.json as the built-in files in workloads/models/ document.\n"
              "# `published:` is empty: add vendor-stated parameter counts with their source by hand.\n")
    body = yaml.dump(_ordered(spec, ModelSpec), Dumper=_Dumper, sort_keys=False,
                     allow_unicode=True, width=120)
    return header + body
