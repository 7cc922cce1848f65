"""Local process pools leave no worker behind (`moesim.core.pools`): not even one the pool never
recorded, which an interrupt between a worker's fork and the pool's bookkeeping leaves."""
import multiprocessing
import time

import pytest

from moesim.core.pools import worker_pool


def _sleeper() -> multiprocessing.Process:
    proc = multiprocessing.Process(target=time.sleep, args=(60,))
    proc.start()
    return proc


def test_an_interrupted_pool_stops_every_process_it_started_and_no_other():
    bystander = _sleeper()          # started before the pool: not the pool's to stop
    started: list = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with worker_pool(1) as pool:
                assert pool.submit(abs, -3).result() == 3
                started.append(_sleeper())   # a process the pool does not know (its `_processes` lack it)
                workers = list(pool._processes.values())
                manager = pool._executor_manager_thread
                raise KeyboardInterrupt
        # The pool's manager thread has finished: it reaps the workers, and a second reaper racing it would
        # see a dead worker as alive (ECHILD); and it has closed its wake-up pipe before Python's exit writes to it.
        assert not manager.is_alive()
        for proc in started + workers:
            proc.join(timeout=5)
            assert not proc.is_alive()
        assert bystander.is_alive()
    finally:
        for proc in [bystander] + started:
            proc.kill()
            proc.join()


def test_a_pool_that_ends_normally_shuts_its_workers_down():
    with worker_pool(2) as pool:
        assert sorted(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
        workers = list(pool._processes.values())
    for proc in workers:
        proc.join(timeout=5)
        assert not proc.is_alive()
