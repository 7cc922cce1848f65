"""Local process pools that leave no worker behind: shared by the planner's sweep and the
serving-load validation, which both run one deployment per task and must not leave workers
running when the caller fails, is interrupted or is terminated. `worker_pool` is such a pool;
`worker_init` starts a worker bound to its parent; `kill_pool` stops a pool at once."""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator, Optional

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT_POLL_S = 0.5


def worker_init(parent: int) -> None:
    """Start of a pool worker (`initializer=worker_init, initargs=(os.getpid(),)`): it dies with
    the process `parent`. On Linux the kernel sends it SIGTERM when its parent dies (prctl
    PR_SET_PDEATHSIG); everywhere, a daemon thread exits it when its parent changes (reparented:
    the parent died) or `parent` is gone. Ctrl-C is the parent's to handle (it tears the pool
    down), so workers ignore SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited from the parent by fork
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the thread below still notices
    ppid = os.getppid()
    if _parent_gone(parent, ppid, None):
        os._exit(1)  # the parent died before the death signal was armed
    threading.Thread(target=_watch_parent, args=(parent, ppid), name="moesim-watch-parent", daemon=True).start()


def _parent_gone(parent: int, ppid: int, expected_ppid: Optional[int]) -> bool:
    if expected_ppid is not None and ppid != expected_ppid:
        return True
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # exists, not ours to signal
    return False


def _watch_parent(parent: int, ppid: int) -> None:
    while True:
        time.sleep(_PARENT_POLL_S)
        if _parent_gone(parent, os.getppid(), ppid):
            os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool of `workers` bound to this process (`worker_init`), shut down when the block
    ends; on any exception in it (Ctrl-C and SIGTERM included) every process the pool started is
    stopped at once (`kill_pool`). Including one the pool never recorded: an interrupt landing in
    the pool's submit between a worker's start and the pool's note of it (a few bytecodes; not
    seen, but possible) would leave a non-daemon worker that Python's exit then joins forever. So
    the children this process started since the pool was made are stopped too."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, initializer=worker_init, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        kill_pool(pool, [p for p in multiprocessing.active_children() if p not in before])
        raise
    pool.shutdown(wait=True)


def kill_pool(pool: ProcessPoolExecutor, extra: Iterable = ()) -> None:
    """Stop a pool now: cancel what has not started, terminate the workers that run (and kill
    those that outlive two seconds), and the `extra` processes with them.

    Only one thread may reap a worker. The pool's manager thread joins (reaps) its workers once it
    sees them gone; a second `join` racing it gets ECHILD, and the loser's `is_alive()` then says
    True for a dead worker (seen under load: 4 of 300 interrupted pools). So we wait on the
    workers' sentinels (which reap nothing), let the manager thread finish its joins, and only then
    join what is left: the `extra` processes, and any worker the manager did not get to."""
    manager = getattr(pool, "_executor_manager_thread", None)  # read before shutdown(), which drops it
    processes = list((getattr(pool, "_processes", None) or {}).values())
    known = {id(p) for p in processes}
    processes += [p for p in extra if id(p) not in known]
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.terminate()
    running = _wait_for_exit(processes, timeout=2.0)
    for proc in running:
        with contextlib.suppress(Exception):
            proc.kill()
    _wait_for_exit(running, timeout=2.0)
    # The manager thread also closes its wake-up pipe on the way out: at interpreter exit
    # concurrent.futures writes to that pipe unless it is already marked closed, and on Python 3.11
    # the two race ("OSError: Bad file descriptor" printed at exit, seen under load in CI).
    if manager is not None:
        with contextlib.suppress(Exception):
            manager.join(timeout=2)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(timeout=1)


def _wait_for_exit(processes: list, timeout: float) -> list:
    """The processes still running after up to `timeout` seconds, told by their sentinels (an exited
    process's end of the pipe closes), so that the wait reaps none of them."""
    deadline = time.monotonic() + timeout
    pending = {sentinel: p for p in processes if (sentinel := _sentinel(p)) is not None}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for sentinel in multiprocessing.connection.wait(list(pending), timeout=left):
            del pending[sentinel]
    return list(pending.values())


def _sentinel(proc) -> Optional[int]:
    try:
        return proc.sentinel
    except (ValueError, AttributeError):
        return None  # closed, or never started: nothing to wait for


__all__ = ["kill_pool", "worker_init", "worker_pool"]
