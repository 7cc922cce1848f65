"""Collective bandwidth in torch.distributed (NCCL on GPU, gloo on CPU), the nccl-tests way.

Ops: all_reduce (sum, in place), all_gather, reduce_scatter (sum), all_to_all, float32 payloads.
`bytes` is the per-rank size nccl-tests prints, max(send, receive buffer): all_reduce the buffer,
all_gather the gathered output (n x the input), reduce_scatter the input (n x the output),
all_to_all the send buffer (n chunks). algbw = bytes / time; busbw = algbw x BUSBW_FACTOR[op]
(nccl-tests PERFORMANCE.md: all_reduce 2(n-1)/n, all_gather / reduce_scatter / all_to_all
(n-1)/n), the rate a link would need in an ideal ring, comparable across ops and rank counts.

Correctness first: every op runs once on a rank-encoded payload whose result is known exactly
in float32 (small integers), e.g. all_reduce of (rank+1) x g(i) must give n(n+1)/2 x g(i) with
g(i) = i mod 251 + 1; each rank counts wrong elements, the counts are summed over ranks (the
`#wrong` column of nccl-tests), and an op with a wrong element is not timed. Time per op: the
median over `iters` timed iterations after `warmup`, with a barrier before each iteration and
the slowest rank's time per iteration (clock.distributed_median_seconds).
"""
from __future__ import annotations

from typing import Callable

from moesim.bench.micro.clock import distributed_median_seconds
from moesim.bench.micro.launch import launch

ELEMENT_BYTES = 4  # float32

BUSBW_FACTOR: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}


def _g(torch, start: int, count: int, device):
    return (torch.arange(start, start + count, device=device) % 251 + 1).float()


def _all_reduce(torch, dist, rank: int, n: int, size: int, device):
    count = size // ELEMENT_BYTES
    if count == 0:
        return None
    buf = _g(torch, 0, count, device) * (rank + 1)
    expected = _g(torch, 0, count, device) * (n * (n + 1) // 2)
    return (lambda: dist.all_reduce(buf)), buf, expected, count * ELEMENT_BYTES


def _all_gather(torch, dist, rank: int, n: int, size: int, device):
    chunk = size // (ELEMENT_BYTES * n)
    if chunk == 0:
        return None
    idx = torch.arange(chunk, device=device) % 997
    send = (idx + rank * 1000).float()
    out = torch.empty(chunk * n, device=device)
    expected = torch.cat([(idx + s * 1000).float() for s in range(n)])
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return (lambda: gather(out, send)), out, expected, chunk * n * ELEMENT_BYTES


def _reduce_scatter(torch, dist, rank: int, n: int, size: int, device):
    chunk = size // (ELEMENT_BYTES * n)
    if chunk == 0:
        return None
    send = _g(torch, 0, chunk * n, device) * (rank + 1)
    out = torch.empty(chunk, device=device)
    expected = _g(torch, rank * chunk, chunk, device) * (n * (n + 1) // 2)
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return (lambda: scatter(out, send)), out, expected, chunk * n * ELEMENT_BYTES


def _all_to_all(torch, dist, rank: int, n: int, size: int, device):
    chunk = size // (ELEMENT_BYTES * n)
    if chunk == 0:
        return None
    idx = torch.arange(chunk, device=device) % 8
    send = torch.cat([((rank * n + d) * 8 + idx).float() for d in range(n)])
    out = torch.empty(chunk * n, device=device)
    expected = torch.cat([((s * n + rank) * 8 + idx).float() for s in range(n)])
    return (lambda: dist.all_to_all_single(out, send)), out, expected, chunk * n * ELEMENT_BYTES


# op -> fn(torch, dist, rank, n, requested per-rank bytes, device) -> (run, output, expected,
# per-rank bytes) or None when the size holds less than one element per rank.
COLLECTIVE_OPS = {"all_reduce": _all_reduce, "all_gather": _all_gather,
                  "reduce_scatter": _reduce_scatter, "all_to_all": _all_to_all}


def _worker(rank: int, world: int, device, *, ops: list[str], sizes: list[int], warmup: int, iters: int,
            corrupt: bool) -> dict:
    import torch
    import torch.distributed as dist

    rows, wrong_total, skipped = [], 0, []
    for op in ops:
        for size in sizes:
            case = COLLECTIVE_OPS[op](torch, dist, rank, world, size, device)
            if case is None:
                skipped.append(f"{op}@{size}")
                continue
            run, out, expected, n_bytes = case
            run()
            if corrupt and rank == 0:
                out.view(-1)[0] += 1.0
            wrong = torch.tensor([int((out != expected).sum())], dtype=torch.int64, device=device)
            dist.all_reduce(wrong)
            wrong = int(wrong.item())
            wrong_total += wrong
            if wrong:
                continue
            seconds = distributed_median_seconds(run, device=device, warmup=warmup, iters=iters)
            algbw = n_bytes / seconds / 1e9
            rows.append({"op": op, "bytes": n_bytes, "ranks": world, "nodes": 1, "count": n_bytes // ELEMENT_BYTES,
                         "dtype": "float32", "time_s": seconds, "algbw_GBps": algbw,
                         "busbw_GBps": algbw * BUSBW_FACTOR[op](world), "wrong": 0})
            del run, out, expected, case
    return {"rows": rows, "wrong": wrong_total, "skipped": skipped}


def run_collectives(*, backend: str, ranks: int, sizes: list[int], ops: list[str], warmup: int, iters: int,
                    corrupt: bool = False) -> tuple[dict, list[dict], dict]:
    """Sweep `ops` x `sizes` (per-rank bytes) on `ranks` local processes; (parameters, rows, check).

    `corrupt` damages one element of rank 0's result before the check (test hook: it must fail).
    """
    parameters = {"ops": list(ops), "sizes": [int(s) for s in sizes], "ranks": ranks,
                  "process_group": "nccl" if backend == "cuda" else "gloo", "dtype": "float32", "redop": "sum",
                  "warmup": warmup, "iters": iters, "time": "median over iterations of the slowest rank",
                  "bytes": "per-rank max(send, receive) buffer, as nccl-tests prints size",
                  "busbw_factor": {"all_reduce": "2(n-1)/n", "all_gather": "(n-1)/n",
                                   "reduce_scatter": "(n-1)/n", "all_to_all": "(n-1)/n"},
                  "rendezvous": "file:// store in a temporary folder; loopback sockets"}
    result = launch(_worker, ranks=ranks, backend=backend, ops=list(ops), sizes=[int(s) for s in sizes],
                    warmup=warmup, iters=iters, corrupt=corrupt)
    check = {"passed": result["wrong"] == 0, "wrong": result["wrong"], "skipped": result["skipped"]}
    return parameters, result["rows"], check
