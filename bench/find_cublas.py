"""Print "INCLUDE_DIR LIB_DIR" of a cuBLAS (headers and libraries) that matches CUDA 13, or nothing.

Used by bench/Makefile when CUBLAS_INC / CUBLAS_LIB are not given. Looks, in order, in:
the CUDA toolkit ($CUDA_HOME, $CUDA_PATH, /usr/local/cuda, the folder above nvcc's bin/),
Debian's /usr, and the `nvidia-cublas` wheel (nvidia/cu13/{include,lib}) on this Python's
sys.path, in $VIRTUAL_ENV and in the repository's .venv (pip install 'nvidia-cublas==13.1.1.3').
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

HEADER = "cublasLt.h"


def _lib_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if glob.glob(str(d / "libcublasLt.so*")) and glob.glob(str(d / "libcublas.so*")):
            return d
    return None


def _toolkits() -> list[Path]:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    roots += sorted(glob.glob("/usr/local/cuda-13*"), reverse=True)
    return [Path(r) for r in roots if r]


def find() -> tuple[Path, Path] | None:
    for root in _toolkits():
        for inc in (root / "include", *map(Path, glob.glob(str(root / "targets/*/include")))):
            if (inc / HEADER).is_file():
                lib = _lib_dir([root / "lib64", root / "lib", inc.parent / "lib"])
                if lib:
                    return inc, lib
    if Path("/usr/include", HEADER).is_file():
        lib = _lib_dir([Path(p) for p in glob.glob("/usr/lib/*-linux-gnu")] + [Path("/usr/lib")])
        if lib:
            return Path("/usr/include"), lib
    sites = list(sys.path)
    repo_venv = Path(__file__).resolve().parent.parent / ".venv"
    for venv in (os.environ.get("VIRTUAL_ENV"), str(repo_venv)):
        if venv:
            sites += glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
    for site in sites:
        home = Path(site or ".") / "nvidia" / "cu13"
        if (home / "include" / HEADER).is_file():
            lib = _lib_dir([home / "lib"])
            if lib:
                return home / "include", lib
    return None


if __name__ == "__main__":
    found = find()
    if found:
        print(f"{found[0]} {found[1]}")
