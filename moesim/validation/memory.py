"""Predictions for the `memory` validation cases: weights and KV-cache budget per GPU.

A case (schema: validation/SCHEMA.md) names a model, a parallel split, a checkpoint dtype
and the serving framework whose log printed the number. The weights come from the VRAM ledger
(`moesim.costs.memory`); the KV budget is the framework's own rule applied to the ledger's parts:

- vLLM V1 (`vllm/v1/worker/gpu_worker.py`, `Worker.determine_available_memory`): the KV cache
  gets `requested_memory - non_kv_cache_memory`, where `requested_memory = total device memory x
  gpu_memory_utilization` (`Worker.init_device`) and `non_kv_cache_memory` = weights + the torch
  peak increase of one profiling forward (`profile_run`: `max_num_batched_tokens` tokens spread
  over `min(max_num_seqs, max_num_batched_tokens)` dummy requests, then the sampler on one row
  per request) + the non-torch increase (NCCL and other allocations outside PyTorch). From
  v0.21.0 the estimated CUDA-graph pool is subtracted too (added opt-in by vllm PR #30515,
  2025-12, `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`; on by default "since v0.21.0" as the
  worker's own log line says, e.g. gpustack/runner PR #251); earlier versions capture graphs
  after the KV cache is sized, so graphs live in the `1 - gpu_memory_utilization` slack.
- SGLang (`python/sglang/srt/model_executor/model_runner.py`, `profile_max_num_token`): the KV
  pool gets `available_after_load - total_gpu_memory x (1 - mem_fraction_static)`, where
  `total_gpu_memory` is the free memory measured after distributed init and before loading
  (`init_torch_distributed`'s `min_per_gpu_memory`). With free-before-load = capacity - CUDA
  context - non-torch (NCCL) and free-after-load = free-before-load - weights, the pool is
  `mem_fraction_static x (capacity - context - non_torch) - weights`. Activations and CUDA
  graphs live in the rest of the device.

Every part (weights, activations, non-torch, CUDA context, CUDA graph) is the ledger's own
estimate (workloads/frameworks.yaml, the model spec, topologies/); no number of any case enters a
prediction. A case moesim cannot model raises `Skip` with the reason.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from moesim.cluster.scenario import framework_table, load_scenario
from moesim.core.errors import MoesimError
from moesim.core.units import GiB
from moesim.costs.memory import memory_ledger, sglang_kv_budget_bytes, vllm_kv_budget_bytes
from moesim.specs import precision
from moesim.validation.cases import Skip

METRICS = ("weights_GiB_per_gpu", "kv_cache_GiB_per_gpu", "total_GiB_per_gpu")
NOT_STATED = "not stated"

# Checkpoints that quantise only the routed experts and keep attention, dense MLP and shared
# experts in BF16 (embeddings, LM head, norms and routers are BF16 in every checkpoint, see
# `moesim.cluster.scenario.DTypes`):
# - MXFP4: openai/gpt-oss-20b/120b (github.com/openai/gpt-oss README: "MXFP4 quantization of the
#   MoE weights"; the rest BF16).
# - NVFP4: nvidia/DeepSeek-R1-FP4 (ModelOpt `modelopt_fp4`: routed experts NVFP4, rest BF16/FP8).
# - FP8 Llama-4-Maverick: meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8 (FP8 routed experts,
#   BF16 attention and shared expert).
# Block-FP8 checkpoints of DeepSeek-V3 / Qwen3 quantise every linear layer: `dtype` covers them all.
EXPERT_ONLY_DTYPES = frozenset({"mxfp4", "nvfp4"})
EXPERT_ONLY_MODELS = frozenset({("fp8", "llama4-maverick")})

# vLLM `EngineArgs` batch defaults for `vllm serve` (UsageContext.OPENAI_API_SERVER), from
# vllm/engine/arg_utils.py (get_batch_defaults; the split was introduced with vllm PR #17885,
# May 2025): devices with >= 70 GiB that are not A100 get max_num_batched_tokens 8192 and
# max_num_seqs 1024; others 2048 and 256. Every vLLM case here was launched with `vllm serve`.
VLLM_SERVE_LARGE_GPU = {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
VLLM_SERVE_OTHER_GPU = {"max_num_batched_tokens": 2048, "max_num_seqs": 256}
VLLM_LARGE_GPU_BYTES = 70 * GiB
# First vLLM release that subtracts the CUDA-graph estimate from the KV budget by default.
VLLM_CUDAGRAPH_RESERVE_SINCE = (0, 21, 0)

FRACTION_PARAM = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}
KV_FRAMEWORKS = ("vllm", "sglang")



# ---------------------------------------------------------------- case access
def _field(case: Any, name: str, default: Any = None) -> Any:
    """A case field from a `validation.Case` record or a plain dict (as read from YAML)."""
    if isinstance(case, dict):
        return case.get(name, default)
    return getattr(case, name, default)


def _stated(value: Any) -> bool:
    return not (isinstance(value, str) and value.strip().lower().startswith(NOT_STATED))


def _need(params: dict, name: str) -> Any:
    if name not in params:
        raise Skip(f"param {name!r} missing")
    value = params[name]
    if not _stated(value):
        raise Skip(f"param {name!r} not stated by the source")
    return value


def _dtype(name: Any, field: str) -> str:
    try:
        return precision.canonical(str(name), field=field)
    except MoesimError as exc:
        raise Skip(f"{field}: dtype {name!r} is not in workloads/dtypes.yaml") from exc


# ---------------------------------------------------------------- shared mapping
def weight_dtype_overrides(model: str, dtype: str) -> dict[str, Optional[str]]:
    """Scenario dtype overrides for a checkpoint published as `dtype` (see EXPERT_ONLY_*)."""
    expert_only = dtype in EXPERT_ONLY_DTYPES or (dtype, model) in EXPERT_ONLY_MODELS
    return {"dtypes.weights": "bf16" if expert_only else dtype,
            "dtypes.expert_weights": dtype if expert_only else None}


PARALLEL_KEYS = ("tp", "pp", "dp", "ep", "etp")


def case_overrides(case: Any, workload: Optional[dict] = None) -> dict[str, Any]:
    """`load_scenario` overrides for a memory case: model, system, GPUs, split, dtypes, framework."""
    p = _field(case, "params") or {}
    model = _need(p, "model")
    dtype = _dtype(_need(p, "dtype"), "dtype")
    framework = _need(p, "framework")
    par = _need(p, "parallel")
    if not isinstance(par, dict):
        raise Skip("parallel split not stated as a mapping")
    for key in PARALLEL_KEYS:
        if key in par and not _stated(par[key]):
            raise Skip(f"parallel.{key} not stated by the source")
    # vLLM/SGLang "auto" (and an unstated KV dtype) store KV in the model dtype: BF16 here
    kv = p.get("kv_cache_dtype", "auto")
    kv = _dtype(kv, "kv_cache_dtype") if _stated(kv) and kv != "auto" else "bf16"
    out = {"model": model, "system": _field(case, "system"), "gpus": _field(case, "gpus"),
           **{f"parallel.{k}": int(par[k]) for k in PARALLEL_KEYS if k in par},
           **weight_dtype_overrides(model, dtype),
           "dtypes.kv_cache": kv, "runtime.framework": framework}
    if workload is not None:
        out["workload"] = workload
    return out


def _scenario(case: Any, workload: Optional[dict] = None):
    framework = (_field(case, "params") or {}).get("framework")
    if framework is not None and _stated(framework) and framework not in framework_table().frameworks:
        raise Skip(f"unknown framework {framework!r}; known: {', '.join(sorted(framework_table().frameworks))}")
    try:
        return load_scenario(None, case_overrides(case, workload))
    except MoesimError as exc:
        raise Skip(f"cannot build the scenario: {exc.one_line()}") from None


# ---------------------------------------------------------------- vLLM
def vllm_version(text: Any) -> Optional[tuple[int, ...]]:
    """The first x.y[.z] in a framework_version string ('~v0.9.2/0.10' -> (0, 9, 2)), else None."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    if not match:
        return None
    return tuple(int(g) for g in match.groups(default="0"))


def vllm_profile_workload(capacity_bytes: float, params: dict) -> tuple[dict, list[str]]:
    """The serving workload of vLLM's profiling forward, and the params it read.

    `GPUModelRunner.profile_run` runs `_dummy_run(max_num_tokens)`: max_num_batched_tokens tokens
    over min(max_num_seqs, tokens) dummy requests, then `_dummy_sampler_run` on the last token of
    each request. As a ledger prefill workload: batch = requests, prefill_chunk_tokens = tokens
    (the ledger then charges tokens x per-token activations + batch x vocab logits).
    """
    defaults = VLLM_SERVE_LARGE_GPU if capacity_bytes >= VLLM_LARGE_GPU_BYTES else VLLM_SERVE_OTHER_GPU
    used = []
    values = {}
    for name, default in defaults.items():
        if name in params:
            values[name] = int(_need(params, name))
            used.append(name)
        else:
            values[name] = default
    tokens = values["max_num_batched_tokens"]
    reqs = min(values["max_num_seqs"], tokens)
    return ({"kind": "serving", "phase": "prefill", "batch": reqs, "input_len": max(tokens // reqs, 1),
             "output_len": 1, "prefill_chunk_tokens": tokens}, used)


def _predict_vllm_kv(case: Any, params: dict) -> tuple[float, set[str]]:
    used = {"framework_version"}
    fraction = framework_table().frameworks["vllm"].memory_fraction.value
    if "gpu_memory_utilization" in params:
        fraction = float(_need(params, "gpu_memory_utilization"))
        used.add("gpu_memory_utilization")
    probe = _scenario(case)  # capacity decides vLLM's batch defaults
    workload, read = vllm_profile_workload(probe.system.gpu.capacity_bytes, params)
    used.update(read)
    sc = _scenario(case, workload)
    version = vllm_version(params.get("framework_version"))
    graphs = sc.framework.cuda_graph_bytes.value if version and version >= VLLM_CUDAGRAPH_RESERVE_SINCE else 0.0
    per_gpu = memory_ledger(sc).per_gpu
    return vllm_kv_budget_bytes(per_gpu, fraction, graphs), used


# ---------------------------------------------------------------- SGLang
def _predict_sglang_kv(case: Any, params: dict) -> tuple[float, set[str]]:
    used = set()
    fraction = framework_table().frameworks["sglang"].memory_fraction.value
    if "mem_fraction_static" in params:
        fraction = float(_need(params, "mem_fraction_static"))
        used.add("mem_fraction_static")
    sc = _scenario(case)
    fw = sc.framework
    per_gpu = memory_ledger(sc).per_gpu
    return sglang_kv_budget_bytes(per_gpu, fraction, fw.cuda_context_bytes.value, fw.non_torch_bytes.value), used


# ---------------------------------------------------------------- entry point
def predict_memory(case: Any) -> tuple[float, list[str]]:
    """Predicted GiB per GPU for a `memory` case, and the params the prediction did not use."""
    metric = _field(case, "metric")
    params = _field(case, "params") or {}
    if metric not in METRICS:
        raise Skip(f"unknown metric {metric!r} for memory; known: {', '.join(METRICS)}")
    if metric == "total_GiB_per_gpu":
        raise Skip("total_GiB_per_gpu is not modelled: no open case uses it and no framework logs one total")
    framework = _need(params, "framework")
    if framework not in framework_table().frameworks:
        raise Skip(f"unknown framework {framework!r}; known: {', '.join(sorted(framework_table().frameworks))}")
    used = {"model", "parallel", "dtype", "framework"}
    if metric == "weights_GiB_per_gpu":
        value = memory_ledger(_scenario(case)).per_gpu["weights_bytes"]
    else:
        if framework not in KV_FRAMEWORKS:
            raise Skip(f"the KV budget rule of framework {framework!r} is not modelled; "
                       f"known: {', '.join(KV_FRAMEWORKS)}")
        predict = _predict_vllm_kv if framework == "vllm" else _predict_sglang_kv
        value, extra = predict(case, params)
        used |= extra
    par = params.get("parallel") or {}
    ignored = [k for k in params if k not in used]
    ignored += [f"parallel.{k}" for k in par if k not in PARALLEL_KEYS]
    return value / GiB, ignored
