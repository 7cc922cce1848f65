"""Validation cases: the record of one published measurement, the cases file, and why a case is skipped.

Schema: validation/SCHEMA.md. A case keeps every field its source gives (`extra="allow"`), so a
predictor can report the parameters it did not use instead of silently dropping them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ConfigDict, Field

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, parse_record, read_yaml
from moesim.specs.hardware import load_system
from moesim.validation.serving_load_labels import relabelled


class Case(Record):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    what: str
    system: str
    gpus: Optional[int] = None
    params: dict[str, Any] = {}
    metric: str
    measured: float = Field(gt=0)  # a relative error needs a positive measurement
    source: str


class CasesFile(Record):
    model_config = ConfigDict(extra="allow", frozen=True)
    cases: list[Case]


class Skip(Exception):
    """This case cannot be modelled yet; the message says why."""


def load_cases(path: str) -> list[Case]:
    """The file's cases. Parsed with libyaml's C loader (validation/serving_load.yaml, 4 MB, in 4 s
    instead of 15 s with the pure-Python loader and its line-number tree); a file that does not
    parse or validate that way is read again by `read_yaml`, whose error names the line. Serving
    benchmarks whose stated split contradicts their run name come back on the run name's split,
    marked `relabelled` (`serving_load_labels`)."""
    data = _parse_fast(Path(path))
    try:
        if data is None:
            raise MoesimError("not parsed by the fast loader", file=path)
        cases = parse_record(CasesFile, data, file=path).cases
    except MoesimError:
        data, node = read_yaml(Path(path))
        cases = parse_record(CasesFile, data, file=path, node=node).cases
    if not cases:
        raise MoesimError("the file holds no cases", file=path, field="cases",
                          fix="add cases in the schema of validation/SCHEMA.md")
    return relabelled(cases)


def _parse_fast(path: Path) -> Any:
    """The YAML data by libyaml (`yaml.CSafeLoader`), or None when it is missing or the file does not
    parse (the slow path then reports why, with the line)."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return None
    try:
        return yaml.load(path.read_text(), Loader=loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


@dataclass(frozen=True)
class Calibrated:
    """A calibration profile and the file it came from (scenarios name the file)."""

    path: str
    profile: Any


def link_overrides(calibration: Optional[Calibrated], system_id: str) -> tuple:
    """Calibrated link efficiencies when the profile belongs to this system's GPU."""
    if calibration is None:
        return ()
    from moesim.calibration.profile import link_efficiency_overrides
    if load_system(system_id).gpu.id != calibration.profile.gpu:
        return ()
    return tuple(sorted(link_efficiency_overrides(calibration.profile).items()))


def profile_override(calibration: Optional[Calibrated], system_id: str) -> dict:
    if calibration is None or load_system(system_id).gpu.id != calibration.profile.gpu:
        return {}
    return {"runtime.profile": calibration.path}
