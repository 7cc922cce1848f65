"""`moesim comm`: one collective or an nccl-tests-style size sweep, as rows of plain data."""
from __future__ import annotations

from typing import Optional

from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.core.units import parse_size
from moesim.costs.collectives import collective_time


def sizes(text: str) -> list[int]:
    """'1G' -> [1 GiB]; '1K:8G' -> 1K, 2K, ... 8G (doubling, like nccl-tests -b -e -f 2)."""
    lo, sep, hi = text.partition(":")
    first = parse_size(lo, field="bytes")
    if not sep:
        return [first]
    last = parse_size(hi, field="bytes")
    if last < first:
        raise MoesimError(f"sweep end {hi} is below its start {lo}", field="bytes", fix="write START:END with START <= END")
    out, size = [], first
    while size <= last:
        out.append(size)
        size *= 2
    return out


def comm_rows(system: str, gpus: int, op: str, size_text: str, algo: Optional[str]) -> list[dict]:
    """Time, algbw, busbw per size. All-reduce, all-gather, reduce-scatter and all-to-all use the
    collective kernel model with the shipped kernel profile (validated on nccl-tests cases, as
    nccl-tests times them, one rank per GPU: host launch included); send/recv and the algorithms
    it has no model for (`--algo tree`, ...) the topology plan with NCCL's older table. The
    bottleneck link class comes from the topology plan in both."""
    from moesim.calibration.kernel_params import resolve_kernel_profile
    from moesim.costs.collective_kernels import OPS, choose
    from moesim.costs.collectives import BUSBW_FACTOR
    from moesim.specs.hardware import load_system
    profile = resolve_kernel_profile(None)
    values = profile.values()
    rows = []
    for size in sizes(size_text):
        t = collective_time(system, gpus, op, size, algo=algo)
        row = {"bytes": size, "time_us": t.time_s / units.us, "algbw_GBps": t.algbw_GBps,
               "busbw_GBps": t.busbw_GBps, "algo": t.algo, "protocol": t.protocol,
               "bottleneck": t.bottleneck_kind, "model": "topology plan, topologies/collectives/nccl.yaml",
               "notes": t.notes}
        if op in OPS and algo in (None, "ring", "nvls", "direct", "collnet"):
            choice = choose(load_system(system), gpus, op, size, values, algo)
            time_us = max(choice.gpu_us(values), values["collective.launch_us"])
            algbw = size / (time_us * units.us) / units.GBps
            row.update(time_us=time_us, algbw_GBps=algbw, busbw_GBps=algbw * BUSBW_FACTOR[op](gpus),
                       algo=choice.algo, protocol=choice.protocol,
                       model=f"collective kernel model, kernel profile {profile.name}")
        rows.append(row)
    return rows
