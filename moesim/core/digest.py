"""The digest of the code and data that compute a result: what a cached answer must match.

`code_and_data_digest()` is the sha256 over the sorted relative paths and bytes of every
`moesim/**/*.py` file of the imported package and every file under the data root's
`topologies/` and `workloads/` (`core.loader.data_root`). A cache keyed by it (the planner's,
`planning.sweep.cache_key`) serves an answer only to the code and data that computed it: any
edit to a module, a model, a system or a profile changes the digest, and the cached points are
recomputed. Computed once per process and data root (a few milliseconds over ~200 files).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from moesim.core.loader import data_root

DATA_FOLDERS = ("topologies", "workloads")


def code_and_data_digest() -> str:
    """sha256 (hex) of the moesim sources and the data files that results are computed from."""
    return _digest(str(Path(__file__).resolve().parents[1]), str(data_root().resolve()))


def _files(package: Path, root: Path) -> list[tuple[str, Path]]:
    """(name, path) of every file the digest covers; names are relative and '/'-separated, the
    sources under `moesim/`, the data under its folder name, so a copy of either hashes the same."""
    files = [(f"moesim/{p.relative_to(package).as_posix()}", p) for p in package.rglob("*.py") if p.is_file()]
    for folder in DATA_FOLDERS:
        base = root / folder
        files += [(p.relative_to(root).as_posix(), p) for p in base.rglob("*") if p.is_file()]
    return sorted(files)


@functools.lru_cache(maxsize=8)
def _digest(package: str, root: str) -> str:
    h = hashlib.sha256()
    for name, path in _files(Path(package), Path(root)):
        data = path.read_bytes()
        # name and length framed, so no two different trees can give the same byte stream
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


__all__ = ["code_and_data_digest"]
