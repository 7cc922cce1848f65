"""Named unit conversions and size parsing, so SI values stay SI inside the package.

Data files and CLI flags carry the unit in their key or suffix (`_GBps`, `_TFLOPs`, `4K`, `8G`);
everything is converted here, once, at the boundary.
"""
from __future__ import annotations

import re

from moesim.core.errors import MoesimError

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

TFLOPS = 1e12
GBps = 1e9
TBps = 1e12
Gbps = 1e9 / 8  # bytes per second in one gigabit per second
us = 1e-6
ms = 1e-3

# nccl-tests style sizes: 1K = 1024 bytes, 8G = 8 GiB; explicit decimal units also accepted.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kb": KB, "kib": KiB,
    "m": MiB, "mb": MB, "mib": MiB,
    "g": GiB, "gb": GB, "gib": GiB,
    "t": TiB, "tb": TB, "tib": TiB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, *, field: str = "size") -> int:
    """Parse '4K', '8G', '1.5GiB', '1e9' or a number into a positive byte count."""
    if isinstance(text, bool):
        raise MoesimError(f"{text!r} is not a size", field=field, fix="give bytes, e.g. 1048576 or 1M")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _SIZE_RE.match(str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise MoesimError(f"{text!r} is not a size", field=field,
                              fix="use a number with an optional unit: 512, 4K, 8M, 1G, 2GiB, 1GB")
        value = float(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise MoesimError(f"size must be positive, got {text!r}", field=field,
                          fix="give a size greater than zero")
    return int(round(value))


def to_GiB(n_bytes: float) -> float:
    return n_bytes / GiB


def to_GB(n_bytes: float) -> float:
    return n_bytes / GB
