"""Calibration profiles: efficiencies and link rates fitted from microbenchmark results, with provenance.

The flow (DESIGN.md): `moesim bench` (GPU) writes results files (schema `moesim-bench/v1`) ->
`load_results` validates them -> `fit_profile` fits the constants moesim's forward models use ->
`write_profile` writes `topologies/calibration/<system>.yaml` with a `provenance:` block ->
`load_calibration` reads it back -> `apply_to_compute`, `apply_to_gpu` and
`link_efficiency_overrides` hand the fitted numbers to the compute and collective models.

What is fitted, each by least squares against moesim's own forward model (so the fitted number is
the one that makes moesim reproduce the measurement, not a number from a different definition):

* `matmul_peak_efficiency[family]` (GEMM and grouped-GEMM rows): moesim predicts every row with
  efficiency 1 (`compute.gemm_estimate` / `grouped_gemm_estimate`), which gives compute_i,
  memory_i and the launch cost L; the model time at efficiency e is max(compute_i / e, memory_i) + L.
  With x = 1/e the compute-bound rows are linear in x, and x minimises the squared relative error
  sum_i ((compute_i x + L - t_i) / t_i)^2 in closed form: x = sum a_i y_i / sum a_i^2 with
  a_i = compute_i / t_i, y_i = (t_i - L) / t_i. Which rows are compute-bound depends on x, so the
  fit repeats until that set is stable. A grouped-GEMM row's `m` is the rows of EACH group (all
  `groups` groups equal, as the harness and DeepGEMM's grouped benchmarks run them). Only large
  GEMMs (>= `LARGE_GEMM_FLOPS`) enter the fit: the efficiency is the large-GEMM fraction of peak
  by definition (compute.py), and small GEMMs
  are dominated by effects the model handles elsewhere (waves, launch). Every row still gets a
  residual, marked `used_in_fit`.
* `memory_efficiency` (memcpy rows with path `hbm`, a device-to-device copy of `bytes`): median
  HBM rate / HBM spec over the rows within 4x of the largest size (smaller copies measure launch
  cost and caches, not HBM). The HBM rate is 2 x bytes / time_s: a copy reads and writes every
  byte, and that is how the compute model counts memory traffic and how its reference figure
  (BabelStream Copy, `hbm_measured_TBps`) is defined. The row's GBps column is not used: the
  harness writes it as bytes copied / time (nvbandwidth's one-direction convention).
* Links (memcpy rows `nvlink_p2p`, `host_to_device`, `device_to_host`; the harness's names
  `peer` and `pcie` + direction `h2d` / `d2h` are read as these): time = alpha + bytes / beta,
  fitted with `np.linalg.lstsq` on the rows divided by
  their measured time (squared relative error, so small messages pin alpha and large ones beta).
  beta is the achievable bandwidth, alpha the latency; NVLink efficiency = beta / the system's
  spec per-direction NVLink rate, as `collectives.link_efficiency` defines it from a P2P
  measurement. Bidirectional rows are fitted and reported but give no efficiency.
* Collectives (rows grouped by op, ranks, nodes): time = alpha + bus_bytes / beta with bus_bytes
  = bytes x busbw factor (nccl-tests PERFORMANCE.md, `collectives.BUSBW_FACTOR`), so beta is the
  achievable bus bandwidth. Its efficiency is beta / the bus bandwidth moesim's collective model
  predicts for a large message at spec rate, on the link kind that binds there (nvlink, ib,
  roce; `nvls` for in-switch all-reduce).

Residuals are relative errors of predicted vs measured time, (predicted - measured) / measured.
Every fitted number carries `residual_rms` and `residual_max` (over the rows of its fit) and the
standard error of the fitted value; `error_band` turns an RMS into the +-band moesim reports on a
metric (k = 2, module constant `ERROR_BAND_K`).

`synthetic_results` generates results from KNOWN parameters with the same forward models plus
lognormal noise, for tests and for trying calibration without a GPU; it marks them
`device.backend: synthetic`.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import yaml
from pydantic import Field, field_validator

from moesim import __version__
from moesim.specs import precision
from moesim.core import units
from moesim.costs.collectives import BUSBW_FACTOR, collective_time, link_efficiency
from moesim.costs.compute import (ComputeProfile, Fraction, MatmulPeakEfficiency, gemm_estimate, gemm_time,
                      grouped_gemm_estimate, grouped_gemm_time, load_compute_profile, memory_bound_time)
from moesim.core.errors import MoesimError
from moesim.specs.hardware import GPUSpec, PositiveNumber, System, gpu_names, load_gpu, load_system, system_names
from moesim.core.loader import Record, data_root, parse_record, read_yaml
from moesim.core.result import git_commit, write_atomic

SCHEMA = "moesim-bench/v1"
PROFILE_FORMAT = "moesim-calibration/v1"
BENCHMARKS = ("gemm", "grouped_gemm", "memcpy", "collective", "ep_dispatch")
MEMCPY_PATHS = ("hbm", "host_to_device", "device_to_host", "nvlink_p2p", "pcie", "peer", "host")
HBM_COPY_TRAFFIC = 2.0  # bytes through HBM per byte copied device-to-device (read + write)
BIDIRECTIONAL = ("bidirectional", "bi", "both", "duplex")
LARGE_GEMM_FLOPS = 2.0 * 2048**3  # ~17 GFLOP: >= 20 us at 800 TFLOP/s, 15x a kernel launch
HBM_LARGE_FRACTION = 0.25  # hbm rows within 4x of the largest size set memory_efficiency
COLLECTIVE_PROBE_BYTES = float(2**32)  # "large message" for the model's spec bus bandwidth
ERROR_BAND_K = 2.0
ERROR_BAND_CONVENTION = (
    "value x (1 -+ 2 x residual_rms): k = 2 times the RMS relative error of the fit's predicted vs "
    "measured times (about a 95% band if the residuals are zero-mean and normal); it covers the "
    "scatter of the calibration rows around the model, not model terms the benchmarks do not exercise")
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                "float8_e4m3fn": "fp8_e4m3",
                "float8_e4m3fnuz": "fp8_e4m3", "float8_e5m2": "fp8"}
LINK_KIND = {"nvlink_p2p": "nvlink", "host_to_device": "host", "device_to_host": "host", "peer_pcie": "pcie",
             "pcie": "host"}
DEVICE_FIELDS = ("name", "backend", "torch", "cuda_runtime", "driver", "nccl", "gpus", "compute_capability")


# ---------------------------------------------------------------- the profile file

class Fitted(Record):
    """One fitted number with where it came from and how well the model then fits the rows."""

    value: float
    source: str
    residual_rms: float = Field(ge=0)
    residual_max: float = Field(ge=0)
    stderr: Optional[float] = None
    rows: int = Field(ge=1)
    note: Optional[str] = None

    @field_validator("source")
    @classmethod
    def _source(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("source is empty; name the results files the value was fitted from")
        return text


class LinkFit(Record):
    """alpha-beta fit of one copy path: time = latency_s + bytes / bandwidth."""

    path: str
    direction: Optional[str] = None
    kind: str
    spec_GBps: Optional[float] = None
    bandwidth_GBps: Fitted
    latency_s: Fitted
    efficiency: Optional[Fitted] = None


class CollectiveFit(Record):
    """alpha-beta fit of one collective: time = latency_s + bytes x busbw factor / busbw."""

    op: str
    ranks: int
    nodes: Optional[int] = None
    bottleneck_kind: Optional[str] = None
    spec_busbw_GBps: Optional[float] = None
    busbw_GBps: Fitted
    latency_s: Fitted
    efficiency: Optional[Fitted] = None


class ResidualRow(Record):
    quantity: str
    file: str
    row: int
    label: str
    measured_s: float
    predicted_s: float
    rel_error: float
    used_in_fit: bool


class ResultsSource(Record):
    file: str
    sha256: Optional[str] = None
    benchmark: str
    timestamp: Optional[str] = None
    host: Optional[str] = None
    parameters: dict[str, Any] = {}


class Provenance(Record):
    command: str
    results: list[ResultsSource]
    device: dict[str, Any]
    calibrated_at: str
    moesim_version: str
    moesim_commit: Optional[str]
    error_band: str


class CalibrationProfile(Record):
    """A fitted calibration profile (`topologies/calibration/<system>.yaml`)."""

    format: str
    gpu: str
    system: Optional[str] = None
    provenance: Provenance
    matmul_peak_efficiency: dict[str, Fitted] = {}
    memory_efficiency: Optional[Fitted] = None
    links: dict[str, LinkFit] = {}
    collectives: dict[str, CollectiveFit] = {}
    notes: list[str] = []
    residuals: list[ResidualRow] = []

    @field_validator("format")
    @classmethod
    def _format(cls, text: str) -> str:
        if text != PROFILE_FORMAT:
            raise ValueError(f"unknown calibration format {text!r}; write format: {PROFILE_FORMAT}")
        return text

    @field_validator("matmul_peak_efficiency")
    @classmethod
    def _families(cls, fits: dict[str, Fitted]) -> dict[str, Fitted]:
        for family in fits:
            if family not in MatmulPeakEfficiency.model_fields:
                raise ValueError(f"unknown dtype family {family!r}; use one of: "
                                 f"{', '.join(MatmulPeakEfficiency.model_fields)}")
        return fits


def calibration_dir() -> Path:
    return data_root() / "topologies" / "calibration"


# ---------------------------------------------------------------- results files

def _where(i: int, name: str) -> str:
    return f"rows[{i}].{name}"


def _number(row: dict, i: int, name: str, file: str, *, positive: bool = True, integer: bool = False,
            minimum: Optional[float] = None) -> float:
    if name not in row:
        raise MoesimError("required field is missing", file=file, field=_where(i, name),
                          fix="re-run the benchmark with this moesim version, or add the field")
    value = row[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer and float(value) != int(value):
        ok = False
    if ok and positive and value <= 0:
        ok = False
    if ok and minimum is not None and value < minimum:
        ok = False
    if not ok:
        need = "a whole number" if integer else "a number"
        need += f" >= {minimum:g}" if minimum is not None else (" > 0" if positive else "")
        raise MoesimError(f"must be {need}, got {value!r}", file=file, field=_where(i, name),
                          fix="correct the row or re-run the benchmark")
    return float(value)


def _text(row: dict, i: int, name: str, file: str, choices: Optional[Iterable[str]] = None) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise MoesimError(f"must be a non-empty string, got {value!r}", file=file, field=_where(i, name),
                          fix="correct the row or re-run the benchmark")
    if choices is not None and value not in choices:
        raise MoesimError(f"unknown value {value!r}", file=file, field=_where(i, name),
                          fix=f"use one of: {', '.join(choices)}")
    return value


def canonical_dtype(name: str, *, file: Optional[str] = None, field: str = "dtype") -> str:
    """moesim's dtype name for a benchmark's dtype (`bfloat16`, `float8_e4m3fn` accepted as torch writes them)."""
    key = TORCH_DTYPES.get(name, name)
    if key not in precision.names():
        raise MoesimError(f"unknown dtype {name!r}", file=file, field=field,
                          fix=f"use one of: {', '.join(precision.names() + sorted(TORCH_DTYPES))}")
    return key


def dtype_family(name: str, *, file: Optional[str] = None, field: str = "dtype") -> str:
    family = precision.get(canonical_dtype(name, file=file, field=field)).family
    if family is None:
        raise MoesimError(f"{name} has no tensor-core GEMM peak", file=file, field=field,
                          fix="benchmark a tensor-core dtype: bf16, fp16, fp8, mxfp8, mxfp4, nvfp4")
    return family


def _check_row(benchmark: str, row: Any, i: int, file: str) -> None:
    if not isinstance(row, dict):
        raise MoesimError(f"a row must be a mapping, got {type(row).__name__}", file=file, field=f"rows[{i}]",
                          fix="write every row as an object of named columns")
    if benchmark in ("gemm", "grouped_gemm"):
        for name in ("m", "n", "k"):
            _number(row, i, name, file)
        if benchmark == "grouped_gemm" or "groups" in row:
            _number(row, i, "groups", file, integer=True, minimum=1)
        _text(row, i, "dtype", file)
        canonical_dtype(row["dtype"], file=file, field=_where(i, "dtype"))
        _number(row, i, "time_s", file)
    elif benchmark == "memcpy":
        _text(row, i, "path", file, MEMCPY_PATHS)
        _number(row, i, "bytes", file)
        _number(row, i, "time_s", file)
        if row.get("direction") is not None:
            _text(row, i, "direction", file)
    elif benchmark == "collective":
        _text(row, i, "op", file, tuple(BUSBW_FACTOR))
        _number(row, i, "bytes", file)
        _number(row, i, "ranks", file, integer=True, minimum=2)
        _number(row, i, "time_s", file)
        if row.get("nodes") is not None:
            _number(row, i, "nodes", file, integer=True, minimum=1)


def check_result(data: Any, *, file: str) -> dict:
    """Validate one results file's content (the fields calibration uses); return it unchanged.

    A file whose `check.passed` is false is refused: its timings belong to a kernel that moved
    the wrong data.
    """
    if not isinstance(data, dict):
        raise MoesimError("expected a JSON object", file=file, field="(top level)",
                          fix=f"give a results file written by moesim bench (schema {SCHEMA})")
    if data.get("schema") != SCHEMA:
        raise MoesimError(f"schema is {data.get('schema')!r}, not {SCHEMA!r}", file=file, field="schema",
                          fix=f"give a results file written by moesim bench (schema {SCHEMA})")
    bench = data.get("benchmark")
    if bench not in BENCHMARKS:
        raise MoesimError(f"unknown benchmark {bench!r}", file=file, field="benchmark",
                          fix=f"use one of: {', '.join(BENCHMARKS)}")
    check = data.get("check")
    if not isinstance(check, dict) or not isinstance(check.get("passed"), bool):
        raise MoesimError("check.passed must be true or false", file=file, field="check.passed",
                          fix="give the result of the benchmark's correctness check")
    if not check["passed"]:
        raise MoesimError("the benchmark's correctness check failed (check.passed is false)", file=file,
                          field="check.passed", fix="fix the failure and re-run the benchmark; "
                                                     "wrong results are never used for calibration")
    device = data.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("name"), str) or not device["name"]:
        raise MoesimError("device.name must be the GPU's name", file=file, field="device.name",
                          fix="give the device block the benchmark writes (name, driver, CUDA, NCCL)")
    for name in ("timestamp", "host"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise MoesimError(f"{name} must be a string or null", file=file, field=name, fix="correct it")
    if data.get("parameters") is not None and not isinstance(data["parameters"], dict):
        raise MoesimError("parameters must be a mapping", file=file, field="parameters", fix="correct it")
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise MoesimError("rows must be a list", file=file, field="rows", fix="give the benchmark's rows")
    for i, row in enumerate(rows):
        _check_row(bench, row, i, file)
    return data


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    """Read and validate results files (JSON, schema `moesim-bench/v1`).

    Each returned dict is the file's content plus `_file` (the path as given) and `_sha256`
    (of its bytes), which `fit_profile` carries into the provenance.
    """
    out = []
    for path in paths:
        file = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise MoesimError(f"cannot read file ({exc.strerror})", file=file, fix="check the path") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "(JSON)"
            raise MoesimError(f"malformed JSON: {exc}", file=file, field=where,
                              fix="give the JSON file written by moesim bench") from None
        check_result(data, file=file)
        out.append({**data, "_file": file, "_sha256": hashlib.sha256(raw).hexdigest()})
    if not out:
        raise MoesimError("no results files given", field="results", fix="give one or more RESULTS.json files")
    return out


def write_results(result: dict, path: str | Path) -> Path:
    """Write one results dict (e.g. from `synthetic_results`) as a results file, atomically."""
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    check_result(clean, file=str(path))
    return write_atomic(path, json.dumps(clean, indent=1) + "\n")


# ---------------------------------------------------------------- helpers

def _label(result: dict, index: int) -> str:
    return result.get("_file") or f"{result['benchmark']} results #{index} (in memory)"


def _short(label: str) -> str:
    return Path(label).name if "(in memory)" not in label else label


def _unit_profile(gpu: GPUSpec, profile: ComputeProfile) -> ComputeProfile:
    """The profile with every matmul efficiency the GPU has tensor cores for set to 1."""
    eff = profile.matmul_peak_efficiency
    updates = {}
    for family in MatmulPeakEfficiency.model_fields:
        if gpu.peak_flops(family) is not None:
            updates[family] = Fraction(value=1.0, source="calibration: efficiency 1 (model time at dense peak)")
    return profile.model_copy(update={"matmul_peak_efficiency": eff.model_copy(update=updates)})


def _with_memory_efficiency(gpu: GPUSpec, value: float, source: str) -> GPUSpec:
    measured = PositiveNumber(value=value * gpu.hbm_bandwidth_TBps.value, source=source,
                              note=f"calibrated memory efficiency {value:.4f} x spec {gpu.hbm_bandwidth_TBps.value:g} TB/s")
    return gpu.model_copy(update={"hbm_measured_TBps": measured})


def _summary(rel: np.ndarray) -> tuple[float, float]:
    rel = np.asarray(rel, dtype=float)
    return float(np.sqrt(np.mean(rel**2))), float(np.max(np.abs(rel)))


def _fitted(value: float, rel: np.ndarray, files: list[str], *, stderr: Optional[float] = None,
            note: Optional[str] = None) -> dict:
    rms, worst = _summary(rel)
    out = {"value": float(value), "source": _source(files), "residual_rms": rms, "residual_max": worst,
           "stderr": None if stderr is None or not math.isfinite(stderr) else float(stderr), "rows": int(len(rel))}
    if note:
        out["note"] = note
    return out


def _source(files: Iterable[str]) -> str:
    names = sorted({_short(f) for f in files})
    return f"fitted from {', '.join(names)} by moesim calibrate"


def _resid(quantity: str, file: str, i: int, label: str, measured: float, predicted: float, used: bool) -> dict:
    return {"quantity": quantity, "file": _short(file), "row": i, "label": label, "measured_s": float(measured),
            "predicted_s": float(predicted), "rel_error": float((predicted - measured) / measured),
            "used_in_fit": bool(used)}


def _rows(results: list[dict], benchmark: str):
    for r_index, result in enumerate(results):
        if result["benchmark"] == benchmark:
            for i, row in enumerate(result["rows"]):
                yield _label(result, r_index), i, row


def _link_path(row: dict, parameters: dict) -> Optional[str]:
    """The link a memcpy row measures: nvlink_p2p, host_to_device, device_to_host, hbm; the
    harness's `peer` is nvlink_p2p where peer access was available (else `peer_pcie`), `pcie`
    with direction h2d / d2h is host_to_device / device_to_host; `host` (CPU memcpy) is None."""
    path, direction = row["path"], row.get("direction")
    if path == "peer":
        return "peer_pcie" if parameters.get("peer_access") is False else "nvlink_p2p"
    if path == "pcie":
        return {"h2d": "host_to_device", "d2h": "device_to_host"}.get(direction, "pcie")
    if path == "host":
        return None
    return path


def _memcpy_rows(results: list[dict]):
    """(file, row index, row, link path) of every memcpy row that measures a GPU link or HBM."""
    for r_index, result in enumerate(results):
        if result["benchmark"] == "memcpy":
            for i, row in enumerate(result["rows"]):
                path = _link_path(row, result.get("parameters") or {})
                if path is not None:
                    yield _label(result, r_index), i, row, path


# ---------------------------------------------------------------- fits

def fit_alpha_beta(nbytes: np.ndarray, time_s: np.ndarray) -> tuple[float, float, np.ndarray, tuple, str | None]:
    """time = alpha + nbytes / beta by least squares on relative error (rows divided by time).

    Returns (alpha_s, beta_Bps, relative residuals, (stderr alpha, stderr beta), note). A negative
    alpha (noise on latency-free data) is refitted as alpha = 0; one distinct size fits beta only.
    """
    s, t = np.asarray(nbytes, dtype=float), np.asarray(time_s, dtype=float)
    note = None
    if len(np.unique(s)) >= 2:
        design = np.stack([1.0 / t, s / t], axis=1)
        coef, *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
        alpha, inv_beta = float(coef[0]), float(coef[1])
        if alpha < 0:
            note = f"fitted latency was negative ({alpha:.3g} s); refitted with latency 0"
        else:
            dof = max(len(t) - 2, 1)
            resid = design @ coef - 1.0
            cov = (resid @ resid / dof) * np.linalg.pinv(design.T @ design)
            se_alpha, se_inv = math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(cov[1, 1], 0.0))
            beta = 1.0 / inv_beta
            return alpha, beta, (alpha + s / beta - t) / t, (se_alpha, se_inv * beta**2), None
    else:
        note = "one message size only: latency not separable, fitted as 0"
    a = s / t
    inv_beta = float(a.sum() / (a @ a))
    resid = a * inv_beta - 1.0
    se_inv = math.sqrt((resid @ resid) / max(len(t) - 1, 1) / (a @ a))
    beta = 1.0 / inv_beta
    return 0.0, beta, resid, (None, se_inv * beta**2), note


def _fit_inverse_efficiency(compute: np.ndarray, memory: np.ndarray, launch: float, t: np.ndarray,
                            candidates: np.ndarray) -> tuple[float, np.ndarray, float]:
    """x = 1/e minimising the squared relative error of max(compute x, memory) + launch over the
    candidate rows that are compute-bound at x (active set, repeated until stable).
    Returns (x, mask of rows in the fit, stderr of x)."""
    active = candidates & (compute >= memory)
    if not active.any():
        active = candidates.copy()
    x = 1.0
    for _ in range(50):
        a = compute[active] / t[active]
        y = (t[active] - launch) / t[active]
        x = float(a @ y / (a @ a))
        new = candidates & (compute * x >= memory)
        if not new.any() or np.array_equal(new, active):
            break
        active = new
    a = compute[active] / t[active]
    r = a * x - (t[active] - launch) / t[active]
    se = math.sqrt((r @ r) / max(active.sum() - 1, 1) / (a @ a))
    return x, active, se


def _fit_gemm(results: list[dict], gpu: GPUSpec, profile: ComputeProfile, *, large_gemm_flops: float):
    unit = _unit_profile(gpu, profile)
    by_family: dict[str, list] = {}
    skipped: dict[str, int] = {}
    for bench in ("gemm", "grouped_gemm"):
        for file, i, row in _rows(results, bench):
            dtype = canonical_dtype(row["dtype"], file=file, field=_where(i, "dtype"))
            family = precision.get(dtype).family
            if family is None:
                key = f"{_short(file)}: {dtype} GEMM rows not fitted (no tensor-core peak for {dtype})"
                skipped[key] = skipped.get(key, 0) + 1
                continue
            groups = int(row.get("groups", 1))
            m, n, k = float(row["m"]), float(row["n"]), float(row["k"])
            try:
                if bench == "grouped_gemm":
                    est = grouped_gemm_estimate(gpu, unit, np.full(groups, m), n, k, dtype)
                else:
                    est = gemm_estimate(gpu, unit, m, n, k, dtype)
            except MoesimError as exc:
                raise exc.located(file=file, field_prefix=f"rows[{i}]") from None
            label = f"{bench} {dtype} m={m:g} n={n:g} k={k:g}" + (f" groups={groups}" if bench == "grouped_gemm" else "")
            if row.get("impl"):
                label += f" impl={row['impl']}"
            shape = (file, bench, dtype, groups, m, n, k)
            by_family.setdefault(family, []).append((file, i, label, est, float(row["time_s"]), shape))
    fits, residuals = {}, []
    for family, items in sorted(by_family.items()):
        compute = np.array([it[3].compute_s for it in items])
        memory = np.array([it[3].memory_s for it in items])
        flops = np.array([it[3].flops for it in items])
        t = np.array([it[4] for it in items])
        launch = profile.kernel_launch_s.value
        # One shape timed with several implementations (cuBLASLt per-expert loop and cuBLAS's
        # grouped API, which runs at ~40 % of the loop on an H100): a framework runs the fastest,
        # so only the fastest row of each shape in a file is fitted; the others stay as residuals.
        fastest: dict[tuple, float] = {}
        for it in items:
            fastest[it[5]] = min(fastest.get(it[5], math.inf), it[4])
        is_fastest = np.array([it[4] <= fastest[it[5]] for it in items])
        candidates = (flops >= large_gemm_flops) & is_fastest
        note = None
        if not candidates.any():
            candidates = is_fastest
            note = f"no GEMM of >= {large_gemm_flops:.3g} FLOPs; fitted on all {int(is_fastest.sum())} rows"
        x, used, se_x = _fit_inverse_efficiency(compute, memory, launch, t, candidates)
        predicted = np.maximum(compute * x, memory) + launch
        rel = (predicted - t) / t
        efficiency = 1.0 / x
        if efficiency > 1:
            note = ((note + "; ") if note else "") + \
                f"fitted efficiency {efficiency:.3f} exceeds 1: check dense_TFLOPs.{family} of the GPU file"
        files = [items[j][0] for j in np.nonzero(used)[0]]
        fits[family] = _fitted(efficiency, rel[used], files, stderr=se_x / x**2, note=note)
        residuals += [_resid(f"matmul_peak_efficiency.{family}", it[0], it[1], it[2], it[4], p, u)
                      for it, p, u in zip(items, predicted, used)]
    return fits, residuals, [f"{k} x{v}" for k, v in skipped.items()]


def _fit_hbm(results: list[dict], gpu: GPUSpec):
    rows = [(file, i, row) for file, i, row, path in _memcpy_rows(results) if path == "hbm"]
    if not rows:
        return None, []
    nbytes = np.array([float(r["bytes"]) for _, _, r in rows])
    t = np.array([float(r["time_s"]) for _, _, r in rows])
    gbps = HBM_COPY_TRAFFIC * nbytes / t / units.GBps
    used = nbytes >= HBM_LARGE_FRACTION * nbytes.max()
    median = float(np.median(gbps[used]))
    spec_GBps = gpu.hbm_bandwidth_TBps.value * units.TBps / units.GBps
    # predicted time of a row at the median rate: bytes moved / rate, i.e. t x GBps / median
    predicted = t * gbps / median
    rel = (predicted - t) / t
    spread = np.std(gbps[used] / median, ddof=1) if used.sum() > 1 else float("nan")
    stderr = 1.2533 * spread / math.sqrt(used.sum()) * median / spec_GBps
    files = [rows[j][0] for j in np.nonzero(used)[0]]
    note = f"median {median:.1f} GB/s (2 x bytes copied / time: read + write) / spec {spec_GBps:g} GB/s"
    fit = _fitted(median / spec_GBps, rel[used], files, stderr=stderr, note=note)
    residuals = [_resid("memory_efficiency", f, i, f"hbm {r['bytes']:.4g} B", tt, p, u)
                 for (f, i, r), tt, p, u in zip(rows, t, predicted, used)]
    return fit, residuals


def _fit_links(results: list[dict], gpu: GPUSpec, system: Optional[System]):
    groups: dict[tuple, list] = {}
    for file, i, row, path in _memcpy_rows(results):
        if path == "hbm":
            continue
        key = (path, "bidirectional" if row.get("direction") in BIDIRECTIONAL else None)
        groups.setdefault(key, []).append((file, i, row))
    fits, residuals = {}, []
    for (path, direction), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        nbytes = np.array([float(r["bytes"]) for _, _, r in rows])
        t = np.array([float(r["time_s"]) for _, _, r in rows])
        alpha, beta, rel, (se_a, se_b), note = fit_alpha_beta(nbytes, t)
        files = [f for f, _, _ in rows]
        name = path if direction is None else f"{path}.{direction}"
        kind = LINK_KIND[path]
        if path == "nvlink_p2p":
            spec = (system.spec.scale_up.per_gpu_GBps_per_direction.value if system is not None
                    else gpu.nvlink.per_direction_GBps.value)
        elif kind == "host":
            spec = gpu.host_link.per_direction_GBps.value
        else:
            spec = None
        beta_GBps = beta / units.GBps
        fit = {"path": path, "direction": direction, "kind": kind, "spec_GBps": spec,
               "bandwidth_GBps": _fitted(beta_GBps, rel, files, stderr=se_b / units.GBps, note=note),
               "latency_s": _fitted(alpha, rel, files, stderr=se_a, note=note)}
        if direction is None and spec is not None:
            fit["efficiency"] = _fitted(beta_GBps / spec, rel, files, stderr=se_b / units.GBps / spec,
                                        note=f"{beta_GBps:.1f} GB/s / spec {spec:g} GB/s per direction")
        fits[name] = fit
        residuals += [_resid(f"links.{name}", f, i, f"{r['path']} {r.get('direction')} {r['bytes']:.4g} B", tt,
                             alpha + s / beta, True)
                      for (f, i, r), s, tt in zip(rows, nbytes, t)]
    return fits, residuals


def _spec_busbw(system: System, op: str, ranks: int, nodes: Optional[int]) -> tuple[Optional[float], Optional[str]]:
    """Bus bandwidth (GB/s) moesim's collective model gives a large message at spec link rates,
    and the link kind that binds; (None, None) where the system cannot host the collective."""
    if nodes is None or (nodes == 1 and ranks <= system.gpus_per_node):
        gpus, members = ranks, None
    elif ranks % nodes or ranks // nodes > system.gpus_per_node:
        return None, None
    else:
        per = ranks // nodes
        gpus = nodes * system.gpus_per_node
        members = [h * system.gpus_per_node + j for h in range(nodes) for j in range(per)]
    try:
        timing = collective_time(system.id, gpus, op, COLLECTIVE_PROBE_BYTES, participants=members)
    except MoesimError:
        return None, None
    if timing.bandwidth_s <= 0:
        return None, None
    eff, _ = link_efficiency(system)
    kind = timing.bottleneck_kind
    busbw = COLLECTIVE_PROBE_BYTES * BUSBW_FACTOR[op](ranks) / timing.bandwidth_s
    return busbw / eff.get(kind, 1.0) / units.GBps, kind  # capacities there are spec x eff


def _fit_collectives(results: list[dict], system: Optional[System]):
    groups: dict[tuple, list] = {}
    for file, i, row in _rows(results, "collective"):
        nodes = None if row.get("nodes") is None else int(row["nodes"])
        groups.setdefault((row["op"], int(row["ranks"]), nodes), []).append((file, i, row))
    fits, residuals = {}, []
    for (op, ranks, nodes), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        factor = BUSBW_FACTOR[op](ranks)
        bus = np.array([float(r["bytes"]) * factor for _, _, r in rows])
        t = np.array([float(r["time_s"]) for _, _, r in rows])
        alpha, beta, rel, (se_a, se_b), note = fit_alpha_beta(bus, t)
        files = [f for f, _, _ in rows]
        name = f"{op}.r{ranks}" + (f".n{nodes}" if nodes is not None else "")
        beta_GBps = beta / units.GBps
        fit = {"op": op, "ranks": ranks, "nodes": nodes,
               "busbw_GBps": _fitted(beta_GBps, rel, files, stderr=se_b / units.GBps, note=note),
               "latency_s": _fitted(alpha, rel, files, stderr=se_a, note=note)}
        if system is not None:
            spec, kind = _spec_busbw(system, op, ranks, nodes)
            if spec is not None:
                fit.update(bottleneck_kind=kind, spec_busbw_GBps=spec)
                fit["efficiency"] = _fitted(beta_GBps / spec, rel, files, stderr=se_b / units.GBps / spec,
                                            note=f"busbw {beta_GBps:.1f} GB/s / moesim's spec-rate busbw "
                                                 f"{spec:.1f} GB/s ({kind} binds)")
        fits[name] = fit
        residuals += [_resid(f"collectives.{name}", f, i, f"{op} {r['bytes']:.4g} B x{ranks}", tt, alpha + s / beta, True)
                      for (f, i, r), s, tt in zip(rows, bus, t)]
    return fits, residuals


def _device_summary(results: list[dict]) -> dict:
    names = sorted({r["device"]["name"] for r in results})
    if len(names) > 1:
        raise MoesimError(f"results come from different devices: {', '.join(names)}", field="device.name",
                          fix="calibrate one GPU model at a time")
    merged: dict[str, Any] = {}
    for key in DEVICE_FIELDS:
        values = []
        for r in results:
            v = r["device"].get(key)
            if v is not None and v not in values:
                values.append(v)
        merged[key] = None if not values else values[0] if len(values) == 1 else values
    return merged


def infer_ids(results: list[dict], *, gpu_id: Optional[str] = None,
              system_id: Optional[str] = None) -> tuple[str, Optional[str]]:
    """GPU and system ids for a calibration: given ones win; else the GPU from device.name
    (`synthetic (<gpu>)`, or the product name such as `NVIDIA H100 80GB HBM3`) and the one
    system built from that GPU."""
    if system_id is not None and gpu_id is None:
        gpu_id = load_system(system_id).spec.gpu
    if gpu_id is None:
        name = _device_summary(results)["name"]
        match = re.fullmatch(r"synthetic \((.+)\)", name)
        if match:
            gpu_id = match.group(1)
        else:
            tokens = {"GB200": "gb200", "B200": "b200-sxm", "H200": "h200-sxm", "H800": "h800-sxm", "H100": "h100-sxm"}
            found = [gid for tok, gid in tokens.items()
                     if re.search(rf"\b{tok}\b", name) and not re.search(r"PCIe|\bNVL\b", name, re.I)]
            if len(found) != 1:
                raise MoesimError(f"cannot tell the GPU model from device name {name!r}", field="gpu",
                                  fix=f"give --gpu, one of: {', '.join(gpu_names())}")
            gpu_id = found[0]
    if system_id is None:
        matches = [s for s in system_names() if load_system(s).spec.gpu == gpu_id]
        system_id = matches[0] if len(matches) == 1 else None
    return gpu_id, system_id


def fit_profile(results: list[dict], *, gpu_id: str, system_id: Optional[str] = None,
                large_gemm_flops: float = LARGE_GEMM_FLOPS) -> dict:
    """Fit a calibration profile (plain dict, the YAML `write_profile` writes less `provenance`).

    `results` are results dicts (from `load_results` or `synthetic_results`); `gpu_id` names
    `topologies/gpus/<gpu>.yaml` and the compute profile the GEMM model uses, `system_id` the
    system whose spec link rates the link efficiencies are relative to (None: GPU NVLink spec,
    and no collective efficiencies). See the module docstring for every fit.
    """
    for index, result in enumerate(results):
        check_result(result, file=_label(result, index))
    if not results:
        raise MoesimError("no results to fit", field="results", fix="give one or more results files")
    gpu = load_gpu(gpu_id)
    profile = load_compute_profile(gpu_id)
    system = None
    if system_id is not None:
        system = load_system(system_id)
        if system.spec.gpu != gpu.id:
            raise MoesimError(f"system {system_id} is built from {system.spec.gpu}, not {gpu.id}", field="system",
                              fix=f"give the system of the benchmarked GPU, or --gpu {system.spec.gpu}")
    device = _device_summary(results)
    for index, result in enumerate(results):
        if result["device"].get("backend") == "cpu":
            raise MoesimError("these results were measured on a CPU (device.backend: cpu)", file=_label(result, index),
                              field="device.backend", fix="calibrate a GPU from results of moesim bench on that GPU")
    memory, mem_resid = _fit_hbm(results, gpu)
    model_gpu = gpu if memory is None else _with_memory_efficiency(gpu, memory["value"], memory["source"])
    matmul, gemm_resid, notes = _fit_gemm(results, model_gpu, profile, large_gemm_flops=large_gemm_flops)
    links, link_resid = _fit_links(results, gpu, system)
    colls, coll_resid = _fit_collectives(results, system)
    if not (matmul or memory or links or colls):
        raise MoesimError("no row of these results can be fitted (ep_dispatch rows are validation data only)",
                          field="rows", fix="give gemm, grouped_gemm, memcpy or collective results")
    inputs = [{"file": _label(r, i), "sha256": r.get("_sha256"), "benchmark": r["benchmark"],
               "timestamp": r.get("timestamp"), "host": r.get("host"), "parameters": r.get("parameters") or {}}
              for i, r in enumerate(results)]
    return {"format": PROFILE_FORMAT, "gpu": gpu.id, "system": system_id, "device": device, "inputs": inputs,
            "matmul_peak_efficiency": matmul, "memory_efficiency": memory, "links": links, "collectives": colls,
            "notes": notes, "residuals": mem_resid + gemm_resid + link_resid + coll_resid}


# ---------------------------------------------------------------- writing and reading profiles

def _with_sources(fit: Any, files: list[str]) -> Any:
    """Rename the in-memory labels of `source` strings to the file names given (`sources`)."""
    if isinstance(fit, dict):
        out = {k: _with_sources(v, files) for k, v in fit.items()}
        if isinstance(out.get("source"), str) and "(in memory)" in out["source"] and files:
            out["source"] = _source(files)
        return out
    if isinstance(fit, list):
        return [_with_sources(v, files) for v in fit]
    return fit


def provenance(profile: dict, sources: list[str], *, command: Optional[str] = None) -> dict:
    names = [str(s) for s in sources]
    inputs = profile.get("inputs") or []
    results = []
    for j, item in enumerate(inputs):
        file = item["file"]
        if "(in memory)" in file and j < len(names):
            file = names[j]
        results.append({**item, "file": file})
    known = {r["file"] for r in results}
    results += [{"file": n, "sha256": None, "benchmark": "unknown", "timestamp": None, "host": None,
                 "parameters": {}} for n in names if n not in known]
    return {"command": command or "moesim calibrate " + " ".join(names),
            "results": results, "device": profile.get("device") or {},
            "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "moesim_version": __version__, "moesim_commit": git_commit(), "error_band": ERROR_BAND_CONVENTION}


class _NoAliasDumper(yaml.SafeDumper):
    """Safe YAML without anchors: the same parameters dict repeated stays readable in every entry."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def profile_yaml(profile: dict, *, sources: list[str], command: Optional[str] = None) -> str:
    """The YAML text of a fitted profile with its provenance block, validated by `CalibrationProfile`."""
    body = {k: v for k, v in _with_sources(profile, [str(s) for s in sources]).items()
            if k not in ("device", "inputs")}
    body = {"format": body.pop("format"), "gpu": body.pop("gpu"), "system": body.pop("system"),
            "provenance": provenance(profile, sources, command=command), **body}
    if body.get("memory_efficiency") is None:
        body.pop("memory_efficiency", None)
    parse_record(CalibrationProfile, body, file="(profile being written)")
    device = body["provenance"]["device"].get("name")
    header = (f"# Calibration profile of {body['gpu']}" + (f" in {body['system']}" if body["system"] else "")
              + f", fitted by moesim calibrate from microbenchmark results ({device}).\n"
              "# Every value: {value, source, residual_rms (RMS relative error of predicted vs measured time\n"
              "# over the rows of its fit), residual_max, stderr (standard error of value), rows}.\n"
              "# Fits and conventions: moesim/calibration.py. Regenerate with the provenance.command below.\n")
    residuals = body.pop("residuals", [])
    text = header + yaml.dump(body, Dumper=_NoAliasDumper, sort_keys=False, width=120, allow_unicode=True)
    if residuals:  # one line per row: (predicted - measured) / measured of every benchmark row
        text += "residuals:\n" + "".join(
            "- " + yaml.dump(r, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=True,
                             width=float("inf")) for r in residuals)
    return text


def write_profile(profile: dict, path: str | Path, *, sources: list[str], command: Optional[str] = None) -> Path:
    """Write a fitted profile as YAML with a `provenance:` block (files, device, moesim version and
    commit, calibration time), all-or-nothing (`result.write_atomic`)."""
    return write_atomic(path, profile_yaml(profile, sources=sources, command=command))


def load_calibration(path: str | Path) -> CalibrationProfile:
    """Read a calibration profile YAML (a path, or a name under `topologies/calibration/`)."""
    candidate = Path(path)
    if not candidate.exists() and candidate.suffix not in (".yaml", ".yml"):
        candidate = calibration_dir() / f"{path}.yaml"
    if not candidate.is_file():
        raise MoesimError(f"no calibration profile {str(path)!r}", field="profile",
                          fix="give the YAML written by moesim calibrate")
    data, node = read_yaml(candidate)
    return parse_record(CalibrationProfile, data, file=str(candidate), node=node)


# ---------------------------------------------------------------- using a profile

def _calibrated_source(fit: Fitted, calibration: CalibrationProfile) -> str:
    return (f"{fit.source} (calibration of {calibration.gpu}, {calibration.provenance.calibrated_at}; "
            f"residual RMS {fit.residual_rms:.2%})")


def apply_to_compute(compute_profile: ComputeProfile, calibration: CalibrationProfile) -> ComputeProfile:
    """A copy of `compute_profile` with matmul_peak_efficiency / memory_efficiency replaced where
    the calibration fitted them; sources say so. The GPU file's `hbm_measured_TBps` still wins in
    `compute.memory_efficiency`, so pass the GPU through `apply_to_gpu` as well."""
    if calibration.gpu != compute_profile.gpu:
        raise MoesimError(f"calibration is for {calibration.gpu!r}, compute profile for {compute_profile.gpu!r}",
                          field="gpu", fix="use the calibration profile of the simulated GPU")
    updates = {}
    eff = compute_profile.matmul_peak_efficiency
    families = {}
    for family, fit in calibration.matmul_peak_efficiency.items():
        if not 0 < fit.value <= 1:
            raise MoesimError(f"calibrated efficiency {fit.value:.4f} is not in (0, 1]",
                              field=f"matmul_peak_efficiency.{family}",
                              fix="check the GPU's dense_TFLOPs and the benchmark's timings, then recalibrate")
        families[family] = Fraction(value=fit.value, source=_calibrated_source(fit, calibration), note=fit.note)
    if families:
        updates["matmul_peak_efficiency"] = eff.model_copy(update=families)
    mem = calibration.memory_efficiency
    if mem is not None:
        if not 0 < mem.value <= 1:
            raise MoesimError(f"calibrated memory efficiency {mem.value:.4f} is not in (0, 1]",
                              field="memory_efficiency", fix="check the GPU's hbm_bandwidth_TBps, then recalibrate")
        updates["memory_efficiency"] = Fraction(value=mem.value, source=_calibrated_source(mem, calibration),
                                                note=mem.note)
    return compute_profile.model_copy(update=updates)


def apply_to_gpu(gpu: GPUSpec, calibration: CalibrationProfile) -> GPUSpec:
    """A copy of `gpu` whose `hbm_measured_TBps` is the calibrated memory efficiency x spec (the
    figure `compute.memory_efficiency` reads first); unchanged where none was calibrated."""
    if calibration.gpu != gpu.id:
        raise MoesimError(f"calibration is for {calibration.gpu!r}, GPU is {gpu.id!r}", field="gpu",
                          fix="use the calibration profile of the simulated GPU")
    mem = calibration.memory_efficiency
    if mem is None:
        return gpu
    return _with_memory_efficiency(gpu, mem.value, _calibrated_source(mem, calibration))


def link_efficiency_overrides(calibration: CalibrationProfile) -> dict[str, float]:
    """Achievable / spec rate per link kind (`nvlink`, `ib`, `roce`) that the calibration measured,
    to replace `collectives.link_efficiency(system)` entries.

    nvlink: the unidirectional P2P copy fit (the same definition as the system file's
    measured_p2p_GBps); else the median over collectives whose bottleneck is nvlink. A NIC kind:
    the median over multi-node collectives it binds. Kinds not measured are absent; values are
    not clipped (above 1 means the spec or the model's bottleneck is off; the note says which).
    """
    out: dict[str, float] = {}
    p2p = calibration.links.get("nvlink_p2p")
    if p2p is not None and p2p.efficiency is not None:
        out["nvlink"] = p2p.efficiency.value
    by_kind: dict[str, list[float]] = {}
    for fit in calibration.collectives.values():
        if fit.efficiency is not None and fit.bottleneck_kind in ("nvlink", "ib", "roce"):
            by_kind.setdefault(fit.bottleneck_kind, []).append(fit.efficiency.value)
    for kind, values in by_kind.items():
        out.setdefault(kind, float(np.median(values)))
    return out


def error_band(residual_rms: float, value: float) -> tuple[float, float]:
    """(low, high) = value x (1 -+ k x residual_rms), k = `ERROR_BAND_K` = 2; low is kept >= 0 for a
    positive value. See `ERROR_BAND_CONVENTION`."""
    if isinstance(residual_rms, bool) or not math.isfinite(residual_rms) or residual_rms < 0:
        raise MoesimError(f"residual_rms must be a finite number >= 0, got {residual_rms!r}", field="residual_rms",
                          fix="give the residual_rms of a calibration profile")
    half = ERROR_BAND_K * residual_rms * abs(value)
    low = value - half
    if value >= 0:
        low = max(0.0, low)
    return low, value + half


def profile_rms(calibration: CalibrationProfile, quantities: Optional[Iterable[str]] = None) -> float:
    """The largest residual_rms among the calibrated quantities (or the named ones, e.g.
    `matmul_peak_efficiency.bf16`, `links.nvlink_p2p`): one conservative figure for a metric's band."""
    table = {f"matmul_peak_efficiency.{k}": v.residual_rms for k, v in calibration.matmul_peak_efficiency.items()}
    if calibration.memory_efficiency is not None:
        table["memory_efficiency"] = calibration.memory_efficiency.residual_rms
    table.update({f"links.{k}": v.bandwidth_GBps.residual_rms for k, v in calibration.links.items()})
    table.update({f"collectives.{k}": v.busbw_GBps.residual_rms for k, v in calibration.collectives.items()})
    keys = list(table) if quantities is None else list(quantities)
    missing = [k for k in keys if k not in table]
    if missing:
        raise MoesimError(f"not calibrated: {', '.join(missing)}", field="quantities",
                          fix=f"use one of: {', '.join(table) or '(none calibrated)'}")
    return max((table[k] for k in keys), default=0.0)


# ---------------------------------------------------------------- synthetic results

SYNTHETIC_DTYPE = {"bf16": "bf16", "fp8": "fp8", "fp4": "nvfp4"}
SYNTHETIC_GEMMS = ([(m, n, k) for m in (2048, 4096, 8192, 16384)
                    for n, k in ((4096, 4096), (8192, 8192), (7168, 2048), (2048, 7168))]
                   + [(64, 7168, 2048), (128, 4096, 4096), (512, 2048, 2048)])
SYNTHETIC_GROUPED = [(8, m, n, k) for m in (256, 1024, 4096) for n, k in ((4096, 7168), (7168, 2048))]
SYNTHETIC_HBM_BYTES = [2**p for p in range(26, 33)]
SYNTHETIC_P2P_BYTES = [4**p for p in range(6, 16)]
SYNTHETIC_COLL_BYTES = [2**p for p in range(16, 31, 2)]
SYNTHETIC_OPS = ("all_gather", "reduce_scatter", "all_reduce")
SYNTHETIC_RANKS = 8
SYNTHETIC_REPEATS = 5


def synthetic_results(*, gpu_id: str, true_matmul_efficiency: dict[str, float], true_memory_efficiency: float,
                      true_nvlink_GBps: float, true_alpha_s: float, noise: float, seed: int) -> list[dict]:
    """Results files' contents generated from KNOWN parameters with moesim's own forward models.

    gemm / grouped_gemm: `compute.gemm_time` / `grouped_gemm_time` with the true efficiencies (and
    the true memory efficiency). memcpy hbm: `compute.memory_bound_time` of a device-to-device
    copy (2 x bytes through HBM) at the true memory efficiency; GBps = bytes / time as the harness
    writes it. memcpy nvlink_p2p: alpha + bytes /
    nvlink rate. collective (8 ranks, one node): alpha + bytes x busbw factor / nvlink rate.
    Every time is multiplied by exp(noise x N(0, 1)) drawn from np.random.default_rng(seed), in a
    fixed order. Marked `device.name: synthetic (<gpu>)`, `device.backend: synthetic`, and the true
    values are in `parameters`, so a synthetic file is never mistaken for a measurement.
    """
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise MoesimError(f"noise must be >= 0, got {noise!r}", field="noise", fix="give a relative noise such as 0.01")
    for name, value in (("true_memory_efficiency", true_memory_efficiency), ("true_nvlink_GBps", true_nvlink_GBps)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise MoesimError(f"{name} must be > 0, got {value!r}", field=name, fix="give a positive value")
    if not (isinstance(true_alpha_s, (int, float)) and true_alpha_s >= 0):
        raise MoesimError(f"true_alpha_s must be >= 0, got {true_alpha_s!r}", field="true_alpha_s",
                          fix="give a latency in seconds, e.g. 8e-6")
    rng = np.random.default_rng(seed)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")  # when generated; not part of the data
    gpu = load_gpu(gpu_id)
    profile = load_compute_profile(gpu_id)
    families = {}
    for family, value in true_matmul_efficiency.items():
        if family not in MatmulPeakEfficiency.model_fields:
            raise MoesimError(f"unknown dtype family {family!r}", field="true_matmul_efficiency",
                              fix=f"use: {', '.join(MatmulPeakEfficiency.model_fields)}")
        if not 0 < value <= 1:
            raise MoesimError(f"efficiency {value!r} is not in (0, 1]", field=f"true_matmul_efficiency.{family}",
                              fix="give a fraction of the dense peak")
        families[family] = Fraction(value=float(value), source="synthetic: true value")
    true_profile = profile.model_copy(update={"matmul_peak_efficiency":
                                              profile.matmul_peak_efficiency.model_copy(update=families)})
    true_gpu = _with_memory_efficiency(gpu, float(true_memory_efficiency), "synthetic: true value")
    noisy = lambda t: float(t * math.exp(noise * rng.standard_normal()))  # noqa: E731
    device = {"name": f"synthetic ({gpu_id})", "backend": "synthetic", "torch": None, "cuda_runtime": None,
              "driver": None, "nccl": None, "gpus": SYNTHETIC_RANKS, "compute_capability": None}
    truth = {"true_matmul_efficiency": dict(true_matmul_efficiency), "true_memory_efficiency": true_memory_efficiency,
             "true_nvlink_GBps": true_nvlink_GBps, "true_alpha_s": true_alpha_s, "noise": noise, "seed": seed}

    def result(benchmark: str, rows: list[dict]) -> dict:
        return {"schema": SCHEMA, "benchmark": benchmark, "device": dict(device), "timestamp": stamp,
                "host": "synthetic", "parameters": {"generator": "moesim.calibration.fit.synthetic_results", **truth},
                "rows": rows, "check": {"passed": True, "note": "synthetic: generated, not measured"}}

    gemm, grouped = [], []
    for family in sorted(families):
        dtype = SYNTHETIC_DTYPE[family]
        for m, n, k in SYNTHETIC_GEMMS:
            t = noisy(gemm_time(true_gpu, true_profile, m, n, k, dtype))
            gemm.append({"m": m, "n": n, "k": k, "groups": 1, "dtype": dtype, "time_s": t,
                         "tflops": 2.0 * m * n * k / t / units.TFLOPS})
        for g, m, n, k in SYNTHETIC_GROUPED:
            t = noisy(grouped_gemm_time(true_gpu, true_profile, np.full(g, float(m)), n, k, dtype))
            grouped.append({"m": m, "n": n, "k": k, "groups": g, "dtype": dtype, "time_s": t,
                            "tflops": 2.0 * g * m * n * k / t / units.TFLOPS})
    memcpy = []
    for size in SYNTHETIC_HBM_BYTES:
        for _ in range(SYNTHETIC_REPEATS):
            t = noisy(memory_bound_time(true_gpu, true_profile, 2.0 * size))
            memcpy.append({"path": "hbm", "direction": "d2d", "engine": "memcpy", "bytes": size,
                           "time_s": t, "GBps": size / t / units.GBps})
    rate = true_nvlink_GBps * units.GBps
    for size in SYNTHETIC_P2P_BYTES:
        for _ in range(SYNTHETIC_REPEATS):
            t = noisy(true_alpha_s + size / rate)
            memcpy.append({"path": "nvlink_p2p", "direction": "unidirectional", "engine": "copy_engine",
                           "bytes": size, "time_s": t, "GBps": size / t / units.GBps})
    coll = []
    for op in SYNTHETIC_OPS:
        factor = BUSBW_FACTOR[op](SYNTHETIC_RANKS)
        for size in SYNTHETIC_COLL_BYTES:
            t = noisy(true_alpha_s + size * factor / rate)
            coll.append({"op": op, "bytes": size, "ranks": SYNTHETIC_RANKS, "nodes": 1, "time_s": t,
                         "algbw_GBps": size / t / units.GBps, "busbw_GBps": size * factor / t / units.GBps})
    out = [result("gemm", gemm), result("grouped_gemm", grouped), result("memcpy", memcpy), result("collective", coll)]
    return out if gemm else out[2:]


def write_synthetic_example(folder: str | Path, *, gpu_id: str = "h100-sxm", system_id: str = "dgx-h100",
                            seed: int = 0) -> Path:
    """Write synthetic results files (`<folder>/synthetic-results/*.json`) and the profile fitted
    from them (`<folder>/synthetic-<system>.yaml`): a worked example of calibration without a GPU.
    True values: bf16 0.71, fp8 0.62, memory 0.88, NVLink 380 GB/s, latency 8 us, 1 % noise."""
    folder = Path(folder)
    results = synthetic_results(gpu_id=gpu_id, true_matmul_efficiency={"bf16": 0.71, "fp8": 0.62},
                                true_memory_efficiency=0.88, true_nvlink_GBps=380.0, true_alpha_s=8e-6,
                                noise=0.01, seed=seed)
    paths = [write_results(r, folder / "synthetic-results" / f"{r['benchmark']}.json") for r in results]
    try:
        names = [str(p.relative_to(data_root())) for p in paths]
    except ValueError:
        names = [str(p) for p in paths]
    loaded = [{**r, "_file": n} for r, n in zip(load_results(paths), names)]
    profile = fit_profile(loaded, gpu_id=gpu_id, system_id=system_id)
    command = (f"python -c \"from moesim.calibration.fit import write_synthetic_example as w; "
               f"w('{folder}', gpu_id='{gpu_id}', system_id='{system_id}', seed={seed})\"")
    return write_profile(profile, folder / f"synthetic-{system_id}.yaml", sources=names, command=command)
