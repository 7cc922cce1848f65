"""Named physical parameters of the kernel models, with sourced defaults and fitted values.

`topologies/kernels/<family>.yaml` (ep, collective, gemm, copy, training) define every parameter
the kernel models read, each name starting with its file's family (`ep.sm_rate_GBps.hopper.nvlink`): its unit, the bounds a fit may
move it in, what it means, and a default with its source. A *kernel profile*
(`topologies/calibration/kernels.yaml`, written by `moesim calibrate --cases`) holds fitted
values with their standard error, the cases and sources each rests on and the residual RMS.
Predictions read `values()`: the profile's fitted values over the sourced defaults. A parameter
no case constrained keeps its default, and the profile says so (`fitted: false`).
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml
from pydantic import ConfigDict, field_validator

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, parse_record, read_yaml

PROFILE_FORMAT = "moesim-kernel-profile/v1"
SPEC = "spec"  # --profile spec: sourced defaults only, nothing fitted


class ParamDef(Record):
    """One parameter: a property of a GPU architecture, a kernel library, a serving stack, or the benchmark
    client whose measurements a fit compares with (topologies/kernels/benchmark.yaml)."""

    unit: str
    meaning: str
    value: float
    source: str
    bounds: tuple[float, float]

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError("give [low, high] with 0 < low < high (parameters are positive)")
        return v


class ParamFile(Record):
    parameters: dict[str, ParamDef]


def definitions_dir() -> Path:
    return data_root() / "topologies" / "kernels"


def default_profile_path() -> Path:
    return data_root() / "topologies" / "calibration" / "kernels.yaml"


@lru_cache(maxsize=1)
def definitions() -> dict[str, ParamDef]:
    defs: dict[str, ParamDef] = {}
    for path in sorted(definitions_dir().glob("*.yaml")):
        data, node = read_yaml(path)
        for name, d in parse_record(ParamFile, data, file=str(path), node=node).parameters.items():
            if name.split(".")[0] != path.stem:
                raise MoesimError(f"parameter {name!r} is not of family {path.stem!r}", file=str(path),
                                  field=f"parameters.{name}", fix=f"name it {path.stem}.<...> or move it")
            if not d.bounds[0] <= d.value <= d.bounds[1]:
                raise MoesimError(f"default {d.value} outside bounds {list(d.bounds)}", file=str(path),
                                  field=f"parameters.{name}.value", fix="widen the bounds or correct the default")
            defs[name] = d
    return defs


class FittedParam(Record):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float
    unit: str
    fitted: bool
    default: float
    stderr: Optional[float] = None
    cases: int = 0
    sources: list[str] = []
    note: str = ""


class KernelProfileFile(Record):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: str
    provenance: dict[str, Any]
    residual_rms: dict[str, float]
    parameters: dict[str, FittedParam]

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v != PROFILE_FORMAT:
            raise ValueError(f"expected {PROFILE_FORMAT!r}; write the profile with moesim calibrate --cases")
        return v


@dataclass(frozen=True)
class KernelProfile:
    """Parameter values to predict with, and where they came from (named in every provenance)."""

    name: str
    fitted: dict[str, float] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        out = {n: d.value for n, d in definitions().items()}
        out.update(self.fitted)
        return out


def load_kernel_profile(path: str | Path) -> KernelProfile:
    """A profile file; every field checked, unknown parameters refused (they would be silently unused)."""
    path = Path(path)
    data, node = read_yaml(path)
    prof = parse_record(KernelProfileFile, data, file=str(path), node=node)
    defs = definitions()
    for name, p in prof.parameters.items():
        if name not in defs:
            raise MoesimError(f"unknown parameter {name!r}", file=str(path), field=f"parameters.{name}",
                              fix="refit the profile with moesim calibrate --cases (the parameter list changed)")
        if not p.value > 0:
            raise MoesimError(f"value must be positive, got {p.value}", file=str(path),
                              field=f"parameters.{name}.value", fix="refit with moesim calibrate --cases")
    return KernelProfile(name=str(path), fitted={n: p.value for n, p in prof.parameters.items() if p.fitted})


_STANDING_IN: list[KernelProfile] = []


@contextmanager
def standing_in_for_default(profile: KernelProfile) -> Iterator[None]:
    """Within the block, scenarios without a kernel profile use `profile`: validating or fitting
    with a profile must simulate whole steps (training, serving cases) with that profile too."""
    _STANDING_IN.append(profile)
    try:
        yield
    finally:
        _STANDING_IN.pop()


def resolve_kernel_profile(choice: Optional[str]) -> KernelProfile:
    """`None`: the shipped fitted profile (sourced defaults where none ships); `spec`: defaults only;
    else a profile file."""
    if choice is None and _STANDING_IN:
        return _STANDING_IN[-1]
    if choice == SPEC:
        return KernelProfile(name=SPEC)
    if choice is None:
        path = default_profile_path()
        return _shipped(path, path.stat().st_mtime_ns) if path.exists() else KernelProfile(name=SPEC)
    return load_kernel_profile(choice)


def split_profiles(profiles: tuple[str, ...] | list[str]) -> tuple[Optional[str], list[str]]:
    """Separate `--profile` values: `spec` or a kernel profile (format moesim-kernel-profile/v1)
    from microbenchmark profiles (one per GPU). At most one kernel profile."""
    kernel = [p for p in profiles if p == SPEC or _is_kernel_profile(p)]
    if len(kernel) > 1:
        raise MoesimError(f"two kernel profiles: {kernel[0]} and {kernel[1]}", field="--profile",
                          fix="give one kernel profile (or spec)")
    if kernel and kernel[0] != SPEC and not Path(kernel[0]).exists():
        kernel[0] = str(default_profile_path().parent / f"{kernel[0]}.yaml")
        return kernel[0], [p for p in profiles if not _is_kernel_profile(p) and p != SPEC]
    return (kernel[0] if kernel else None), [p for p in profiles if p not in kernel]


def _is_kernel_profile(path: str) -> bool:
    """A kernel profile file, given as a path or as a name under topologies/calibration/."""
    candidate = Path(path)
    if not candidate.exists() and candidate.suffix not in (".yaml", ".yml"):
        candidate = default_profile_path().parent / f"{path}.yaml"
    try:
        head = candidate.read_text(errors="replace")[:4000]
    except OSError:
        return False
    return PROFILE_FORMAT in head


@lru_cache(maxsize=4)
def _shipped(path: Path, mtime: int) -> KernelProfile:
    profile = load_kernel_profile(path)
    return KernelProfile(name=f"topologies/calibration/{path.name}", fitted=profile.fitted)


def profile_text(fit: Any, *, cases_files: list[str], command: str) -> str:
    """YAML of a fitted profile (`fit` from `kernel_fit.fit_all`), every parameter with its evidence."""
    from moesim.core.result import code_version
    defs = definitions()
    params = {}
    for name in sorted(defs):
        d = defs[name]
        if name in fit.values:
            params[name] = {"value": _round(fit.values[name]), "unit": d.unit, "fitted": True, "default": d.value,
                            "stderr": _round(fit.stderr.get(name)), "cases": fit.cases[name],
                            "sources": fit.sources[name]}
        else:
            params[name] = {"value": d.value, "unit": d.unit, "fitted": False, "default": d.value,
                            "note": "no case constrains it: sourced default kept (" + d.source + ")"}
    files = [{"file": f, "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest()} for f in cases_files]
    data = {"format": PROFILE_FORMAT,
            "provenance": {"cases_files": files, "command": command, "moesim": code_version(),
                           "method": "least squares on log(predicted/measured) per case (soft-L1 at the scales of "
                                     "kernel_fit.ROBUST_LOG_SCALE for its case kinds), log-parameters, weak prior "
                                     "(weight %.2f) towards each sourced default" % fit.prior_weight},
            "residual_rms": {k: _round(v) for k, v in sorted(fit.residual_rms.items())},
            "parameters": params}
    header = ("# Kernel-model parameters fitted by moesim calibrate --cases (see docs/kernel-parameters.md).\n"
              "# Regenerate: " + command + "\n")
    return header + yaml.safe_dump(data, sort_keys=False, width=120)


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None else float(f"{v:.6g}")
