"""The config.json reader and spec pieces all HF converters share, so every family fails alike.

`Cfg` wraps one (sub-)dict of a Hugging Face config.json and raises a `MoesimError` that names the
dotted HF field to fix. `layer_rule` writes an explicit list of layer indices as the shortest rule
of the layer-set grammar (moesim/specs/layersets.py) that selects exactly those layers; `layers`,
`kv_window`, `activation`, `rope` and `gqa_attention` build the blocks of a `ModelSpec` that several
families fill the same way. `Flow` marks a mapping the YAML writer puts on one line.
"""
from __future__ import annotations

from typing import Any, Optional

from moesim.core.errors import MoesimError
from moesim.specs.layersets import layer_indices

FIX_ADD = "add it from the model's config.json"


# ---------------------------------------------------------------- reading HF fields
class Cfg:
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

    def sub(self, key: str, *, required: bool = True) -> Optional["Cfg"]:
        if not self.has(key):
            if required:
                raise self.error(key, "required field is missing", FIX_ADD)
            return Cfg({}, self.name(key), self.source)
        return Cfg(self.data[key], self.name(key), self.source)

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


class Flow(dict):
    """A mapping written on one line in the YAML output (layer sets, rope, router)."""


def layers(dense: list[int], moe: list[int], n: int, dense_size: Optional[int], *,
           field: str, source: str) -> dict:
    out: dict[str, Any] = {}
    if dense_size:
        out["dense_intermediate_size"] = dense_size
    elif dense:
        raise MoesimError(f"layers {dense} are dense but no dense MLP size is given", field=field,
                          file=source, fix=FIX_ADD)
    out["dense_layers"] = Flow(rule=layer_rule(dense, n, field=field, source=source),
                               count=len(dense))
    out["moe_layers"] = Flow(rule=layer_rule(moe, n, field=field, source=source), count=len(moe))
    return out


# ---------------------------------------------------------------- shared pieces
def activation(c: Cfg, key: str = "hidden_act") -> str:
    act = c.opt(key, "silu", kind="str").lower()
    if act in ("silu", "swish", "swiglu"):
        return "swiglu"
    if act.startswith("gelu") or act == "geglu":
        return "geglu"
    raise c.error(key, f"unsupported activation {act!r} for a gated MoE expert",
                  "moesim models gated experts with silu (SwiGLU) or gelu (GeGLU)")


def rope(c: Cfg, *, theta_key: str = "rope_theta") -> Optional[dict]:
    params = c.get("rope_parameters") if isinstance(c.get("rope_parameters"), dict) else {}
    scaling = c.get("rope_scaling") if isinstance(c.get("rope_scaling"), dict) else {}
    theta = c.get(theta_key, params.get("rope_theta"))
    merged = {**params, **scaling}
    kind = merged.get("rope_type") or merged.get("type")
    if kind == "default":
        kind = None
    rope: dict[str, Any] = Flow()
    if theta is not None:
        rope["theta"] = theta
    if kind:
        rope["scaling"] = kind
        for key in ("factor", "original_max_position_embeddings"):
            if merged.get(key) is not None:
                rope[key] = merged[key]
    return rope or None



def gqa_attention(c: Cfg, *, qkv_bias: bool = False, o_bias: bool = False,
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


def windowed(c: Cfg, n: int, *, sliding_value: str = "sliding_attention") -> list[int]:
    """Layers whose `layer_types` entry is a sliding/chunked type ([] when not given)."""
    types = c.opt("layer_types", None, kind="list")
    if types is None:
        return []
    if len(types) < n:
        raise c.error("layer_types", f"lists {len(types)} layers, the model has {n}",
                      "give one entry per decoder layer")
    return [i for i in range(n) if types[i] == sliding_value]


def kv_window(layers: list[int], tokens: Optional[int], n: int, *, why: str, source: str) -> Optional[dict]:
    if not layers or not tokens:
        return None
    return {"layers": layer_rule(layers, n, field="kv_window.layers", source=source),
            "tokens": tokens, "source": why}
