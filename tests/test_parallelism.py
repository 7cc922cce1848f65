"""The parallel split: `resolve_plan` conventions and divisibility rules, and `stage_layers`."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.core.errors import MoesimError
from moesim.core.loader import parse_record
from moesim.specs.model import load_model
from moesim.specs.parallelism import ParallelInput, ParallelPlan, divisors, resolve_plan, stage_layers


def plan(model: str, gpus: int, redundant: int = 0, **sizes) -> ParallelPlan:
    return resolve_plan(ParallelInput(**sizes), gpus, load_model(model), redundant_experts=redundant)


def plan_error(model: str, gpus: int, redundant: int = 0, **sizes) -> MoesimError:
    with pytest.raises(MoesimError) as info:
        plan(model, gpus, redundant, **sizes)
    return info.value


# ---------------------------------------------------------------- conventions
def test_defaults_all_gpus_data_parallel():
    p = plan("deepseek-v3", 16)
    assert (p.tp, p.pp, p.dp, p.ep, p.etp, p.edp) == (1, 1, 16, 1, 1, 16)


@pytest.mark.parametrize("gpus, tp, pp", [(16, 1, 1), (16, 2, 1), (16, 2, 2), (32, 4, 2), (64, 8, 8), (8, 8, 1)])
def test_gpus_is_tp_pp_dp(gpus, tp, pp):
    p = plan("deepseek-v3", gpus, tp=tp, pp=pp)
    assert p.dp == gpus // (tp * pp)
    assert p.tp * p.pp * p.dp == gpus == p.gpus
    assert p.stage_gpus == p.tp * p.dp


def test_explicit_dp_that_matches_is_accepted():
    p = plan("deepseek-v3", 16, tp=2, pp=2, dp=4)
    assert (p.tp, p.pp, p.dp) == (2, 2, 4)


@pytest.mark.parametrize("gpus, tp, pp, ep, etp, edp", [
    (16, 1, 1, 16, 1, 1),    # SGLang DP-attention + EP over all GPUs
    (32, 1, 1, 8, 1, 4),     # 4 replicas of each expert
    (32, 2, 1, 8, 1, 4),     # stage = tp x dp = 32 GPUs
    (32, 2, 2, 4, 2, 2),     # pp splits the GPUs first: stage of 16 = 4 x 2 x 2
    (16, 4, 1, 4, 4, 1),
])
def test_edp_is_derived(gpus, tp, pp, ep, etp, edp):
    p = plan("deepseek-v3", gpus, tp=tp, pp=pp, ep=ep, etp=etp)
    assert p.edp == edp
    assert p.ep * p.etp * p.edp == p.stage_gpus


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_etp_defaults_to_tp_without_ep(tp):
    p = plan("mixtral-8x7b", 8, tp=tp)
    assert p.ep == 1
    assert p.etp == tp
    assert p.edp == 8 // tp


@pytest.mark.parametrize("tp, ep", [(1, 8), (2, 8), (8, 8), (2, 4)])
def test_etp_defaults_to_one_with_ep(tp, ep):
    p = plan("mixtral-8x7b", 8, tp=tp, ep=ep)
    assert p.etp == 1
    assert p.edp == 8 // ep


def test_vllm_expert_parallel_convention():
    """vLLM `--enable-expert-parallel`: ep = tp x dp, etp = 1."""
    p = plan("qwen3-235b-a22b", 8, tp=4, ep=8)
    assert (p.tp, p.dp, p.ep, p.etp, p.edp) == (4, 2, 8, 1, 1)


def test_explicit_etp_overrides_default():
    p = plan("mixtral-8x7b", 8, tp=8, etp=2)
    assert (p.ep, p.etp, p.edp) == (1, 2, 4)


def test_attn_dp_is_an_alias_of_dp():
    a = plan("deepseek-v3", 16, attn_dp=16, ep=16)
    b = plan("deepseek-v3", 16, dp=16, ep=16)
    assert a == b
    assert a.dp == 16


def test_attn_dp_and_dp_equal_is_fine():
    assert plan("deepseek-v3", 16, dp=16, attn_dp=16).dp == 16


def test_attn_dp_that_does_not_match_gpus():
    err = plan_error("deepseek-v3", 16, attn_dp=8)
    assert err.field == "parallel.dp"


def test_dp_and_attn_dp_conflict():
    with pytest.raises(ValidationError, match="name the same thing"):
        ParallelInput(dp=8, attn_dp=16)


def test_dp_and_attn_dp_conflict_in_scenario_names_parallel():
    from moesim.cluster.scenario import ScenarioInput
    data = {"model": "deepseek-v3", "system": "dgx-h100", "gpus": 16, "parallel": {"dp": 8, "attn_dp": 16},
            "workload": {"kind": "serving", "phase": "decode", "batch": 1, "input_len": 1, "output_len": 1}}
    with pytest.raises(MoesimError) as info:
        parse_record(ScenarioInput, data)
    assert info.value.field == "parallel"
    assert "dp=8" in info.value.problem and "attn_dp=16" in info.value.problem
    assert info.value.fix == "give one of them"


def test_record_error_with_prefix_and_model_level_validator():
    with pytest.raises(MoesimError) as info:
        parse_record(ParallelInput, {"dp": 8, "attn_dp": 16}, prefix="parallel")
    assert info.value.field == "parallel"


@pytest.mark.parametrize("name", ["tp", "pp", "dp", "attn_dp", "ep", "etp"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(name, value):
    with pytest.raises(ValidationError):
        ParallelInput(**{name: value})
    with pytest.raises(MoesimError) as info:
        parse_record(ParallelInput, {name: value}, prefix="parallel")
    assert info.value.field == f"parallel.{name}"
    assert info.value.fix == "use a value >= 1"


def test_unknown_parallel_field_is_rejected():
    with pytest.raises(MoesimError) as info:
        parse_record(ParallelInput, {"tp": 1, "edp": 2}, prefix="parallel")
    assert info.value.field == "parallel.edp"
    assert "unknown field" in str(info.value)


# ---------------------------------------------------------------- divisibility rules
@pytest.mark.parametrize("gpus", [0, -4])
def test_gpu_count_must_be_positive(gpus):
    err = plan_error("deepseek-v3", gpus)
    assert err.field == "gpus"


@pytest.mark.parametrize("gpus, tp, pp", [(16, 3, 1), (16, 1, 3), (12, 8, 1), (16, 4, 8)])
def test_tp_pp_must_divide_gpus(gpus, tp, pp):
    err = plan_error("deepseek-v3", gpus, tp=tp, pp=pp)
    assert err.field == "parallel.tp"
    assert str(gpus) in err.problem
    assert err.fix and "1, 2" in err.fix  # lists valid divisors


def test_dp_must_complete_gpu_count():
    err = plan_error("deepseek-v3", 16, dp=3)
    assert err.field == "parallel.dp"
    assert "set dp to 16" in err.fix


def test_ep_etp_must_divide_stage():
    err = plan_error("mixtral-8x7b", 4, ep=8)
    assert err.field == "parallel.ep"
    assert "4 GPUs of a pipeline stage" in err.problem


def test_tp_must_divide_attention_heads():
    # llama4-scout: 40 heads; tp 16 divides 16 GPUs but not 40 heads
    err = plan_error("llama4-scout", 16, tp=16)
    assert err.field == "parallel.tp"
    assert "40 attention heads" in err.problem
    assert "1, 2, 4, 5, 8, 10, 20, 40" in err.fix


@pytest.mark.parametrize("model, gpus, tp, kv", [
    ("dbrx", 6, 6, 8),              # 48 heads, 8 KV heads: 6 divides 48, not 8, and is no multiple of 8
    ("grok-1", 12, 12, 8),          # 48 heads, 8 KV heads
    ("qwen2-57b-a14b", 14, 14, 4),  # 28 heads, 4 KV heads
])
def test_gqa_tp_must_divide_or_be_multiple_of_kv_heads(model, gpus, tp, kv):
    m = load_model(model)
    assert m.attention.num_key_value_heads == kv
    assert m.attention.num_attention_heads % tp == 0  # the heads rule alone would pass
    err = plan_error(model, gpus, tp=tp)
    assert err.field == "parallel.tp"
    assert "KV heads" in err.problem


@pytest.mark.parametrize("model, tp", [("mixtral-8x7b", 8), ("mixtral-8x7b", 16), ("mixtral-8x7b", 2),
                                       ("qwen3-30b-a3b", 8), ("qwen3-30b-a3b", 2)])
def test_gqa_tp_dividing_or_multiple_of_kv_heads_is_fine(model, tp):
    """Mixtral has 8 KV heads: tp 2 splits them, tp 16 replicates each over 2 ranks."""
    p = plan(model, tp, tp=tp)
    assert p.tp == tp


def test_mla_has_no_kv_head_rule():
    # deepseek-v2-lite: MLA with 16 heads; tp 16 is fine whatever num_key_value_heads says
    assert plan("deepseek-v2-lite", 16, tp=16).tp == 16


@pytest.mark.parametrize("model, gpus, ep, redundant", [
    ("deepseek-v3", 12, 12, 0),     # 256 experts
    ("deepseek-v3", 12, 12, 4),     # 260 slots
    ("mixtral-8x7b", 6, 3, 0),      # 8 experts
    ("qwen3-30b-a3b", 24, 24, 0),   # 128 experts
])
def test_ep_must_divide_expert_slots(model, gpus, ep, redundant):
    err = plan_error(model, gpus, redundant, ep=ep)
    assert err.field == "parallel.ep"
    assert "experts.redundant" in err.fix


def test_ep_fix_suggests_a_redundant_count_that_works():
    err = plan_error("deepseek-v3", 12, ep=12)
    assert "set experts.redundant (--redundant-experts) to 8" in err.fix
    p = plan("deepseek-v3", 12, 8, ep=12)  # 256 + 8 = 264 = 22 x 12
    assert p.ep == 12


def test_ep_fix_lists_only_sizes_that_fit_the_stage():
    err = plan_error("deepseek-v3", 12, ep=12)
    listed = err.fix.split("use ep among: ")[1].split(",")
    sizes = [int(s) for s in listed if s.strip().isdigit()]
    assert sizes and all(12 % s == 0 and 256 % s == 0 for s in sizes)


def test_redundant_experts_make_ep_divide():
    assert plan("deepseek-v3", 72, 32, ep=72).ep == 72  # 288 slots = 4 x 72 (GB200 NVL72 recipe)


def test_etp_must_divide_moe_intermediate_size():
    # mixtral-8x7b: moe_intermediate_size 14336 = 2^11 x 7 is not divisible by 3
    err = plan_error("mixtral-8x7b", 6, ep=2, etp=3)
    assert err.field == "parallel.etp"
    assert "14336" in err.problem


def test_default_etp_checked_against_moe_intermediate_size():
    # llama4-scout: 40 heads, 8 KV heads (40 is a multiple), moe_intermediate_size 8192 = 2^13.
    # With ep == 1, etp defaults to tp = 40, which does not divide 8192.
    err = plan_error("llama4-scout", 40, tp=40)
    assert err.field == "parallel.etp"
    assert "8192" in err.problem
    assert plan("llama4-scout", 40, tp=40, etp=8).etp == 8  # an explicit etp that divides is fine


def test_pp_must_not_exceed_layers():
    err = plan_error("olmoe-1b-7b", 32, pp=32)  # 16 layers
    assert err.field == "parallel.pp"
    assert "16" in err.fix


def test_pp_equal_to_layers_is_fine():
    assert plan("olmoe-1b-7b", 16, pp=16).pp == 16


def test_field_prefix_is_used():
    with pytest.raises(MoesimError) as info:
        resolve_plan(ParallelInput(tp=3), 16, load_model("deepseek-v3"), field="decode.parallel")
    assert info.value.field == "decode.parallel.tp"


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(13) == [1, 13]


# ---------------------------------------------------------------- stage_layers
@pytest.mark.parametrize("layers, pp", [(61, 1), (61, 2), (61, 4), (61, 8), (61, 61), (16, 16), (5, 3),
                                        (94, 7), (48, 4), (27, 5), (1, 1)])
def test_stage_layers_cover_contiguous_balanced(layers, pp):
    stages = stage_layers(layers, pp)
    assert len(stages) == pp
    assert all(isinstance(s, range) and s.step == 1 for s in stages)
    assert [i for s in stages for i in s] == list(range(layers))  # all layers, in order, once
    for prev, nxt in zip(stages, stages[1:]):
        assert prev.stop == nxt.start  # contiguous
    sizes = [len(s) for s in stages]
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)  # the remainder goes to the early stages


def test_stage_layers_even_split():
    assert stage_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]


def test_stage_layers_remainder_on_first_stages():
    assert [len(s) for s in stage_layers(61, 4)] == [16, 15, 15, 15]
