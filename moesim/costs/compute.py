"""Op durations on one GPU: a roofline (tensor-core peak vs HBM) times efficiencies from data files.

The model, per kernel (every number it uses comes from `topologies/gpus/<gpu>.yaml` or
`topologies/compute/<gpu>.yaml`, each with its source):

    time    = max(compute, memory) + kernel_launch_s (+ min(groups, waves) x group_overhead_s, grouped)
    compute = waves x (2·TM·TN·k / (peak x matmul_peak_efficiency / sm_count) + tile_overhead_s)
    memory  = bytes(A) + bytes(B) + bytes(C) / (HBM spec x memory efficiency)

* `peak` is the dense tensor-core peak of the dtype's family (`dense_TFLOPs`), and
  `matmul_peak_efficiency` the fraction of it that large GEMMs reach in a published
  microbenchmark (Stas Bekman's MAMF table, the OpenXLA matmul table, a DeepGEMM FP4 table; the
  profile YAML names the row).
* Shape efficiency comes from first principles, not a fit: the output is cut into TM x TN tiles
  (`ceil(m/TM)·ceil(n/TN)` of them, summed over groups for a grouped GEMM); every SM works on one
  tile at a time, so the kernel takes `waves = ceil(tiles / sm_count)` tile-times, and a tile
  costs its full 2·TM·TN·k FLOPs even where it hangs over the matrix edge. Equivalently, the
  shape efficiency is `tiles / (waves·sm_count) x m·n / (tiles·TM·TN)` (wave quantisation x tile
  quantisation). The tile is picked from the CUTLASS tile shapes a kernel library chooses from
  (`gemm_tiles`, TensorRT-LLM's CutlassTileConfigSM90/SM100), as the one with the smallest
  compute time — what a library heuristic or autotuner does.
* Memory efficiency = `hbm_measured_TBps / hbm_bandwidth_TBps` of the GPU file when it has a
  measurement (STREAM-type copy), else the profile's documented `memory_efficiency`.
* A, B and C are each moved once: A = m x k and B = k x n in the GEMM's dtype (W8A8 / W4A4: both
  operands in the same format, block scales included via `precision`), C = m x n in BF16, the
  usual epilogue output of BF16/FP8/FP4 GEMMs. A weight-only dtype (`int4_wo`, W4A16) stores B
  in its format and A in its `activations` format (BF16), and runs at the peak of its family
  (BF16): the weights are dequantised in registers. L2 reuse and operand re-reads are not modelled.

A kernel fit (`moesim calibrate --cases`, `costs.gemm_kernels.fitted_compute_profile`) replaces
the efficiencies, the launch constant and the two overheads (zero in the data files) with the
fitted `gemm.*` parameters of the GPU's architecture and the library that runs the GEMMs.

Not modelled: split-K / stream-K, L2 bandwidth, narrow-N tiles (see the profile notes), clocks
throttled by power. Units are SI: seconds, bytes, FLOP/s.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydantic import field_validator

from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.core.loader import Record, available, data_root, load_record, resolve
from moesim.specs import precision
from moesim.specs.hardware import GPUSpec, RequiredPositive, Sourced

OUTPUT_DTYPE = "bf16"


class Fraction(Sourced[float]):
    """A measured fraction of a spec (0 < value <= 1); null where it does not apply."""

    @field_validator("value")
    @classmethod
    def _fraction(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not 0 < v <= 1:
            raise ValueError("must be a fraction in (0, 1]; give achieved / spec from the source")
        return v


class MatmulPeakEfficiency(Record):
    """Fraction of the dense tensor-core peak that large GEMMs reach, per dtype family."""

    bf16: Fraction
    fp8: Fraction
    fp4: Fraction


class GemmTiles(Sourced[list[list[int]]]):
    """CTA tile shapes [TM, TN] a GEMM library picks from."""

    @field_validator("value")
    @classmethod
    def _tiles(cls, v: Optional[list[list[int]]]) -> list[list[int]]:
        if not v:
            raise ValueError("give at least one tile shape [TM, TN]; e.g. [[128, 128]]")
        for tile in v:
            if len(tile) != 2 or min(tile) <= 0:
                raise ValueError(f"tile {tile} is not [TM, TN] with positive sizes; write e.g. [128, 128]")
        return v


class KernelFitTerms(Record):
    """What a kernel fit adds to a compute profile (`costs.gemm_kernels.fitted_compute_profile`);
    never set by the data files."""

    profile: str                    # the kernel profile it came from
    tile_overhead_s: float          # per output tile: pipeline fill and an epilogue not hidden by the next tile
    group_overhead_s: float         # per group of a grouped GEMM: switching to another group's weights
    fp8_block_efficiency: Optional[float] = None  # 1x128 / 128x128 block-scaled FP8 (DeepGEMM)


class ComputeProfile(Record):
    """Efficiencies of one GPU model for the roofline compute model (`topologies/compute/<gpu>.yaml`)."""

    gpu: str
    matmul_peak_efficiency: MatmulPeakEfficiency
    gemm_tiles: GemmTiles
    memory_efficiency: Optional[Fraction] = None
    kernel_launch_s: RequiredPositive
    kernel_fit: Optional[KernelFitTerms] = None

    @property
    def tile_overhead_s(self) -> float:
        return self.kernel_fit.tile_overhead_s if self.kernel_fit else 0.0

    @property
    def group_overhead_s(self) -> float:
        return self.kernel_fit.group_overhead_s if self.kernel_fit else 0.0

    def matmul_efficiency(self, dtype: str) -> float:
        """`matmul_peak_efficiency` of a dtype name (`fp8_block128`) or family (`fp8`)."""
        family = _family(dtype)
        block = self.kernel_fit.fp8_block_efficiency if self.kernel_fit else None
        if family == "fp8" and "block" in dtype and block is not None:
            return block
        value = getattr(self.matmul_peak_efficiency, family).value
        if value is None:
            raise MoesimError(f"{self.gpu} has no matmul efficiency for {family} ({dtype})",
                              file=str(compute_dir() / f"{self.gpu}.yaml"),
                              field=f"matmul_peak_efficiency.{family}",
                              fix=f"run {family} GEMMs on a GPU with {family} tensor cores, or use bf16/fp8")
        return value


class GemmEstimate(Record):
    """One GEMM kernel's predicted duration and how it splits."""

    time_s: float
    compute_s: float
    memory_s: float
    launch_s: float
    flops: float
    bytes: float
    tile: tuple[int, int]
    tiles: int
    waves: int
    shape_efficiency: float

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def tflops(self) -> float:
        return achieved_tflops(self.flops, self.time_s)


def compute_dir() -> Path:
    return data_root() / "topologies" / "compute"


def profile_names() -> list[str]:
    return available(compute_dir())


@lru_cache(maxsize=64)
def load_compute_profile(gpu_id: str) -> ComputeProfile:
    """Load `topologies/compute/<gpu_id>.yaml` (or a YAML path) and check it names that GPU."""
    path = resolve("compute profile", gpu_id, compute_dir())
    profile = load_record(ComputeProfile, path)
    if path.parent == compute_dir() and profile.gpu != path.stem:
        raise MoesimError(f"profile names GPU {profile.gpu!r}", file=str(path), field="gpu",
                          fix=f"set gpu: {path.stem} (the file name) or rename the file")
    return profile


# ---------------------------------------------------------------- inputs

def _family(dtype: str) -> str:
    names = precision.names()
    if dtype in names:
        family = precision.get(dtype).family
        if family is None:
            raise MoesimError(f"{dtype} has no tensor-core GEMM peak", field="dtype",
                              fix="give a tensor-core dtype: bf16, fp16, fp8, fp8_block128, mxfp8, mxfp4, nvfp4, int4_wo")
        return family
    if dtype in MatmulPeakEfficiency.model_fields:
        return dtype
    raise MoesimError(f"unknown dtype {dtype!r}", field="dtype", fix=f"use one of: {', '.join(names)}")


def _check_gpu(gpu: GPUSpec, profile: ComputeProfile) -> None:
    if profile.gpu != gpu.id:
        raise MoesimError(f"compute profile is for {profile.gpu!r}, GPU is {gpu.id!r}", field="gpu",
                          fix=f"load the profile with load_compute_profile({gpu.id!r})")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise MoesimError(f"{name} must be a positive number, got {value!r}", field=name,
                          fix=f"give the GEMM's {name} (> 0)")
    return float(value)


def tensor_peak_flops(gpu: GPUSpec, profile: ComputeProfile, dtype: str) -> float:
    """Dense peak x matmul_peak_efficiency: the FLOP/s large GEMMs of `dtype` reach on `gpu`."""
    _check_gpu(gpu, profile)
    family = _family(dtype)
    peak = gpu.peak_flops(family)
    if peak is None:
        raise MoesimError(f"{gpu.name} has no {family} tensor cores (dense_TFLOPs.{family} is null)",
                          file=f"topologies/gpus/{gpu.id}.yaml", field=f"dense_TFLOPs.{family}",
                          fix=f"use bf16 or fp8 for {dtype!r} GEMMs on {gpu.id}, or a GPU with {family} support")
    return peak * profile.matmul_efficiency(dtype)


def memory_efficiency(gpu: GPUSpec, profile: ComputeProfile) -> float:
    """Measured HBM copy bandwidth / spec when the GPU file has one, else the profile's default."""
    _check_gpu(gpu, profile)
    measured = gpu.hbm_measured_TBps
    if measured is not None and measured.value is not None:
        return min(1.0, measured.value / gpu.hbm_bandwidth_TBps.value)
    if profile.memory_efficiency is None or profile.memory_efficiency.value is None:
        raise MoesimError(f"no HBM efficiency for {gpu.id}: the GPU file has no hbm_measured_TBps",
                          file=str(compute_dir() / f"{gpu.id}.yaml"), field="memory_efficiency",
                          fix="give memory_efficiency (measured copy bandwidth / spec) with its source")
    return profile.memory_efficiency.value


def hbm_effective_Bps(gpu: GPUSpec, profile: ComputeProfile) -> float:
    return gpu.hbm_Bps * memory_efficiency(gpu, profile)


# ---------------------------------------------------------------- kernels

def memory_bound_time(gpu: GPUSpec, profile: ComputeProfile, nbytes: float) -> float:
    """Seconds of one kernel that streams `nbytes` through HBM (KV-cache reads, elementwise ops).

    Zero bytes is no kernel (0 s); otherwise bytes / (HBM spec x memory efficiency) + launch.
    """
    if isinstance(nbytes, bool) or not math.isfinite(nbytes) or nbytes < 0:
        raise MoesimError(f"bytes must be >= 0, got {nbytes!r}", field="nbytes", fix="give a byte count >= 0")
    if nbytes == 0:
        return 0.0
    return nbytes / hbm_effective_Bps(gpu, profile) + profile.kernel_launch_s.value


def _gemm_parts(gpu: GPUSpec, profile: ComputeProfile, rows: np.ndarray, n: float, k: float, dtype: str,
                out_dtype: str) -> tuple:
    """(compute_s, memory_s, flops, bytes, tile, tiles, waves) of one kernel over groups with
    `rows[g]` > 0 output rows each, sharing n and k. Plain tuple: this runs per GPU per layer."""
    rate = tensor_peak_flops(gpu, profile, dtype)
    sms = gpu.sm_count.value
    per_sm = rate / sms
    best = None
    for tm, tn in profile.gemm_tiles.value:
        tiles = int(np.ceil(rows / tm).sum()) * math.ceil(n / tn)
        waves = math.ceil(tiles / sms)
        compute = waves * (2.0 * tm * tn * k / per_sm + profile.tile_overhead_s)
        if best is None or compute < best[0]:
            best = (compute, (tm, tn), tiles, waves)
    compute, tile, tiles, waves = best
    total_rows = float(rows.sum())
    a = precision.activation_bytes_per_element(dtype)
    b = precision.bytes_per_element(dtype)
    c = precision.bytes_per_element(out_dtype, field="out_dtype")
    nbytes = total_rows * k * a + len(rows) * n * k * b + total_rows * n * c
    return compute, nbytes / hbm_effective_Bps(gpu, profile), 2.0 * total_rows * n * k, nbytes, tile, tiles, waves


def _gemm(gpu: GPUSpec, profile: ComputeProfile, rows: np.ndarray, n: float, k: float, dtype: str,
          out_dtype: str, grouped: bool = False) -> GemmEstimate:
    """One kernel over groups with `rows[g]` > 0 output rows each, sharing n and k (all float64)."""
    compute, memory, flops, nbytes, tile, tiles, waves = _gemm_parts(gpu, profile, rows, n, k, dtype, out_dtype)
    # a group switch per tile an SM takes, at most: min(groups, waves) on the critical path
    launch = profile.kernel_launch_s.value + (min(len(rows), waves) * profile.group_overhead_s if grouped else 0.0)
    rate = tensor_peak_flops(gpu, profile, dtype)
    return GemmEstimate(time_s=max(compute, memory) + launch, compute_s=compute, memory_s=memory,
                        launch_s=launch, flops=flops, bytes=nbytes, tile=tile, tiles=tiles, waves=waves,
                        shape_efficiency=flops / (compute * rate))


def gemm_estimate(gpu: GPUSpec, profile: ComputeProfile, m: float, n: float, k: float, dtype: str,
                  *, out_dtype: str = OUTPUT_DTYPE) -> GemmEstimate:
    """C[m, n] = A[m, k] @ B[k, n] as one kernel: time, compute/memory split, tile and waves.

    m is the token (row) count, n the output features, k the reduction (input features); B is
    the weight. See the module docstring for the model and its sources.
    """
    m, n, k = _positive("m", m), _positive("n", n), _positive("k", k)
    return _gemm(gpu, profile, np.array([m]), n, k, dtype, out_dtype)


def gemm_time(gpu: GPUSpec, profile: ComputeProfile, m: float, n: float, k: float, dtype: str,
              *, out_dtype: str = OUTPUT_DTYPE) -> float:
    """Seconds of one GEMM C[m, n] = A[m, k] @ B[k, n] (roofline x efficiency, module docstring)."""
    return gemm_estimate(gpu, profile, m, n, k, dtype, out_dtype=out_dtype).time_s


def grouped_gemm_estimate(gpu: GPUSpec, profile: ComputeProfile, tokens_per_group: Sequence[float] | np.ndarray,
                          n: float, k: float, dtype: str, *, out_dtype: str = OUTPUT_DTYPE) -> Optional[GemmEstimate]:
    """A grouped GEMM (MoE experts) as one kernel; None when no group has tokens.

    `tokens_per_group` is [groups]: rows of group g (tokens routed to expert g); every group has
    its own weight B_g[k, n]. Tiles of all groups share the SMs, so the sum of tiles over groups
    fills the waves (a group with 3 tokens still costs a whole tile row). The weights of each group
    with tokens > 0 are read once; groups with no tokens cost nothing (their weights are not read).
    """
    counts = np.asarray(tokens_per_group, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise MoesimError(f"tokens_per_group must be a 1-D array of per-group counts, got shape {counts.shape}",
                          field="tokens_per_group", fix="pass one token count per group (expert)")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise MoesimError("tokens_per_group has a negative or non-finite count", field="tokens_per_group",
                          fix="give token counts >= 0")
    n, k = _positive("n", n), _positive("k", k)
    rows = counts[counts > 0]
    if rows.size == 0:
        _family(dtype)
        return None
    return _gemm(gpu, profile, rows, n, k, dtype, out_dtype, grouped=True)


def grouped_gemm_time(gpu: GPUSpec, profile: ComputeProfile, tokens_per_group: Sequence[float] | np.ndarray,
                      n: float, k: float, dtype: str, *, out_dtype: str = OUTPUT_DTYPE) -> float:
    """Seconds of a grouped GEMM over experts (see `grouped_gemm_estimate`); 0 when all groups are empty."""
    est = grouped_gemm_estimate(gpu, profile, tokens_per_group, n, k, dtype, out_dtype=out_dtype)
    return 0.0 if est is None else est.time_s


def grouped_gemm_times_per_owner(gpu: GPUSpec, profile: ComputeProfile, tokens_per_group: np.ndarray,
                                 owner: np.ndarray, owners: int, n: float, k: float, dtype: str,
                                 *, out_dtype: str = OUTPUT_DTYPE) -> np.ndarray:
    """`grouped_gemm_time` of every owner (GPU) at once: owner o runs one grouped GEMM over the
    groups g with owner[g] == o. Same model, vectorised over owners (the simulator's hot path)."""
    counts = np.asarray(tokens_per_group, dtype=np.float64)
    owner = np.asarray(owner, dtype=np.int64)
    if counts.shape != owner.shape or counts.ndim != 1 or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise MoesimError("tokens_per_group and owner must be equal-length 1-D arrays of counts >= 0",
                          field="tokens_per_group", fix="pass one count and one owner per group")
    n, k = _positive("n", n), _positive("k", k)
    rate = tensor_peak_flops(gpu, profile, dtype)
    sms = gpu.sm_count.value
    active = counts > 0
    best = best_waves = None
    for tm, tn in profile.gemm_tiles.value:
        tiles = np.bincount(owner, weights=np.ceil(counts / tm) * active, minlength=owners) * math.ceil(n / tn)
        waves = np.ceil(tiles / sms)
        compute = waves * (2.0 * tm * tn * k / (rate / sms) + profile.tile_overhead_s)
        if best is None:
            best, best_waves = compute, waves
        else:  # the first tile wins ties, as in _gemm_parts
            better = compute < best
            best, best_waves = np.where(better, compute, best), np.where(better, waves, best_waves)
    rows = np.bincount(owner, weights=counts, minlength=owners)
    groups = np.bincount(owner, weights=active.astype(float), minlength=owners)
    a = precision.activation_bytes_per_element(dtype)
    b = precision.bytes_per_element(dtype)
    c = precision.bytes_per_element(out_dtype, field="out_dtype")
    memory = (rows * k * a + groups * n * k * b + rows * n * c) / hbm_effective_Bps(gpu, profile)
    fixed = profile.kernel_launch_s.value + np.minimum(groups, best_waves) * profile.group_overhead_s
    return np.where(groups > 0, np.maximum(best, memory) + fixed, 0.0)


# ---------------------------------------------------------------- achieved throughput

def achieved_tflops(flops: float, time_s: float) -> float:
    """FLOPs / seconds in TFLOP/s (the unit GEMM benchmarks report)."""
    if time_s <= 0:
        raise MoesimError(f"time must be positive, got {time_s!r}", field="time_s", fix="give a duration > 0")
    return flops / time_s / units.TFLOPS


def gemm_tflops(gpu: GPUSpec, profile: ComputeProfile, m: float, n: float, k: float, dtype: str) -> float:
    """Predicted achieved TFLOP/s of one GEMM, 2mnk / time (the benchmark definition)."""
    return gemm_estimate(gpu, profile, m, n, k, dtype).tflops


def grouped_gemm_tflops(gpu: GPUSpec, profile: ComputeProfile, tokens_per_group: Sequence[float] | np.ndarray,
                        n: float, k: float, dtype: str) -> float:
    """Predicted achieved TFLOP/s of a grouped GEMM, 2·Σm_g·n·k / time."""
    est = grouped_gemm_estimate(gpu, profile, tokens_per_group, n, k, dtype)
    if est is None:
        raise MoesimError("every group is empty", field="tokens_per_group", fix="give at least one group tokens > 0")
    return est.tflops
