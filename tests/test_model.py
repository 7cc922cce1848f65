"""Model specs: every built-in model loads, and its counts match the reference table exactly."""
from pathlib import Path

import pytest
import yaml

from moesim.core.errors import MoesimError
from moesim.specs.layersets import layer_indices
from moesim.specs.model import load_model, model_names
from moesim.specs.opcosts import matmul_flops_per_token, token_ops

TABLE = yaml.safe_load((Path(__file__).parent / "data" / "param_counts.yaml").read_text())["models"]
REQUIRED = ["deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "mixtral-8x7b", "mixtral-8x22b",
            "qwen3-235b-a22b", "qwen3-30b-a3b", "llama4-scout", "llama4-maverick", "kimi-k2",
            "gpt-oss-120b", "gpt-oss-20b", "dbrx", "grok-1", "olmoe-1b-7b"]


def test_every_required_model_ships():
    assert set(REQUIRED) <= set(model_names())


def test_table_covers_every_shipped_model():
    assert set(model_names()) == set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_total_params_match_reference_within_0_1_percent(name):
    model = load_model(name)
    expected = TABLE[name]["total"]
    assert abs(model.total_params - expected) / expected < 1e-3
    # the formula is exact: hold it to the parameter so a regression cannot hide in the tolerance
    assert model.total_params == expected


@pytest.mark.parametrize("name", sorted(TABLE))
def test_active_params_match_both_conventions(name):
    model = load_model(name)
    assert model.active_params == pytest.approx(float(TABLE[name]["active_head_only"]), abs=0.005e9)
    assert model.active_params_with_embedding == pytest.approx(float(TABLE[name]["active_emb_head"]), abs=0.005e9)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_kv_bytes_per_token_bf16(name):
    assert load_model(name).kv_bytes_per_token(2) == TABLE[name]["kv_bytes_per_token_bf16"]


@pytest.mark.parametrize("name", sorted(TABLE))
def test_matmul_flops_are_twice_active_params(name):
    model = load_model(name)
    assert matmul_flops_per_token(model) == pytest.approx(2 * model.active_params, rel=1e-3)


def test_every_model_names_its_source():
    for name in model_names():
        model = load_model(name)
        assert model.source and all(str(v).strip() for v in model.source.values())
        assert model.published.get("source")


def test_mla_decode_reads_latent_cache():
    model = load_model("deepseek-v3")
    core = next(o for o in token_ops(model, 1000, absorbed_mla=True) if o.op_class == "attention_core")
    assert core.kv_elements == 1000 * 61 * 576
    absorbed = core.flops
    plain = next(o for o in token_ops(model, 1000, absorbed_mla=False) if o.op_class == "attention_core").flops
    assert absorbed > plain  # absorption trades KV decompression for wider score dot products


def test_sliding_window_caps_held_kv():
    model = load_model("gpt-oss-120b")
    held = model.kv_tokens_held(10_000)
    assert held.count(128) == 18 and held.count(10_000) == 18
    scout = load_model("llama4-scout")
    assert scout.kv_tokens_held(20_000).count(8192) == 36


@pytest.mark.parametrize("rule,count", [("none", 0), ("all", 10), ("range(0, 3)", 3),
                                        ("range(1, 10, 2)", 5), ("i % 4 != 3", 8), ("i % 2 == 0", 5)])
def test_layer_rules(rule, count):
    assert len(layer_indices(rule, 10)) == count


@pytest.mark.parametrize("rule", ["range(0, 11)", "i % 0 == 1", "layers 1-3", "range(0, 5, 0)"])
def test_bad_layer_rules_are_rejected(rule):
    with pytest.raises(MoesimError):
        layer_indices(rule, 10)


def _write_variant(tmp_path, name, mutate):
    data = yaml.safe_load((Path(__file__).parents[1] / "workloads" / "models" / "mixtral-8x7b.yaml").read_text())
    mutate(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_model_file_loads_by_path(tmp_path):
    path = _write_variant(tmp_path, "mine", lambda d: d.update(id="mine"))
    assert load_model(str(path)).total_params == TABLE["mixtral-8x7b"]["total"]


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["moe"].update(num_experts_per_tok=9), "moe"),
    (lambda d: d["layers"]["moe_layers"].update(count=31), "layers"),
    (lambda d: d.update(hidden_sise=1), "hidden_sise"),
    (lambda d: d.pop("source"), "source"),
    (lambda d: d["kv_cache"].update(elements_per_token_per_layer=1000), "kv_cache.elements_per_token_per_layer"),
])
def test_inconsistent_model_files_fail_with_the_field(tmp_path, mutate, field):
    path = _write_variant(tmp_path, "broken", mutate)
    with pytest.raises(MoesimError) as err:
        load_model(str(path))
    assert field in str(err.value)
