"""Turn a Hugging Face `config.json` into a moesim model file (`moesim import-hf`).

`convert` maps the HF field names of each supported `model_type` onto `ModelSpec` (the same
mapping the built-in files in workloads/models/ document in their comments; one converter per
family in moesim/specs/hf_families.py, on the shared field reader of moesim/specs/hf_fields.py)
and validates the result, so a bad or incomplete config fails here, at import time, with a
`MoesimError` that names the HF field to fix. `to_yaml` writes the result as a model file that
`load_model` reads back.

Layer sets (dense / MoE layers, windowed-KV layers) are first worked out as explicit index lists
with the same rules as transformers' modeling code, then written as the shortest rule of the
layer-set grammar (moesim/specs/layersets.py) that selects exactly those layers.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel

from moesim.core.errors import MoesimError
from moesim.core.loader import inner_model, parse_record
from moesim.specs import hf_families
from moesim.specs.hf_families import SUPPORTED
from moesim.specs.hf_fields import Cfg, Flow, activation, rope
from moesim.specs.layersets import layer_indices
from moesim.specs.model import ModelSpec


def _quantization(c: Cfg) -> Optional[str]:
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


# ---------------------------------------------------------------- entry points
def convert(config: dict, *, model_id: str, source: str) -> dict:
    """A Hugging Face config.json (parsed) as a dict that validates as `ModelSpec`."""
    top = Cfg(config, "", source)
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
    elif model_type in ("kimi_k25", "qwen3_5_moe") and top.has("text_config"):
        # multimodal wrappers: the decoder is text_config; the vision tower is not modelled
        text = top.sub("text_config")
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
        "activation": "swiglu_clamped" if model_type == "gpt_oss" else activation(text),
        "rope": rope(text.sub("attn_config", required=False) if dbrx else text),
    }
    if out["hidden_size"] <= 0:
        raise text.error("d_model" if dbrx else "hidden_size", "must be positive",
                         "use the config.json value")
    families: dict[str, Callable[[], None]] = {
        "deepseek_v2": lambda: hf_families.deepseek(text, out),
        "deepseek_v3": lambda: hf_families.deepseek(text, out),
        "kimi_k2": lambda: hf_families.deepseek(text, out),
        "kimi_k25": lambda: hf_families.deepseek(text, out),
        "glm_moe_dsa": lambda: hf_families.glm_moe_dsa(text, out),
        "minimax_m2": lambda: hf_families.minimax_m2(text, out),
        "qwen3_5_moe": lambda: hf_families.qwen3_5_moe(text, out),
        "mixtral": lambda: hf_families.mixtral(text, out),
        "qwen2_moe": lambda: hf_families.qwen(text, out, qwen3=False),
        "qwen3_moe": lambda: hf_families.qwen(text, out, qwen3=True),
        "llama4": lambda: hf_families.llama4(text, out, vision),
        "llama4_text": lambda: hf_families.llama4(text, out, None),
        "gpt_oss": lambda: hf_families.gpt_oss(text, out),
        "dbrx": lambda: hf_families.dbrx(text, out),
        "olmoe": lambda: hf_families.olmoe(text, out),
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
    """Nested plain dicts/lists (drops the Flow marker type)."""
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
    out = Flow() if isinstance(value, Flow) else {}
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
_Dumper.add_representer(Flow, _represent_flow)


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
