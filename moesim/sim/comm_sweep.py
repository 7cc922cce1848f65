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
    rows = []
    for size in sizes(size_text):
        t = collective_time(system, gpus, op, size, algo=algo)
        rows.append({"bytes": size, "time_us": t.time_s / units.us, "algbw_GBps": t.algbw_GBps,
                     "busbw_GBps": t.busbw_GBps, "algo": t.algo, "protocol": t.protocol,
                     "bottleneck": t.bottleneck_kind, "latency_us": t.latency_s / units.us, "notes": t.notes})
    return rows
