"""Time per operation: median over timed iterations after warm-up (CUDA events on GPU, perf_counter on CPU).

The median, not the mean or the best: it ignores the odd iteration disturbed by another process
and still reflects the steady state. On CUDA each iteration is bracketed by two events on the
current stream, so host launch overhead outside the op does not count; on CPU the op is
synchronous and a wall-clock interval is exact enough.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable


def _iteration_seconds(fn: Callable[[], object], device, iters: int,
                       before: Callable[[], object] | None) -> list[float]:
    import torch

    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        with torch.cuda.device(device):  # events go on the current stream of `device`
            for start, end in zip(starts, ends):
                if before is not None:
                    before()
                start.record()
                fn()
                end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) * 1e-3 for start, end in zip(starts, ends)]
    out = []
    for _ in range(iters):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median_seconds(fn: Callable[[], object], *, device, warmup: int, iters: int) -> float:
    """Median seconds of `fn` on one device after `warmup` untimed calls."""
    import torch

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return statistics.median(_iteration_seconds(fn, device, max(iters, 1), None))


def distributed_median_seconds(fn: Callable[[], object], *, device, warmup: int, iters: int) -> float:
    """Median over iterations of the slowest rank's time; a barrier precedes every timed iteration.

    Every rank must call this with the same arguments (it runs collectives). The slowest rank
    sets the op time, as in nccl-tests, which reports the maximum over ranks.
    """
    import torch
    import torch.distributed as dist

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        barrier = lambda: dist.barrier(device_ids=[device.index])  # noqa: E731
    else:
        barrier = dist.barrier
    times = torch.tensor(_iteration_seconds(fn, device, max(iters, 1), barrier), dtype=torch.float64,
                         device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    return statistics.median(times.cpu().tolist())
