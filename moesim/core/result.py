"""Plain result records: JSON that numpy values survive, and the code version a result came from.

Files are written by `core.output` (checked before the work, written all-or-nothing).
"""
from __future__ import annotations

import functools
import json
import re
import subprocess
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
