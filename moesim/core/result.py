"""Plain result output: JSON that numpy values survive, and files written all-or-nothing.

A failed run must leave no partial file, so every writer goes through `write_atomic`
(temporary file in the target folder, then an atomic rename).
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the moesim checkout, or None (installed package, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def code_version() -> dict:
    """What produced a result: the moesim version and, in a git checkout, the commit (and whether
    the work tree had uncommitted changes), so a report can be traced to the code. Asked of git
    once per process: every simulated planner point carries it."""
    return dict(_code_version())


@functools.lru_cache(maxsize=1)
def _code_version() -> tuple:
    from moesim import __version__
    commit = git_commit()
    dirty = None
    if commit:
        try:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                                    timeout=10, check=False)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            dirty = None
    return (("moesim", __version__), ("commit", commit), ("uncommitted_changes", dirty))
