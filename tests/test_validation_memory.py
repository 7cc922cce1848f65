"""`memory` validation: weights and framework KV budgets per GPU (moesim.validation.memory).

The open cases are read from the project's copy, validation/cases.yaml.
Weights are held to the project's end-to-end target (|error| <= 10%); the KV budgets are
reported per case, asserted only where they land within that target, since they depend on
activation/graph estimates the frameworks measure at start-up.
"""
from pathlib import Path

import pytest
import yaml

from moesim.cluster.scenario import framework_table, load_scenario
from moesim.core.units import GiB
from moesim.costs.memory import memory_ledger
from moesim.validation.cases import Skip
from moesim.validation.memory import (case_overrides, predict_memory, vllm_profile_workload, vllm_version,
                                      weight_dtype_overrides)

CASES = Path(__file__).resolve().parents[1] / "validation" / "cases.yaml"
TARGET = 0.10


def memory_cases(metric=None):
    if not CASES.is_file():
        return []
    cases = yaml.safe_load(CASES.read_text())["cases"]
    return [c for c in cases if c["what"] == "memory" and (metric is None or c["metric"] == metric)]


def synthetic(metric="kv_cache_GiB_per_gpu", framework="sglang", **params):
    base = {"model": "qwen3-30b-a3b", "parallel": {"tp": 1, "ep": 1, "dp": 1, "pp": 1}, "dtype": "bf16",
            "kv_cache_dtype": "bf16", "framework": framework}
    return {"id": "synthetic", "what": "memory", "system": "dgx-h100", "gpus": 1, "metric": metric,
            "measured": 1.0, "params": {**base, **params}, "source": "test"}


# ---------------------------------------------------------------- shared dtype mapping
def test_expert_only_checkpoints_keep_the_rest_bf16():
    for model, dtype in (("gpt-oss-120b", "mxfp4"), ("deepseek-v3", "nvfp4"), ("llama4-maverick", "fp8")):
        assert weight_dtype_overrides(model, dtype) == {"dtypes.weights": "bf16", "dtypes.expert_weights": dtype}
    assert weight_dtype_overrides("qwen3-235b-a22b", "fp8") == {"dtypes.weights": "fp8", "dtypes.expert_weights": None}


# ---------------------------------------------------------------- unit tests on synthetic cases
def test_weights_metric_is_the_ledger_weights():
    case = synthetic(metric="weights_GiB_per_gpu")
    value, ignored = predict_memory(case)
    ledger = memory_ledger(load_scenario(None, case_overrides(case)))
    assert value == pytest.approx(ledger.per_gpu["weights_bytes"] / GiB)
    assert "kv_cache_dtype" in ignored and "model" not in ignored


def test_sglang_kv_is_fraction_of_free_before_load_minus_weights():
    case = synthetic(framework="sglang", mem_fraction_static=0.88)
    value, ignored = predict_memory(case)
    sc = load_scenario(None, case_overrides(case))
    per_gpu, fw = memory_ledger(sc).per_gpu, sc.framework
    free_before_load = per_gpu["capacity_bytes"] - fw.cuda_context_bytes.value - fw.non_torch_bytes.value
    assert value * GiB == pytest.approx(0.88 * free_before_load - per_gpu["weights_bytes"], rel=1e-12)
    assert "mem_fraction_static" not in ignored


def test_sglang_default_fraction_comes_from_frameworks_yaml():
    default = framework_table().frameworks["sglang"].memory_fraction.value
    value, _ = predict_memory(synthetic(framework="sglang"))
    explicit, _ = predict_memory(synthetic(framework="sglang", mem_fraction_static=default))
    assert value == pytest.approx(explicit)


def test_vllm_kv_follows_the_profiling_rule():
    case = synthetic(framework="vllm", gpu_memory_utilization=0.9, framework_version="0.19.0")
    value, ignored = predict_memory(case)
    sc = load_scenario(None, case_overrides(case))
    workload, _ = vllm_profile_workload(sc.system.gpu.capacity_bytes, {})
    per_gpu = memory_ledger(load_scenario(None, case_overrides(case, workload))).per_gpu
    expected = 0.9 * per_gpu["capacity_bytes"] - per_gpu["weights_bytes"] - per_gpu["activations_bytes"] \
        - per_gpu["buffers_bytes"]
    assert value * GiB == pytest.approx(expected, rel=1e-12)
    assert workload["prefill_chunk_tokens"] == 8192 and workload["batch"] == 1024  # vllm serve, >= 70 GiB GPU
    assert "gpu_memory_utilization" not in ignored and "kv_cache_dtype" in ignored


def test_vllm_kv_decreases_with_gpu_memory_utilization():
    high, _ = predict_memory(synthetic(framework="vllm", gpu_memory_utilization=0.95))
    low, _ = predict_memory(synthetic(framework="vllm", gpu_memory_utilization=0.85))
    capacity = load_scenario(None, case_overrides(synthetic())).system.gpu.capacity_bytes
    assert low < high
    assert (high - low) * GiB == pytest.approx(0.10 * capacity, rel=1e-9)


def test_vllm_kv_shrinks_with_more_batched_tokens_and_from_v0_21_by_the_graph_pool():
    small, ignored = predict_memory(synthetic(framework="vllm", max_num_batched_tokens=2048))
    large, _ = predict_memory(synthetic(framework="vllm", max_num_batched_tokens=16384))
    assert large < small and "max_num_batched_tokens" not in ignored
    old, _ = predict_memory(synthetic(framework="vllm", framework_version="0.19.0"))
    new, _ = predict_memory(synthetic(framework="vllm", framework_version="0.21.0"))
    graphs = framework_table().frameworks["vllm"].cuda_graph_bytes.value
    assert (old - new) * GiB == pytest.approx(graphs)
    assert vllm_version("V1 engine, ~v0.9.2/0.10 (July 2025)") == (0, 9, 2)
    assert vllm_version("not stated (Jan 2026)") is None


@pytest.mark.parametrize("params, reason", [
    ({"framework": "tensorrt-llm"}, "unknown framework"),
    ({"framework": "megatron"}, "KV budget rule"),
    ({"gpu_memory_utilization": "not stated", "framework": "vllm"}, "not stated"),
    ({"dtype": "int3"}, "dtypes.yaml"),
    ({"kv_cache_dtype": "int3"}, "dtypes.yaml"),
    ({"model": "no-such-model"}, "cannot build"),
])
def test_skips_say_why(params, reason):
    with pytest.raises(Skip, match=reason):
        predict_memory(synthetic(**params))


def test_unknown_and_unmodelled_metrics_skip():
    with pytest.raises(Skip, match="unknown metric"):
        predict_memory(synthetic(metric="furlongs"))
    with pytest.raises(Skip, match="total_GiB_per_gpu"):
        predict_memory(synthetic(metric="total_GiB_per_gpu"))


def test_weights_ignore_a_not_stated_kv_setting():
    value, ignored = predict_memory(synthetic(metric="weights_GiB_per_gpu", framework="vllm",
                                              gpu_memory_utilization="not stated"))
    assert value > 0 and "gpu_memory_utilization" in ignored


# ---------------------------------------------------------------- open cases
@pytest.mark.parametrize("case", memory_cases("weights_GiB_per_gpu"), ids=lambda c: c["id"])
def test_weights_per_gpu_within_target(case):
    predicted, _ = predict_memory(case)
    error = (predicted - case["measured"]) / case["measured"]
    print(f"{case['id']}: measured {case['measured']:.2f} GiB predicted {predicted:.2f} GiB ({error:+.1%})")
    assert abs(error) <= TARGET


# KV cases known to miss the target, with the reason; every other KV case is held to it.
KNOWN_KV_MISSES = {
    "vllm-issue-21348-qwen3-235b-fp8-h100-tp4-vllm-kv":
        "predicted ~14.5 vs 8.11 GiB (+79%); candidate causes, none modelled: the run's LMCacheConnectorV1 "
        "KV connector, and vLLM's dummy sampler (top-k/top-p sort over max_num_seqs x full-vocab logits) "
        "holding several times the ledger's one fp32 logits copy",
}


@pytest.mark.parametrize("case", memory_cases("kv_cache_GiB_per_gpu"), ids=lambda c: c["id"])
def test_kv_budget_per_gpu(case):
    predicted, _ = predict_memory(case)
    error = (predicted - case["measured"]) / case["measured"]
    print(f"{case['id']}: measured {case['measured']:.2f} GiB predicted {predicted:.2f} GiB ({error:+.1%})")
    if case["id"] in KNOWN_KV_MISSES:
        pytest.xfail(KNOWN_KV_MISSES[case["id"]])
    assert abs(error) <= TARGET


def test_every_open_memory_case_is_predicted_or_skipped_with_a_reason():
    rows, skipped = [], []
    for case in memory_cases():
        try:
            predicted, ignored = predict_memory(case)
        except Skip as exc:
            assert str(exc), f"{case['id']}: skipped without a reason"
            skipped.append((case["id"], str(exc)))
            continue
        error = (predicted - case["measured"]) / case["measured"]
        rows.append((case["id"], case["metric"], case["measured"], predicted, error, ignored))
    assert rows or skipped
    print()
    for cid, metric, measured, predicted, error, ignored in rows:
        print(f"{cid:58s} {metric:21s} measured {measured:7.2f} predicted {predicted:7.2f} {error:+7.1%}"
              f"  ignored: {', '.join(ignored) or '-'}")
    for metric in sorted({r[1] for r in rows}):
        errors = [abs(r[4]) for r in rows if r[1] == metric]
        print(f"MAPE {metric}: {sum(errors) / len(errors):.1%} over {len(errors)} cases")
    for cid, reason in skipped:
        print(f"{cid}: skipped ({reason})")
    for cid, metric, measured, predicted, error, _ in rows:
        if metric == "weights_GiB_per_gpu":
            assert abs(error) <= TARGET, cid
