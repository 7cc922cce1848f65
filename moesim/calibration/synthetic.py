"""Synthetic results generated from KNOWN parameters with moesim's own forward models.

For tests (a fit must recover what generated the data) and for trying calibration without a GPU;
every file is marked `device.backend: synthetic` and carries its true values, so it is never
mistaken for a measurement.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from moesim.calibration.fit import fit_profile
from moesim.calibration.profile import with_memory_efficiency, write_profile
from moesim.calibration.results import SCHEMA, load_results, write_results
from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.core.loader import data_root
from moesim.costs.collectives import BUSBW_FACTOR
from moesim.costs.compute import (Fraction, MatmulPeakEfficiency, gemm_time, grouped_gemm_time, load_compute_profile,
                                  memory_bound_time)
from moesim.specs.hardware import load_gpu

SYNTHETIC_DTYPE = {"bf16": "bf16", "fp8": "fp8", "fp4": "nvfp4"}
SYNTHETIC_GEMMS = ([(m, n, k) for m in (2048, 4096, 8192, 16384)
                    for n, k in ((4096, 4096), (8192, 8192), (7168, 2048), (2048, 7168))]
                   + [(64, 7168, 2048), (128, 4096, 4096), (512, 2048, 2048)])
SYNTHETIC_GROUPED = [(8, m, n, k) for m in (256, 1024, 4096) for n, k in ((4096, 7168), (7168, 2048))]
SYNTHETIC_HBM_BYTES = [2**p for p in range(26, 33)]
SYNTHETIC_P2P_BYTES = [4**p for p in range(6, 16)]
SYNTHETIC_COLL_BYTES = [2**p for p in range(16, 31, 2)]
SYNTHETIC_OPS = ("all_gather", "reduce_scatter", "all_reduce")
SYNTHETIC_RANKS = 8
SYNTHETIC_REPEATS = 5


def synthetic_results(*, gpu_id: str, true_matmul_efficiency: dict[str, float], true_memory_efficiency: float,
                      true_nvlink_GBps: float, true_alpha_s: float, noise: float, seed: int) -> list[dict]:
    """Results files' contents generated from KNOWN parameters with moesim's own forward models.

    gemm / grouped_gemm: `compute.gemm_time` / `grouped_gemm_time` with the true efficiencies (and
    the true memory efficiency). memcpy hbm: `compute.memory_bound_time` of a device-to-device
    copy (2 x bytes through HBM) at the true memory efficiency; GBps = bytes / time as the harness
    writes it. memcpy nvlink_p2p: alpha + bytes /
    nvlink rate. collective (8 ranks, one node): alpha + bytes x busbw factor / nvlink rate.
    Every time is multiplied by exp(noise x N(0, 1)) drawn from np.random.default_rng(seed), in a
    fixed order. Marked `device.name: synthetic (<gpu>)`, `device.backend: synthetic`, and the true
    values are in `parameters`, so a synthetic file is never mistaken for a measurement.
    """
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise MoesimError(f"noise must be >= 0, got {noise!r}", field="noise", fix="give a relative noise such as 0.01")
    for name, value in (("true_memory_efficiency", true_memory_efficiency), ("true_nvlink_GBps", true_nvlink_GBps)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise MoesimError(f"{name} must be > 0, got {value!r}", field=name, fix="give a positive value")
    if not (isinstance(true_alpha_s, (int, float)) and true_alpha_s >= 0):
        raise MoesimError(f"true_alpha_s must be >= 0, got {true_alpha_s!r}", field="true_alpha_s",
                          fix="give a latency in seconds, e.g. 8e-6")
    rng = np.random.default_rng(seed)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")  # when generated; not part of the data
    gpu = load_gpu(gpu_id)
    profile = load_compute_profile(gpu_id)
    families = {}
    for family, value in true_matmul_efficiency.items():
        if family not in MatmulPeakEfficiency.model_fields:
            raise MoesimError(f"unknown dtype family {family!r}", field="true_matmul_efficiency",
                              fix=f"use: {', '.join(MatmulPeakEfficiency.model_fields)}")
        if not 0 < value <= 1:
            raise MoesimError(f"efficiency {value!r} is not in (0, 1]", field=f"true_matmul_efficiency.{family}",
                              fix="give a fraction of the dense peak")
        families[family] = Fraction(value=float(value), source="synthetic: true value")
    true_profile = profile.model_copy(update={"matmul_peak_efficiency":
                                              profile.matmul_peak_efficiency.model_copy(update=families)})
    true_gpu = with_memory_efficiency(gpu, float(true_memory_efficiency), "synthetic: true value")
    noisy = lambda t: float(t * math.exp(noise * rng.standard_normal()))  # noqa: E731
    device = {"name": f"synthetic ({gpu_id})", "backend": "synthetic", "torch": None, "cuda_runtime": None,
              "driver": None, "nccl": None, "gpus": SYNTHETIC_RANKS, "compute_capability": None}
    truth = {"true_matmul_efficiency": dict(true_matmul_efficiency), "true_memory_efficiency": true_memory_efficiency,
             "true_nvlink_GBps": true_nvlink_GBps, "true_alpha_s": true_alpha_s, "noise": noise, "seed": seed}

    def result(benchmark: str, rows: list[dict]) -> dict:
        return {"schema": SCHEMA, "benchmark": benchmark, "device": dict(device), "timestamp": stamp,
                "host": "synthetic", "parameters": {"generator": "moesim.calibration.synthetic.synthetic_results", **truth},
                "rows": rows, "check": {"passed": True, "note": "synthetic: generated, not measured"}}

    gemm, grouped = [], []
    for family in sorted(families):
        dtype = SYNTHETIC_DTYPE[family]
        for m, n, k in SYNTHETIC_GEMMS:
            t = noisy(gemm_time(true_gpu, true_profile, m, n, k, dtype))
            gemm.append({"m": m, "n": n, "k": k, "groups": 1, "dtype": dtype, "time_s": t,
                         "tflops": 2.0 * m * n * k / t / units.TFLOPS})
        for g, m, n, k in SYNTHETIC_GROUPED:
            t = noisy(grouped_gemm_time(true_gpu, true_profile, np.full(g, float(m)), n, k, dtype))
            grouped.append({"m": m, "n": n, "k": k, "groups": g, "dtype": dtype, "time_s": t,
                            "tflops": 2.0 * g * m * n * k / t / units.TFLOPS})
    memcpy = []
    for size in SYNTHETIC_HBM_BYTES:
        for _ in range(SYNTHETIC_REPEATS):
            t = noisy(memory_bound_time(true_gpu, true_profile, 2.0 * size))
            memcpy.append({"path": "hbm", "direction": "d2d", "engine": "memcpy", "bytes": size,
                           "time_s": t, "GBps": size / t / units.GBps})
    rate = true_nvlink_GBps * units.GBps
    for size in SYNTHETIC_P2P_BYTES:
        for _ in range(SYNTHETIC_REPEATS):
            t = noisy(true_alpha_s + size / rate)
            memcpy.append({"path": "nvlink_p2p", "direction": "unidirectional", "engine": "copy_engine",
                           "bytes": size, "time_s": t, "GBps": size / t / units.GBps})
    coll = []
    for op in SYNTHETIC_OPS:
        factor = BUSBW_FACTOR[op](SYNTHETIC_RANKS)
        for size in SYNTHETIC_COLL_BYTES:
            t = noisy(true_alpha_s + size * factor / rate)
            coll.append({"op": op, "bytes": size, "ranks": SYNTHETIC_RANKS, "nodes": 1, "time_s": t,
                         "algbw_GBps": size / t / units.GBps, "busbw_GBps": size * factor / t / units.GBps})
    out = [result("gemm", gemm), result("grouped_gemm", grouped), result("memcpy", memcpy), result("collective", coll)]
    return out if gemm else out[2:]


def write_synthetic_example(folder: str | Path, *, gpu_id: str = "h100-sxm", system_id: str = "dgx-h100",
                            seed: int = 0) -> Path:
    """Write synthetic results files (`<folder>/synthetic-results/*.json`) and the profile fitted
    from them (`<folder>/synthetic-<system>.yaml`): a worked example of calibration without a GPU.
    True values: bf16 0.71, fp8 0.62, memory 0.88, NVLink 380 GB/s, latency 8 us, 1 % noise."""
    folder = Path(folder)
    results = synthetic_results(gpu_id=gpu_id, true_matmul_efficiency={"bf16": 0.71, "fp8": 0.62},
                                true_memory_efficiency=0.88, true_nvlink_GBps=380.0, true_alpha_s=8e-6,
                                noise=0.01, seed=seed)
    (folder / "synthetic-results").mkdir(parents=True, exist_ok=True)
    paths = [write_results(r, folder / "synthetic-results" / f"{r['benchmark']}.json") for r in results]
    try:
        names = [str(p.relative_to(data_root())) for p in paths]
    except ValueError:
        names = [str(p) for p in paths]
    loaded = [{**r, "_file": n} for r, n in zip(load_results(paths), names)]
    profile = fit_profile(loaded, gpu_id=gpu_id, system_id=system_id)
    command = (f"python -c \"from moesim.calibration.synthetic import write_synthetic_example as w; "
               f"w('{folder}', gpu_id='{gpu_id}', system_id='{system_id}', seed={seed})\"")
    return write_profile(profile, folder / f"synthetic-{system_id}.yaml", sources=names, command=command)
