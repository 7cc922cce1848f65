"""`moesim whatif`: one base scenario against single changes, side by side.

A change is `PATH=VALUE`:
- a scenario field in dotted form (`parallel.ep=32`, `workload.batch=256`, `dtypes.weights=nvfp4`);
- `system.<field>` for any field of the system file (`system.scale_up.per_gpu_GBps_per_direction=1800`,
  with `.value` implied for a sourced spec), plus the short forms in `SYSTEM_ALIASES`
  (`system.nvlink_GBps=1800`, `system.nic_Gbps=800`, `system.oversubscription=2`); a changed spec
  rate scales the measured rate its efficiency comes from (MEASURED_WITH), so the achievable
  fraction stays as measured; the changed system (same id, so prices and hardware profiles still
  apply) is written to a temporary file and loaded like any user system, its `source:` noting the change;
- `skew=...`, `overlap=...`, `placement=...` for the simulation itself.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from moesim.cluster.scenario import default_scenario_path, load_scenario
from moesim.core.errors import MoesimError
from moesim.core.loader import read_yaml, resolve
from moesim.core.output import write_atomic
from moesim.sim.simulate import simulate
from moesim.specs.hardware import systems_dir

SIMULATE_KEYS = ("skew", "overlap", "placement")
SYSTEM_ALIASES = {"nvlink_GBps": "scale_up.per_gpu_GBps_per_direction",
                  "nic_Gbps": "scale_out.nic_Gbps",
                  "oversubscription": "scale_out.oversubscription",
                  "nic_effective_GBps": "scale_out.nic_effective_GBps"}
# A spec rate and the measured rate its efficiency comes from: changing the spec scales the
# measurement too, so the achievable fraction of the link stays what was measured ("what if
# NVLink were 2x" means 2x the achievable rate, not a faster spec the measurement caps).
MEASURED_WITH = {"scale_up.per_gpu_GBps_per_direction": "scale_up.measured_p2p_GBps",
                 "scale_out.nic_Gbps": "scale_out.nic_effective_GBps"}


def parse_set(text: str) -> tuple[str, Any]:
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise MoesimError(f"cannot read change {text!r}", field="--set", fix="write PATH=VALUE, e.g. parallel.ep=32")
    return path.strip(), yaml.safe_load(raw)


def _set_dotted(data: dict, dotted: str, value: Any, *, field: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            raise MoesimError(f"no field {dotted!r} in the system file", field=field,
                              fix="name a field of the system YAML (see topologies/systems/) or an alias: "
                                  + ", ".join(f"system.{a}" for a in SYSTEM_ALIASES))
        node = node[key]
    last = keys[-1]
    if not isinstance(node, dict) or last not in node:
        raise MoesimError(f"no field {dotted!r} in the system file", field=field,
                          fix="name a field of the system YAML (see topologies/systems/) or an alias: "
                              + ", ".join(f"system.{a}" for a in SYSTEM_ALIASES))
    if isinstance(node[last], dict) and "value" in node[last]:
        node[last] = dict(node[last], value=value, source=f"what-if change ({dotted}={value}); was: "
                                                          f"{node[last].get('value')} ({node[last].get('source')})")
    else:
        node[last] = value


def _get_value(data: dict, dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node.get("value") if isinstance(node, dict) else node


def system_variant(system_name: str, changes: dict[str, Any], folder: Path) -> str:
    path = resolve("system", system_name, systems_dir())
    data, _ = read_yaml(path)
    for dotted, value in changes.items():
        full = SYSTEM_ALIASES.get(dotted, dotted)
        old = _get_value(data, full)
        _set_dotted(data, full, value, field=f"system.{dotted}")
        measured = MEASURED_WITH.get(full)
        current = _get_value(data, measured) if measured else None
        if current and old and isinstance(value, (int, float)):
            _set_dotted(data, measured, current * value / old, field=f"system.{dotted}")
    data["description"] = f"{data.get('description') or data['id']} (what-if: " + \
        ", ".join(f"{k}={v}" for k, v in changes.items()) + ")"
    digest = hashlib.sha256(repr(sorted((k, str(v)) for k, v in changes.items())).encode()).hexdigest()[:12]
    target = folder / f"{data['id']}-{digest}.yaml"
    write_atomic(target, yaml.safe_dump(data, sort_keys=False))
    return str(target)


def run_variant(scenario: Optional[str], changes: dict[str, Any], folder: Path, *,
                ignore_memory: bool = False) -> dict:
    sim = {k: changes[k] for k in SIMULATE_KEYS if k in changes}
    system_changes = {k[len("system."):]: v for k, v in changes.items() if k.startswith("system.")}
    overrides = {k: v for k, v in changes.items() if k not in SIMULATE_KEYS and not k.startswith("system.")}
    if system_changes:
        data, _ = read_yaml(Path(scenario) if scenario else default_scenario_path())
        base_system = overrides.get("system") or data.get("system")
        overrides["system"] = system_variant(base_system, system_changes, folder)
    sc = load_scenario(scenario, overrides)
    return simulate(sc, ignore_memory=ignore_memory, **sim)


def whatif(scenario: Optional[str], sets: list[str], *, ignore_memory: bool = False) -> dict:
    """Simulate the base and each change (a `;`-joined group applies together); return metrics
    and relative deltas.

    The same VRAM check as `simulate` and `plan` (`costs.feasibility`): a base that does not fit is
    an error; a change that does not fit gets a row that says so and no numbers, unless
    `ignore_memory`, when its numbers come with the warning."""
    groups = [dict(parse_set(part) for part in s.split(";") if part.strip()) for s in sets]
    if not groups or not all(groups):
        raise MoesimError("no change given", field="--set", fix="add --set PATH=VALUE (one or more)")
    with tempfile.TemporaryDirectory(prefix="moesim-whatif-") as tmp:
        base = run_variant(scenario, {}, Path(tmp), ignore_memory=ignore_memory)
        rows = []
        for changes in groups:
            label = "; ".join(f"{k}={v}" for k, v in changes.items())
            try:
                result = run_variant(scenario, changes, Path(tmp), ignore_memory=ignore_memory)
            except MoesimError as exc:
                if exc.field != "memory":
                    raise
                rows.append({"change": label, "fits": False, "problem": exc.problem, "metrics": None,
                             "relative_change": None})
                continue
            deltas = {k: (v - base["metrics"][k]) / base["metrics"][k]
                      for k, v in result["metrics"].items()
                      if isinstance(v, (int, float)) and base["metrics"].get(k)}
            row = {"change": label, "fits": not result.get("warnings"), "metrics": result["metrics"],
                   "relative_change": deltas}
            if result.get("warnings"):
                row["warnings"] = result["warnings"]
            rows.append(row)
    out = {"scenario": base["scenario"], "base": base["metrics"], "variants": rows}
    return {"warnings": base["warnings"], **out} if base.get("warnings") else out
