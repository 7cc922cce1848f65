"""Numba kernels (one module per pipeline step) and their NumPy twins (`reference.py`).

Every kernel is compiled lazily on first call and cached on disk (`cache=True`), so importing
moesim never compiles anything. Kernels take arrays and scalars only; randomness enters as an
explicit integer seed drawn from the scenario's seed tree (moesim.core.rng), and no kernel uses
`parallel=True`, so results never depend on thread scheduling.

Numba's disk cache checks only the file of the kernel it compiled: after editing a module of
kernels that others call (`draws`, `loads`), delete the cache (`find moesim -name '*.nb[ic]'
-delete`) or a caller in another file may run its old compiled copy.
"""
from __future__ import annotations

import numba

JIT_OPTIONS = {"cache": True, "nogil": True}


def kernel(func):
    """The one decorator every moesim kernel uses (njit is always nopython)."""
    return numba.njit(**JIT_OPTIONS)(func)
