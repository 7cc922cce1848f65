"""Stopping a local process pool at once: shared by the planner's sweep and the serving-load
validation, which both run one deployment per task and must not leave workers behind when the
caller fails, is interrupted or is terminated."""
from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, terminate the workers that run (and kill
    those that outlive two seconds)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
    # Let the pool's manager thread see its workers gone and close its wake-up pipe before we return:
    # at interpreter exit concurrent.futures writes to that pipe unless it is already marked closed, and
    # on Python 3.11 the two race ("OSError: Bad file descriptor" printed at exit, seen under load in CI).
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        with contextlib.suppress(Exception):
            manager.join(timeout=2)


__all__ = ["kill_pool"]
