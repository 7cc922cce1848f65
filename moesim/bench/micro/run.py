"""One entry point for the PyTorch microbenchmarks, and their nccl-tests style text table.

`run_benchmark(name, backend=..., ...)` validates the request, runs the benchmark (which checks
its data before timing anything), stamps the `moesim-bench/v1` record and, when the check
passed and `json_path` is given, writes it atomically. It returns the record either way.

Failure contract, for the CLI:
- bad input (unknown benchmark or backend, ranks that do not fit, malformed sizes), torch not
  installed, or `backend="cuda"` on a machine without a usable GPU: a one-line MoesimError is
  raised before anything runs; the CLI prints it and exits 2. No skip value is returned: a
  caller that wants to skip (a test, a sweep script) catches the error or checks
  `cuda_available()` first.
- a wrong value in the data (`check.passed` False): the record is returned, no results file is
  written (a failed run leaves no file behind), and the CLI exits 1, as nccl-tests does.

Quick mode keeps CPU runs small (CI has two cores): 2 ranks, collectives up to 1 MiB, GEMMs up
to 256, memcpy up to 4 MiB, EP 256 tokens per rank with hidden 256.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from moesim.bench.micro.results import BENCHMARKS, device_info, import_torch, make_results, write_results
from moesim.core.errors import MoesimError
from moesim.core.units import GiB, KiB, MiB, parse_size

BACKENDS = ("cuda", "cpu")
MAX_CPU_RANKS = 64


def _geometric(lo: int, hi: int, factor: int) -> list[int]:
    out = [lo]
    while out[-1] * factor <= hi:
        out.append(out[-1] * factor)
    return out


# (benchmark, backend, quick) -> default sizes: square GEMM size, bytes, or tokens per rank
DEFAULT_SIZES: dict[tuple[str, str, bool], list[int]] = {
    ("gemm", "cpu", True): [64, 128, 256],
    ("gemm", "cpu", False): [256, 512, 1024],
    ("gemm", "cuda", True): [256, 1024, 4096],
    ("gemm", "cuda", False): [1024, 2048, 4096, 8192, 16384],
    ("grouped_gemm", "cpu", True): [64, 128, 256],
    ("grouped_gemm", "cpu", False): [128, 256, 512],
    ("grouped_gemm", "cuda", True): [256, 1024],
    ("grouped_gemm", "cuda", False): [512, 1024, 2048, 4096],
    ("memcpy", "cpu", True): [64 * KiB, MiB, 4 * MiB],
    ("memcpy", "cpu", False): _geometric(64 * KiB, 256 * MiB, 4),
    ("memcpy", "cuda", True): [MiB, 16 * MiB, 256 * MiB],
    ("memcpy", "cuda", False): _geometric(MiB, GiB, 4),
    ("collective", "cpu", True): _geometric(KiB, MiB, 4),
    ("collective", "cpu", False): _geometric(KiB, 64 * MiB, 4),
    ("collective", "cuda", True): _geometric(KiB, 64 * MiB, 16),
    ("collective", "cuda", False): _geometric(KiB, 4 * GiB, 4),
    ("ep_dispatch", "cpu", True): [256],
    ("ep_dispatch", "cpu", False): [256, 1024, 4096],
    ("ep_dispatch", "cuda", True): [256, 4096],
    ("ep_dispatch", "cuda", False): [128, 512, 1024, 2048, 4096],
}
BYTE_SIZED = {"memcpy", "collective"}
COLLECTIVE_DEFAULT_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
QUICK_HIDDEN = 256


def cuda_available() -> bool:
    """Whether torch is installed and sees a GPU (False rather than an error without torch)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _check_backend(backend: str) -> Any:
    if backend not in BACKENDS:
        raise MoesimError(f"unknown backend {backend!r}", field="backend", fix="use cuda or cpu")
    torch = import_torch()
    if backend == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise MoesimError(f"CUDA requested but {why} (torch {torch.__version__})", field="backend",
                          fix="run on a GPU machine with the CUDA build of torch, or use --backend cpu")
    return torch


def _sizes(name: str, sizes: Optional[list[Any]], backend: str, quick: bool) -> list[int]:
    if not sizes:
        return list(DEFAULT_SIZES[(name, backend, quick)])
    out = []
    for value in sizes:
        if name in BYTE_SIZED:
            out.append(parse_size(value, field="sizes"))
            continue
        try:
            number = int(str(value))
        except ValueError:
            number = 0
        if number <= 0:
            what = "tokens per rank" if name == "ep_dispatch" else "GEMM sizes (m = n = k)"
            raise MoesimError(f"{value!r} is not a positive integer", field="sizes", fix=f"give {what}")
        out.append(number)
    return out


def _ranks(name: str, ranks: Optional[int], backend: str, torch) -> Optional[int]:
    if name not in ("collective", "ep_dispatch"):
        return None
    available = int(torch.cuda.device_count()) if backend == "cuda" else MAX_CPU_RANKS
    if ranks is None:
        return available if backend == "cuda" else 2
    if not 1 <= int(ranks) <= available:
        where = f"{available} GPUs are visible" if backend == "cuda" else f"at most {MAX_CPU_RANKS} CPU workers"
        raise MoesimError(f"{ranks} ranks requested but {where}", field="ranks", fix=f"use 1..{available}")
    return int(ranks)


def run_benchmark(name: str, *, backend: str, ranks: Optional[int] = None, sizes: Optional[list[Any]] = None,
                  json_path: Optional[str | Path] = None, quick: bool = False, ops: Optional[list[str]] = None,
                  groups: Optional[int] = None, dtype: Optional[str] = None, model: str = "deepseek-v3",
                  skew: str = "zipf:1.0", hidden: Optional[int] = None, seed: int = 0, layer: int = 0,
                  warmup: Optional[int] = None, iters: Optional[int] = None, corrupt: bool = False) -> dict:
    """Run one microbenchmark; return its `moesim-bench/v1` record (see the module doc for failures).

    name: gemm | grouped_gemm | memcpy | collective | ep_dispatch. sizes: square GEMM sizes,
    bytes ('4K', '1M' or ints; per rank for collectives) or tokens per rank (ep_dispatch).
    ranks: worker processes for collective / ep_dispatch (default: every GPU, or 2 on CPU).
    corrupt: test hook that damages one result before the check, which must then fail.
    """
    if name not in BENCHMARKS:
        raise MoesimError(f"unknown benchmark {name!r}", field="benchmark", fix=f"use one of {', '.join(BENCHMARKS)}")
    torch = _check_backend(backend)
    size_list = _sizes(name, sizes, backend, quick)
    n_ranks = _ranks(name, ranks, backend, torch)
    warmup = (2 if quick else 5) if warmup is None else int(warmup)
    iters = (5 if quick else 20) if iters is None else int(iters)
    if warmup < 0 or iters < 1:
        raise MoesimError(f"warmup {warmup} / iters {iters} out of range", field="iters",
                          fix="use warmup >= 0 and iters >= 1")

    if name in ("gemm", "grouped_gemm"):
        from moesim.bench.micro.gemm import run_gemm
        n_groups = 1 if name == "gemm" else int(groups or (4 if quick else 8))
        if n_groups < 1:
            raise MoesimError(f"groups must be positive, got {n_groups}", field="groups", fix="use 1 or more")
        parameters, rows, check = run_gemm(backend=backend, sizes=size_list, groups=n_groups, dtype=dtype,
                                           warmup=warmup, iters=iters, seed=seed, corrupt=corrupt)
    elif name == "memcpy":
        from moesim.bench.micro.memcpy import run_memcpy
        parameters, rows, check = run_memcpy(backend=backend, sizes=size_list, warmup=warmup, iters=iters,
                                             corrupt=corrupt)
    elif name == "collective":
        from moesim.bench.micro.collectives import COLLECTIVE_OPS, run_collectives
        op_list = list(ops or COLLECTIVE_DEFAULT_OPS)
        unknown = [op for op in op_list if op not in COLLECTIVE_OPS]
        if unknown:
            raise MoesimError(f"unknown collective {unknown[0]!r}", field="ops",
                              fix=f"use {', '.join(COLLECTIVE_OPS)}")
        parameters, rows, check = run_collectives(backend=backend, ranks=n_ranks, sizes=size_list, ops=op_list,
                                                  warmup=warmup, iters=iters, corrupt=corrupt)
    else:
        from moesim.bench.micro.ep_dispatch import run_ep_dispatch
        parameters, rows, check = run_ep_dispatch(
            backend=backend, ranks=n_ranks, sizes=size_list, model=model, skew=skew,
            hidden=hidden or (QUICK_HIDDEN if quick else None), seed=seed, layer=layer, warmup=warmup,
            iters=iters, corrupt=corrupt)

    parameters = {"benchmark": name, "backend": backend, "quick": quick, **parameters}
    if corrupt:
        parameters["corrupt"] = True
    nccl = backend == "cuda" and name in ("collective", "ep_dispatch")
    data = make_results(name, device_info(backend, nccl=nccl), parameters, rows, check)
    if json_path is not None and check["passed"]:
        write_results(json_path, data)
    return data


# ----------------------------------------------------------------------------- text table
def _us(value: float) -> str:
    return f"{value * 1e6:.2f}"


def _f2(value: float) -> str:
    return f"{value:.2f}"


def _f3(value: float) -> str:
    return f"{value:.3f}"


# benchmark -> [(row key, title, unit, width, formatter)]
Column = tuple[str, str, str, int, Callable[[Any], str]]
COLUMNS: dict[str, list[Column]] = {
    "gemm": [("m", "m", "", 7, str), ("n", "n", "", 7, str), ("k", "k", "", 7, str),
             ("groups", "groups", "", 7, str), ("dtype", "dtype", "", 9, str), ("time_s", "time", "(us)", 12, _us),
             ("tflops", "tflops", "(TFLOP/s)", 10, _f2)],
    "memcpy": [("path", "path", "", 6, str), ("direction", "direction", "", 11, str),
               ("engine", "engine", "", 7, str), ("bytes", "size", "(B)", 12, str),
               ("time_s", "time", "(us)", 12, _us), ("GBps", "bw", "(GB/s)", 9, _f2)],
    "collective": [("op", "op", "", 15, str), ("bytes", "size", "(B)", 12, str),
                   ("count", "count", "(elements)", 12, str), ("ranks", "ranks", "", 6, str),
                   ("time_s", "time", "(us)", 12, _us), ("algbw_GBps", "algbw", "(GB/s)", 9, _f2),
                   ("busbw_GBps", "busbw", "(GB/s)", 9, _f2)],
    "ep_dispatch": [("tokens_per_rank", "tokens", "(per rank)", 11, str), ("hidden", "hidden", "", 7, str),
                    ("topk", "topk", "", 5, str), ("experts", "experts", "", 8, str), ("ranks", "ranks", "", 6, str),
                    ("skew", "skew", "", 11, str), ("dispatch_time_s", "dispatch", "(us)", 11, _us),
                    ("combine_time_s", "combine", "(us)", 11, _us), ("dispatch_bytes", "dispatch", "(B)", 12, str),
                    ("combine_bytes", "combine", "(B)", 12, str), ("recv_imbalance", "recv max", "(/mean)", 9, _f3)],
}
COLUMNS["grouped_gemm"] = COLUMNS["gemm"]


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def format_table(data: dict) -> str:
    """nccl-tests style: a header with the device and every parameter, a units row, fixed columns."""
    device, columns = data["device"], COLUMNS[data["benchmark"]]
    lines = [f"# moesim bench {data['benchmark']}  ({data['schema']})",
             "# device: " + "  ".join(f"{key} {'-' if value is None else value}" for key, value in device.items()),
             f"# host {data['host']}  timestamp {data['timestamp']}",
             "# parameters:"]
    lines += [f"#   {key}: {_value_text(value)}" for key, value in data["parameters"].items()]
    lines.append("#")
    lines.append("# " + " ".join(title.rjust(width) for _, title, _, width, _ in columns))
    lines.append("# " + " ".join(unit.rjust(width) for _, _, unit, width, _ in columns))
    for row in data["rows"]:
        lines.append("  " + " ".join(fmt(row[key]).rjust(width) if key in row else "-".rjust(width)
                                     for key, _, _, width, fmt in columns))
    if not data["rows"]:
        lines.append("# (no rows: nothing passed the data check, so nothing was timed)")
    check = data["check"]
    details = "  ".join(f"{key} {_value_text(value)}" for key, value in check.items() if key != "passed")
    if data["benchmark"] == "collective" and data["rows"]:
        mean_busbw = sum(row["busbw_GBps"] for row in data["rows"]) / len(data["rows"])
        lines.append(f"# avg busbw: {mean_busbw:.2f} GB/s")
    lines.append(f"# check: {'PASSED' if check['passed'] else 'FAILED'}  {details}".rstrip())
    return "\n".join(lines) + "\n"
