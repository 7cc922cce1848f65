"""Copy bandwidth of tensor copies: host memory on CPU; HBM, PCIe and GPU-to-GPU paths on CUDA.

Rows (`path` / `direction`), named as moesim.calibration.fit reads them:
- CPU: `host` / `host_to_host` (dst.copy_(src) between two host tensors: a host memcpy).
- CUDA: `hbm` / `device_to_device` on cuda:0; `host_to_device` and `device_to_host` /
  `unidirectional` with pinned host memory; with two or more GPUs, cuda:0 -> cuda:1 as
  `nvlink_p2p` / `unidirectional` when `nvidia-smi topo -m` shows NVLink between them, else
  `pcie_p2p` (`parameters.p2p_link` and `peer_access` record what was found).
`engine`: `memcpy` = torch copy_ (cudaMemcpyAsync; the driver picks the copy engine or a copy
kernel), `cpu` = host copy.

Bandwidth convention (as the calibration and compute.memory_bound_time use it): on memory paths
(`hbm`, `host`) GBps counts bytes read + bytes written = 2 x bytes / time (BabelStream); on
links (PCIe, P2P) GBps = bytes / time, one direction. `bytes` is always the copy size.

Correctness: the source holds int32 word i = i, so a lost, doubled or shifted word is seen; the
destination is compared word by word after one copy (before timing) and after the last one.
"""
from __future__ import annotations

import os
import re
import subprocess

from moesim.bench.micro.clock import median_seconds
from moesim.bench.micro.results import import_torch

WORD = 4  # bytes of the int32 pattern word; sizes are rounded down to a multiple
MEMORY_PATHS = ("hbm", "host")  # GBps counts read + write on these
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def p2p_link() -> str:
    """'nvlink', 'pcie' or 'unknown': what joins cuda:0 and cuda:1, from `nvidia-smi topo -m`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0,1").split(",")
    if len(visible) < 2 or not all(v.strip().isdigit() for v in visible[:2]):
        return "unknown"
    first, second = (int(v) for v in visible[:2])
    try:
        text = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in _ANSI.sub("", text).splitlines():
        cols = line.split()
        if cols and cols[0] == f"GPU{first}" and len(cols) > second + 1:
            entry = cols[second + 1]
            if entry.startswith("NV"):
                return "nvlink"
            if entry in ("PIX", "PXB", "PHB", "NODE", "SYS"):
                return "pcie"
    return "unknown"


def _cases(torch, backend: str, link: str | None) -> list[tuple[str, str, str, object, object, bool]]:
    """(path, direction, engine, source device, destination device, pinned host) per copy path."""
    if backend == "cpu":
        cpu = torch.device("cpu")
        return [("host", "host_to_host", "cpu", cpu, cpu, False)]
    gpu0, host = torch.device("cuda:0"), torch.device("cpu")
    cases = [("hbm", "device_to_device", "memcpy", gpu0, gpu0, False),
             ("host_to_device", "unidirectional", "memcpy", host, gpu0, True),
             ("device_to_host", "unidirectional", "memcpy", gpu0, host, True)]
    if link is not None:
        path = "nvlink_p2p" if link == "nvlink" else "pcie_p2p"
        cases.append((path, "unidirectional", "memcpy", gpu0, torch.device("cuda:1"), False))
    return cases


def _copy_case(torch, words: int, src_dev, dst_dev, pinned: bool, *, warmup: int, iters: int,
               corrupt: bool) -> tuple[int, float | None]:
    """(wrong words, median seconds or None when a check failed) for one size on one path."""
    src = torch.arange(words, dtype=torch.int32, device=src_dev)
    if pinned and src_dev.type == "cpu":
        src = src.pin_memory()
    dst = torch.empty(words, dtype=torch.int32, device=dst_dev, pin_memory=pinned and dst_dev.type == "cpu")
    expected = torch.arange(words, dtype=torch.int32, device=dst_dev)
    gpus = {d for d in (src_dev, dst_dev) if d.type == "cuda"}

    def settle() -> None:  # a non-blocking copy is done only once its GPU side is
        for gpu in gpus:
            torch.cuda.synchronize(gpu)

    def copy() -> None:
        dst.copy_(src, non_blocking=pinned)

    dst.fill_(-1)
    copy()
    settle()
    if corrupt:
        dst[0] += 1
    wrong = int((dst != expected).sum())
    if wrong:
        return wrong, None
    seconds = median_seconds(copy, device=src_dev if src_dev.type == "cuda" else dst_dev, warmup=warmup,
                             iters=iters)
    settle()
    wrong = int((dst != expected).sum())  # the timed copies moved the right data too
    return wrong, (None if wrong else seconds)


def run_memcpy(*, backend: str, sizes: list[int], warmup: int, iters: int,
               corrupt: bool = False) -> tuple[dict, list[dict], dict]:
    """Copy each size over each path; returns (parameters, rows, check).

    `corrupt` changes one destination word after the first copy (test hook: the check must fail).
    """
    torch = import_torch()
    peer = link = None
    if backend == "cuda" and torch.cuda.device_count() >= 2:
        peer = bool(torch.cuda.can_device_access_peer(0, 1))
        link = p2p_link()
    cases = _cases(torch, backend, link)
    parameters = {"sizes": [int(s) for s in sizes], "paths": [f"{c[0]}/{c[1]}" for c in cases],
                  "warmup": warmup, "iters": iters, "pattern": "int32 word i = i",
                  "pinned_host": backend == "cuda", "peer_access": peer, "p2p_link": link,
                  "GBps": "memory paths (hbm, host): (bytes read + written) / time / 1e9; "
                          "links: bytes / time / 1e9"}
    rows, wrong, checked = [], 0, 0
    for path, direction, engine, src_dev, dst_dev, pinned in cases:
        for size in sizes:
            words = max(int(size) // WORD, 1)
            case_wrong, seconds = _copy_case(torch, words, src_dev, dst_dev, pinned, warmup=warmup, iters=iters,
                                             corrupt=corrupt)
            checked += 1
            wrong += case_wrong
            if seconds is not None:
                n_bytes = words * WORD
                moved = 2 * n_bytes if path in MEMORY_PATHS else n_bytes
                rows.append({"path": path, "direction": direction, "engine": engine, "bytes": n_bytes,
                             "time_s": seconds, "GBps": moved / seconds / 1e9})
    check = {"passed": wrong == 0, "wrong_words": wrong, "cases_checked": checked}
    return parameters, rows, check
