"""`moesim import-hf`: Hugging Face config.json files convert to model files that load and count
exactly like the built-in models, and bad configs fail with a MoesimError naming the field.

The configs below are written out as HF config.json files (real HF field names) with the values of
the project's reference notes (shared/reference/models.yaml), which the built-in files copy."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from moesim.core.errors import MoesimError
from moesim.specs.hf_families import SUPPORTED
from moesim.specs.hf_fields import layer_rule
from moesim.specs.hf_import import convert, to_yaml
from moesim.specs.model import ModelSpec, load_model

DEEPSEEK_V3 = {
    "_name_or_path": "deepseek-ai/DeepSeek-V3",
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "v_head_dim": 128,
    "vocab_size": 129280,
}

DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "attention_bias": False,
    "aux_loss_alpha": 0.001,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 27,
    "num_key_value_heads": 16,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "v_head_dim": 128,
    "vocab_size": 102400,
}

KIMI_K2 = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 131072,
    "model_type": "kimi_k2",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 384,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 64,
    "num_nextn_predict_layers": 0,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 50000.0,
    "routed_scaling_factor": 2.827,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "v_head_dim": 128,
    "vocab_size": 163840,
}

MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mixtral",
    "num_attention_heads": 32,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 32000,
}

QWEN2_57B_A14B = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "attention_dropout": 0.0,
    "decoder_sparse_step": 1,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "model_type": "qwen2_moe",
    "moe_intermediate_size": 2560,
    "norm_topk_prob": False,
    "num_attention_heads": 28,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 20480,
    "sliding_window": 65536,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "decoder_sparse_step": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

LLAMA4_SCOUT = {
    "architectures": ["Llama4ForConditionalGeneration"],
    "boi_token_index": 200080,
    "eoi_token_index": 200081,
    "image_token_index": 200092,
    "model_type": "llama4",
    "text_config": {
        "attention_bias": False,
        "attention_chunk_size": 8192,
        "attention_dropout": 0.0,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 5120,
        "interleave_moe_layer_step": 1,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "max_position_embeddings": 10485760,
        "model_type": "llama4_text",
        "no_rope_layers": [],
        "num_attention_heads": 40,
        "num_experts_per_tok": 1,
        "num_hidden_layers": 48,
        "num_key_value_heads": 8,
        "num_local_experts": 16,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "use_qk_norm": True,
        "vocab_size": 202048,
    },
    "tie_word_embeddings": False,
    "vision_config": {
        "attention_dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 1408,
        "image_size": 336,
        "intermediate_size": 5632,
        "model_type": "llama4_vision_model",
        "multi_modal_projector_bias": False,
        "norm_eps": 1e-05,
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_hidden_layers": 34,
        "patch_size": 14,
        "pixel_shuffle_ratio": 0.5,
        "projector_dropout": 0.0,
        "projector_input_dim": 4096,
        "projector_output_dim": 4096,
        "rope_theta": 10000,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vision_output_dim": 4096,
    },
}

GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn",
                                                       "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"],
                            "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn",
                     "truncate": False},
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "vocab_size": 201088,
}

DBRX = {
    "architectures": ["DbrxForCausalLM"],
    "attn_config": {"clip_qkv": 8, "kv_n_heads": 8, "model_type": "", "rope_theta": 500000},
    "d_model": 6144,
    "emb_pdrop": 0.0,
    "ffn_config": {"ffn_hidden_size": 10752, "model_type": "", "moe_jitter_eps": 0.01,
                   "moe_loss_weight": 0.05, "moe_num_experts": 16, "moe_top_k": 4},
    "initializer_range": 0.02,
    "max_seq_len": 32768,
    "model_type": "dbrx",
    "n_heads": 48,
    "n_layers": 40,
    "resid_pdrop": 0.0,
    "router_aux_loss_coef": 0.05,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 100352,
}

OLMOE_1B_7B = {
    "architectures": ["OlmoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "intermediate_size": 1024,
    "max_position_embeddings": 4096,
    "model_type": "olmoe",
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 16,
    "num_key_value_heads": 16,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 50304,
}

# model id -> (config.json, exact total parameter count of the built-in model)
CASES = {
    "deepseek-v3": (DEEPSEEK_V3, 671026419200),
    "deepseek-v2-lite": (DEEPSEEK_V2_LITE, 15706484224),
    "kimi-k2": (KIMI_K2, 1026408232448),
    "mixtral-8x7b": (MIXTRAL_8X7B, 46702792704),
    "qwen2-57b-a14b": (QWEN2_57B_A14B, 57408658944),
    "qwen3-30b-a3b": (QWEN3_30B_A3B, 30532122624),
    "llama4-scout": (LLAMA4_SCOUT, 108641793536),
    "gpt-oss-20b": (GPT_OSS_20B, 20914757184),
    "dbrx": (DBRX, 131596523520),
    "olmoe-1b-7b": (OLMOE_1B_7B, 6919161856),
}
# the issue-17 model types (kimi_k25, glm_moe_dsa, minimax_m2, qwen3_5_moe): trimmed HF configs, sourced in the file
_NEW = yaml.safe_load((Path(__file__).parent / "data" / "hf_configs_new.yaml").read_text())
CASES.update({"kimi-k2.5": (_NEW["kimi-k2.5"], 1026408232448), "minimax-m2.5": (_NEW["minimax-m2.5"], 228689764864),
              "glm-5": (_NEW["glm-5"], 743911218432), "qwen3.5-397b-a17b": (_NEW["qwen3.5-397b-a17b"], 396346350336)})


def import_config(tmp_path, config: dict, model_id: str) -> tuple[dict, ModelSpec, str]:
    """Write config.json, convert it, write the YAML, load it back with load_model."""
    src = tmp_path / "config.json"
    src.write_text(json.dumps(config, indent=2))
    spec = convert(json.loads(src.read_text()), model_id=model_id, source=str(src))
    text = to_yaml(spec)
    out = tmp_path / f"{model_id}.yaml"
    out.write_text(text)
    return spec, load_model(str(out)), text


def test_every_supported_family_has_a_case():
    covered = {cfg["model_type"] for cfg, _ in CASES.values()}
    assert covered >= set(SUPPORTED) - {"llama4_text"}


@pytest.mark.parametrize("model_id", sorted(CASES))
def test_import_matches_builtin(tmp_path, model_id):
    config, total = CASES[model_id]
    spec, imported, text = import_config(tmp_path, config, model_id)
    builtin = load_model(model_id)

    assert imported.total_params == total
    assert imported.total_params == builtin.total_params
    assert imported.active_params == builtin.active_params
    assert imported.kv_bytes_per_token(2) == builtin.kv_bytes_per_token(2)
    assert imported.kv_tokens_held(131072) == builtin.kv_tokens_held(131072)
    assert imported.moe_layer_indices == builtin.moe_layer_indices
    assert imported.dense_layer_indices == builtin.dense_layer_indices
    assert imported.model_type == builtin.model_type
    assert imported.structure == builtin.structure
    assert imported.attention.type == builtin.attention.type
    assert imported.moe.router.expert_score_bias == builtin.moe.router.expert_score_bias
    assert imported.published == {}
    assert imported.source["config"] == str(tmp_path / "config.json")

    # the YAML text round-trips to exactly the converted record
    assert text.startswith(f"# Imported by `moesim import-hf` from {tmp_path / 'config.json'}")
    assert imported.model_dump() == ModelSpec.model_validate(spec).model_dump()
    assert text.index("\nid:") < text.index("\nname:") < text.index("\nattention:") \
        < text.index("\nmoe:") < text.index("\nsource:")


def test_mapped_details(tmp_path):
    """Spot checks of individual HF field mappings the parameter count alone would not catch."""
    _, v3, text = import_config(tmp_path, DEEPSEEK_V3, "deepseek-v3")
    assert v3.hf_id == "deepseek-ai/DeepSeek-V3"
    assert v3.layers.dense_layers.rule == "range(0, 3)"
    assert v3.moe.router.topk_method == "noaux_tc" and v3.moe.router.n_group == 8
    assert v3.moe.router.routed_scaling_factor == 2.5 and v3.moe.router.scoring_func == "sigmoid"
    assert v3.kv_cache.elements_per_token_per_layer == 576
    assert v3.mtp == {"num_nextn_predict_layers": 1}
    assert v3.rope == {"theta": 10000, "scaling": "yarn", "factor": 40,
                       "original_max_position_embeddings": 4096}
    assert v3.quantization_of_release == "fp8 e4m3, block 128x128 (weights)"

    _, lite, _ = import_config(tmp_path, DEEPSEEK_V2_LITE, "deepseek-v2-lite")
    assert lite.attention.q_lora_rank is None and lite.hf_id is None

    _, scout, _ = import_config(tmp_path, LLAMA4_SCOUT, "llama4-scout")
    assert scout.attention.qk_norm == "l2_no_weight"
    assert scout.kv_window.tokens == 8192
    assert scout.windowed_layer_indices == tuple(i for i in range(48) if i % 4 != 3)
    assert scout.vision_encoder == load_model("llama4-scout").vision_encoder.model_copy(
        update={"note": None})

    _, oss, _ = import_config(tmp_path, GPT_OSS_20B, "gpt-oss-20b")
    assert oss.attention.sinks and oss.attention.o_bias and oss.moe.expert_bias
    assert oss.moe.router.router_bias and oss.activation == "swiglu_clamped"
    assert oss.kv_window.layers == "range(0, 24, 2)" and oss.kv_window.tokens == 128

    _, qwen2, _ = import_config(tmp_path, QWEN2_57B_A14B, "qwen2-57b-a14b")
    assert qwen2.attention.qkv_bias and qwen2.moe.shared_expert_gate
    assert qwen2.kv_window is None  # use_sliding_window false

    _, dbrx, _ = import_config(tmp_path, DBRX, "dbrx")
    assert dbrx.norm == "layernorm_no_bias" and dbrx.attention.clip_qkv == 8
    assert dbrx.max_position_embeddings == 32768 and dbrx.rope == {"theta": 500000}


def test_llama4_explicit_no_rope_list_and_interleaved_moe(tmp_path):
    """Maverick-style: MoE every 2nd layer (interleave_moe_layer_step 2), dense layers use
    intermediate_size_mlp; an explicit no_rope_layers list (1 = RoPE) gives the chunked layers."""
    config = copy.deepcopy(LLAMA4_SCOUT)
    text = config["text_config"]
    text.update(interleave_moe_layer_step=2, num_local_experts=128, use_qk_norm=False,
                no_rope_layers=[int((i + 1) % 4 != 0) for i in range(48)], rope_scaling=None)
    _, spec, _ = import_config(tmp_path, config, "llama4-maverick")
    builtin = load_model("llama4-maverick")
    assert spec.total_params == builtin.total_params
    assert spec.active_params == builtin.active_params
    assert spec.layers.moe_layers.rule == "range(1, 48, 2)"
    assert spec.windowed_layer_indices == builtin.windowed_layer_indices
    assert spec.attention.qk_norm == "none"


def test_head_dim_defaults_to_hidden_over_heads(tmp_path):
    config = {k: v for k, v in QWEN3_30B_A3B.items() if k != "head_dim"}
    config.update(hidden_size=4096)
    spec = convert(config, model_id="q", source="config.json")
    assert spec["attention"]["head_dim"] == 4096 // 32


def test_layer_rule_picks_grammar_rules():
    assert layer_rule([], 8, field="f", source="s") == "none"
    assert layer_rule(range(8), 8, field="f", source="s") == "range(0, 8)"
    assert layer_rule([1, 3, 5, 7], 8, field="f", source="s") == "range(1, 8, 2)"
    assert layer_rule([0, 1, 2, 4, 5, 6], 8, field="f", source="s") == "i % 4 != 3"
    with pytest.raises(MoesimError):
        layer_rule([0, 1, 5], 8, field="f", source="s")


def test_unknown_model_type(tmp_path):
    with pytest.raises(MoesimError) as err:
        convert({**MIXTRAL_8X7B, "model_type": "bert"}, model_id="x", source="config.json")
    assert err.value.field == "model_type"
    assert "bert" in str(err.value) and "mixtral" in err.value.fix


def test_missing_model_type():
    config = {k: v for k, v in MIXTRAL_8X7B.items() if k != "model_type"}
    with pytest.raises(MoesimError) as err:
        convert(config, model_id="x", source="config.json")
    assert err.value.field == "model_type"


@pytest.mark.parametrize("model_id", sorted(CASES))
def test_missing_num_hidden_layers(model_id):
    config = copy.deepcopy(CASES[model_id][0])
    if model_id == "dbrx":
        del config["n_layers"]
        expected = "n_layers"
    elif "text_config" in config:  # llama4, kimi_k25, qwen3_5_moe: the decoder is text_config
        del config["text_config"]["num_hidden_layers"]
        expected = "text_config.num_hidden_layers"
    else:
        del config["num_hidden_layers"]
        expected = "num_hidden_layers"
    with pytest.raises(MoesimError) as err:
        convert(config, model_id=model_id, source="config.json")
    assert err.value.field == expected
    assert err.value.file == "config.json"
    assert "config.json" in err.value.fix


@pytest.mark.parametrize("drop", ["n_routed_experts", "kv_lora_rank", "hidden_size", "vocab_size",
                                  "first_k_dense_replace", "moe_intermediate_size"])
def test_missing_core_fields_name_the_field(drop):
    config = {k: v for k, v in DEEPSEEK_V3.items() if k != drop}
    with pytest.raises(MoesimError) as err:
        convert(config, model_id="x", source="config.json")
    assert err.value.field == drop


def test_bad_values_fail_at_import_not_later():
    with pytest.raises(MoesimError) as err:
        convert({**MIXTRAL_8X7B, "num_hidden_layers": "32"}, model_id="x", source="config.json")
    assert err.value.field == "num_hidden_layers"
    with pytest.raises(MoesimError) as err:   # caught by ModelSpec validation via parse_record
        convert({**MIXTRAL_8X7B, "num_experts_per_tok": 9}, model_id="x", source="config.json")
    assert err.value.field.startswith("moe")
    with pytest.raises(MoesimError):
        convert(["not", "a", "dict"], model_id="x", source="config.json")  # type: ignore[arg-type]
    with pytest.raises(MoesimError) as err:
        convert({"model_type": "llama4"}, model_id="x", source="config.json")
    assert err.value.field == "text_config"
