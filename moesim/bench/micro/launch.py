"""Run a function on N local worker processes joined in a torch.distributed group; rank 0's result back.

Backend: NCCL on CUDA (rank r drives cuda:r), gloo on CPU. The rendezvous is a file:// store
in a fresh temporary folder, so no TCP port is chosen or raced for; gloo's and NCCL's own
sockets are bound to the loopback interface (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME = lo, when
that interface exists and the variable is unset): nothing leaves the machine. Workers start
with the `spawn` method (torch.multiprocessing.spawn), so CUDA is never forked.

A worker function has the signature `fn(rank, world, device, **kwargs) -> picklable` and runs
collectives itself; rank 0's return value comes back through a pickle in the temporary folder.
An exception in any worker surfaces here as a RuntimeError carrying the worker's traceback.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

INIT_TIMEOUT_S = 300


def _loopback_interface() -> str | None:
    if Path("/sys/class/net/lo").exists():
        return "lo"
    if Path("/sys/class/net").exists():
        return None
    return "lo0" if os.uname().sysname == "Darwin" else None


def _entry(rank: int, fn: Callable[..., Any], world: int, backend: str, store: str, out: str,
           threads: int, kwargs: dict) -> None:
    import torch
    import torch.distributed as dist

    interface = _loopback_interface()
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    if backend == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        pg_backend = "nccl"
    else:
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        pg_backend = "gloo"
    init = {"device_id": device} if backend == "cuda" else {}
    dist.init_process_group(pg_backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=INIT_TIMEOUT_S), **init)
    try:
        result = fn(rank, world, device, **kwargs)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], *, ranks: int, backend: str, **kwargs: Any) -> Any:
    """Run `fn` on `ranks` local processes ('cuda': NCCL, one GPU each; 'cpu': gloo); rank 0's result."""
    import torch.multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // ranks)
    with tempfile.TemporaryDirectory(prefix="moesim-bench-") as folder:
        store, out = os.path.join(folder, "rendezvous"), os.path.join(folder, "rank0.pkl")
        try:
            mp.spawn(_entry, args=(fn, ranks, backend, store, out, threads, kwargs), nprocs=ranks, join=True)
        except mp.ProcessRaisedException as exc:
            raise RuntimeError(f"a benchmark worker failed:\n{exc}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a benchmark worker died: {exc}") from None
        return pickle.loads(Path(out).read_bytes())
