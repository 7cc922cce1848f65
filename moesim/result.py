"""Plain result output: JSON that numpy values survive, and files written all-or-nothing.

A failed run must leave no partial file, so every writer goes through `write_atomic`
(temporary file in the target folder, then an atomic rename).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "model_dump"):
        return value.model_dump()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(data, default=_default, indent=indent, sort_keys=False)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) to `path` so that readers see either the old file or the whole new one."""
    return write_atomic_bytes(path, text.encode())


def write_atomic_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to `path` all-or-nothing: a temporary file in the same folder, then a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
