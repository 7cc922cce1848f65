"""`moesim bench planner`: configurations simulated per minute with 1 and 2 local workers, and the
cost of the VRAM prune per configuration, on a decode sweep measured in the same run."""
from __future__ import annotations

import time

from moesim.core.timing import best_seconds
from moesim.planning.space import Space, expand
from moesim.planning.sweep import prune, run

SWEEP = {"name": "bench-decode-sweep", "models": ["qwen3-30b-a3b", "mixtral-8x7b"],
         "systems": [{"name": "dgx-h100", "gpus": [8, 16]}], "parallel": "all",
         "batch": [16, 64], "input_len": 1024, "output_len": 256, "phase": "decode",
         "dtypes": {"weights": "bf16", "kv_cache": "bf16"}}


def planner_benchmark(max_points: int = 24) -> dict:
    space = Space.model_validate(SWEEP)
    points = expand(space)
    prune_s = best_seconds(lambda: prune(points), 2)
    kept, pruned, _ = prune(points)
    kept = kept[:max_points]
    run(kept[:2], workers=1)  # warm-up: kernels compiled, data loaded
    timings = {}
    for workers in (1, 2):
        start = time.perf_counter()
        run(kept, workers=workers)
        timings[workers] = time.perf_counter() - start
    per_min = {w: len(kept) / t * 60 for w, t in timings.items()}
    return {"planner": {"configs": len(kept), "expanded": len(points), "pruned": pruned,
                        "configs_per_min_1_worker": per_min[1], "configs_per_min_2_workers": per_min[2],
                        "scaling_2_over_1": per_min[2] / per_min[1],
                        "prune_ms_per_config": prune_s / len(points) * 1e3}}
