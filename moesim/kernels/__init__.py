"""Numba kernels (one module per pipeline step) and their NumPy twins (`reference.py`).

Every kernel is compiled lazily on first call and cached on disk (`cache=True`), so importing
moesim never compiles anything. Kernels take arrays and scalars only; randomness enters as an
explicit integer seed drawn from the scenario's seed tree (moesim.core.rng), and no kernel uses
`parallel=True`, so results never depend on thread scheduling.
"""
from __future__ import annotations

import numba

JIT_OPTIONS = {"cache": True, "nogil": True}


def kernel(func):
    """The one decorator every moesim kernel uses (njit is always nopython)."""
    return numba.njit(**JIT_OPTIONS)(func)
