"""Serving benchmarks whose stated split contradicts their run name run on the run name's split."""
import collections

import pytest
import yaml

from moesim.validation.cases import load_cases
from moesim.validation.run import validate
from moesim.validation.serving_load_labels import run_name_split, split_of_run_name
from tests.test_validation_serving_load import bench, pool, write


def test_the_run_name_gives_the_engines_tp_and_ep_flags():
    assert run_name_split("2026_04_06_deepseek_r1_b200_sxm_sglang_fp4_agg_1024x1024_c4_tp8_ep8_1015") == (8, 8)
    assert run_name_split("dsr1_b200_sglang_fp4_agg_1024x1024_c4_cfg201") is None
    assert run_name_split("x_tp4_ep1") == (4, 1)


@pytest.mark.parametrize("stated, flags, simulated", [
    # SGLang / TRT-LLM: attention TP over N x M GPUs, MoE moe_tp N x moe_ep M
    (pool(64, 1, 8, 8, 4), (8, 8), dict(tp=8, attn_dp=1, moe_tp=1, moe_ep=8, gpus=8, max_batch_per_attn_dp=4)),
    # TRT-LLM attention DP: N x M attention-DP ranks of one GPU
    (pool(1, 64, 8, 8, 4), (8, 8), dict(tp=1, attn_dp=8, moe_tp=1, moe_ep=8, gpus=8, max_batch_per_attn_dp=32)),
    # vLLM: TP N with M data-parallel engines, experts over all N x M GPUs
    (pool(4, 4, 1, 16, 16), (4, 4), dict(tp=4, attn_dp=1, moe_tp=1, moe_ep=4, gpus=4, max_batch_per_attn_dp=64)),
    (pool(2, 8, 4, 4, 2), (4, 4), dict(tp=2, attn_dp=2, moe_tp=1, moe_ep=4, gpus=4, max_batch_per_attn_dp=8)),
])
def test_a_pool_of_n_times_m_gpus_runs_on_the_run_names_n(stated, flags, simulated):
    fixed = split_of_run_name(stated, *flags)
    assert {k: fixed[k] for k in simulated} == simulated
    assert fixed["tp"] * fixed["attn_dp"] == fixed["moe_tp"] * fixed["moe_ep"] == fixed["gpus"]
    assert fixed["max_batch_per_attn_dp"] * fixed["attn_dp"] == stated["max_batch_per_attn_dp"] * stated["attn_dp"]


@pytest.mark.parametrize("stated, flags", [
    (pool(8, 1, 1, 8, 4), (8, 8)),    # already the run name's 8 GPUs
    (pool(8, 1, 8, 1, 4), (8, 1)),    # no expert parallelism: nothing was multiplied
    (pool(4, 4, 4, 4, 2), (4, 3)),    # not N x M GPUs
])
def test_a_pool_that_agrees_with_its_run_name_is_left_alone(stated, flags):
    assert split_of_run_name(stated, *flags) is None


@pytest.mark.parametrize("field, value", [("tp", None), ("tp", "64"), ("moe_ep", 0), ("max_batch_per_attn_dp", True)])
def test_a_malformed_pool_is_left_for_the_benchmark_check_to_skip(tmp_path, field, value):
    cases = bench("x_c4_tp2_ep2_7", split=(4, 1, 2, 2))
    for c in cases:
        c["params"]["pool"][field] = value
    loaded = load_cases(write(tmp_path, cases))
    assert not any(getattr(c, "relabelled", None) for c in loaded)
    skipped = validate(loaded, kernel_profile="spec")["skipped"]
    assert len(skipped) == 2 and all("malformed params" in s["reason"] for s in skipped), skipped


def test_a_named_run_and_its_unnamed_twin_are_relabelled_and_nothing_else(tmp_path):
    named = bench("x_c4_tp2_ep2_7", split=(4, 1, 2, 2))          # 4 GPUs stated, run name says 2
    twin = bench("x_c4_cfg9", split=(4, 1, 2, 2))                # same measurement and pool, no split in its name
    other = bench("y_c4_cfg9", split=(4, 1, 4, 1), concurrency=8)  # another load, not the signature: left alone
    square = bench("w_c4_cfg3", split=(4, 1, 2, 2), concurrency=8)  # moe_tp = moe_ep = 2 over 4 GPUs: 2 GPUs
    agrees = bench("z_c4_tp2_ep2_8", split=(2, 1, 1, 2))
    cases = load_cases(write(tmp_path, named + twin + other + agrees + square))
    assert [c.id for c in cases] == [c["id"] for c in named + twin + other + agrees + square]
    moved = {c.id: c for c in cases if getattr(c, "relabelled", None)}
    assert set(moved) == {c["id"] for c in named + twin + square}
    for c in moved.values():
        assert c.gpus == 2 and c.params["pool"] == pool(2, 1, 1, 2, c.params["concurrency"])
    assert "tp2_ep2" in moved["x_c4_tp2_ep2_7-tpot_ms"].relabelled
    assert "as run x_c4_tp2_ep2_7" in moved["x_c4_cfg9-ttft_ms"].relabelled
    assert "no split in its run name" in moved["w_c4_cfg3-tpot_ms"].relabelled
    result = validate([c for c in cases if c.id.startswith("x_c4_tp")], kernel_profile="spec")
    assert [r["id"] for r in result["relabelled"]] == [c["id"] for c in named]


def test_the_files_other_records_of_a_relabelled_measurement_state_the_run_names_split():
    """The evidence for the rules, kept checked: wherever validation/serving_load.yaml records a
    relabelled measurement again under a split of its own, that split is the one moesim simulates."""
    raw = yaml.load(open("validation/serving_load.yaml"), Loader=yaml.CSafeLoader)["cases"]
    cases = load_cases("validation/serving_load.yaml")
    assert [c.id for c in cases] == [c["id"] for c in raw]

    def measurement(c):
        p = c.params
        return (c.system, p["model"], p["backend"], p["moe_dtype"], p["isl"], p["osl"], p["concurrency"], c.metric,
                round(c.measured, 2))

    def split(c):
        return {k: v for k, v in c.params["pool"].items() if k not in ("max_batch_per_attn_dp", "pp")}

    moved = [c for c in cases if getattr(c, "relabelled", None)]
    assert collections.Counter(c.relabelled.split(" ")[0] for c in moved) == {"run": 256, "same": 64, "no": 134}
    simulated = collections.defaultdict(list)
    for c in moved:
        simulated[measurement(c)].append(split(c))
    agree, disagree = 0, []
    for c in cases:
        if getattr(c, "relabelled", None) or c.params.get("mode") != "agg" or measurement(c) not in simulated:
            continue
        for other in simulated[measurement(c)]:
            if split(c) == other:
                agree += 1
            else:
                disagree.append((c.run, split(c), other))
    assert agree == 222 and not disagree, disagree
    config_181 = {c.params["pool"]["moe_tp"] for c in moved if c.run.endswith("_cfg181")}
    assert config_181 == {8}   # its TPOT repeats config 83's (TP 8, moe_tp 8), not the run-name pattern's EP 8
    square = collections.Counter()
    for c in raw:
        p = c["params"].get("pool") or {}
        if p and p["moe_tp"] == p["moe_ep"] > 1 and p["gpus"] == p["moe_ep"] ** 2:
            named = run_name_split(c["run"])
            square[None if named is None else named == (p["moe_ep"],) * 2] += 1
    assert square == {True: 220, None: 192}  # named: always tpM_epM; unnamed: relabelled by twin or signature


def test_a_pattern_configuration_takes_the_split_its_repeated_measurement_states(tmp_path):
    """Both loads of an unnamed moe_tp = moe_ep = 2 configuration take the split (2 GPUs, experts by
    TP) under which one of its measurements appears again, not the run-name pattern's EP 2."""
    square = bench("w_c4_cfg3", split=(4, 1, 2, 2)) + bench("w_c8_cfg3", split=(4, 1, 2, 2), concurrency=8)
    other = bench("v_c8_cfg4", split=(2, 1, 2, 1), concurrency=8)   # the c8 measurements again, TP 2
    for c in other:
        c["params"]["backend_version"] = "0.9"   # another import's version label: the same run all the same
    cases = load_cases(write(tmp_path, square + other))
    moved = {c.id: c for c in cases if getattr(c, "relabelled", None)}
    assert set(moved) == {c["id"] for c in square}
    assert all(c.params["pool"] == pool(2, 1, 2, 1, c.params["concurrency"]) for c in moved.values())
    assert all("appear again under run v_c8_cfg4" in c.relabelled for c in moved.values())
