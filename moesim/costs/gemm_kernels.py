"""One GEMM kernel's time from named parameters: fixed cost, wave-quantised tiles, HBM bound.

The roofline of `costs/compute.py` (one efficiency per dtype family, max(compute, memory) + a
launch constant) is optimistic for real kernels in three ways this module adds, each as a named
parameter of a GPU architecture or a kernel library (`topologies/kernels/gemm.yaml`):

    time  = kernels x (fixed + max(waves x tile, bytes / HBM))
    tile  = 2·TM·TN·k / (dense peak x eff[format, arch] / SMs)  +  tile_us[library]

* fixed (`gemm.fixed_us.<library>`): what one kernel costs whatever its size - launch, prologue
  (barrier init, TMA descriptor prefetch, first loads) and tail - as the library's timing method
  sees it (profiler kernel time for DeepGEMM, host-timed loops for cuBLASLt harnesses).
* waves x tile: the output is cut into TM x TN tiles, `ceil(tiles / SMs)` waves of them; a tile
  costs its full MMA work at the format's sustained rate plus a per-tile overhead (pipeline fill
  and the epilogue that stores the tile, not hidden behind the next tile's main loop). The
  per-tile overhead is what makes short-k GEMMs slow (few k-blocks to amortise it over).
* bytes / HBM: A, B (every group's weights) and C each cross HBM once at the GPU's measured copy
  bandwidth (`compute.hbm_effective_Bps`): the weight-read bound of small-m GEMMs.
* kernels: a grouped GEMM that its library runs as one kernel per group (DeepGEMM's k-grouped
  weight gradient) pays the fixed cost per group.

Everything but the parameters is computed once (`KernelShape`), so `kernel_time` is arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from moesim.core.errors import MoesimError

US = 1e-6


@dataclass(frozen=True)
class KernelShape:
    """Parameter-free quantities of one GEMM kernel (repeated `kernels` times)."""

    flops: float        # useful FLOPs of one kernel (2·Σm·n·k)
    tile_flops: tuple[float, ...]   # per candidate tile: 2·TM·TN·k
    waves: tuple[int, ...]          # per candidate tile: ceil(tiles / SMs)
    tiles: tuple[int, ...]
    tile_shapes: tuple[tuple[int, int], ...]            # reduction length of one tile
    sms: int
    peak_flops: float   # dense tensor-core peak of the format's family
    bytes: float        # HBM bytes of one kernel
    hbm_Bps: float      # measured (effective) HBM bandwidth
    kernels: int = 1
    groups: int = 1     # groups of one kernel (its weights are distinct)


def waves_of(tiles: int, sms: int) -> int:
    return max(1, math.ceil(tiles / sms))


def tiles_of(rows: Sequence[float], n: float, tm: int, tn: int) -> int:
    """Output tiles of a kernel over groups of `rows[g]` rows each (a group's last tile is whole)."""
    return sum(math.ceil(r / tm) for r in rows if r > 0) * math.ceil(n / tn)


def deepgemm_tile(rows: Sequence[float], n: float, sms: int, block_m: Sequence[int], block_n: Sequence[int],
                  small_m_only: bool = False, fixed_block_m: Optional[int] = None) -> tuple[int, int]:
    """DeepGEMM's block-size choice (jit_kernels/gemm.py get_best_configs): fewest waves, then the
    fullest last wave, then (tie) the smaller wasted block / the wider N block.

    `small_m_only`: the initial release used 64-row blocks only when m <= 64 (else 128);
    `fixed_block_m`: the contiguous layout aligns each group to 128 rows."""
    m = max(rows)
    if fixed_block_m is not None:
        ms = [fixed_block_m]
    elif small_m_only:
        ms = [64 if m <= 64 else 128]
    else:
        ms = list(block_m)
    best = None
    for bm in ms:
        for bn in block_n:
            if bm > 128 and bn > 128:
                continue  # "at least one dim <= 128"
            tiles = tiles_of(rows, n, bm, bn)
            waves = waves_of(tiles, sms)
            util = tiles % sms or sms
            if best is None:
                best = (waves, util, bm, bn)
                continue
            bw, bu, bbm, bbn = best
            ok = waves < bw
            if waves == bw:
                ok = util > bu
                if util == bu:
                    ok = ((bm == bbm and bn < bbn) or (bn == bbn and bm < bbm) or (bm != bbm and bn > bbn))
            if ok:
                best = (waves, util, bm, bn)
    assert best is not None
    return best[2], best[3]


def kernel_shape(rows: Sequence[float], n: float, k: float, *, tiles: Sequence[tuple[int, int]], sms: int,
                 peak_flops: float, a_bytes: float, c_bytes: float, hbm_Bps: float, c_reads: int = 0,
                 kernels: int = 1) -> KernelShape:
    """`KernelShape` of one kernel over groups of `rows[g]` rows (each with its own k x n weight).

    `tiles`: the tile the library picks, or the candidates its heuristic/autotuner picks from (the
    fastest one under the parameter values is taken, as an autotuner would). C is written once,
    and read `c_reads` times more (1 for an accumulating FP32 output)."""
    if not rows or min(rows) <= 0 or n <= 0 or k <= 0:
        raise MoesimError(f"GEMM sizes must be positive (rows {list(rows)}, n {n}, k {k})", field="m",
                          fix="give m, n, k > 0")
    total = float(sum(rows))
    counts = [tiles_of(rows, n, tm, tn) for tm, tn in tiles]
    nbytes = total * k * a_bytes + len(rows) * n * k * a_bytes + total * n * c_bytes * (1 + c_reads)
    return KernelShape(flops=2.0 * total * n * k, tile_flops=tuple(2.0 * tm * tn * k for tm, tn in tiles),
                       waves=tuple(waves_of(c, sms) for c in counts), tiles=tuple(counts),
                       tile_shapes=tuple((int(tm), int(tn)) for tm, tn in tiles), sms=sms, peak_flops=peak_flops,
                       bytes=nbytes, hbm_Bps=hbm_Bps, kernels=kernels, groups=len(rows))


def kernel_time(shape: KernelShape, values: Mapping[str, float], *, eff: str, fixed: str, tile_us: str,
                group_us: Optional[str] = None) -> float:
    """Seconds of all the kernels of `shape` under parameter `values` (names given by the caller).

    `group_us`: a per-group time of grouped layouts (switching a persistent CTA to another
    group's weights and row range). An SM switches group at most once per tile it takes, so the
    critical path pays min(groups, waves) switches: every one with a few large groups, and no
    more than the waves with many small ones (a decode step's hundreds of experts run side by
    side on different SMs)."""
    per_sm = shape.peak_flops * values[eff] / shape.sms
    overhead = values[tile_us] * US
    compute, waves = min((w * (f / per_sm + overhead), w) for w, f in zip(shape.waves, shape.tile_flops))
    memory = shape.bytes / shape.hbm_Bps
    groups = min(shape.groups, waves) * values[group_us] * US if group_us else 0.0
    return shape.kernels * (values[fixed] * US + max(compute, memory) + groups)


def kernel_tflops(shape: KernelShape, values: Mapping[str, float], **names: str) -> float:
    """Achieved TFLOP/s (2mnk / time, the benchmark definition) of all the kernels of `shape`."""
    return shape.kernels * shape.flops / kernel_time(shape, values, **names) / 1e12


def fitted_compute_profile(profile, arch: str, values: Mapping[str, float], library: str, name: str):
    """A compute profile (`costs.compute.ComputeProfile`) carrying the fitted gemm.* parameters of
    `arch` and `library` (`deepgemm` or `cublas`): efficiencies per format (capped at 1, the
    profile's range), per-kernel fixed time, per-tile and per-group overheads. Formats the fit has
    no parameter for keep the profile's values."""
    from moesim.costs.compute import Fraction, KernelFitTerms
    eff = profile.matmul_peak_efficiency
    updates = {}
    for family in ("bf16", "fp8", "fp4"):
        value = values.get(f"gemm.eff.{family}.{arch}")
        if value is not None and getattr(eff, family).value is not None:
            updates[family] = Fraction(value=min(value, 1.0), source=f"kernel fit {name}: gemm.eff.{family}.{arch}")
    block = values.get(f"gemm.eff.fp8_block.{arch}")
    terms = KernelFitTerms(profile=name, tile_overhead_s=values[f"gemm.tile_us.{library}"] * US,
                           group_overhead_s=values.get(f"gemm.group_us.{library}", 0.0) * US,
                           fp8_block_efficiency=None if block is None else min(block, 1.0))
    launch = profile.kernel_launch_s.model_copy(update={"value": values[f"gemm.fixed_us.{library}"] * US,
                                                        "source": f"kernel fit {name}: gemm.fixed_us.{library}"})
    return profile.model_copy(update={"matmul_peak_efficiency": eff.model_copy(update=updates),
                                      "kernel_launch_s": launch, "kernel_fit": terms})
