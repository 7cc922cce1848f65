"""Calibration profiles (`topologies/calibration/<system>.yaml`): the record, writing it with
provenance, reading it back, applying it to the compute and collective models, and error bands.

A profile is what `moesim calibrate` fits (calibration/fit.py); `simulate --profile` and
`validate --profile` read it. Applying a profile only swaps fitted numbers for sourced defaults:
the forward models stay the same, so a profile never changes what the model is, only its rates.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import yaml
from pydantic import Field, field_validator

from moesim import __version__
from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, parse_record, read_yaml
from moesim.core.output import write_atomic
from moesim.core.result import git_commit
from moesim.costs.compute import ComputeProfile, Fraction, MatmulPeakEfficiency
from moesim.specs.hardware import GPUSpec, PositiveNumber

PROFILE_FORMAT = "moesim-calibration/v1"
ERROR_BAND_K = 2.0
ERROR_BAND_CONVENTION = (
    "value x (1 -+ 2 x residual_rms): k = 2 times the RMS relative error of the fit's predicted vs "
    "measured times (about a 95% band if the residuals are zero-mean and normal); it covers the "
    "scatter of the calibration rows around the model, not model terms the benchmarks do not exercise")

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


def short_label(label: str) -> str:
    return Path(label).name if "(in memory)" not in label else label


def fitted_source(files: Iterable[str]) -> str:
    names = sorted({short_label(f) for f in files})
    return f"fitted from {', '.join(names)} by moesim calibrate"


def with_memory_efficiency(gpu: GPUSpec, value: float, source: str) -> GPUSpec:
    measured = PositiveNumber(value=value * gpu.hbm_bandwidth_TBps.value, source=source,
                              note=f"calibrated memory efficiency {value:.4f} x spec {gpu.hbm_bandwidth_TBps.value:g} TB/s")
    return gpu.model_copy(update={"hbm_measured_TBps": measured})


# ---------------------------------------------------------------- writing and reading profiles

def _with_sources(fit: Any, files: list[str]) -> Any:
    """Rename the in-memory labels of `source` strings to the file names given (`sources`)."""
    if isinstance(fit, dict):
        out = {k: _with_sources(v, files) for k, v in fit.items()}
        if isinstance(out.get("source"), str) and "(in memory)" in out["source"] and files:
            out["source"] = fitted_source(files)
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
              "# Fits and conventions: moesim/calibration/fit.py. Regenerate with the provenance.command below.\n")
    residuals = body.pop("residuals", [])
    text = header + yaml.dump(body, Dumper=_NoAliasDumper, sort_keys=False, width=120, allow_unicode=True)
    if residuals:  # one line per row: (predicted - measured) / measured of every benchmark row
        text += "residuals:\n" + "".join(
            "- " + yaml.dump(r, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=True,
                             width=float("inf")) for r in residuals)
    return text


def write_profile(profile: dict, path: str | Path, *, sources: list[str], command: Optional[str] = None) -> Path:
    """Write a fitted profile as YAML with a `provenance:` block (files, device, moesim version and
    commit, calibration time), all-or-nothing (`core.output.write_atomic`)."""
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
    return with_memory_efficiency(gpu, mem.value, _calibrated_source(mem, calibration))


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
