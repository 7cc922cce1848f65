"""The serving_load models of issue 17 (kimi-k2.5, minimax-m2.5, qwen3.5-397b-a17b, glm-5): they load,
their parameter counts match the published figures, and their attention kinds (Gated DeltaNet
linear layers, DSA sparse attention) reach the VRAM ledger and the attention costs."""
import json

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.costs.memory import kv_bytes_per_sequence, memory_ledger
from moesim.specs.hf_import import convert
from moesim.specs.model import load_model
from moesim.specs.opcosts import attention_core_flops, attention_kv_elements_read, token_ops

# published total / active, the active-count convention that matches it, and the tolerance.
# Sources (also in each model file's `published.source`):
#   kimi-k2.5: sgl-project/sglang @3772f89 docs/basic_usage/kimi_k2_5.md, "1T-parameter model (32B active)";
#              1T is rounded: the text decoder counts 1.026T (+2.6%, as kimi-k2 in models_check.md)
#   minimax-m2.5: sgl-project/sglang @8100e97 docs/basic_usage/minimax_m2.md, 230B total / 10B active
#   qwen3.5-397b-a17b: sgl-project/sgl-cookbook @7b5bd9c docs/autoregressive/Qwen/Qwen3.5.md, 397B / 17B
#   glm-5: sgl-project/sgl-cookbook @7b5bd9c docs/autoregressive/GLM/GLM-5.md, 744B / 40B active
PUBLISHED = {
    "kimi-k2.5": (1.0e12, 0.03, 32e9, "head_only", 0.02),
    "minimax-m2.5": (230e9, 0.02, 10e9, "no_embedding_no_head", 0.025),
    "qwen3.5-397b-a17b": (397e9, 0.02, 17e9, "emb_head", 0.025),
    "glm-5": (744e9, 0.02, 40e9, "head_only", 0.025),
}
NEW = sorted(PUBLISHED)


def _active(model, convention: str) -> float:
    return {"head_only": model.active_params,
            "emb_head": model.active_params_with_embedding,
            "no_embedding_no_head": model.active_params - model.head_matmul_params}[convention]


@pytest.mark.parametrize("name", NEW)
def test_loads_with_sources(name):
    model = load_model(name)
    assert model.id == name and model.hf_id
    assert "aiconfigurator @095f58a" in model.source["config"]
    assert model.published["source"]


@pytest.mark.parametrize("name", NEW)
def test_total_and_active_match_published(name):
    model = load_model(name)
    total, total_tol, active, convention, active_tol = PUBLISHED[name]
    assert abs(model.total_params - total) / total <= total_tol
    assert abs(_active(model, convention) - active) / active <= active_tol


def test_exact_counts_pinned():
    # the formulas are exact: pin them so a regression cannot hide in the published tolerance
    assert load_model("glm-5").total_params == 743_911_218_432
    assert load_model("qwen3.5-397b-a17b").total_params == 396_346_350_336
    assert load_model("minimax-m2.5").total_params == 228_689_764_864
    assert load_model("kimi-k2.5").total_params == load_model("kimi-k2").total_params


def test_qwen35_linear_layers_have_state_not_kv():
    m = load_model("qwen3.5-397b-a17b")
    assert m.linear_layer_indices == tuple(i for i in range(60) if i % 4 != 3)
    assert [m.attention_kind(i) for i in (0, 1, 2, 3)] == ["linear", "linear", "linear", "full"]
    # KV per token: only the 15 full-attention layers (2 KV heads x 256 x K,V), bf16
    assert m.kv_bytes_per_token(2) == 15 * 2 * 2 * 256 * 2
    held = m.kv_tokens_held(10_000)
    assert sum(1 for t in held if t == 10_000) == 15 and held.count(0) == 45
    # the state: 45 layers x (64 heads x 128 x 128 recurrent in fp32 + conv 12288 x 3 in bf16)
    per_layer = 64 * 128 * 128 * 4 + (2 * 2048 + 8192) * 3 * 2
    assert m.state_bytes_per_sequence(2, 4) == 45 * per_layer
    # Gated DeltaNet block: in_proj_qkv, z, b, a; conv1d; dt_bias, A_log; gated norm; out_proj
    d = 4096
    assert m.linear_attention_params == d * (12288 + 8192 + 128) + 8192 * d + 12288 * 4 + 128 + 128


def _serving(model: str, context: int, **extra):
    return load_scenario(None, {"model": model, "system": "dgx-h100", "gpus": 16, "parallel.ep": 16,
                                "dtypes.weights": "fp8", "dtypes.kv_cache": "bf16",
                                "workload.input_len": context - 1, "workload.output_len": 1, **extra})


def test_qwen35_ledger_counts_state_once_per_sequence():
    short, long = _serving("qwen3.5-397b-a17b", 1000), _serving("qwen3.5-397b-a17b", 100_000)
    layers = range(60)
    state = kv_bytes_per_sequence(short, layers, 0)
    assert state > 0  # a sequence of no tokens still holds its linear-attention state
    # the part that grows is the full-attention KV only; the state is added once
    per_token = (kv_bytes_per_sequence(long, layers, 100_000) - kv_bytes_per_sequence(short, layers, 1000)) / 99_000
    assert per_token == pytest.approx(15 * 2 * 2 * 256 * 2)  # tp 1: every KV head on the GPU
    lg = memory_ledger(short)
    assert lg.kv_bytes_per_token_per_gpu == pytest.approx(15 * 2 * 2 * 256 * 2)
    assert lg.state_bytes_per_sequence_per_gpu == pytest.approx(state)
    # max KV tokens: each sequence of the workload's context also needs its state
    room = lg.max_kv_tokens_per_gpu * (lg.kv_bytes_per_token_per_gpu + state / 1000)
    assert room <= lg.budget_bytes
    assert "state_bytes_per_sequence_per_gpu" in lg.to_json()


def test_linear_layer_cost_is_constant_per_token():
    m = load_model("qwen3.5-397b-a17b")
    assert attention_core_flops(m, 10, absorbed=False, layer=0) == \
        attention_core_flops(m, 1_000_000, absorbed=False, layer=0) > 0
    assert attention_core_flops(m, 1000, absorbed=False, layer=3) == 4 * 32 * 256 * 1000
    assert attention_kv_elements_read(m, 0, 1000) == attention_kv_elements_read(m, 0, 10**6)
    core = lambda ctx: next(o for o in token_ops(m, ctx, absorbed_mla=True) if o.op_class == "attention_core")
    # KV read per decode token grows only with the 15 full-attention layers
    assert core(20_000).kv_elements - core(10_000).kv_elements == 15 * 1024 * 10_000


def test_glm5_sparse_attention_bounded_by_topk():
    m = load_model("glm-5")
    assert m.attention_kind(10) == "sparse"
    assert m.kv_elements_per_token_per_layer == 576 + 128
    # main attention stops growing at index_topk; only the cheap indexer keeps growing
    f = lambda t: attention_core_flops(m, t, absorbed=True)
    assert f(4096) - f(2048) == pytest.approx(2 * 32 * 128 * 2048)
    assert attention_kv_elements_read(m, 5, 100_000) == 100_000 * 128 + 2048 * 576
    assert attention_kv_elements_read(m, 5, 1000) == 1000 * 704
    # the indexer's weights count in each layer
    assert m.indexer_params == 2048 * 32 * 128 + 6144 * 128 + 2 * 128 + 6144 * 32


def test_existing_models_unchanged_by_attention_kinds():
    v3 = load_model("deepseek-v3")
    assert v3.sparse_attention is None and v3.linear_attention is None
    assert all(v3.attention_kind(i) == "full" for i in range(61))
    assert v3.state_bytes_per_sequence(2) == 0
    core = next(o for o in token_ops(v3, 1000, absorbed_mla=True) if o.op_class == "attention_core")
    assert core.kv_elements == 1000 * 61 * 576


@pytest.mark.parametrize("name", NEW)
def test_simulate_runs(name):
    result = CliRunner().invoke(main, ["simulate", "--model", name, "--system", "dgx-h100", "--gpus", "16",
                                       "--ep", "16", "--weights-dtype", "fp8", "--ignore-memory", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["memory"]["per_gpu"]["weights_bytes"] > 0


# ---------------------------------------------------------------- HF import of the new model types
def _roundtrip(config: dict, name: str):
    spec = convert(config, model_id=name, source="test")
    from moesim.core.loader import parse_record
    from moesim.specs.model import ModelSpec
    return parse_record(ModelSpec, spec, file="test")


def test_import_hf_new_model_types_reproduce_shipped_counts():
    from pathlib import Path

    import yaml
    cfgs = yaml.safe_load((Path(__file__).parent / "data" / "hf_configs_new.yaml").read_text())
    for name, config in cfgs.items():
        imported = _roundtrip(config, name)
        shipped = load_model(name)
        assert imported.total_params == shipped.total_params, name
        assert imported.active_params == shipped.active_params, name
        assert imported.kv_bytes_per_token(2) == shipped.kv_bytes_per_token(2), name
        assert imported.state_bytes_per_sequence(2, 4) == shipped.state_bytes_per_sequence(2, 4), name
