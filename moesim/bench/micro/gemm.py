"""GEMM and grouped-GEMM throughput with torch.matmul, each case checked against a float64 reference.

Precision: BF16 inputs and output on CUDA (the precision MoE layers run in; FP32 accumulation
inside cuBLAS); float32 on CPU, where BF16 matmul is slow and not what a GPU profile needs.
A grouped GEMM here is `groups` equal GEMMs [m, k] x [k, n] in one batched torch.matmul
([groups, m, k] @ [groups, k, n]): the equal-split case of an MoE expert GEMM. Uneven groups
(real token counts per expert) are the CUDA benchmarks' job.

Correctness (before timing): up to `SAMPLE_ROWS` rows of the product (always the first and the
last, the rest at random) are recomputed in float64
from the same (already rounded) inputs; the error of every sampled element, scaled by
sum_k |a_ik| |b_kj|, must stay within TOLERANCE[dtype] (output rounding plus accumulation).
TFLOPs = 2 m n k groups / time / 1e12.
"""
from __future__ import annotations

from moesim.bench.micro.clock import median_seconds
from moesim.bench.micro.results import import_torch
from moesim.core.errors import MoesimError

SAMPLE_ROWS = 16
TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3, "float32": 1e-4}


def default_dtype(backend: str) -> str:
    return "bfloat16" if backend == "cuda" else "float32"


def _check(a, b, c, sample: int, generator) -> tuple[int, float]:
    """(wrong elements, max scaled error) over `sample` random rows of c = a @ b ([G, m, *]).

    The float64 reference runs on the benchmark's device (FP64 on a GPU is fast enough for a few
    rows, and copying B to the host would cost more than the product).
    """
    import torch

    groups, m = a.shape[0], a.shape[1]
    total = groups * m
    order = [0, total - 1] + torch.randperm(total, generator=generator)[:sample].tolist()
    picks = torch.tensor(list(dict.fromkeys(order))[:sample])
    tol = TOLERANCE[str(c.dtype).removeprefix("torch.")]
    wrong, worst = 0, 0.0
    for g in sorted(set((picks // m).tolist())):
        rows = (picks[picks // m == g] % m).to(a.device)
        a_rows = a[g].index_select(0, rows).double()
        b_g = b[g].double()
        ref = a_rows @ b_g
        scale = (a_rows.abs() @ b_g.abs()).clamp_min(1e-30)
        got = c[g].index_select(0, rows).double()
        err = (got - ref).abs() / scale
        err = torch.where(torch.isfinite(got), err, torch.full_like(err, float("inf")))
        wrong += int((err > tol).sum())
        worst = max(worst, float(err.max()))
        del b_g
    return wrong, worst


def _gemm_case(torch, m: int, n: int, k: int, groups: int, torch_dtype, device, generator, *, warmup: int,
               iters: int, seed: int, corrupt: bool) -> tuple[int, float, float | None]:
    """(wrong elements, max scaled error, median seconds or None when the check failed)."""
    device_generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(groups, m, k, generator=device_generator, device=device).to(torch_dtype)
    b = torch.randn(groups, k, n, generator=device_generator, device=device).to(torch_dtype)
    c = torch.matmul(a, b)
    if corrupt:
        c[0, 0, 0] += 1000.0
    wrong, worst = _check(a, b, c, SAMPLE_ROWS, generator)
    if wrong:
        return wrong, worst, None  # nothing wrong gets timed
    # one GEMM runs as a 2-D matmul (a plain cuBLAS GEMM), several as one batched matmul
    x, y, out = (a[0], b[0], c[0]) if groups == 1 else (a, b, c)
    seconds = median_seconds(lambda: torch.matmul(x, y, out=out), device=device, warmup=warmup, iters=iters)
    return wrong, worst, seconds


def run_gemm(*, backend: str, sizes: list[int], groups: int, dtype: str | None, warmup: int, iters: int,
             seed: int, corrupt: bool = False) -> tuple[dict, list[dict], dict]:
    """Square cases m = n = k = size, `groups` GEMMs each. Returns (parameters, rows, check).

    `corrupt` damages one output element before the check (test hook: the check must fail).
    """
    torch = import_torch()
    dtype = dtype or default_dtype(backend)
    if dtype not in TOLERANCE:
        raise MoesimError(f"unsupported GEMM dtype {dtype!r}", field="dtype", fix=f"use one of {', '.join(TOLERANCE)}")
    device = torch.device("cuda:0" if backend == "cuda" else "cpu")
    generator = torch.Generator().manual_seed(seed)
    parameters = {"sizes": list(sizes), "shape": "m = n = k = size", "groups": groups, "dtype": dtype,
                  "accumulate": "float32", "warmup": warmup, "iters": iters, "seed": seed,
                  "check": f"{SAMPLE_ROWS} rows vs float64, scaled error <= {TOLERANCE[dtype]:g}"}
    if backend == "cuda":
        flags = torch.backends.cuda.matmul
        parameters["allow_tf32"] = bool(flags.allow_tf32)
        parameters["allow_bf16_reduced_precision_reduction"] = bool(flags.allow_bf16_reduced_precision_reduction)
    if groups > 1:
        parameters["grouped_as"] = "one batched torch.matmul over equal groups"
    rows, wrong, worst = [], 0, 0.0
    for size in sizes:
        m = n = k = int(size)
        case_wrong, case_worst, seconds = _gemm_case(torch, m, n, k, groups, getattr(torch, dtype), device,
                                                     generator, warmup=warmup, iters=iters, seed=seed + m,
                                                     corrupt=corrupt)
        wrong += case_wrong
        worst = max(worst, case_worst)
        if seconds is not None:
            rows.append({"m": m, "n": n, "k": k, "groups": groups, "dtype": dtype, "time_s": seconds,
                         "tflops": 2.0 * m * n * k * groups / seconds / 1e12})
    check = {"passed": wrong == 0, "wrong": wrong, "max_scaled_error": worst, "tolerance": TOLERANCE[dtype]}
    return parameters, rows, check
