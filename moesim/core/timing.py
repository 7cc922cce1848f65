"""Wall-clock timing for the benchmarks: best of several runs of a callable (perf_counter)."""
from __future__ import annotations

import time
from typing import Callable


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
